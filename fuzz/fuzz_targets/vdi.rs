//! The real streaming import (`ido import --format vdi`) of arbitrary bytes into a file
//! target of a few MiB: header, tables and data of the vdi reader, end to end.
#![no_main]

use ido_disk::DiskFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ido_fuzz::import(data, Some(DiskFormat::Vdi));
});
