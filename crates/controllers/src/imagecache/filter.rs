//! Which images a policy caches: include and exclude patterns over the normalised
//! `registry/repository` (`nginx` is `docker.io/library/nginx`).
//!
//! In a pattern, `*` stands for any run of characters within one path component (no `/`),
//! `**` for any run including `/`; everything else stands for itself. `docker.io/**` is
//! every Docker Hub image, `*.gcr.io/**` every Container Registry host, `quay.io/org/*` the
//! repositories directly under `org`. No include pattern means every image; an exclude
//! pattern wins over an include one.

use ido_oci::Reference;

/// A pattern that cannot match an image.
#[derive(Debug, thiserror::Error)]
#[error("invalid image pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// Include and exclude patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl ImageFilter {
    /// Checks the patterns (lower case, no tag or digest, no empty component).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, PatternError> {
        for p in include.iter().chain(exclude) {
            check(p)?;
        }
        Ok(Self {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
        })
    }

    /// Whether `image` is cached under these patterns.
    pub fn admits(&self, image: &Reference) -> bool {
        let name = format!("{}/{}", image.resolve_registry_name(), image.repository());
        let hit = |p: &String| glob(p.as_bytes(), name.as_bytes());
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }
}

trait RegistryName {
    fn resolve_registry_name(&self) -> &str;
}

impl RegistryName for Reference {
    /// `docker.io` for Docker Hub (whichever of its names the reference used).
    fn resolve_registry_name(&self) -> &str {
        match self.registry() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            r => r,
        }
    }
}

fn check(p: &str) -> Result<(), PatternError> {
    let bad = |reason| {
        Err(PatternError {
            pattern: p.to_string(),
            reason,
        })
    };
    if p.is_empty() {
        return bad("empty");
    }
    if p.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("image names are lower case");
    }
    if p.contains('@')
        || p.rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':') && p.contains('/'))
    {
        return bad("a pattern names repositories: leave out the tag and digest");
    }
    if p.split('/').any(str::is_empty) {
        return bad("it has an empty path component");
    }
    if p.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return bad("it holds a space or a control character");
    }
    Ok(())
}

/// Glob match: `*` within a component, `**` across components.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let stop = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=stop).any(|i| glob(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        ido_oci::reference::parse(s).unwrap()
    }

    fn f(include: &[&str], exclude: &[&str]) -> ImageFilter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageFilter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn no_include_pattern_admits_everything_but_the_excluded() {
        let all = f(&[], &[]);
        assert!(all.admits(&r("nginx")));
        assert!(all.admits(&r("quay.io/org/app:1")));
        let no_hub = f(&[], &["docker.io/**"]);
        assert!(!no_hub.admits(&r("nginx:1.27")));
        assert!(!no_hub.admits(&r("index.docker.io/library/nginx")));
        assert!(no_hub.admits(&r("ghcr.io/org/app")));
    }

    #[test]
    fn one_star_stays_in_its_component_two_cross_them() {
        let direct = f(&["quay.io/org/*"], &[]);
        assert!(direct.admits(&r("quay.io/org/app")));
        assert!(!direct.admits(&r("quay.io/org/team/app")));
        let deep = f(&["quay.io/org/**"], &[]);
        assert!(deep.admits(&r(
            "quay.io/org/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )));
        let hosts = f(&["*.gcr.io/**"], &[]);
        assert!(hosts.admits(&r("eu.gcr.io/p/app")));
        assert!(!hosts.admits(&r("gcr.io/p/app")));
        let library = f(&["docker.io/library/*"], &["docker.io/library/busybox"]);
        assert!(library.admits(&r("nginx")));
        assert!(!library.admits(&r("busybox:1.36")));
        assert!(!library.admits(&r("bitnami/redis")));
    }

    #[test]
    fn patterns_that_cannot_match_are_refused_by_name() {
        for (p, why) in [
            ("", "empty"),
            ("Docker.io/**", "lower case"),
            ("docker.io/library/nginx:1.27", "tag"),
            ("docker.io/library/nginx@sha256:00", "tag"),
            ("quay.io//app", "empty path"),
            ("quay.io/a pp", "space"),
        ] {
            let e = ImageFilter::new(&[p.to_string()], &[]).unwrap_err();
            assert!(e.to_string().contains(why), "{p}: {e}");
            assert!(e.to_string().contains(&format!("{p:?}")), "{e}");
        }
        // A registry port is not a tag.
        assert!(ImageFilter::new(&["localhost:5000/**".into()], &[]).is_ok());
    }
}
