//! Image references (`ido_oci::reference::parse`) and the `docker://` sources of
//! `ido import` (`RegistryOptions::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = ido_oci::reference::parse(s) {
        let _ = r.whole();
        let _ = r.resolve_registry();
    }
    let _ = ido_disk::source::RegistryOptions::parse(&format!("docker://{s}"));
});
