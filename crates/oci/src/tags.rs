//! Tag listing and matching.
//!
//! Patterns (the anchor's, fixed, plus more):
//! - `2.13.x`, `3.x.x`, `v2.x.0`: dots are literal, `x` is one numeric field; a leading `v` on
//!   the tag is optional only when the pattern has none.
//! - semver ranges: `>=2.13, <2.14` or `>=2.13 <2.14`, `^1.2`, `~1.4.0` (tags read
//!   leniently: `v` prefix and missing minor/patch allowed).
//! - `regex:^foo-[0-9]+$`: a regular expression.
//! - anything else: that literal tag.
//!
//! Release candidates (`-rc.N`, `-rcN`) match only when asked for; other suffixes never
//! match an `x` pattern or a range.

use oci_client::Reference;

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
            // Comparators apart by commas (`>=1.2, <2`) or by spaces (`>=1.2 <2`, as npm
            // and Masterminds/semver write them), an operator apart from its version too.
            let mut parts: Vec<String> = vec![];
            for tok in t
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
            {
                match parts.last_mut() {
                    Some(last) if last.chars().all(|c| "<>=~^".contains(c)) => last.push_str(tok),
                    _ => parts.push(tok.to_string()),
                }
            }
            return semver::VersionReq::parse(&parts.join(", "))
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

/// Every tag of `repo`, in the registry's order. Pages are followed through their `Link:
/// <…>; rel="next"` headers to the end, as the distribution spec says (a registry may cap a
/// page below what was asked). Names that are not tags are skipped with a warning.
pub async fn list_tags(reg: &Registry, repo: &Reference) -> Result<Vec<String>> {
    let what = || format!("listing tags of {}", repo.whole());
    let mut out: Vec<String> = vec![];
    let mut url = reg.url(&format!("/v2/{}/tags/list", repo.repository()));
    let auth = reg
        .pull_authorization(repo)
        .await
        .map_err(|error| Error::Registry { what: what(), error })?;
    // A registry that keeps sending the same page would loop forever.
    for _ in 0..10_000 {
        let (body, next) = reg
            .get_page(&url, auth.as_ref())
            .await
            .map_err(|error| Error::Registry { what: what(), error })?;
        let page: TagPage = serde_json::from_slice(&body).map_err(|e| Error::Unsupported {
            reference: repo.whole(),
            message: format!("the tag list is not JSON of the distribution spec: {e}"),
        })?;
        for tag in page.tags.unwrap_or_default() {
            if crate::reference::is_tag(&tag) {
                out.push(tag);
            } else {
                tracing::warn!(repository = %repo.whole(), tag = %ido_io::redact::escape_controls(&tag), "the registry listed a name that is not a tag; skipped");
            }
        }
        match next {
            Some(n) if n != url => url = n,
            _ => return Ok(out),
        }
    }
    Err(Error::Unsupported {
        reference: repo.whole(),
        message: "the tag list goes on for more than 10000 pages".into(),
    })
}

#[derive(serde::Deserialize)]
struct TagPage {
    /// `null` for a repository without tags (some registries).
    #[serde(default)]
    tags: Option<Vec<String>>,
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

    #[test]
    fn ranges_apart_by_spaces_as_by_commas() {
        for p in [">=1.2 <2", ">=1.2, <2", ">= 1.2 < 2", ">=1.2,<2", "  >=1.2   <2 "] {
            assert!(m(p, "1.2.0", false) && m(p, "v1.9.3", false), "{p}");
            assert!(!m(p, "2.0.0", false) && !m(p, "1.1.9", false), "{p}");
        }
        assert!(m("~1.4 >1.4.1", "1.4.2", false) && !m("~1.4 >1.4.1", "1.4.1", false));
        let e = TagPattern::parse(">=1.2 <<2").unwrap_err().to_string();
        assert!(e.contains(">=1.2 <<2"), "{e}");
    }
}
