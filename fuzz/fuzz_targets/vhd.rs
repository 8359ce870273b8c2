//! The real streaming import (`ido import --format vhd`) of arbitrary bytes into a file
//! target of a few MiB: a dynamic VHD's footer copy, dynamic header, BAT and blocks, or a
//! fixed VHD (raw data) and its footer at the end, end to end.
#![no_main]

use ido_disk::DiskFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ido_fuzz::import(data, Some(DiskFormat::Vhd));
});
