//! Tag listing and matching.
//!
//! Patterns (the anchor's, fixed, plus more):
//! - `2.13.x`, `3.x.x`, `v2.x.0`: dots are literal, `x` is one numeric field; a leading `v` on
//!   the tag is optional only when the pattern has none.
//! - semver ranges: `>=2.13, <2.14`, `^1.2`, `~1.4.0` (tags read leniently: `v` prefix and
//!   missing minor/patch allowed).
//! - `regex:^foo-[0-9]+$`: a regular expression.
//! - anything else: that literal tag.
//!
//! Release candidates (`-rc.N`, `-rcN`) match only when asked for; other suffixes never
//! match an `x` pattern or a range.

use oci_client::{Reference, secrets::RegistryAuth};

use crate::{Error, Result, registry::Registry};

/// A compiled tag pattern.
#[derive(Clone, Debug)]
pub enum TagPattern {
    /// Numeric fields, `None` = `x`; `v`: the pattern starts with `v`.
    Fields {
        v: bool,
        fields: Vec<Option<u64>>,
    },
    Range(semver::VersionReq),
    Regex(regex::Regex),
    Literal(String),
}

impl TagPattern {
    /// Compiles `s`; errors name the pattern.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::Invalid {
            field: "tag pattern",
            value: s.into(),
            reason,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty".into()));
        }
        if let Some(re) = t.strip_prefix("regex:") {
            return regex::Regex::new(re)
                .map(Self::Regex)
                .map_err(|e| bad(e.to_string()));
        }
        if t.starts_with(['>', '<', '=', '^', '~']) {
            return semver::VersionReq::parse(t)
                .map(Self::Range)
                .map_err(|e| bad(e.to_string()));
        }
        let (v, body) = match t.strip_prefix('v') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let parts: Vec<&str> = body.split('.').collect();
        let is_field = |p: &&str| *p == "x" || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if parts.contains(&"x") && parts.iter().all(is_field) {
            let fields = parts.iter().map(|p| p.parse().ok()).collect();
            return Ok(Self::Fields { v, fields });
        }
        Ok(Self::Literal(t.to_string()))
    }

    /// Whether `tag` matches (`rc`: release candidates allowed).
    pub fn matches(&self, tag: &str, rc: bool) -> bool {
        let (base, pre) = split_rc(tag);
        if pre.is_some() && !rc && !matches!(self, Self::Regex(_) | Self::Literal(_)) {
            return false;
        }
        match self {
            Self::Literal(l) => l == tag,
            Self::Regex(r) => r.is_match(tag),
            Self::Fields { v, fields } => {
                let Some(base) = base else { return false };
                let body = match (v, base.strip_prefix('v')) {
                    (true, Some(b)) => b,
                    (true, None) => return false,
                    (false, Some(b)) => b,
                    (false, None) => base,
                };
                let nums: Vec<&str> = body.split('.').collect();
                nums.len() == fields.len()
                    && nums.iter().zip(fields).all(|(n, f)| {
                        !n.is_empty()
                            && n.bytes().all(|b| b.is_ascii_digit())
                            && f.is_none_or(|f| n.parse::<u64>().ok() == Some(f))
                    })
            }
            Self::Range(req) => {
                let Some(mut ver) = base.and_then(lenient_version) else {
                    return false;
                };
                if let Some(p) = &pre {
                    ver.pre = semver::Prerelease::new(p).unwrap_or_default();
                }
                req.matches(&ver)
                    || (rc
                        && pre.is_some()
                        && req.matches(&semver::Version::new(ver.major, ver.minor, ver.patch)))
            }
        }
    }
}

/// Splits `1.2.3-rc.1` / `1.2.3-rc1` into the version part and `rc.1`; `None` base when the
/// tag has another suffix (e.g. `-alpine`).
fn split_rc(tag: &str) -> (Option<&str>, Option<String>) {
    match tag.split_once('-') {
        None => (Some(tag), None),
        Some((base, suffix)) => match suffix.strip_prefix("rc") {
            Some(n) => {
                let n = n.strip_prefix('.').unwrap_or(n);
                if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                    (Some(base), Some(format!("rc.{n}")))
                } else {
                    (None, None)
                }
            }
            None => (None, None),
        },
    }
}

fn lenient_version(s: &str) -> Option<semver::Version> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut it = s.split('.');
    let num = |p: Option<&str>| -> Option<u64> {
        match p {
            None => Some(0),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
            Some(_) => None,
        }
    };
    let major = it.next().and_then(|p| num(Some(p)))?;
    let minor = num(it.next())?;
    let patch = num(it.next())?;
    if it.next().is_some() {
        return None;
    }
    Some(semver::Version::new(major, minor, patch))
}

/// Every tag of `repo` (`/v2/<name>/tags/list`, paged with `n` and `last`).
pub async fn list_tags(reg: &Registry, repo: &Reference) -> Result<Vec<String>> {
    const PAGE: usize = 1000;
    let auth: RegistryAuth = reg.auth();
    let mut out: Vec<String> = vec![];
    let mut last: Option<String> = None;
    loop {
        let page = reg
            .reader()
            .await?
            .list_tags(repo, &auth, Some(PAGE), last.as_deref())
            .await
            .map_err(|error| Error::Registry {
                what: format!("listing tags of {}", repo.whole()),
                error,
            })?;
        let n = page.tags.len();
        let new_last = page.tags.last().cloned();
        // A name that is no tag (control characters, a path) is never passed on.
        for tag in page.tags {
            if crate::reference::is_tag(&tag) {
                out.push(tag);
            } else {
                tracing::warn!(repository = %repo.whole(), tag = %ido_engine::redact::escape_controls(&tag), "the registry listed a name that is not a tag; skipped");
            }
        }
        if n < PAGE || new_last.is_none() || new_last == last {
            break;
        }
        last = new_last;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, tag: &str, rc: bool) -> bool {
        TagPattern::parse(p).unwrap().matches(tag, rc)
    }

    #[test]
    fn x_patterns() {
        assert!(m("2.13.x", "2.13.4", false));
        assert!(
            m("2.13.x", "v2.13.4", false),
            "v optional when the pattern has none"
        );
        assert!(
            !m("2.13.x", "2.130.4", false) && !m("2.13.x", "2x13.4", false),
            "dots are literal"
        );
        assert!(!m("2.13.x", "2.13.4-alpine", false));
        assert!(
            !m("2.13.x", "2.13.4-rc.1", false)
                && m("2.13.x", "2.13.4-rc.1", true)
                && m("2.13.x", "2.13.4-rc1", true)
        );
        assert!(m("3.x.x", "3.1.0", false) && !m("3.x.x", "4.1.0", false));
        assert!(
            m("v2.x.0", "v2.5.0", false) && !m("v2.x.0", "2.5.0", false) && !m("v2.x.0", "v2.5.1", false)
        );
    }

    #[test]
    fn ranges_regex_literals() {
        assert!(m(">=2.13, <2.14", "2.13.9", false) && !m(">=2.13, <2.14", "2.14.0", false));
        assert!(m(">=2.13, <2.14", "v2.13.1", false));
        assert!(!m(">=2.13, <2.14", "2.13.1-rc.1", false) && m(">=2.13, <2.14", "2.13.1-rc.1", true));
        assert!(m("regex:^nightly-[0-9]+$", "nightly-42", false));
        assert!(m("latest", "latest", false) && !m("latest", "latest2", false));
        let e = TagPattern::parse("regex:(").unwrap_err().to_string();
        assert!(e.contains("tag pattern") && e.contains("regex:("), "{e}");
    }
}
