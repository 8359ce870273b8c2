//! Deterministic OVA fixtures: a ustar archive holding the `.ovf` descriptor first, then one
//! `.vmdk` member per disk.
//!
//! The descriptor is a minimal vSphere `VirtualSystem` in the OVF 1.0 namespaces (vmx-09,
//! 1 vCPU, 512 MiB, one LSI Logic SCSI controller, one disk per vmdk, one VMXNET3 NIC on the
//! given network), like govc's and the Go operator's test fixtures. Disk bytes are
//! pseudo-random (xorshift, seeded from the OVA and disk names) and streamed to the file,
//! so a 1 GiB fixture needs no 1 GiB buffer. They are not a real VMDK: vcsim discards
//! uploaded disks, so only their sizes and bytes on the wire matter.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::XorShift64;

/// Modification time stored in every tar header (fixtures are byte-for-byte reproducible).
const MTIME: u64 = 1_700_000_000;
/// Bytes per MiB (disk capacities are declared in MiB).
const MIB: u64 = 1 << 20;

/// One disk of an [`OvaFixture`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvaDisk {
    /// Tar member name, equal to `References/File/@ovf:href` (and to vSphere's `fileItem.path`).
    pub name: String,
    /// Member size in bytes, equal to `ovf:size`: the bytes an upload of this disk sends.
    pub size: u64,
    /// Declared capacity in bytes (`DiskSection`): `size` rounded up to whole MiB, at least 1 MiB.
    pub capacity: u64,
    /// Seed of the disk's pseudo-random bytes (see [`disk_reader`]).
    pub seed: u64,
}

impl OvaDisk {
    /// The disk's bytes, regenerated (an [`AsyncRead`] of exactly [`size`](Self::size) bytes).
    pub fn reader(&self) -> PseudoRandomDisk {
        disk_reader(self.seed, self.size)
    }

    /// SHA-256 (lowercase hex) of the disk's bytes, computed by regenerating them.
    pub async fn sha256(&self) -> io::Result<String> {
        let mut reader = self.reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(hex::encode(hasher.finalize()));
            }
            hasher.update(&buf[..n]);
        }
    }
}

/// An OVA written by [`OvaFixture::write`].
#[derive(Clone, Debug)]
pub struct OvaFixture {
    /// Where the OVA was written.
    pub path: PathBuf,
    /// The virtual system's name (also the `.ovf` member's stem).
    pub name: String,
    /// The OVF descriptor (the first tar member, `<name>.ovf`).
    pub ovf: String,
    /// The disks, in archive order.
    pub disks: Vec<OvaDisk>,
    /// The OVF network name the NIC connects to.
    pub network: String,
}

impl OvaFixture {
    /// Writes an OVA at `path` with one disk per `(member name, size in bytes)` and one NIC on
    /// `network` (e.g. `"nic0"`). Returns what was written, including the declared sizes.
    pub async fn write(
        path: impl AsRef<Path>,
        name: &str,
        disks: &[(&str, u64)],
        network: &str,
    ) -> anyhow::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let disks: Vec<OvaDisk> = disks
            .iter()
            .map(|&(disk, size)| OvaDisk {
                name: disk.to_owned(),
                size,
                capacity: size.div_ceil(MIB).max(1) * MIB,
                seed: disk_seed(name, disk),
            })
            .collect();
        let ovf = ovf_descriptor(name, &disks, network);
        let fixture = Self {
            path,
            name: name.to_owned(),
            ovf,
            disks,
            network: network.to_owned(),
        };
        fixture
            .write_tar()
            .await
            .with_context(|| format!("writing OVA fixture {}", fixture.path.display()))?;
        Ok(fixture)
    }

    /// Streams the archive to [`path`](Self::path).
    async fn write_tar(&self) -> io::Result<()> {
        let file = tokio::fs::File::create(&self.path).await?;
        let mut tar = tar::Builder::new(tokio::io::BufWriter::with_capacity(1 << 20, file));
        tar.append(
            &header(&self.ovf_member(), self.ovf.len() as u64)?,
            self.ovf.as_bytes(),
        )
        .await?;
        for disk in &self.disks {
            tar.append(&header(&disk.name, disk.size)?, disk.reader()).await?;
        }
        tar.finish().await?;
        let mut out = tar.into_inner().await?;
        out.flush().await?;
        out.into_inner().sync_all().await
    }

    /// Name of the descriptor member, `<name>.ovf`.
    pub fn ovf_member(&self) -> String {
        format!("{}.ovf", self.name)
    }

    /// The declared disk sizes (`ovf:size`), in archive order.
    pub fn disk_sizes(&self) -> Vec<u64> {
        self.disks.iter().map(|d| d.size).collect()
    }

    /// Sum of the disk sizes: the bytes a push import uploads.
    pub fn total_disk_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size).sum()
    }
}

/// A ustar header for a regular file.
fn header(path: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Writes a file of garbage that is not a tar archive (for error-path tests).
pub async fn invalid_ova(path: impl AsRef<Path>) -> anyhow::Result<()> {
    let path = path.as_ref();
    let mut bytes = b"this is not an OVA\n".to_vec();
    let mut rng = XorShift64::new(0xbad0_0fa5);
    bytes.extend((0..4096).map(|_| rng.next_u64() as u8));
    tokio::fs::write(path, bytes)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

/// The seed of a disk's bytes: FNV-1a of `"<ova name>/<disk name>"`.
pub fn disk_seed(ova_name: &str, disk_name: &str) -> u64 {
    format!("{ova_name}/{disk_name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// `size` pseudo-random bytes from `seed`, the same however they are read.
pub fn disk_reader(seed: u64, size: u64) -> PseudoRandomDisk {
    PseudoRandomDisk {
        rng: XorShift64::new(seed),
        block: vec![0; 64 * 1024],
        pos: 64 * 1024,
        remaining: size,
    }
}

/// An [`AsyncRead`] of deterministic pseudo-random bytes (see [`disk_reader`]).
#[derive(Debug)]
pub struct PseudoRandomDisk {
    /// Generator state.
    rng: XorShift64,
    /// The current block of generated bytes.
    block: Vec<u8>,
    /// Next unread byte of `block`.
    pos: usize,
    /// Bytes left to produce.
    remaining: u64,
}

impl AsyncRead for PseudoRandomDisk {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while buf.remaining() > 0 && this.remaining > 0 {
            if this.pos == this.block.len() {
                for chunk in this.block.chunks_exact_mut(8) {
                    chunk.copy_from_slice(&this.rng.next_u64().to_le_bytes());
                }
                this.pos = 0;
            }
            let n = buf.remaining().min(this.block.len() - this.pos);
            let n = n.min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
            buf.put_slice(&this.block[this.pos..this.pos + n]);
            this.pos += n;
            this.remaining -= n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

/// Escapes text for XML content and attribute values.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The OVF 1.0 descriptor of a fixture (rasd elements in schema order, as vCenter wants).
pub fn ovf_descriptor(name: &str, disks: &[OvaDisk], network: &str) -> String {
    let (name, network) = (xml_escape(name), xml_escape(network));
    let mut files = String::new();
    let mut disk_section = String::new();
    let mut disk_items = String::new();
    for (i, d) in disks.iter().enumerate() {
        let n = i + 1;
        let href = xml_escape(&d.name);
        files.push_str(&format!(
            "    <File ovf:href=\"{href}\" ovf:id=\"file{n}\" ovf:size=\"{}\"/>\n",
            d.size
        ));
        disk_section.push_str(&format!(
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte * 2^20\" ovf:diskId=\"vmdisk{n}\" \
             ovf:fileRef=\"file{n}\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\" \
             ovf:populatedSize=\"{}\"/>\n",
            d.capacity / MIB,
            d.size
        ));
        disk_items.push_str(&format!(
            "      <Item>\n        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>\n        \
             <rasd:ElementName>Hard disk {n}</rasd:ElementName>\n        \
             <rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource>\n        \
             <rasd:InstanceID>{}</rasd:InstanceID>\n        <rasd:Parent>3</rasd:Parent>\n        \
             <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>\n",
            n + 4
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
{files}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{disk_section}  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="{network}">
      <Description>The {network} network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-09</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>512MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>512</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
{disk_items}      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>{network}</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "{network}"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reader_is_deterministic_whatever_the_read_size() {
        let mut a = Vec::new();
        disk_reader(7, 200_001).read_to_end(&mut a).await.unwrap();
        let mut b = Vec::new();
        let mut r = disk_reader(7, 200_001);
        let mut small = [0u8; 1000];
        loop {
            let n = r.read(&mut small[..999]).await.unwrap();
            if n == 0 {
                break;
            }
            b.extend_from_slice(&small[..n]);
        }
        assert_eq!(a.len(), 200_001);
        assert_eq!(a, b);
        assert_ne!(disk_seed("x", "disk-0.vmdk"), disk_seed("x", "disk-1.vmdk"));
    }

    #[tokio::test]
    async fn archive_has_the_ovf_first_then_each_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.ova");
        let ova = OvaFixture::write(
            &path,
            "tmpl",
            &[("disk-0.vmdk", 3000), ("disk-1.vmdk", 5 * MIB + 1)],
            "nic0",
        )
        .await
        .unwrap();
        assert_eq!(ova.disk_sizes(), vec![3000, 5 * MIB + 1]);
        assert_eq!(ova.disks[1].capacity, 6 * MIB);
        assert!(
            ova.ovf
                .contains(r#"ovf:href="disk-1.vmdk" ovf:id="file2" ovf:size="5242881""#)
        );

        let file = tokio::fs::File::open(&path).await.unwrap();
        let mut archive = tar::Archive::new(file);
        let mut entries = archive.entries().unwrap();
        let mut seen = Vec::new();
        while let Some(entry) = futures::StreamExt::next(&mut entries).await {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).await.unwrap();
            seen.push((name, body));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, "tmpl.ovf");
        assert_eq!(seen[0].1, ova.ovf.as_bytes());
        assert_eq!(seen[2].0, "disk-1.vmdk");
        let mut expected = Vec::new();
        ova.disks[1].reader().read_to_end(&mut expected).await.unwrap();
        assert_eq!(seen[2].1, expected);
        let want = hex::encode(Sha256::digest(&expected));
        assert_eq!(ova.disks[1].sha256().await.unwrap(), want);

        let bad = dir.path().join("bad.ova");
        invalid_ova(&bad).await.unwrap();
        assert!(tokio::fs::metadata(&bad).await.unwrap().len() > 4096);
    }
}
