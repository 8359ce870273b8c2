use super::*;

#[test]
fn scopes_parse_and_print() {
    let s = Scope::parse("repository:127.0.0.1:5000/a/b:pull,push").unwrap();
    assert_eq!(s.kind, "repository");
    assert_eq!(s.name, "127.0.0.1:5000/a/b");
    assert_eq!(s.actions, ["pull", "push"]);
    assert_eq!(s.to_string(), "repository:127.0.0.1:5000/a/b:pull,push");
    assert!(Scope::parse("repository").is_none());
    assert!(Scope::parse(":x:pull").is_none());
}

#[test]
fn grants_are_the_intersection_of_asked_and_allowed() {
    let p = TokenPolicy::new()
        .user("alice", "a")
        .allow("alice", "team/", &["pull", "push"])
        .allow("alice", "ro/", &["pull"]);
    let ask = |s: &str| Scope::parse(s).unwrap();
    let g = p.grant(Some("alice"), &ask("repository:team/x:pull,push,delete"));
    assert_eq!(g.unwrap().actions, ["pull", "push"]);
    let g = p.grant(Some("alice"), &ask("repository:ro/x:pull,push"));
    assert_eq!(g.unwrap().actions, ["pull"]);
    assert_eq!(p.grant(Some("alice"), &ask("repository:other:pull")), None);
    assert_eq!(p.grant(None, &ask("repository:team/x:pull")), None);
    assert_eq!(p.grant(Some("bob"), &ask("repository:team/x:pull")), None);
    assert_eq!(p.grant(Some("alice"), &ask("registry:catalog:*")), None);
    let anon = p.anonymous_pull(true);
    let g = anon.grant(None, &ask("repository:other:pull,push"));
    assert_eq!(g.unwrap().actions, ["pull"]);
}

#[test]
fn der_signatures_become_fixed_width() {
    let der = [0x30, 0x08, 0x02, 0x02, 0x00, 0x81, 0x02, 0x02, 0x01, 0x02];
    let raw = ecdsa_der_to_raw(&der, 4).unwrap();
    assert_eq!(raw, [0, 0, 0, 0x81, 0, 0, 1, 2]);
    assert!(ecdsa_der_to_raw(&der[..9], 4).is_none());
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_796_601_600), "2026-12-07T00:00:00Z");
    assert_eq!(rfc3339(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
}
