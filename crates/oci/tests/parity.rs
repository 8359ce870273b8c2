//! Where ido must do what skopeo does, against real `docker-registry` instances: the image
//! an index gives for one platform (skopeo is the oracle), the index several platforms give
//! (the source's entries, verbatim and in order), an index whose only image has no
//! platform, and tag lists a registry pages with `Link` headers. `--referrers` also against
//! go-containerregistry's registry, which serves the OCI referrers API that docker-registry
//! lacks.

mod common;

use common::{Peer, plain, r};

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
async fn manifest(reg: &impl Peer, repo: &str, reference: &str) -> Vec<u8> {
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
    reg: &impl Peer,
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

const SPDX: &str = "application/spdx+json";
const SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The fallback tag of `digest` (`sha256-<hex>`).
fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The digests a registry's referrers API lists for `digest` in `repo`, sorted.
async fn referrers(reg: &impl Peer, repo: &str, digest: &str) -> Vec<String> {
    ido_testkit::install_crypto_provider();
    let index: Value = reqwest::get(format!("{}/v2/{repo}/referrers/{digest}", reg.base_url()))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn sorted<const N: usize>(digests: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = digests.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// `--referrers`: the artifacts that refer to an image (an SBOM here) follow it, and the
/// signature that refers to the SBOM. docker-registry 2.8 has no referrers API, so the source
/// lists them under the OCI 1.1 fallback tags `sha256-<hex>`; the copy brings the artifacts
/// and those tags along, byte for byte. A fallback tag may list anything, even the image the
/// chain started from: each manifest is followed once.
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
    let sbom = build_artifact(&d.join("sbom"), "sbom", SPDX, &image, 900, 22)
        .await
        .unwrap();
    push_layout(&sbom, &a, "app:sbom").await.unwrap();
    let sbom_sig = build_artifact(&d.join("sbom-sig"), "sig", SIGNATURE, &sbom, 300, 24)
        .await
        .unwrap();
    push_layout(&sbom_sig, &a, "app:sbom-sig").await.unwrap();
    // The fallback indexes, as oras and regctl write them on a registry without the API.
    let mut fallbacks = vec![];
    for (subject, referrer, media_type, artifact_type) in [
        (&image.digest, &sbom.digest, media::OCI_MANIFEST, SPDX),
        (&sbom.digest, &sbom_sig.digest, media::OCI_MANIFEST, SIGNATURE),
        // A cycle: the signature's "referrer" is the image.
        (
            &sbom_sig.digest,
            &image.digest,
            media::OCI_MANIFEST,
            "application/x-cycle",
        ),
    ] {
        let size = manifest(&a, "app", referrer).await.len();
        let fallback = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_INDEX,
            "manifests": [{"mediaType": media_type, "digest": referrer, "size": size,
                           "artifactType": artifact_type}],
        }))
        .unwrap();
        put_manifest(&a, "app", &fallback_tag(subject), &fallback, media::OCI_INDEX).await;
        fallbacks.push((fallback_tag(subject), fallback));
    }

    let (sa, sb) = (plain(a.host()).await, plain(b.host()).await);
    let (from, to) = (r(a.host(), "app:v1"), r(b.host(), "mirror:v1"));
    let rep = copy(&sa, &from, &sb, &to, &Platforms::All).await.unwrap();
    let n = copy_referrers(&sa, &from, &sb, &to, &rep.digest).await.unwrap();
    assert_eq!(n, 2, "the SBOM and its signature");
    for (what, l) in [("the SBOM", &sbom), ("its signature", &sbom_sig)] {
        assert_eq!(
            manifest(&b, "mirror", &l.digest).await,
            manifest(&a, "app", &l.digest).await,
            "{what}, byte for byte"
        );
    }
    for (tag, fallback) in &fallbacks {
        assert_eq!(
            &manifest(&b, "mirror", tag).await,
            fallback,
            "the fallback tag {tag}"
        );
    }
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
    let mut tags = list_tags(&sb, &r(b.host(), "mirror")).await.unwrap();
    tags.sort();
    let mut want: Vec<String> = fallbacks.iter().map(|(t, _)| t.clone()).collect();
    want.extend(["v1".into(), "v2".into()]);
    want.sort();
    assert_eq!(tags, want);
}

/// `--referrers` from a registry with the referrers API (go-containerregistry's): an image
/// with an SBOM and a signature, and a signature of the SBOM. To another registry with the
/// API, the artifacts go byte for byte, its API lists them and no fallback tag is made; to
/// docker-registry (no API), a fallback tag per subject is written, its entries described
/// from the manifests (mediaType, size, artifactType, annotations), the same bytes again on
/// a second copy.
#[tokio::test]
async fn referrers_follow_the_image_through_the_referrers_api() {
    use ido_oci::copy::copy_referrers;
    use ido_testkit::{oci_image::build_artifact, ociregistry::OciRegistry};
    let (a, b) = (
        OciRegistry::start().await.unwrap(),
        OciRegistry::start().await.unwrap(),
    );
    let c = DockerRegistry::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_layout(&d.join("img"), "v1", &["linux/amd64"], 1, 4_000, 31)
        .await
        .unwrap();
    a.push_layout(&image, "app:v1").await.unwrap();
    let sbom = build_artifact(&d.join("sbom"), "sbom", SPDX, &image, 900, 32)
        .await
        .unwrap();
    let sig = build_artifact(&d.join("sig"), "sig", SIGNATURE, &image, 300, 33)
        .await
        .unwrap();
    let sbom_sig = build_artifact(&d.join("sbom-sig"), "sig", SIGNATURE, &sbom, 300, 34)
        .await
        .unwrap();
    for (l, tag) in [(&sbom, "sbom"), (&sig, "sig"), (&sbom_sig, "sbom-sig")] {
        a.push_layout(l, &format!("app:{tag}")).await.unwrap();
    }
    let two = sorted([&sbom.digest, &sig.digest]);
    assert_eq!(referrers(&a, "app", &image.digest).await, two, "the source's API");
    assert_eq!(
        referrers(&a, "app", &sbom.digest).await,
        sorted([&sbom_sig.digest])
    );
    let artifacts = [(&sbom, SPDX), (&sig, SIGNATURE), (&sbom_sig, SIGNATURE)];

    let sa = plain(a.host()).await;
    let from = r(a.host(), "app:v1");

    // To a registry with the API: its API lists them, and no fallback tag.
    let sb = plain(b.host()).await;
    let to = r(b.host(), "mirror:v1");
    let rep = copy(&sa, &from, &sb, &to, &Platforms::All).await.unwrap();
    assert_eq!(rep.digest, image.digest);
    assert_eq!(
        copy_referrers(&sa, &from, &sb, &to, &rep.digest).await.unwrap(),
        3
    );
    for (l, _) in artifacts {
        assert_eq!(
            manifest(&b, "mirror", &l.digest).await,
            manifest(&a, "app", &l.digest).await,
            "{}, byte for byte",
            l.dir.display()
        );
    }
    assert_eq!(referrers(&b, "mirror", &image.digest).await, two);
    assert_eq!(
        referrers(&b, "mirror", &sbom.digest).await,
        sorted([&sbom_sig.digest])
    );
    assert_eq!(
        list_tags(&sb, &r(b.host(), "mirror")).await.unwrap(),
        ["v1"],
        "no fallback tag"
    );

    // To docker-registry: fallback tags.
    let sc = plain(c.host()).await;
    let to = r(c.host(), "mirror:v1");
    copy(&sa, &from, &sc, &to, &Platforms::All).await.unwrap();
    assert_eq!(
        copy_referrers(&sa, &from, &sc, &to, &rep.digest).await.unwrap(),
        3
    );
    let mut entries = std::collections::BTreeMap::new();
    for (l, artifact_type) in artifacts {
        let bytes = manifest(&c, "mirror", &l.digest).await;
        assert_eq!(bytes, manifest(&a, "app", &l.digest).await, "{}", l.dir.display());
        entries.insert(
            l.digest.clone(),
            json!({"mediaType": media::OCI_MANIFEST, "digest": l.digest, "size": bytes.len(),
                   "artifactType": artifact_type,
                   "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}),
        );
    }
    let index = |digests: &[String]| {
        json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
               "manifests": digests.iter().map(|d| entries[d].clone()).collect::<Vec<_>>()})
    };
    let image_tag = fallback_tag(&image.digest);
    let image_bytes = manifest(&c, "mirror", &image_tag).await;
    let got: Value = serde_json::from_slice(&image_bytes).unwrap();
    assert_eq!(got, index(&two), "the image's fallback tag");
    let sbom_tag = fallback_tag(&sbom.digest);
    let sbom_bytes = manifest(&c, "mirror", &sbom_tag).await;
    let got: Value = serde_json::from_slice(&sbom_bytes).unwrap();
    assert_eq!(got, index(&sorted([&sbom_sig.digest])), "the SBOM's fallback tag");
    // Again: the same tags, byte for byte (the API's order is not the tag's).
    assert_eq!(
        copy_referrers(&sa, &from, &sc, &to, &rep.digest).await.unwrap(),
        3
    );
    assert_eq!(manifest(&c, "mirror", &image_tag).await, image_bytes);
    assert_eq!(manifest(&c, "mirror", &sbom_tag).await, sbom_bytes);
}

/// `--referrers` follows referrers of referrers 8 levels deep, no deeper: a chain of ten
/// signatures, each of the one before, brings eight.
#[tokio::test]
async fn referrers_stop_eight_levels_deep() {
    use ido_oci::copy::copy_referrers;
    use ido_testkit::{oci_image::build_artifact, ociregistry::OciRegistry};
    let (a, b) = (
        OciRegistry::start().await.unwrap(),
        OciRegistry::start().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_layout(&d.join("img"), "v1", &["linux/amd64"], 1, 1_000, 41)
        .await
        .unwrap();
    a.push_layout(&image, "app:v1").await.unwrap();
    let mut chain = vec![image.clone()];
    for i in 0..10 {
        let sig = build_artifact(
            &d.join(format!("sig{i}")),
            "sig",
            SIGNATURE,
            &chain[i],
            100,
            50 + i as u64,
        )
        .await
        .unwrap();
        a.push_layout(&sig, &format!("app:sig{i}")).await.unwrap();
        chain.push(sig);
    }
    let (sa, sb) = (plain(a.host()).await, plain(b.host()).await);
    let (from, to) = (r(a.host(), "app:v1"), r(b.host(), "mirror:v1"));
    copy(&sa, &from, &sb, &to, &Platforms::All).await.unwrap();
    assert_eq!(
        copy_referrers(&sa, &from, &sb, &to, &image.digest).await.unwrap(),
        8
    );
    assert_eq!(
        referrers(&b, "mirror", &chain[7].digest).await,
        sorted([&chain[8].digest])
    );
    assert_eq!(
        referrers(&b, "mirror", &chain[8].digest).await,
        Vec::<String>::new()
    );
}

/// A registry that answers a manifest push with 201 and no `Location` (go-containerregistry's
/// registry; ECR too, by oci-client's own account): a two-platform index, whose images are
/// pushed by digest, copies byte for byte. oci-client's manifest push panicked here ("The
/// manifest URL always ends with the image tag suffix"); ido puts manifests itself.
#[tokio::test]
async fn manifests_push_to_registries_that_answer_without_a_location() {
    use ido_testkit::ociregistry::OciRegistry;
    let (a, b) = (
        OciRegistry::start().await.unwrap(),
        OciRegistry::start_without_manifest_location().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let index = build_layout(
        &dir.path().join("idx"),
        "v1",
        &["linux/amd64", "linux/arm64"],
        2,
        3_000,
        41,
    )
    .await
    .unwrap();
    a.push_layout(&index, "app:v1").await.unwrap();
    let (sa, sb) = (plain(a.host()).await, plain(b.host()).await);
    let rep = copy(
        &sa,
        &r(a.host(), "app:v1"),
        &sb,
        &r(b.host(), "mirror:v1"),
        &Platforms::All,
    )
    .await
    .unwrap();
    assert_eq!(rep.digest, index.digest);
    assert_eq!(rep.manifests, 3, "two images by digest, then the index by tag");
    assert_eq!(
        manifest(&b, "mirror", "v1").await,
        manifest(&a, "app", "v1").await,
        "byte for byte"
    );
}
