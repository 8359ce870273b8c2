//! An ImageSync's spec, checked and turned into what a sync pass needs ([`Plan`]), the
//! schedule ([`Plan::next_after`]) and version ordering of tags ([`sort_tags`]).
//!
//! Every check names the spec field and the value, so a bad spec becomes one clear
//! `InvalidSpec` condition instead of a failure deep in a copy.

use std::{cmp::Ordering, time::Duration};

use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use ido_api::{
    ImageSyncSpec, SyncEndpoint, SyncMode,
    imagesync::{DEFAULT_CONCURRENCY, DEFAULT_FREQUENCY, DEFAULT_MAX_TAGS, parse_frequency},
};
use ido_oci::{
    Reference, copy::Platforms, media::Platform, reference::is_tag, registry::TlsSettings, tags::TagPattern,
};
use jiff::{Timestamp, tz::TimeZone};

/// One side of a sync, checked.
#[derive(Clone, Debug)]
pub struct Side {
    /// `spec.source` or `spec.destination`, for messages.
    pub field: &'static str,
    /// Registry as in references, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    pub tls: TlsSettings,
    /// Name of the dockerconfigjson Secret, if any.
    pub secret: Option<String>,
    /// Name of the ConfigMap of extra CA bundles, if any.
    pub cert_config_map: Option<String>,
    /// ECR credentials from the pod's web identity (`useAwsIRSA`), unless the Secret has
    /// some for the registry.
    pub aws_irsa: bool,
}

impl Side {
    /// `registry/repository:tag`.
    pub fn reference(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.to_string())
    }

    /// The host to connect to (Docker Hub's API host for `docker.io`).
    pub fn host(&self) -> String {
        self.reference("latest").resolve_registry().to_string()
    }

    /// `registry/repository`.
    pub fn display(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Which tags to copy where.
#[derive(Clone, Debug)]
pub enum Selector {
    /// One tag, to `destination` (the same tag unless `destination.version` renames it).
    Single { source: String, destination: String },
    /// Every tag matching, each to itself.
    Pattern { text: String, pattern: TagPattern },
}

/// When passes repeat.
#[derive(Clone, Debug)]
pub enum Every {
    /// OneShot: once per generation.
    Once,
    Frequency(Duration),
    Cron(Box<Cron>),
}

/// A checked spec.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: SyncMode,
    pub source: Side,
    pub destination: Side,
    pub selector: Selector,
    /// Release candidates may match.
    pub rc: bool,
    pub platforms: Platforms,
    pub every: Every,
    pub max_tags: usize,
    pub concurrency: usize,
}

/// Spec problems, each `<field>: <what is wrong>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub Vec<String>);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// An empty entry in a list (`8 , * * *`), which croner would read as never.
    #[error("the {field} field {value:?} has an empty list entry")]
    EmptyListEntry { field: &'static str, value: String },
    #[error(transparent)]
    Cron(#[from] croner::errors::CronError),
    /// No date matches it (30 February).
    #[error("it never fires (no date matches it)")]
    NeverFires,
}

/// Parses a 5-field cron expression (or `@daily` and friends), evaluated in UTC. A
/// schedule that can never fire (an empty list such as `8 , * * *`, or 30 February) is
/// refused: it would plan no pass, silently.
pub fn parse_schedule(s: &str) -> Result<Cron, ScheduleError> {
    let s = s.trim();
    let names = ["minute", "hour", "day of month", "month", "day of week"];
    if !s.starts_with('@') {
        for (field, name) in s.split_whitespace().zip(names) {
            if field.split(',').any(str::is_empty) {
                return Err(ScheduleError::EmptyListEntry {
                    field: name,
                    value: field.to_string(),
                });
            }
        }
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(s)?;
    // Every date a schedule can match comes round within 28 years (the Gregorian
    // calendar's weekday cycle), leap days included.
    let from = jiff::civil::date(2001, 1, 1)
        .to_zoned(TimeZone::UTC)
        .map_err(|_| ScheduleError::NeverFires)?;
    match cron.find_next_occurrence(&from, true) {
        Ok(next) if next.year() <= 2029 => Ok(cron),
        _ => Err(ScheduleError::NeverFires),
    }
}

fn side(ep: &SyncEndpoint, field: &'static str, errs: &mut Vec<String>) -> Option<Side> {
    let name = ep.name.trim();
    let name = name.strip_prefix("docker://").unwrap_or(name);
    let mut ok = true;
    if let Some(s) = &ep.secret_ref
        && s.name.trim().is_empty()
    {
        errs.push(format!("{field}.secretRef.name: must not be empty"));
        ok = false;
    }
    if let Some(c) = &ep.cert_config_map
        && c.trim().is_empty()
    {
        errs.push(format!("{field}.certConfigMap: must not be empty"));
        ok = false;
    }
    if let Some(pem) = &ep.ca_bundle
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        errs.push(format!(
            "{field}.caBundle: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        ));
        ok = false;
    }
    let last = name.rsplit('/').next().unwrap_or_default();
    let parsed = if name.is_empty() {
        Err("must not be empty".to_string())
    } else if last.contains('@') || last.contains(':') {
        Err("must be a repository without tag or digest (put the tag in version)".to_string())
    } else {
        // Not oci-client's parser: its regular expression costs ~70 ms to build per process.
        ido_oci::reference::parse(&format!("{name}:latest"))
            .map_err(|e| format!("not a repository name: {e}"))
    };
    let reference = match parsed {
        Ok(r) => r,
        Err(e) => {
            errs.push(format!("{field}.name: invalid value {:?}: {e}", ep.name));
            return None;
        }
    };
    ok.then(|| Side {
        field,
        registry: reference.registry().to_string(),
        repository: reference.repository().to_string(),
        tls: TlsSettings {
            verify: ep.tls_verify.unwrap_or(true),
            ca_bundle: ep.ca_bundle.clone(),
        },
        secret: ep.secret_ref.as_ref().map(|s| s.name.trim().to_string()),
        cert_config_map: ep.cert_config_map.as_ref().map(|c| c.trim().to_string()),
        aws_irsa: ep.use_aws_irsa,
    })
}

/// The tags to copy: `spec.source.version`, one tag (copied to `spec.destination.version`
/// when given) or a pattern.
fn selector(spec: &ImageSyncSpec, errs: &mut Vec<String>) -> Option<Selector> {
    let src_version = spec.source.version.as_deref().map(str::trim).unwrap_or_default();
    let dst_version = spec
        .destination
        .version
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    if src_version.is_empty() {
        errs.push("spec.source.version: required (a tag, an x pattern, a semver range or regex:…)".into());
        None
    } else {
        match TagPattern::parse(src_version) {
            Err(e) => {
                errs.push(format!("spec.source.version: {e}"));
                None
            }
            Ok(TagPattern::Literal(tag)) => {
                let dest = if dst_version.is_empty() {
                    tag.clone()
                } else {
                    dst_version.to_string()
                };
                let mut ok = true;
                if !is_tag(&tag) {
                    errs.push(format!(
                        "spec.source.version: invalid value {src_version:?}: neither a tag nor a pattern (2.13.x, >=2.13, <2.14, regex:…)"
                    ));
                    ok = false;
                }
                if !is_tag(&dest) {
                    errs.push(format!(
                        "spec.destination.version: invalid value {dst_version:?}: not a tag"
                    ));
                    ok = false;
                }
                ok.then_some(Selector::Single {
                    source: tag,
                    destination: dest,
                })
            }
            Ok(pattern) => {
                if !dst_version.is_empty() && dst_version != src_version {
                    errs.push(format!(
                        "spec.destination.version: invalid value {dst_version:?}: with a pattern in spec.source.version each matching tag is copied to itself; leave it empty or set it to {src_version:?}"
                    ));
                    None
                } else {
                    Some(Selector::Pattern {
                        text: src_version.to_string(),
                        pattern,
                    })
                }
            }
        }
    }
}

/// `spec.platforms`: all when empty.
fn platforms(spec: &ImageSyncSpec, errs: &mut Vec<String>) -> Platforms {
    let mut platforms = vec![];
    for (i, p) in spec.platforms.iter().enumerate() {
        match Platform::parse(p) {
            Ok(p) => platforms.push(p),
            Err(e) => errs.push(format!("spec.platforms[{i}]: invalid value {p:?}: {e}")),
        }
    }
    if spec.platforms.is_empty() {
        Platforms::All
    } else {
        Platforms::Only(platforms)
    }
}

/// When passes run: once (OneShot), `spec.schedule`, else `spec.frequency`.
fn every(spec: &ImageSyncSpec, errs: &mut Vec<String>) -> Option<Every> {
    let frequency = match spec.frequency.as_deref().map(str::trim) {
        None | Some("") => Some(DEFAULT_FREQUENCY),
        Some(f) => match parse_frequency(f) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(format!("spec.frequency: invalid value {f:?}: {e}"));
                None
            }
        },
    };
    let schedule = match spec.schedule.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => match parse_schedule(s) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(format!(
                    "spec.schedule: invalid value {s:?}: {e} (expected 5-field cron, e.g. \"0 3 * * *\", UTC)"
                ));
                None
            }
        },
    };
    match (spec.mode, schedule, frequency) {
        (SyncMode::OneShot, ..) => Some(Every::Once),
        (_, Some(c), _) => Some(Every::Cron(Box::new(c))),
        (_, None, Some(f)) => Some(Every::Frequency(f)),
        _ => None,
    }
}

impl Plan {
    /// Checks `spec`; the error lists every problem found.
    pub fn from_spec(spec: &ImageSyncSpec) -> Result<Self, SpecError> {
        let mut errs = vec![];
        let source = side(&spec.source, "spec.source", &mut errs);
        let destination = side(&spec.destination, "spec.destination", &mut errs);

        let selector = selector(spec, &mut errs);
        let platforms = platforms(spec, &mut errs);
        let every = every(spec, &mut errs);

        let max_tags = spec.max_tags.unwrap_or(DEFAULT_MAX_TAGS);
        if max_tags == 0 {
            errs.push("spec.maxTags: invalid value 0: must be at least 1".into());
        }
        let concurrency = spec.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=64).contains(&concurrency) {
            errs.push(format!(
                "spec.concurrency: invalid value {concurrency}: must be 1 to 64"
            ));
        }

        match (source, destination, selector, every) {
            (Some(source), Some(destination), Some(selector), Some(every)) if errs.is_empty() => Ok(Self {
                mode: spec.mode,
                source,
                destination,
                selector,
                rc: spec.allow_candidate_release,
                platforms,
                every,
                max_tags: max_tags as usize,
                concurrency: concurrency as usize,
            }),
            _ => Err(SpecError(errs)),
        }
    }

    /// When the next pass is due after one that started at `started` and ended at `now`;
    /// `None` for OneShot.
    pub fn next_after(&self, started: Timestamp, now: Timestamp) -> Option<Timestamp> {
        match &self.every {
            Every::Once => None,
            Every::Frequency(d) => {
                let d = jiff::SignedDuration::try_from(*d).unwrap_or(jiff::SignedDuration::MAX);
                Some(started.saturating_add(d).unwrap_or(Timestamp::MAX).max(now))
            }
            Every::Cron(c) => {
                let z = now.to_zoned(TimeZone::UTC);
                // A pattern that never fires again (e.g. 30 February) plans nothing.
                c.find_next_occurrence(&z, false).ok().map(|n| n.timestamp())
            }
        }
    }
}

/// A tag's version for ordering: numeric fields (a leading `v` ignored) and whether it is a
/// pre-release (`-rc1`, …); `None` for tags that are not versions.
fn version_key(tag: &str) -> Option<(Vec<u64>, Option<&str>)> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let (base, pre) = match t.split_once('-') {
        Some((b, p)) => (b, Some(p)),
        None => (t, None),
    };
    let nums: Option<Vec<u64>> = base.split('.').map(|p| p.parse().ok()).collect();
    nums.filter(|n| !n.is_empty()).map(|n| (n, pre))
}

/// `rc.2`, `rc2` → (`rc`, 2): pre-releases ordered by their label, then their number.
fn pre_key(pre: &str) -> (String, Option<u64>, &str) {
    let label: String = pre
        .chars()
        .take_while(|c| !c.is_ascii_digit())
        .filter(|c| *c != '.')
        .collect();
    let digits: String = pre
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (label, digits.parse().ok(), pre)
}

fn compare_versions(a: &str, b: &str) -> Ordering {
    match (version_key(a), version_key(b)) {
        (Some((na, pa)), Some((nb, pb))) => {
            let len = na.len().max(nb.len());
            let field = |n: &Vec<u64>, i: usize| n.get(i).copied().unwrap_or(0);
            (0..len)
                .map(|i| field(&na, i).cmp(&field(&nb, i)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
                .then_with(|| match (pa, pb) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) => pre_key(x).cmp(&pre_key(y)),
                })
                .then_with(|| a.cmp(b))
        }
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

/// Sorts tags by version, lowest first (`2.9.0` before `2.10.0`, `1.0.0-rc1` before
/// `1.0.0`); tags that are not versions come first, alphabetically.
pub fn sort_tags(tags: &mut [String]) {
    tags.sort_by(|a, b| compare_versions(a, b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ido_api::{SecretReference, SyncEndpoint};

    fn spec(mode: SyncMode, src: &str, version: &str) -> ImageSyncSpec {
        ImageSyncSpec {
            mode,
            frequency: None,
            schedule: None,
            allow_candidate_release: false,
            source: SyncEndpoint {
                name: src.into(),
                version: Some(version.into()),
                ..Default::default()
            },
            destination: SyncEndpoint {
                name: "registry.example:5000/mirror/app".into(),
                ..Default::default()
            },
            platforms: vec![],
            max_tags: None,
            concurrency: None,
        }
    }

    #[test]
    fn sides_and_selectors() {
        let p = Plan::from_spec(&spec(SyncMode::OnceByTag, "docker://nginx", "1.27.x")).unwrap();
        assert_eq!(
            (p.source.registry.as_str(), p.source.repository.as_str()),
            ("docker.io", "library/nginx")
        );
        assert_eq!(p.source.host(), "index.docker.io");
        assert_eq!(p.destination.display(), "registry.example:5000/mirror/app");
        assert!(matches!(p.selector, Selector::Pattern { .. }));
        assert!(matches!(p.every, Every::Frequency(d) if d == DEFAULT_FREQUENCY));
        assert!(matches!(p.platforms, Platforms::All));
        assert_eq!((p.max_tags, p.concurrency), (50, 4));

        let mut s = spec(SyncMode::OneShot, "quay.io/org/app", "latest");
        s.destination.version = Some("2024-06".into());
        let p = Plan::from_spec(&s).unwrap();
        assert!(
            matches!(&p.selector, Selector::Single { source, destination } if source == "latest" && destination == "2024-06")
        );
        assert!(matches!(p.every, Every::Once));
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut s = spec(SyncMode::Recurrent, "quay.io/org/app:1.0", "regex:(");
        s.frequency = Some("5x".into());
        s.schedule = Some("61 * * * *".into());
        s.platforms = vec!["linux/amd64".into(), "linux".into()];
        s.max_tags = Some(0);
        s.concurrency = Some(0);
        s.destination.secret_ref = Some(SecretReference { name: " ".into() });
        s.destination.ca_bundle = Some("not pem".into());
        s.destination.cert_config_map = Some("".into());
        s.source.use_aws_irsa = true; // supported: not an error
        let e = Plan::from_spec(&s).unwrap_err().0;
        let fields: Vec<&str> = e.iter().map(|m| m.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.source.name",
                "spec.destination.secretRef.name",
                "spec.destination.certConfigMap",
                "spec.destination.caBundle",
                "spec.source.version",
                "spec.platforms[1]",
                "spec.frequency",
                "spec.schedule",
                "spec.maxTags",
                "spec.concurrency",
            ],
            "{e:#?}"
        );
        assert!(e[6].contains("\"5x\""), "{}", e[6]);

        // A pattern copied onto one literal tag (the anchor's bug) is refused.
        let mut s = spec(SyncMode::OnceByTag, "quay.io/org/app", "v2.13.x");
        s.destination.version = Some("v2.13".into());
        let e = Plan::from_spec(&s).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.destination.version:") && e.contains("itself"),
            "{e}"
        );
        // The anchor's form (same pattern on both sides) is accepted.
        s.destination.version = Some("v2.13.x".into());
        assert!(Plan::from_spec(&s).is_ok());
        let e = Plan::from_spec(&spec(SyncMode::OneShot, "a/b", ""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spec.source.version: required"), "{e}");
        let e = Plan::from_spec(&spec(SyncMode::OneShot, "a/b", "has space"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a tag nor a pattern"), "{e}");
    }

    #[test]
    fn schedules() {
        let t0: Timestamp = "2025-01-01T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2025-01-01T10:02:00Z".parse().unwrap();
        let mut s = spec(SyncMode::Recurrent, "a/b", "1.x");
        s.frequency = Some("1h".into());
        let p = Plan::from_spec(&s).unwrap();
        assert_eq!(p.next_after(t0, t1).unwrap().to_string(), "2025-01-01T11:00:00Z");
        // A pass longer than the period: the next one starts at once.
        let late: Timestamp = "2025-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(p.next_after(t0, late), Some(late));
        s.schedule = Some("30 3 * * *".into());
        let p = Plan::from_spec(&s).unwrap();
        assert_eq!(p.next_after(t0, t1).unwrap().to_string(), "2025-01-02T03:30:00Z");
        s.schedule = Some("@hourly".into());
        assert_eq!(
            Plan::from_spec(&s)
                .unwrap()
                .next_after(t0, t1)
                .unwrap()
                .to_string(),
            "2025-01-01T11:00:00Z"
        );
        let p = Plan::from_spec(&spec(SyncMode::OneShot, "a/b", "1.x")).unwrap();
        assert_eq!(p.next_after(t0, t1), None);
        // 29 February fires (in leap years only).
        s.schedule = Some("0 0 29 2 *".into());
        assert!(Plan::from_spec(&s).is_ok());
    }

    #[test]
    fn schedules_that_never_fire_are_refused() {
        let mut s = spec(SyncMode::Recurrent, "a/b", "1.x");
        for (bad, why) in [
            ("8 , * * *", "hour field \",\" has an empty list entry"),
            ("1,,2 * * * *", "minute field"),
            ("0 0 30 2 *", "never fires"),
            ("0 0 31 4,6,9,11 *", "never fires"),
        ] {
            s.schedule = Some(bad.into());
            let e = Plan::from_spec(&s).unwrap_err().to_string();
            assert!(e.contains("spec.schedule") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn version_order() {
        let mut t: Vec<String> = [
            "2.10.0",
            "latest",
            "2.9.1",
            "v2.9.0",
            "2.10.0-rc1",
            "2.10.0-rc.2",
            "1.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sort_tags(&mut t);
        assert_eq!(
            t,
            [
                "latest",
                "1.0",
                "v2.9.0",
                "2.9.1",
                "2.10.0-rc1",
                "2.10.0-rc.2",
                "2.10.0"
            ]
        );
        assert!(is_tag("v1.2.3-rc.1") && is_tag("_x") && !is_tag("-x") && !is_tag("a:b") && !is_tag(""));
    }
}
