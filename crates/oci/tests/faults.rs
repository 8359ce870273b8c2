//! Copies through the test kit's fault-injecting proxy, on the source side and on the
//! destination side: connection resets mid-blob (download and upload), 503s, 429 with
//! `Retry-After`. The copy completes and every digest matches what skopeo sees at the source.

mod common;

use common::{plain, r};

use std::time::Duration;

use ido_oci::copy::{Platforms, copy};
use ido_testkit::{
    fault_proxy::{Event, Fault, FaultProxy, Rule, When},
    oci_image::{Layout, build_layout, push_layout},
    registry::{DockerRegistry, skopeo_raw},
};

/// A 2-platform index with 2 layers of 1 MiB each per platform, at `reg` as `multi:1`.
async fn source_image(reg: &DockerRegistry, dir: &std::path::Path) -> Layout {
    let layout = build_layout(
        &dir.join("l"),
        "1",
        &["linux/amd64", "linux/arm64"],
        2,
        1 << 20,
        11,
    )
    .await
    .unwrap();
    push_layout(&layout, reg, "multi:1").await.unwrap();
    layout
}

/// The destination has the index and each image, byte-exact, as skopeo sees them.
async fn assert_same(
    a: &DockerRegistry,
    b: &DockerRegistry,
    dst_repo_tag: &str,
    layout: &Layout,
    dir: &std::path::Path,
) {
    let (_, src) = skopeo_raw(a, "multi:1", dir).await.unwrap();
    let (_, dst) = skopeo_raw(b, dst_repo_tag, dir).await.unwrap();
    assert_eq!(src, dst);
    assert_eq!(src, layout.digest);
    let repo = dst_repo_tag.split(':').next().unwrap();
    for (_, d) in &layout.images {
        assert_eq!(&skopeo_raw(b, &format!("{repo}@{d}"), dir).await.unwrap().1, d);
    }
}

/// Time between the 429 on a `method` request whose path contains `path_part` and the next
/// request for the same path.
fn wait_after_429(events: &[Event], method: &str, path_part: &str) -> Duration {
    let first = events
        .iter()
        .find(|e| {
            e.method == method
                && e.path.contains(path_part)
                && matches!(e.fault, Some(Fault::TooManyRequests { .. }))
        })
        .expect("a 429 was injected");
    let next = events
        .iter()
        .find(|e| e.at > first.at && e.method == method && e.path == first.path)
        .expect("the request was retried");
    next.at - first.at
}

#[tokio::test]
async fn source_side_resets_503s_and_429() {
    let (a, b) = (
        DockerRegistry::start(Default::default()).await.unwrap(),
        DockerRegistry::start(Default::default()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = source_image(&a, dir.path()).await;
    let proxy = FaultProxy::start(&a.base_url()).await.unwrap();
    let (src, dst) = (plain(&proxy.host()).await, plain(b.host()).await);
    let layers = layer_hexes(&layout);
    let cut_download = |hex: &str| {
        Rule::new(Fault::ResetResponse { after_bytes: 300_000 })
            .method("GET")
            .path(hex)
            .when(When::First(1))
    };
    proxy.set_rules(vec![
        // Two layer downloads cut after 300 kB of their 1 MiB.
        cut_download(&layers[0]),
        cut_download(&layers[3]),
        // The first manifest request: slow down, come back in a second.
        Rule::new(Fault::TooManyRequests { retry_after_secs: 1 })
            .path("/manifests/")
            .when(When::First(1)),
        // And every 4th request fails.
        Rule::new(Fault::Status(503)).when(When::EveryNth(4)),
    ]);

    let rep = copy(
        &src,
        &r(&proxy.host(), "multi:1"),
        &dst,
        &r(b.host(), "mirror/multi:1"),
        &Platforms::All,
    )
    .await
    .unwrap();
    assert_eq!((rep.blobs_copied, rep.manifests), (6, 3), "{rep:?}");
    assert_eq!(rep.bytes, layout.layer_bytes + config_bytes(&layout));
    let counts = proxy.counts();
    assert_eq!(counts.resets_response, 2, "{counts:?}");
    assert_eq!(counts.too_many_requests, 1, "{counts:?}");
    assert!(counts.statuses >= 1, "{counts:?}");
    let waited = wait_after_429(&proxy.events(), "GET", "/manifests/");
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 not honoured: {waited:?}"
    );
    assert_same(&a, &b, "mirror/multi:1", &layout, dir.path()).await;
}

#[tokio::test]
async fn destination_side_resets_503s_and_429() {
    let (a, b) = (
        DockerRegistry::start(Default::default()).await.unwrap(),
        DockerRegistry::start(Default::default()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = source_image(&a, dir.path()).await;
    let proxy = FaultProxy::start(&b.base_url()).await.unwrap();
    let (src, dst) = (plain(a.host()).await, plain(&proxy.host()).await);
    let layers = layer_hexes(&layout);
    let cut_upload = |hex: &str| {
        Rule::new(Fault::ResetRequest { after_bytes: 200_000 })
            .method("PUT")
            .path(hex)
            .when(When::First(1))
    };
    proxy.set_rules(vec![
        // Two layer uploads cut after 200 kB of their 1 MiB.
        cut_upload(&layers[1]),
        cut_upload(&layers[2]),
        // Upload sessions refused twice, a blob HEAD told to slow down, a manifest push
        // refused once.
        Rule::new(Fault::Status(503))
            .method("POST")
            .path("/blobs/uploads/")
            .when(When::First(2)),
        Rule::new(Fault::TooManyRequests { retry_after_secs: 1 })
            .method("HEAD")
            .path("/blobs/")
            .when(When::First(1)),
        Rule::new(Fault::Status(503))
            .method("PUT")
            .path("/manifests/")
            .when(When::First(1)),
    ]);

    let rep = copy(
        &src,
        &r(a.host(), "multi:1"),
        &dst,
        &r(&proxy.host(), "mirror/multi:1"),
        &Platforms::All,
    )
    .await
    .unwrap();
    assert_eq!((rep.blobs_copied, rep.manifests), (6, 3), "{rep:?}");
    let counts = proxy.counts();
    assert_eq!(counts.resets_request, 2, "{counts:?}");
    assert_eq!((counts.statuses, counts.too_many_requests), (3, 1), "{counts:?}");
    // oci-client does not expose the 429's headers to the engine: it waits at least 1 s.
    let waited = wait_after_429(&proxy.events(), "HEAD", "/blobs/");
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert_same(&a, &b, "mirror/multi:1", &layout, dir.path()).await;

    // Again through the proxy, now clean: nothing to do.
    proxy.clear_rules();
    let again = copy(
        &src,
        &r(a.host(), "multi:1"),
        &dst,
        &r(&proxy.host(), "mirror/multi:1"),
        &Platforms::All,
    )
    .await
    .unwrap();
    assert!(again.skipped);
}

/// The image manifests of the layout.
fn manifests(layout: &Layout) -> Vec<serde_json::Value> {
    layout
        .images
        .iter()
        .map(|(_, m)| {
            let path = layout
                .dir
                .join("blobs/sha256")
                .join(m.trim_start_matches("sha256:"));
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        })
        .collect()
}

/// Config blob bytes of the layout's images.
fn config_bytes(layout: &Layout) -> u64 {
    manifests(layout)
        .iter()
        .map(|m| m["config"]["size"].as_u64().unwrap())
        .sum()
}

/// The hex part of every layer digest (as it appears in blob URLs, also URL-encoded ones).
fn layer_hexes(layout: &Layout) -> Vec<String> {
    manifests(layout)
        .iter()
        .flat_map(|m| m["layers"].as_array().unwrap().clone())
        .map(|l| {
            l["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect()
}
