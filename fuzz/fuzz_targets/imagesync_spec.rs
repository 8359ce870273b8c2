//! A whole ImageSync spec (JSON) as the controller checks it (`Plan::from_spec`: sides,
//! tag pattern, platforms, frequency, schedule, limits) and schedules it (`next_after`).
#![no_main]

use ido_api::ImageSyncSpec;
use ido_controllers::imagesync::Plan;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<ImageSyncSpec>(data) else {
        return;
    };
    let Ok(plan) = Plan::from_spec(&spec) else {
        return;
    };
    let t: Timestamp = "2026-02-28T23:59:59Z".parse().expect("a timestamp");
    let _ = plan.next_after(t, t);
    let _ = plan.source.host();
    let _ = plan.destination.display();
});
