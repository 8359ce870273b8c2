//! Durations: Go's (`parse_go_duration`, `imageRetentionPeriod` in the configuration) and
//! ImageSync frequencies (`parse_frequency`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ido_controllers::config::parse_go_duration(s);
    let _ = ido_api::imagesync::parse_frequency(s);
});
