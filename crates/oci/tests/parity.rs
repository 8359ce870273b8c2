//! Where ido must do what skopeo does, against real `docker-registry` instances: the image
//! an index gives for one platform (skopeo is the oracle), the index several platforms give
//! (the source's entries, verbatim and in order), an index whose only image has no
//! platform, and tag lists a registry pages with `Link` headers.

mod common;

use common::{plain, r};

use std::sync::Arc;

use ido_oci::{
    auth::AuthStore,
    copy::{Platforms, copy},
    media::{self, Platform},
    registry::{Registry, TlsSettings},
    tags::list_tags,
};
use ido_testkit::{
    fault_proxy::{Fault, FaultProxy, Rule},
    oci_image::build_layout,
    oci_image::push_layout,
    registry::{DockerRegistry, skopeo, skopeo_raw},
};
use serde_json::{Value, json};

/// `GET` of a manifest's raw bytes.
async fn manifest(reg: &DockerRegistry, repo: &str, reference: &str) -> Vec<u8> {
    let accept = media::ACCEPTED.join(", ");
    reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{reference}", reg.base_url()))
        .header("Accept", accept)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// `PUT`s `bytes` as `repo:reference`; returns its digest.
async fn put_manifest(
    reg: &DockerRegistry,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    media_type: &str,
) -> String {
    reqwest::Client::new()
        .put(format!("{}/v2/{repo}/manifests/{reference}", reg.base_url()))
        .header("Content-Type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    media::sha256(bytes)
}

/// The images of a three-platform layout pushed to `reg` under `repo`, and their
/// descriptors as an index holds them: `(platform, descriptor)`.
async fn images(reg: &DockerRegistry, repo: &str, dir: &std::path::Path) -> Vec<(String, Value)> {
    let layout = build_layout(
        &dir.join("l"),
        "base",
        &["linux/amd64", "linux/arm64", "linux/s390x"],
        1,
        10_000,
        7,
    )
    .await
    .unwrap();
    push_layout(&layout, reg, &format!("{repo}:base")).await.unwrap();
    let mut out = vec![];
    for (platform, digest) in &layout.images {
        let bytes = manifest(reg, repo, digest).await;
        out.push((
            platform.clone(),
            json!({"mediaType": media::OCI_MANIFEST, "digest": digest, "size": bytes.len()}),
        ));
    }
    out
}

#[tokio::test]
async fn index_shapes_give_what_skopeo_gives() {
    let (a, b) = (
        DockerRegistry::start(Default::default()).await.unwrap(),
        DockerRegistry::start(Default::default()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs = images(&a, "app", d).await;
    let desc = |p: &str| imgs.iter().find(|(q, _)| q == p).unwrap().1.clone();
    let (sa, sb) = (plain(a.host()).await, plain(b.host()).await);
    let host = Platform::host().to_string();

    // A one-entry index for this machine's platform: skopeo copies the image, not the index.
    let mut one = desc(&host);
    one["platform"] = json!({"os": "linux", "architecture": host.split('/').nth(1).unwrap()});
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [one]}))
            .unwrap();
    put_manifest(&a, "app", "one", &index, media::OCI_INDEX).await;
    let rep = copy(
        &sa,
        &r(a.host(), "app:one"),
        &sb,
        &r(b.host(), "ido:one"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    let mut args: Vec<String> = vec!["copy".into(), "--preserve-digests".into(), "-q".into()];
    args.extend(a.skopeo_flags("src", d).unwrap());
    args.extend(b.skopeo_flags("dest", d).unwrap());
    args.push(format!("docker://{}/app:one", a.host()));
    args.push(format!("docker://{}/skopeo:one", b.host()));
    skopeo(&args).await.unwrap();
    let (_, by_skopeo) = skopeo_raw(&b, "skopeo:one", d).await.unwrap();
    let (_, by_ido) = skopeo_raw(&b, "ido:one", d).await.unwrap();
    assert_eq!(by_ido, by_skopeo, "the image, as skopeo copies it");
    assert_eq!(rep.digest, one["digest"]);

    // Several platforms: the source's entries for them, verbatim (no `variant: null`,
    // `os.version`, `os.features` and annotations kept) and in the source's order, whatever
    // the order of the flags; other top-level fields kept.
    let mut entries = vec![];
    for (i, (p, _)) in imgs.iter().enumerate() {
        let mut e = desc(p);
        let (os, arch) = p.split_once('/').unwrap();
        e["platform"] =
            json!({"os": os, "architecture": arch, "os.version": format!("10.0.{i}"), "os.features": ["f"]});
        e["annotations"] = json!({"org.example/entry": i.to_string()});
        entries.push(e);
    }
    let src_index = json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries,
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    });
    put_manifest(
        &a,
        "app",
        "three",
        &serde_json::to_vec(&src_index).unwrap(),
        media::OCI_INDEX,
    )
    .await;
    let wanted = Platforms::Only(vec![
        Platform::parse("linux/s390x").unwrap(),
        Platform::parse("linux/amd64").unwrap(),
    ]);
    let rep = copy(
        &sa,
        &r(a.host(), "app:three"),
        &sb,
        &r(b.host(), "ido:two"),
        &wanted,
    )
    .await
    .unwrap();
    let got: Value = serde_json::from_slice(&manifest(&b, "ido", "two").await).unwrap();
    assert_eq!(media::sha256(&manifest(&b, "ido", "two").await), rep.digest);
    let want: Vec<Value> = entries
        .iter()
        .filter(|e| e["platform"]["architecture"] != "arm64")
        .cloned()
        .collect();
    assert_eq!(
        got["manifests"],
        json!(want),
        "the source's entries, in its order"
    );
    assert_eq!(got["annotations"], src_index["annotations"]);
    assert_eq!(got["mediaType"], media::OCI_INDEX);
    for e in &want {
        let digest = e["digest"].as_str().unwrap();
        assert_eq!(
            manifest(&b, "ido", digest).await,
            manifest(&a, "app", digest).await
        );
    }

    // An index whose only image has no platform, beside an attestation manifest: that image.
    let mut bare = desc(&host);
    bare.as_object_mut().unwrap().remove("platform");
    let mut attestation = desc("linux/s390x");
    attestation["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    attestation["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [bare, attestation]}),
    )
    .unwrap();
    put_manifest(&a, "app", "bare", &index, media::OCI_INDEX).await;
    let rep = copy(
        &sa,
        &r(a.host(), "app:bare"),
        &sb,
        &r(b.host(), "ido:bare"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert_eq!(rep.digest, bare["digest"]);
    assert_eq!(media::sha256(&manifest(&b, "ido", "bare").await), rep.digest);
}

/// A registry that caps a page at 100 tags and links the next: all 262 are listed.
#[tokio::test]
async fn tag_lists_are_followed_through_their_link_headers() {
    let reg = DockerRegistry::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "t", &["linux/amd64"], 1, 1_000, 3)
        .await
        .unwrap();
    push_layout(&layout, &reg, "many:t").await.unwrap();
    let bytes = manifest(&reg, "many", "t").await;
    let mut want = vec!["t".to_string()];
    for i in 0..261 {
        let tag = format!("1.{i}.0");
        put_manifest(&reg, "many", &tag, &bytes, media::OCI_MANIFEST).await;
        want.push(tag);
    }
    want.sort();
    let proxy = FaultProxy::start(&reg.base_url()).await.unwrap();
    proxy.set_rules(vec![Rule::new(Fault::PageTags { page: 100 })]);
    let host = proxy.host();
    let mut got = list_tags(&plain(&host).await, &r(&host, "many")).await.unwrap();
    got.sort();
    assert_eq!(got.len(), 262);
    assert_eq!(got, want);
    let pages = proxy
        .events()
        .iter()
        .filter(|e| e.path.contains("/tags/list"))
        .count();
    assert_eq!(pages, 3, "three pages of at most 100");
}

/// Failures name the registry, the operation and the server's own message, and fail at once
/// where another try cannot help.
#[tokio::test]
async fn errors_name_the_registry_the_operation_and_the_servers_message() {
    use ido_testkit::registry::RegistryOptions;
    let a = DockerRegistry::start(Default::default()).await.unwrap();
    let b = DockerRegistry::start(RegistryOptions {
        tls: true,
        auth: Some(("mirror".into(), "right-pw-0192".into())),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "v1", &["linux/amd64"], 1, 10_000, 5)
        .await
        .unwrap();
    push_layout(&layout, &a, "app:v1").await.unwrap();
    let sa = plain(a.host()).await;

    // The destination refuses anonymous pushes: the destination is named, not the source.
    let tls = TlsSettings {
        verify: true,
        ca_bundle: b.ca().map(|c| c.ca_pem()),
    };
    let anonymous = Registry::connect(b.host(), &tls, Arc::new(AuthStore::default()), 2)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let e = copy(
        &sa,
        &r(a.host(), "app:v1"),
        &anonymous,
        &r(b.host(), "app:v1"),
        &Platforms::Host,
    )
    .await
    .unwrap_err()
    .to_string();
    eprintln!("401: {e} ({:?})", t.elapsed());
    assert!(
        e.contains(b.host()) && !e.contains(&format!("{}/app", a.host())),
        "{e}"
    );
    assert!(
        e.contains("401") || e.to_lowercase().contains("unauthorized"),
        "{e}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );

    // Nothing listens: at once, naming the registry.
    let t = std::time::Instant::now();
    let tls_off = TlsSettings {
        verify: false,
        ca_bundle: None,
    };
    let e = match Registry::connect("127.0.0.1:9", &tls_off, Arc::new(AuthStore::default()), 2).await {
        Err(e) => e.to_string(),
        Ok(reg) => copy(
            &reg,
            &r("127.0.0.1:9", "x:1"),
            &sa,
            &r(a.host(), "y:1"),
            &Platforms::Host,
        )
        .await
        .unwrap_err()
        .to_string(),
    };
    eprintln!("refused: {e} ({:?})", t.elapsed());
    assert!(
        e.contains("127.0.0.1:9") && e.contains("connection refused"),
        "{e}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );

    // TLS spoken to a plain-HTTP registry: at once, saying so.
    let t = std::time::Instant::now();
    let e = match Registry::connect(
        a.host(),
        &TlsSettings::default(),
        Arc::new(AuthStore::default()),
        2,
    )
    .await
    {
        Err(e) => e.to_string(),
        Ok(reg) => copy(
            &reg,
            &r(a.host(), "app:v1"),
            &sa,
            &r(a.host(), "z:1"),
            &Platforms::Host,
        )
        .await
        .unwrap_err()
        .to_string(),
    };
    eprintln!("tls: {e} ({:?})", t.elapsed());
    assert!(e.contains(a.host()) && e.contains("plain HTTP"), "{e}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
}

/// A token registry (docker-registry with `token` auth and the test kit's token server):
/// a copy between two of its repositories mounts every blob (the token asks for pull on the
/// source beside push on the destination), and credentials the token server refuses fail at
/// once with its own message.
#[tokio::test]
async fn token_registries_mount_across_repositories_and_say_why_credentials_fail() {
    use ido_oci::auth::Credentials;
    use ido_testkit::token_server::{INVALID_CREDENTIALS, TokenPolicy};
    let policy = TokenPolicy::new()
        .user("alice", "alice-pw-3141")
        .allow("alice", "team/", &["*"]);
    let reg = DockerRegistry::start_with_token(Default::default(), policy)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "v1", &["linux/amd64"], 2, 20_000, 11)
        .await
        .unwrap();
    push_layout(&layout, &reg, "team/app:v1").await.unwrap();
    let connect = async |password: &str| {
        let mut auths = AuthStore::default();
        auths.insert(
            reg.host(),
            Credentials {
                username: "alice".into(),
                password: password.into(),
            },
        );
        let tls = TlsSettings {
            verify: false,
            ca_bundle: None,
        };
        Registry::connect(reg.host(), &tls, Arc::new(auths), 4).await
    };
    let side = connect("alice-pw-3141").await.unwrap();
    let rep = copy(
        &side,
        &r(reg.host(), "team/app:v1"),
        &side,
        &r(reg.host(), "team/copy:v1"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert_eq!(
        (rep.blobs_mounted, rep.blobs_copied, rep.bytes),
        (3, 0, 0),
        "{rep:?}"
    );
    assert_eq!(rep.digest, layout.digest);
    let both = reg.token_requests().into_iter().any(|t| {
        let granted: Vec<String> = t.granted.iter().map(ToString::to_string).collect();
        granted.contains(&"repository:team/copy:pull,push".to_string())
            && granted.contains(&"repository:team/app:pull".to_string())
    });
    assert!(both, "no token with both scopes: {:?}", reg.token_requests());
    // Tags through a pull token of the token server.
    let tags = list_tags(&side, &r(reg.host(), "team/copy")).await.unwrap();
    assert_eq!(tags, ["v1"]);

    let e = connect("wrong-pw-2718").await.unwrap_err().to_string();
    assert!(e.contains(reg.host()) && e.contains(INVALID_CREDENTIALS), "{e}");
    assert!(!e.contains("wrong-pw-2718"), "{e}");
}

/// `--referrers`: the artifacts that refer to an image (an SBOM here) follow it. docker-registry
/// 2.8 has no referrers API, so the source lists them under the OCI 1.1 fallback tag
/// `sha256-<hex>`; the copy brings the artifact and that tag along, byte for byte.
#[tokio::test]
async fn referrers_follow_the_image_through_the_fallback_tag() {
    use ido_oci::copy::copy_referrers;
    use ido_testkit::oci_image::build_artifact;
    let (a, b) = (
        DockerRegistry::start(Default::default()).await.unwrap(),
        DockerRegistry::start(Default::default()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_layout(&d.join("img"), "v1", &["linux/amd64"], 1, 4_000, 21)
        .await
        .unwrap();
    push_layout(&image, &a, "app:v1").await.unwrap();
    let sbom = build_artifact(&d.join("sbom"), "sbom", "application/spdx+json", &image, 900, 22)
        .await
        .unwrap();
    push_layout(&sbom, &a, "app:sbom").await.unwrap();
    // The fallback index, as oras and regctl write it on a registry without the API.
    let sbom_bytes = manifest(&a, "app", &sbom.digest).await;
    let fallback = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": sbom.digest, "size": sbom_bytes.len(),
                       "artifactType": "application/spdx+json"}],
    }))
    .unwrap();
    let tag = image.digest.replacen(':', "-", 1);
    put_manifest(&a, "app", &tag, &fallback, media::OCI_INDEX).await;

    let (sa, sb) = (plain(a.host()).await, plain(b.host()).await);
    let (from, to) = (r(a.host(), "app:v1"), r(b.host(), "mirror:v1"));
    let rep = copy(&sa, &from, &sb, &to, &Platforms::All).await.unwrap();
    let n = copy_referrers(&sa, &from, &sb, &to, &rep.digest).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        manifest(&b, "mirror", &sbom.digest).await,
        sbom_bytes,
        "the SBOM, byte for byte"
    );
    assert_eq!(manifest(&b, "mirror", &tag).await, fallback, "the fallback tag");
    // An image nothing refers to: none, and no fallback tag made.
    let other = build_layout(&d.join("other"), "v2", &["linux/amd64"], 1, 4_000, 23)
        .await
        .unwrap();
    push_layout(&other, &a, "app:v2").await.unwrap();
    let (from, to) = (r(a.host(), "app:v2"), r(b.host(), "mirror:v2"));
    let rep = copy(&sa, &from, &sb, &to, &Platforms::All).await.unwrap();
    assert_eq!(
        copy_referrers(&sa, &from, &sb, &to, &rep.digest).await.unwrap(),
        0
    );
}
