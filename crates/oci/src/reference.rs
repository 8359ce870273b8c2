//! Image references parsed without a regular expression.
//!
//! `oci_client::Reference`'s `FromStr` (from oci-spec) compiles one large Unicode regular
//! expression on first use: about 75 ms of CPU, once per process, which is most of a small
//! copy's run time. [`parse`] reads the same grammar (the distribution project's
//! `reference` grammar) by hand and builds the same [`Reference`]:
//!
//! ```text
//! reference := name [ ":" tag ] [ "@" digest ]
//! name      := [ domain "/" ] path-component [ "/" path-component ]*
//! domain    := domain-component [ "." domain-component ]* [ ":" port ]
//! tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest    := algorithm ":" hex   (sha256: 64 hex digits, sha384: 96, sha512: 128)
//! ```
//! Docker Hub names are normalised the same way: `busybox` → `docker.io/library/busybox`,
//! no tag → `latest`. One difference: tags are ASCII only (oci-spec's `\w` also accepts
//! other Unicode letters, which the distribution specification does not allow).

use oci_client::Reference;

use crate::{Error, Result};

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Longest repository name (oci-spec's `NAME_TOTAL_LENGTH_MAX`).
const NAME_MAX: usize = 255;

/// Parses `s` (no transport prefix) as an image reference.
pub fn parse(s: &str) -> Result<Reference> {
    let bad = |reason: &str| Error::Invalid {
        field: "image reference",
        value: s.into(),
        reason: reason.into(),
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a port.
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(c) if last_slash.is_none_or(|sl| c > sl) => (&name_tag[..c], Some(&name_tag[c + 1..])),
        _ => (name_tag, None),
    };
    if !valid_name(name) {
        return Err(bad(
            "expected [REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST], with a lower-case repository",
        ));
    }
    if let Some(t) = tag
        && !is_tag(t)
    {
        return Err(bad(
            "a tag is 1 to 128 of A-Z a-z 0-9 _ . - and does not start with . or -",
        ));
    }
    if let Some(d) = digest {
        check_digest(d).map_err(bad)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(bad("repository name longer than 255 characters"));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// `[domain "/"] path-component ["/" path-component]*`.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.split_first() {
        Some((first, rest)) if !rest.is_empty() => {
            (valid_domain(first) || valid_path_component(first))
                && rest.iter().all(|p| valid_path_component(p))
        }
        Some((only, _)) => valid_path_component(only),
        None => false,
    }
}

/// `[a-z0-9]+ ( ("." | "_" | "__" | "-"+) [a-z0-9]+ )*`.
fn valid_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `domain-component ("." domain-component)* (":" [0-9]+)?`, a component being letters,
/// digits and inner hyphens.
fn valid_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Whether `t` is a tag (the distribution spec's grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn is_tag(t: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

fn check_digest(d: &str) -> Result<(), &'static str> {
    let (alg, hex) = d.split_once(':').ok_or("a digest is ALGORITHM:HEX")?;
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("a digest is ALGORITHM:HEX (at least 32 hex digits)");
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm (sha256, sha384 or sha512)"),
    };
    if hex.len() != want {
        return Err("digest has the wrong length for its algorithm");
    }
    Ok(())
}

/// Registry and repository of a name, Docker Hub's normalised (as oci-spec does).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB.into();
    }
    if domain == DOCKER_HUB && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same result as oci-spec's regular expression, field by field, or both refuse.
    #[test]
    fn agrees_with_oci_spec() {
        let sha = "sha256:".to_string() + &"ab".repeat(32);
        let cases = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "docker.io/busybox".into(),
            "index.docker.io/foo/bar:v1".into(),
            "localhost/app".into(),
            "localhost:5000/app:1.0".into(),
            "localhost:5000".into(),
            "127.0.0.1:46001/img:1.0".into(),
            "quay.io/org/sub/app:v2.13.4-rc.1".into(),
            "Example.COM/org/app".into(),
            "foo_bar/baz".into(),
            "a__b/c-d---e/f.g".into(),
            format!("ghcr.io/o/app@{sha}"),
            format!("ghcr.io/o/app:1@{sha}"),
            format!("app@{sha}"),
            "UPPER/case".into(),
            "foo/Bar".into(),
            "foo//bar".into(),
            "foo/".into(),
            "/foo".into(),
            "foo:".into(),
            "foo@".into(),
            "foo:bar/x".into(),
            "-foo.com/x".into(),
            "foo-.com/x".into(),
            "a..b".into(),
            "a._b".into(),
            "a:.tag".into(),
            "a:-tag".into(),
            format!("a:{}", "t".repeat(128)),
            format!("a:{}", "t".repeat(129)),
            "app@sha256:abc".into(),
            format!("app@md5:{}", "ab".repeat(16)),
            format!("app@sha512:{}", "ab".repeat(32)),
            "has space".into(),
            "host:80a/x".into(),
            format!("r.io/{}", "a".repeat(260)),
        ];
        for c in &cases {
            let ours = parse(c);
            let theirs: std::result::Result<Reference, _> = c.parse();
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        (a.registry(), a.repository(), a.tag(), a.digest()),
                        (b.registry(), b.repository(), b.tag(), b.digest()),
                        "{c}"
                    );
                    assert_eq!(a.whole(), b.whole(), "{c}");
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{c}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
    }

    #[test]
    fn errors_name_the_reference() {
        let e = parse("Foo/Bar:x").unwrap_err().to_string();
        assert!(e.contains("Foo/Bar:x") && e.contains("image reference"), "{e}");
    }
}
