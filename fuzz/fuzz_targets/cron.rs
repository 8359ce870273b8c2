//! ImageSync schedules: the cron expression (`parse_schedule`) and the next pass it plans
//! (`Plan::next_after`), through a spec as the controller checks it.
#![no_main]

use ido_controllers::imagesync::{Plan, parse_schedule};
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if parse_schedule(s).is_err() {
        return;
    }
    let spec = serde_json::json!({
        "mode": "OnceByTag",
        "schedule": s,
        "source": {"name": "registry.example/a", "version": "1.x"},
        "destination": {"name": "registry.example/b"},
    });
    let spec = serde_json::from_value(spec).expect("a spec");
    let Ok(plan) = Plan::from_spec(&spec) else {
        return;
    };
    // A pattern that never fires (30 February, an empty list) is searched for up to
    // croner's limit: milliseconds in a release build, seconds with ASan.
    for t in ["2026-02-28T23:59:59Z", "2099-12-31T23:59:59Z"] {
        let t: Timestamp = t.parse().expect("a timestamp");
        let _ = plan.next_after(t, t);
    }
});
