//! The real streaming import (`ido import` without `--format`) of arbitrary bytes into a
//! file target of a few MiB: format detection, gzip/xz/zstd/bzip2 layers, tar and OVA
//! (the OVF names the disk), raw and ISO, a fixed VHD's footer, and every disk format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ido_fuzz::import(data, None);
});
