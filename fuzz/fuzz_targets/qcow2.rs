//! The real streaming import (`ido import --format qcow2`) of arbitrary bytes into a file
//! target of a few MiB: header, tables and data of the qcow2 reader, end to end.
#![no_main]

use ido_disk::DiskFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The header parser alone (also the first step of a resumed import).
    let _ = ido_disk::qcow2::Header::parse(data);
    ido_fuzz::import(data, Some(DiskFormat::Qcow2));
});
