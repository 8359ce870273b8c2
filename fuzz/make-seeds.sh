#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets to DIR/<target>/ (default fuzz/seeds): small
# disk images made by qemu-img (qcow2, vmdk, vpc, vhdx, vdi with a little data), compressed
# and tar/OVA-wrapped images, and sample manifests, patterns, durations, schedules,
# references and names. Seeds are stored gzip-compressed (`NAME.gz`); scripts/fuzz.sh
# gunzips them once into the working corpus (a `.gz.gz` seed becomes a gzip input).
# Needs qemu-img, qemu-io, gzip, xz, zstd, bzip2 and python3. UUIDs and timestamps in
# the images differ from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-fuzz/seeds}")
for tool in qemu-img qemu-io gzip xz zstd bzip2 python3; do
    command -v "$tool" >/dev/null || { echo "make-seeds: $tool is missing (apt-get install qemu-utils xz-utils zstd bzip2 python3)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$out"

# put TARGET NAME FILE: stores FILE as seed NAME of TARGET (gzip -9, no name/time).
put() {
    mkdir -p "$out/$1"
    gzip -9 -n -c "$3" >"$out/$1/$2.gz"
}
# text TARGET NAME STRING
text() {
    local f="$work/text"
    printf '%s' "$3" >"$f"
    put "$1" "$2" "$f"
}

# The raw disk behind every image: 1 MiB, 512 random bytes at 0, 4 KiB of text at 4 KiB
# and at 700 KiB, 512 random bytes at the end; holes between.
raw="$work/disk.raw"
python3 - "$raw" <<'PY'
import random, sys
r = random.Random(1)
d = bytearray(1 << 20)
d[0:512] = bytes(r.getrandbits(8) for _ in range(512))
t = b"ido fuzz seed: the quick brown fox jumps over the lazy dog. " * 70
d[4096:8192] = t[:4096]
d[700 << 10:(700 << 10) + 4096] = t[:4096]
d[-512:] = bytes(r.getrandbits(8) for _ in range(512))
open(sys.argv[1], "wb").write(d)
PY
# A tiny raw (64 KiB, data in the first 8 KiB) for formats whose smallest image is big.
small="$work/small.raw"
head -c 8192 "$raw" >"$small"
truncate -s 64K "$small"

img() { # img NAME FORMAT SOURCE [qemu-img convert options...]
    local name=$1 fmt=$2 src=$3
    shift 3
    qemu-img convert -q -f raw -O "$fmt" "$@" "$src" "$work/$name"
}
img q-512.qcow2 qcow2 "$raw" -o cluster_size=512
img q-64k.qcow2 qcow2 "$small"
img q-v2-4k.qcow2 qcow2 "$raw" -o compat=0.10,cluster_size=4096
img q-zlib.qcow2 qcow2 "$raw" -c -o cluster_size=4096
img q-zstd.qcow2 qcow2 "$raw" -c -o cluster_size=4096,compression_type=zstd
img q-extl2.qcow2 qcow2 "$raw" -o cluster_size=16384,extended_l2=on
qemu-img create -q -f qcow2 -o cluster_size=512 "$work/q-empty.qcow2" 1M
img v-sparse.vmdk vmdk "$small"
img v-stream.vmdk vmdk "$raw" -o subformat=streamOptimized
qemu-img create -q -f vmdk -o subformat=streamOptimized "$work/v-empty-stream.vmdk" 1M
img h-dynamic.vhd vpc "$small"
img h-fixed.vhd vpc "$small" -o subformat=fixed
qemu-img create -q -f vpc "$work/h-empty.vhd" 1M
img x-data.vhdx vhdx "$small" -o block_size=1M,log_size=1M
qemu-img create -q -f vhdx -o block_size=1M,log_size=1M "$work/x-empty.vhdx" 64K
img d-dynamic.vdi vdi "$small"
img d-static.vdi vdi "$small" -o static=on
qemu-img create -q -f vdi "$work/d-empty.vdi" 1M

for f in q-512 q-64k q-v2-4k q-zlib q-zstd q-extl2 q-empty; do put qcow2 "$f" "$work/$f.qcow2"; done
for f in v-sparse v-stream v-empty-stream; do put vmdk "$f" "$work/$f.vmdk"; done
for f in h-dynamic h-fixed h-empty; do put vhd "$f" "$work/$f.vhd"; done
# qemu's VHDX puts the log at 1 MiB, the BAT at 2, the metadata at 3 and the payload at
# 8 MiB. The compact copy (3 MiB + 64 KiB) has no log, the metadata (128 KiB) at 1 MiB,
# the BAT at 2 and the payload at 3 MiB, checksums redone; the empty image is cut after
# its metadata region (4 MiB). Smaller inputs fuzz faster. (qemu refuses a VHDX without a
# log; ido and the specification do not.)
python3 - "$work/x-data.vhdx" "$work/x-compact.vhdx" "$work/x-empty.vhdx" <<'PY'
import struct, sys
MIB = 1 << 20
def crc32c(b):
    crc = 0xFFFFFFFF
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF
def seal(d, off, n):
    d[off + 4:off + 8] = b"\0\0\0\0"
    d[off + 4:off + 8] = struct.pack("<I", crc32c(bytes(d[off:off + n])))
src = open(sys.argv[1], "rb").read()
bat_guid = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")
meta_guid = bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e")
regions = {}
t = src[192 << 10:256 << 10]
for i in range(struct.unpack("<I", t[8:12])[0]):
    e = t[16 + 32 * i:48 + 32 * i]
    regions[e[:16]] = struct.unpack("<Q", e[16:24])[0]
bat, meta = regions[bat_guid], regions[meta_guid]
entry = struct.unpack("<Q", src[bat:bat + 8])[0]
payload = (entry >> 20) * MIB
d = bytearray(3 * MIB + (64 << 10))
d[:320 << 10] = src[:320 << 10]
for h in (64 << 10, 128 << 10):
    d[h + 68:h + 80] = b"\0" * 12  # no log
    seal(d, h, 4096)
for r in (192 << 10, 256 << 10):
    for i in range(struct.unpack("<I", d[r + 8:r + 12])[0]):
        e = r + 16 + 32 * i
        if d[e:e + 16] == meta_guid:
            d[e + 16:e + 28] = struct.pack("<QI", 1 * MIB, 128 << 10)
        elif d[e:e + 16] == bat_guid:
            d[e + 16:e + 24] = struct.pack("<Q", 2 * MIB)
    seal(d, r, 64 << 10)
d[MIB:MIB + (128 << 10)] = src[meta:meta + (128 << 10)]
d[2 * MIB:2 * MIB + 8] = struct.pack("<Q", (3 << 20) | (entry & 0xFFFFF))
d[3 * MIB:] = src[payload:payload + (64 << 10)]
open(sys.argv[2], "wb").write(d)
empty = open(sys.argv[3], "rb").read()
open(sys.argv[3], "wb").write(empty[:4 * MIB])
PY
for f in x-compact x-empty; do put vhdx "$f" "$work/$f.vhdx"; done
for f in d-dynamic d-static d-empty; do put vdi "$f" "$work/$f.vdi"; done

# qcow2_resume: 4 bytes of the offset to continue from (little-endian), then the image.
resume() { # resume NAME OFFSET IMAGE
    python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<I", int(sys.argv[1])))' "$2" >"$work/resume"
    cat "$3" >>"$work/resume"
    put qcow2_resume "$1" "$work/resume"
}
resume from0-512 0 "$work/q-512.qcow2"
resume from4k-512 4096 "$work/q-512.qcow2"
resume from0-zlib 0 "$work/q-zlib.qcow2"
resume from64k-zlib 65536 "$work/q-zlib.qcow2"
resume from0-extl2 0 "$work/q-extl2.qcow2"

# import: every format plain, in each compression, in a tar and in an OVA; raw and ISO.
put import qcow2 "$work/q-512.qcow2"
put import vdi "$work/d-empty.vdi"
put import vhd "$work/h-empty.vhd"
head -c 4096 "$raw" >"$work/i.raw"
put import raw "$work/i.raw"
gzip -9 -n -c "$work/q-512.qcow2" >"$work/i.qcow2.gz"
put import qcow2.gz "$work/i.qcow2.gz"
xz -T1 -3 -c "$work/v-stream.vmdk" >"$work/i.vmdk.xz"
put import vmdk.xz "$work/i.vmdk.xz"
zstd -q -3 -c "$work/i.raw" >"$work/i.raw.zst"
put import raw.zst "$work/i.raw.zst"
bzip2 -9 -c "$work/q-512.qcow2" >"$work/i.qcow2.bz2"
put import qcow2.bz2 "$work/i.qcow2.bz2"
python3 - "$work" <<'PY'
import io, sys, tarfile
w = sys.argv[1]
NS = ('xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" '
      'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
      'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
      'xmlns:vmw="http://www.vmware.com/schema/ovf" '
      'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
      'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
def ovf(disk, size):
    # As crates/testkit/src/ova.rs writes it (ovf_descriptor), shortened to what parsers read.
    return f'''<?xml version="1.0" encoding="UTF-8"?>
<Envelope {NS}>
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="{size}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="nic0">
      <Description>The nic0 network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="seed">
    <Info>A virtual machine</Info>
    <Name>seed</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>seed</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-09</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
'''
def add(t, name, data, kind=tarfile.REGTYPE):
    i = tarfile.TarInfo(name)
    i.size = len(data)
    i.mtime = 1_700_000_000
    i.type = kind
    t.addfile(i, io.BytesIO(data))
def write(path, members, fmt=tarfile.USTAR_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        for m in members:
            add(t, *m)
    open(path, "wb").write(b.getvalue())
vmdk = open(w + "/v-stream.vmdk", "rb").read()
q = open(w + "/q-512.qcow2", "rb").read()
o = ovf("seed-disk1.vmdk", len(vmdk)).encode()
open(w + "/seed.ovf", "wb").write(o)
write(w + "/seed.ova", [("seed.ovf", o), ("seed.mf", b"SHA256(seed-disk1.vmdk)= 00\n"), ("seed-disk1.vmdk", vmdk)])
write(w + "/disk.tar", [("disk/", b"", tarfile.DIRTYPE), ("disk/disk.qcow2", q)])
write(w + "/gnu.tar", [("d/" + "long-name-" * 12 + ".img", b"x" * 1000)], tarfile.GNU_FORMAT)
write(w + "/pax.tar", [("d/" + "päx-" * 30 + ".img", b"y" * 700)], tarfile.PAX_FORMAT)
write(w + "/links.tar", [("a.img", b"z" * 100), ("b", b"", tarfile.SYMTYPE), ("empty", b"")])
# Cloud Director's and vSphere's shapes: a chunked file, a compressed one, two VirtualSystemTypes.
open(w + "/chunked.ovf", "wb").write(o.replace(b'ovf:size=', b'ovf:chunkSize="1000" ovf:size='))
open(w + "/two-vst.ovf", "wb").write(o.replace(b"</System>", b"</System><System><vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType></System>"))
PY
put import ova "$work/seed.ova"
put import tar "$work/disk.tar"
gzip -9 -n -c "$work/disk.tar" >"$work/disk.tar.gz"
put import tar.gz "$work/disk.tar.gz"
python3 - "$work/iso" <<'PY'
import sys
d = bytearray(36 << 10)
d[0x8001:0x8006] = b"CD001"
open(sys.argv[1], "wb").write(d)
PY
put import iso "$work/iso"
for f in seed.ova disk.tar gnu.tar pax.tar links.tar; do put tar "$f" "$work/$f"; done
for f in seed chunked two-vst; do put ovf "$f" "$work/$f.ovf"; done

# Manifests and indexes.
h64=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
text oci_manifest oci-index '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'$h64'","size":525,"platform":{"os":"linux","architecture":"amd64"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'$h64'","size":525,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}'
text oci_manifest docker-list '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:'$h64'","size":428,"platform":{"os":"linux","architecture":"arm","variant":"v7"}}]}'
text oci_manifest oci-image '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'$h64'","size":7023},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'$h64'","size":32654,"urls":["https://example.org/l"]}]}'
text oci_manifest docker-v2 '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1470,"digest":"sha256:'$h64'"},"layers":[]}'
text oci_manifest schema1 '{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[]}'
text oci_manifest platform 'linux/arm64/v8'

text tag_pattern x '2.13.x
2.13.0
2.13.1-rc.1
v2.13.4
2.14.0
2.13.2-alpine'
text tag_pattern range '>=2.13, <2.14
2.13.5
v2.13
2.13.0-rc1
3.0.0'
text tag_pattern regex 'regex:^foo-[0-9]+$
foo-1
foo-x
bar'
text tag_pattern caret '^1.2
1.2.3
1.3.0-rc.2'
text tag_pattern tilde '~1.4.0
1.4.9
1.5'
text tag_pattern v 'v3.x.x
v3.1.2
3.1.2'
text tag_pattern literal 'latest
latest
stable'

for d in 0 90s 1h30m 720h 1.5h 300ms 2d 1µs 10ns 15m 1d12h 1w; do text go_duration "$d" "$d"; done
i=0
for c in '0 3 * * *' '*/15 * * * *' '@daily' '@weekly' '0 0 30 2 *' '0 12 * * MON-FRI' '5 4 L * *' '0 0 1W * *' '0 0 * * 5#3' '0-59/7 1,2,3 1-31 JAN-DEC SUN'; do
    text cron "c$i" "$c"
    i=$((i + 1))
done
text imagesync_spec pattern '{"mode":"OnceByTag","frequency":"1d12h","source":{"name":"docker://quay.io/org/app","version":">=2.13, <2.14"},"destination":{"name":"registry.example:5000/mirror/app","tlsVerify":false},"platforms":["linux/amd64","linux/arm64/v8"],"maxTags":10,"concurrency":2}'
text imagesync_spec cron '{"mode":"Recurrent","schedule":"0 3 * * *","allowCandidateRelease":true,"source":{"name":"docker.io/library/busybox","version":"1.36.x","secretRef":{"name":"src"}},"destination":{"name":"127.0.0.1:5000/busybox","certConfigMap":"ca"}}'
text imagesync_spec oneshot '{"mode":"OneShot","source":{"name":"busybox","version":"1.36.1"},"destination":{"name":"localhost/busybox","version":"stable"}}'

for r in busybox docker.io/library/busybox:latest "localhost:5000/a/b:tag@sha256:$h64" quay.io/containerdisks/fedora:40 "[::1]:5000/x/y:z" "registry.example/a@sha512:$h64$h64"; do
    text reference "$(printf '%s' "$r" | tr '/:@[]' '_____')" "$r"
done

text names release 'Release
vsphere-30.1.0
giantswarm'
text names nodeimage 'NodeImage
capv-flatcar-stable-4152.2.3-kube-1.30.4-tooling-1.18.1-gs
default'
text names bad 'ImageSync
-Bad..name-
a_b'

du -sh "$out"
