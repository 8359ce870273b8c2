//! Images an importer must refuse (they need other files, or are encrypted), and VMDK
//! descriptors that only a local import may read.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure};

use super::qcow2::{qcow2_opts, version};
use super::tools::{compress_file, convert, create, qemu_img, s, same, sh};
use super::{Expect, KIB, Layout, MIB, Made, Recipe, data_file, recipe};

pub(super) fn refused(image: PathBuf, reason: &'static str) -> anyhow::Result<Made> {
    Ok(Made::Image(image, Expect::Refused { reason }))
}

/// Sets a VHD footer's disk type (at 0 and at the end) and its checksum.
fn patch_vhd_footers(p: &Path, disk_type: u32) -> anyhow::Result<()> {
    let f = fs::OpenOptions::new().read(true).write(true).open(p)?;
    let len = f.metadata()?.len();
    for at in [0, len - 512] {
        let mut footer = [0u8; 512];
        f.read_exact_at(&mut footer, at)?;
        ensure!(&footer[..8] == b"conectix", "no footer at {at}");
        footer[60..64].copy_from_slice(&disk_type.to_be_bytes());
        footer[64..68].fill(0);
        let sum = footer.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
        f.write_all_at(&footer, at)?;
    }
    Ok(())
}

/// Sets the HasParent bit of a VHDX's file parameters (the metadata has no checksum).
fn patch_vhdx_has_parent(p: &Path) -> anyhow::Result<()> {
    const FILE_PARAMETERS: [u8; 16] = [
        0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b,
    ];
    let f = fs::OpenOptions::new().read(true).write(true).open(p)?;
    let len = f.metadata()?.len();
    let mut at = MIB;
    while at < len.min(64 * MIB) {
        let mut table = vec![0u8; 64 * KIB as usize];
        f.read_exact_at(&mut table, at)?;
        if &table[..8] == b"metadata" {
            let count = usize::from(u16::from_le_bytes([table[10], table[11]]));
            for i in 0..count {
                let e = &table[32 + i * 32..64 + i * 32];
                if e[..16] == FILE_PARAMETERS {
                    let off = u64::from(u32::from_le_bytes(e[16..20].try_into()?));
                    let mut flags = [0u8; 4];
                    f.read_exact_at(&mut flags, at + off + 4)?;
                    flags[0] |= 2;
                    f.write_all_at(&flags, at + off + 4)?;
                    return Ok(());
                }
            }
            bail!("no file parameters in the metadata table");
        }
        at += MIB;
    }
    bail!("no metadata table found")
}

pub(super) fn refusal_recipes(v: &mut Vec<Recipe>) {
    backing_and_data_files(v);
    encrypted(v);
    vmdk_with_other_files(v);
    differencing(v);
}

/// qcow2s that read other files: a backing file (also in gzip), an external data file.
fn backing_and_data_files(v: &mut Vec<Recipe>) {
    for v2 in [false, true] {
        recipe(
            v,
            format!("qcow2 {} with a backing file (refused)", version(v2)),
            move |d| {
                let o = qcow2_opts(v2, 64 * KIB, "");
                sh(
                    d,
                    &format!(
                        "qemu-img create -q -f qcow2 -o {o} base.qcow2 16M && \
                     qemu-img create -q -f qcow2 -o {o} -b base.qcow2 -F qcow2 disk.qcow2"
                    ),
                )?;
                refused(d.join("disk.qcow2"), "backing file")
            },
        );
    }
    recipe(v, "qcow2 with a backing file, in gzip (refused)", |d| {
        sh(
            d,
            "qemu-img create -q -f qcow2 base.qcow2 16M && \
             qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 disk.qcow2",
        )?;
        refused(compress_file(d, "disk.qcow2", "gzip")?, "backing file")
    });
    for raw in [false, true] {
        let name = if raw {
            "qcow2 with an external raw data file (data_file_raw=on) (refused)"
        } else {
            "qcow2 with an external data file (refused)"
        };
        recipe(v, name, move |d| {
            let w = data_file(d, 40, 64 * KIB)?;
            sh(
                d,
                &format!(
                    "qemu-img create -q -f qcow2 -o data_file=disk.data,data_file_raw={} disk.qcow2 16M && \
                     qemu-io -f qcow2 -c 'write -s {} 0 65536' disk.qcow2 >/dev/null",
                    if raw { "on" } else { "off" },
                    s(&w)
                ),
            )?;
            refused(d.join("disk.qcow2"), "external data file")
        });
    }
}

/// An encrypted qcow2.
fn encrypted(v: &mut Vec<Recipe>) {
    recipe(v, "qcow2 LUKS-encrypted (refused)", |d| {
        let q = d.join("disk.qcow2");
        // qemu times its PBKDF to pick an iteration count; on a busy machine the measure can
        // come out empty ("Unable to get accurate CPU usage"): a longer target and a retry.
        let mut tries = 0;
        loop {
            let made = qemu_img(&[
                "create",
                "-q",
                "--object",
                "secret,id=sec0,data=corpus-passphrase",
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100",
                s(&q),
                "16M",
            ]);
            match made {
                Err(e) if tries < 3 && e.to_string().contains("Unable to get accurate CPU usage") => {
                    tries += 1
                }
                other => break other,
            }
        }?;
        refused(q, "encrypted")
    });
}

/// A VMDK delta disk with a parent, and descriptors with their extents beside them.
fn vmdk_with_other_files(v: &mut Vec<Recipe>) {
    recipe(
        v,
        "vmdk monolithicSparse delta disk with a parent (refused)",
        |d| {
            sh(
                d,
                "qemu-img create -q -f vmdk base.vmdk 16M && qemu-img create -q -f vmdk -b base.vmdk -F vmdk disk.vmdk",
            )?;
            refused(d.join("disk.vmdk"), "parent")
        },
    );
    // Descriptors with their extents beside them: read from a local file, refused from a
    // stream. The sparse one spans two 2 GiB extents.
    for (sub, step) in [
        ("monolithicFlat", 8 * MIB),
        ("twoGbMaxExtentSparse", 700 * MIB),
        ("twoGbMaxExtentFlat", 8 * MIB),
    ] {
        let name = format!("vmdk {sub} descriptor (extents beside it; refused from a stream)");
        recipe(v, name, move |d| {
            let opts = format!("subformat={sub}");
            let p = convert(
                d,
                &Layout::spread(step, 256 * KIB, 0),
                "vmdk",
                &opts,
                false,
                "disk.vmdk",
            )?;
            let Expect::Same { oracle, format, .. } = same(d, &p, "vmdk", "vmdk", &[])? else {
                bail!("same() makes Expect::Same")
            };
            let e = Expect::LocalOnly {
                oracle,
                format,
                reason: "other files",
            };
            Ok(Made::Image(p, e))
        });
    }
}

/// VHD, VHDX and VDI differencing images (and a VDI naming a parent).
fn differencing(v: &mut Vec<Recipe>) {
    recipe(v, "vhd differencing disk (footer type 4) (refused)", |d| {
        let p = convert(
            d,
            &Layout::spread(4 * MIB, 64 * KIB, 0),
            "vpc",
            "",
            false,
            "disk.vhd",
        )?;
        patch_vhd_footers(&p, 4)?;
        refused(p, "differencing")
    });
    recipe(v, "vhdx differencing disk (HasParent) (refused)", |d| {
        let p = d.join("disk.vhdx");
        create(&p, "vhdx", "block_size=1M", 16 * MIB)?;
        patch_vhdx_has_parent(&p)?;
        refused(p, "differencing")
    });
    for (what, at, bytes, reason) in [
        (
            "vdi differencing image (type 4) (refused)",
            0x4c,
            &[4u8, 0, 0, 0][..],
            "differencing",
        ),
        (
            "vdi with a parent UUID (refused)",
            0x1b8,
            &[0x42u8; 16][..],
            "parent",
        ),
    ] {
        recipe(v, what, move |d| {
            let p = d.join("disk.vdi");
            create(&p, "vdi", "", 16 * MIB)?;
            let f = fs::OpenOptions::new().write(true).open(&p)?;
            f.write_all_at(bytes, at)?;
            refused(p, reason)
        });
    }
}
