//! The copy engine against real `docker-registry` instances, with skopeo as the oracle:
//! digests at the destination equal the source's as skopeo sees them.

mod common;

use common::{r, side};

use std::sync::Arc;

use ido_oci::{
    auth::{AuthStore, Credentials},
    copy::{Platforms, Progress, copy, copy_with_progress},
    media::Platform,
    registry::{Registry, TlsSettings},
};
use ido_testkit::{
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};

#[tokio::test]
async fn single_image_byte_exact_then_skipped() {
    let (a, b) = (
        DockerRegistry::start(Default::default()).await.unwrap(),
        DockerRegistry::start(Default::default()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "v1", &["linux/amd64"], 3, 200_000, 1)
        .await
        .unwrap();
    push_layout(&layout, &a, "app:v1").await.unwrap();
    let (sa, sb) = (side(&a).await, side(&b).await);

    let rep = copy(
        &sa,
        &r(a.host(), "app:v1"),
        &sb,
        &r(b.host(), "mirror/app:v1"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert!(!rep.skipped);
    assert_eq!(rep.blobs_copied, 4, "3 layers and the config");
    assert!(rep.bytes >= 600_000);
    let (_, src) = skopeo_raw(&a, "app:v1", dir.path()).await.unwrap();
    let (_, dst) = skopeo_raw(&b, "mirror/app:v1", dir.path()).await.unwrap();
    assert_eq!(src, dst);
    assert_eq!(rep.digest, src);
    assert_eq!(src, layout.digest);

    // Again: the destination tag has the digest, nothing is copied.
    let rep = copy(
        &sa,
        &r(a.host(), "app:v1"),
        &sb,
        &r(b.host(), "mirror/app:v1"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert!(rep.skipped && rep.bytes == 0);

    // Another tag of the same content: blobs are present, only the manifest is pushed.
    let rep = copy(
        &sa,
        &r(a.host(), "app:v1"),
        &sb,
        &r(b.host(), "mirror/app:v1-again"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert_eq!((rep.blobs_present, rep.blobs_copied, rep.bytes), (4, 0, 0));

    // Same registry, other repository: blobs are mounted, not streamed.
    let rep = copy(
        &sb,
        &r(b.host(), "mirror/app:v1"),
        &sb,
        &r(b.host(), "other/app:v1"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert_eq!((rep.blobs_mounted, rep.bytes), (4, 0));
    assert_eq!(skopeo_raw(&b, "other/app:v1", dir.path()).await.unwrap().1, src);
}

#[tokio::test]
async fn multi_arch_index_all_and_by_platform() {
    let (a, b) = (
        DockerRegistry::start(Default::default()).await.unwrap(),
        DockerRegistry::start(Default::default()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        &dir.path().join("l"),
        "v2",
        &["linux/amd64", "linux/arm64"],
        2,
        100_000,
        2,
    )
    .await
    .unwrap();
    push_layout(&layout, &a, "multi:v2").await.unwrap();
    let (sa, sb) = (side(&a).await, side(&b).await);

    let progress = Progress::default();
    let rep = copy_with_progress(
        &sa,
        &r(a.host(), "multi:v2"),
        &sb,
        &r(b.host(), "multi:v2"),
        &Platforms::All,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(rep.manifests, 3, "two images and the index");
    // Every blob streamed: the progress total is their bytes, and all of it is done.
    assert!(progress.total() > 4 * 100_000, "total {}", progress.total());
    assert_eq!(progress.total(), rep.bytes);
    assert_eq!(progress.get(), progress.total());
    let (_, src) = skopeo_raw(&a, "multi:v2", dir.path()).await.unwrap();
    let (_, dst) = skopeo_raw(&b, "multi:v2", dir.path()).await.unwrap();
    assert_eq!(src, dst);
    for (_, d) in &layout.images {
        assert_eq!(
            &skopeo_raw(&b, &format!("multi@{d}"), dir.path()).await.unwrap().1,
            d
        );
    }

    // One platform: that image's manifest, byte-exact, under the tag.
    let arm = Platforms::Only(vec![Platform::parse("linux/arm64").unwrap()]);
    copy(&sa, &r(a.host(), "multi:v2"), &sb, &r(b.host(), "arm:v2"), &arm)
        .await
        .unwrap();
    let want = &layout.images.iter().find(|(p, _)| p == "linux/arm64").unwrap().1;
    assert_eq!(&skopeo_raw(&b, "arm:v2", dir.path()).await.unwrap().1, want);

    // A platform the index lacks: a clear error listing what it has.
    let s390 = Platforms::Only(vec![Platform::parse("linux/s390x").unwrap()]);
    let e = copy(&sa, &r(a.host(), "multi:v2"), &sb, &r(b.host(), "x:v2"), &s390)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux/s390x") && e.contains("linux/arm64"), "{e}");
}

#[tokio::test]
async fn tls_and_basic_auth_with_verification() {
    let a = DockerRegistry::start(Default::default()).await.unwrap();
    let opts = RegistryOptions {
        tls: true,
        auth: Some(("mirror".into(), "pass-for-test-1".into())),
    };
    let b = DockerRegistry::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "v3", &["linux/amd64"], 1, 50_000, 3)
        .await
        .unwrap();
    push_layout(&layout, &a, "app:v3").await.unwrap();
    let sa = side(&a).await;

    let rep = copy(
        &sa,
        &r(a.host(), "app:v3"),
        &side(&b).await,
        &r(b.host(), "app:v3"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    assert_eq!(rep.digest, skopeo_raw(&b, "app:v3", dir.path()).await.unwrap().1);

    // Wrong password: an authorization error that does not print the password.
    let mut auths = AuthStore::default();
    auths.insert(
        b.host(),
        Credentials {
            username: "mirror".into(),
            password: "wrong-pw-xyz".into(),
        },
    );
    let tls = TlsSettings {
        verify: true,
        ca_bundle: b.ca().map(|c| c.ca_pem()),
    };
    let bad = Registry::connect(b.host(), &tls, Arc::new(auths), 2)
        .await
        .unwrap();
    let e = copy(
        &sa,
        &r(a.host(), "app:v3"),
        &bad,
        &r(b.host(), "app:v4"),
        &Platforms::Host,
    )
    .await
    .unwrap_err();
    let e = format!("{e} {e:?}");
    assert!(!e.contains("wrong-pw-xyz"), "{e}");

    // Without the CA, TLS verification fails at once, naming the registry.
    let e = Registry::connect(
        b.host(),
        &TlsSettings::default(),
        Arc::new(AuthStore::default()),
        2,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(b.host()) && e.contains("certificate does not verify"),
        "{e}"
    );
}
