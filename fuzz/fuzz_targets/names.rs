//! Object names (`ido_api::names::check_meta`: DNS-1123 subdomains and labels), and the
//! quoting of names in messages. Input: kind, name and namespace on three lines.
#![no_main]

use ido_api::names;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(lines) = ido_fuzz::lines(data) else {
        return;
    };
    let kind = lines[0];
    let name = lines.get(1).copied();
    let namespace = lines.get(2).copied();
    if let Err(e) = names::check_meta(kind, name, namespace) {
        let _ = e.to_string();
    }
    for l in &lines {
        let _ = names::subdomain_error(l);
        let _ = names::label_error(l);
        let _ = names::quote(l);
    }
});
