//! Inputs that the fuzz targets (`fuzz/`, see docs/fuzzing.md) found to crash, kept so that
//! they stay fixed.

use ido_api::duration::parse_duration;
use ido_controllers::config::Config;

/// Fuzz target `go_duration`: `Duration::from_secs_f64` panicked on a duration longer than
/// `Duration::MAX` (about 5.8e11 years); such a value is malformed, not a crash at start-up
/// (`imageRetentionPeriod`, `ido run --timeout`, `ido operator --startup-timeout`).
#[test]
fn go_duration_beyond_duration_max_is_rejected() {
    // The fuzzer's input, byte for byte.
    assert!(parse_duration("111111111111113133130011111m ").is_err());
    assert!(parse_duration("99999999999999999999h").is_err());
    assert!(parse_duration("1e400h").is_err());
    assert!(
        parse_duration("18446744073709551615s").is_err(),
        "u64::MAX seconds plus rounding is past Duration::MAX"
    );
    assert_eq!(
        parse_duration("720h"),
        Ok(std::time::Duration::from_secs(720 * 3600))
    );
    let v = serde_json::json!({"imageRetentionPeriod": "111111111111113133130011111m"});
    let e = Config::from_value(v).expect_err("out of range").to_string();
    assert!(e.contains("imageRetentionPeriod"), "{e}");
}

/// Fuzz target `cron`: `8 , * * *` (an empty hour list) was accepted and never fired, each
/// planning search running to croner's limit (about 170 ms); it is now refused by name, at
/// once.
#[test]
fn cron_schedule_with_an_empty_list_is_refused_at_once() {
    let t = std::time::Instant::now();
    let e = ido_controllers::imagesync::parse_schedule("8 , * * *")
        .unwrap_err()
        .to_string();
    assert!(e.contains("hour field"), "{e}");
    assert!(
        t.elapsed() < std::time::Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
}
