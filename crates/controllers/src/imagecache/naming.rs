//! Where a cached copy lives: `<registry>/<prefix>/<source registry>/<repository>` with the
//! source's tag and digest, so every source keeps its own place and the copy says where it
//! came from (`nginx:1.27` → `cache.example/mirror/docker.io/library/nginx:1.27`).
//!
//! A source registry's port becomes `_port` (`localhost:5000` → `localhost_5000`): a path
//! component cannot hold `:`, and no host name holds `_`, so two sources never share a place.

use ido_oci::Reference;
use sha2::{Digest, Sha256};

/// Longest repository name a registry must accept (the distribution specification's).
const NAME_MAX: usize = 255;

/// A cache target that cannot hold copies, or a source that does not fit it.
#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    #[error("invalid cache {field} {value:?}: {reason}")]
    Target {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "the copy of {image} would be named {name:?}, over the {NAME_MAX} characters a repository name may have"
    )]
    TooLong { image: String, name: String },
}

/// The registry and path prefix copies go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheTarget {
    registry: String,
    prefix: String,
}

impl CacheTarget {
    /// `registry` is a host with an optional port (`cache.example`, `10.0.0.5:5000`);
    /// `prefix` zero or more lower-case path components (`mirror`, `team/cache`).
    pub fn new(registry: &str, prefix: &str) -> Result<Self, NamingError> {
        let bad = |field, value: &str, reason| NamingError::Target {
            field,
            value: value.to_string(),
            reason,
        };
        let host = registry.split_once(':').map_or(registry, |(h, _)| h);
        let port_ok = registry
            .split_once(':')
            .is_none_or(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if host.is_empty()
            || !port_ok
            || registry.contains('/')
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad(
                "registry",
                registry,
                "expected a host name with an optional port, such as cache.example:5000",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && !prefix.split('/').all(is_path_component) {
            return Err(bad(
                "pathPrefix",
                prefix,
                "expected lower-case path components (a-z 0-9 and . _ - between them) separated by /",
            ));
        }
        Ok(Self {
            registry: registry.to_ascii_lowercase(),
            prefix: prefix.to_string(),
        })
    }

    /// Where the copy of `source` lives, with its tag and digest.
    pub fn cached(&self, source: &Reference) -> Result<Reference, NamingError> {
        let repository = [
            self.prefix.as_str(),
            &host_component(source.registry()),
            source.repository(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
        if repository.len() > NAME_MAX {
            return Err(NamingError::TooLong {
                image: source.whole(),
                name: repository,
            });
        }
        let (registry, tag, digest) = (self.registry.clone(), source.tag(), source.digest());
        Ok(match (tag, digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.into(), d.into()),
            (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
            (Some(t), None) => Reference::with_tag(registry, repository, t.into()),
            (None, None) => Reference::with_tag(registry, repository, "latest".into()),
        })
    }

    /// The namespace the cache registry runs in, when it is named as a cluster Service
    /// (`<service>.<namespace>.svc[.<cluster domain>]`): its own pods are never pointed
    /// at it (they could not start while it is down).
    pub fn namespace(&self) -> Option<&str> {
        let host = self.registry.split(':').next()?;
        let labels: Vec<&str> = host.split('.').collect();
        (labels.len() >= 3 && labels[2] == "svc").then(|| labels[1])
    }

    /// Whether `image` is already in this cache (the same registry, under the prefix): such
    /// images are never cached again.
    pub fn holds(&self, image: &Reference) -> bool {
        image.registry().eq_ignore_ascii_case(&self.registry)
            && (self.prefix.is_empty()
                || image
                    .repository()
                    .strip_prefix(&self.prefix)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// A source registry as one path component: Docker Hub's names as `docker.io`, a port as
/// `_port`, lower case.
fn host_component(registry: &str) -> String {
    let registry = match registry {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        r => r,
    };
    registry.to_ascii_lowercase().replace(':', "_")
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    !b.is_empty()
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
}

/// The name of the `CachedImage` that records `source` (cluster-scoped, one per source
/// reference): the repository's last component, cut to fit, and a hash of the whole
/// reference, so it is a valid object name and two sources never share one.
pub fn cached_image_name(source: &Reference) -> String {
    let hash = hex::encode(Sha256::digest(source.whole().as_bytes()));
    let tail: String = source
        .repository()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let tail = tail.trim_matches('-');
    if tail.is_empty() {
        hash[..16].to_string()
    } else {
        format!("{tail}-{}", &hash[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        ido_oci::reference::parse(s).unwrap()
    }

    #[test]
    fn copies_keep_their_source_registry_tag_and_digest() {
        let t = CacheTarget::new("cache.example:5000", "/mirror/").unwrap();
        let d = "sha256:".to_string() + &"a".repeat(64);
        for (src, want) in [
            (
                "nginx",
                "cache.example:5000/mirror/docker.io/library/nginx:latest",
            ),
            (
                "nginx:1.27",
                "cache.example:5000/mirror/docker.io/library/nginx:1.27",
            ),
            (
                "index.docker.io/bitnami/redis:7",
                "cache.example:5000/mirror/docker.io/bitnami/redis:7",
            ),
            (
                "localhost:5000/app:v1",
                "cache.example:5000/mirror/localhost_5000/app:v1",
            ),
            (
                &format!("quay.io/org/app@{d}"),
                &format!("cache.example:5000/mirror/quay.io/org/app@{d}"),
            ),
            (
                &format!("ghcr.io/o/a:1@{d}"),
                &format!("cache.example:5000/mirror/ghcr.io/o/a:1@{d}"),
            ),
        ] {
            assert_eq!(t.cached(&r(src)).unwrap().whole(), want, "{src}");
        }
        let bare = CacheTarget::new("cache.example", "").unwrap();
        assert_eq!(
            bare.cached(&r("nginx:1")).unwrap().whole(),
            "cache.example/docker.io/library/nginx:1"
        );
    }

    #[test]
    fn a_cache_named_as_a_service_is_in_its_namespace() {
        let ns = |r| CacheTarget::new(r, "").unwrap().namespace().map(str::to_string);
        assert_eq!(ns("registry.cache.svc:5000").as_deref(), Some("cache"));
        assert_eq!(ns("registry.cache.svc.cluster.local").as_deref(), Some("cache"));
        assert_eq!(ns("registry.example.com"), None);
        assert_eq!(ns("10.0.0.5:5000"), None);
    }

    #[test]
    fn copies_are_recognised_by_component_not_by_string_prefix() {
        let t = CacheTarget::new("localhost:5000", "mirror").unwrap();
        assert!(t.holds(&r("localhost:5000/mirror/docker.io/library/nginx:1")));
        assert!(!t.holds(&r("localhost:50001/mirror/docker.io/library/nginx:1")));
        assert!(!t.holds(&r("localhost:5000/mirrors/app:1")));
        assert!(!t.holds(&r("localhost:5000/app:1")));
        assert!(
            CacheTarget::new("localhost:5000", "")
                .unwrap()
                .holds(&r("localhost:5000/app:1"))
        );
    }

    #[test]
    fn bad_targets_and_overlong_names_are_refused_by_name() {
        for (reg, prefix, field) in [
            ("", "", "registry"),
            ("https://cache.example", "", "registry"),
            ("cache.example:", "", "registry"),
            ("cache.example/x", "", "registry"),
            ("cache.example", "Mirror", "pathPrefix"),
            ("cache.example", "a//b", "pathPrefix"),
            ("cache.example", "-a", "pathPrefix"),
        ] {
            let e = CacheTarget::new(reg, prefix).unwrap_err().to_string();
            assert!(e.contains(field), "{reg} {prefix}: {e}");
        }
        let t = CacheTarget::new("cache.example", &"p".repeat(200)).unwrap();
        let e = t.cached(&r(&format!("quay.io/{}", "a".repeat(60)))).unwrap_err();
        assert!(e.to_string().contains("over the 255"), "{e}");
    }

    #[test]
    fn cached_image_names_are_object_names_and_distinct() {
        let a = cached_image_name(&r("nginx:1.27"));
        let b = cached_image_name(&r("nginx:1.28"));
        let c = cached_image_name(&r("quay.io/x/nginx:1.27"));
        assert!(a.starts_with("nginx-") && a.len() == 6 + 16, "{a}");
        assert!(a != b && a != c && b != c);
        let odd = cached_image_name(&r("quay.io/x/a__b.c-d"));
        assert!(
            odd.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{odd}"
        );
        assert_eq!(a, cached_image_name(&r("docker.io/library/nginx:1.27")));
    }
}
