//! Tar and OVA member reading: the one tar reader (`ido_io::tar`: headers — ustar, GNU long
//! names, base-256 sizes, pax —, sparse members, name checks) through both its users:
//! - `ido_disk::tar::TarDisk` (disk imports): the OVA's OVF, the disk member read to its
//!   end, the rest of the archive checked;
//! - `ido_io::ova::OvaReader` (node images: S3 → provider): the descriptor, then every
//!   member read to its end.
#![no_main]

use std::io::{self, Read};

use ido_disk::tar::TarDisk;
use ido_io::ova::OvaReader;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut t) = TarDisk::open(data) {
        let _ = t.name();
        let _ = t.size();
        if io::copy(&mut (&mut t).take(ido_fuzz::CAPACITY), &mut io::sink()).is_ok() {
            let _ = t.finish();
        }
    }

    let owned = io::Cursor::new(data.to_vec());
    ido_fuzz::runtime().block_on(async move {
        let Ok(mut ova) = OvaReader::from_reader(Box::new(owned)).await else {
            return;
        };
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(Some(mut m)) = ova.next_member().await {
            let _ = (&m.path, m.size);
            loop {
                match m.reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    });
});
