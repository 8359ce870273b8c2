//! Tag patterns (`TagPattern::parse` + `matches`: x patterns, semver ranges, regex:,
//! literals) and tag version ordering (`sort_tags`, `is_tag`). Input: the pattern on the
//! first line, tags on the others.
#![no_main]

use ido_controllers::imagesync::{is_tag, sort_tags};
use ido_oci::tags::TagPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(lines) = ido_fuzz::lines(data) else {
        return;
    };
    let (pattern, tags) = lines.split_first().expect("split yields one item at least");
    if let Ok(p) = TagPattern::parse(pattern) {
        for t in tags {
            let _ = p.matches(t, false);
            let _ = p.matches(t, true);
        }
    }
    let mut tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    for t in &tags {
        let _ = is_tag(t);
    }
    sort_tags(&mut tags);
});
