//! A resumed qcow2 import (HTTP/S3 sources with `--resume`): the mapping is rebuilt from
//! the header and the L1/L2 tables by ranged reads, then the stream continues from the
//! offset a previous run reached. Input: 4 bytes of that offset (little-endian), then the
//! image.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((from, image)) = data.split_first_chunk::<4>() else {
        return;
    };
    let from = u64::from(u32::from_le_bytes(*from));
    let out = ido_fuzz::scratch().join("resumed.img");
    let _ = ido_disk::fuzzing::qcow2_resume(image, from, &out, ido_fuzz::CAPACITY);
    let _ = std::fs::remove_file(&out);
});
