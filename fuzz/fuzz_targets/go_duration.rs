//! Durations (`ido_api::duration`): Go's syntax plus days and weeks, as `imageRetentionPeriod`,
//! the CLI's timeouts and ImageSync frequencies take them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ido_api::duration::parse_duration(s);
    let _ = ido_api::duration::parse_frequency(s);
});
