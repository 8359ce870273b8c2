//! OCI and Docker manifests and indexes as ido-oci reads them (`media::parse`: kinds,
//! media types, schema 1 refused), and platforms (`Platform::parse`, `selects`, display)
//! of the entries of an index.
#![no_main]

use ido_oci::media::{self, Manifest, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Platform::parse(s);
    }
    let _ = media::sha256(data);
    let Ok(m) = media::parse(data, "registry.example/fuzz:1") else {
        return;
    };
    let host = Platform::host();
    let arm = Platform::parse("linux/arm64/v8").expect("a platform");
    match m {
        Manifest::Index { manifests, .. } => {
            for d in &manifests {
                if let Some(p) = &d.platform {
                    let _ = host.selects(p) || arm.selects(p) || p.selects(&host);
                    let _ = Platform::parse(&p.to_string());
                }
            }
        }
        Manifest::Image { config, layers, .. } => {
            let _ = (config.size, layers.len());
        }
    }
});
