//! OVF descriptors, every parser of them:
//! - ido-disk's OVA reader (which file is the disk: `<Disk ovf:fileRef>` → `<File
//!   ovf:href>`), through a tar of the descriptor and a disk;
//! - the engine's OVF reader (`ido_io::ovf`: files, disks, the hardware-version patch),
//!   and what Cloud Director refuses on top (`vcd::ovf::references`);
//! - vSphere: `vsphere::import::ovf_networks` (over the engine's XML tree).
#![no_main]

use std::io::{self, Read};

use ido_disk::tar::TarDisk;
use ido_providers::{vcd, vsphere};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let archive = ido_fuzz::tar(&[("vm.ovf", data), ("disk.vmdk", b"x"), ("vm.mf", b"")]);
    if let Ok(mut t) = TarDisk::open(&archive[..]) {
        let _ = t.is_ova();
        if io::copy(&mut (&mut t).take(1 << 20), &mut io::sink()).is_ok() {
            let _ = t.finish();
        }
    }

    let text = String::from_utf8_lossy(data);
    if let Ok(d) = ido_io::ovf::Descriptor::parse(&text) {
        let _ = d.disks();
    }
    let _ = vcd::ovf::references(&text);
    let _ = ido_io::ovf::set_hardware_version(&text, 19);
    let _ = vsphere::import::ovf_networks(&text);
});
