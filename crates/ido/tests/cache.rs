//! `ido cache`: the image cache's records (CachedImages) of a state directory as the
//! reconcilers leave them, one row per source image: its copy, phase, short digest, last
//! use, policy, and the workloads that keep it (or when it goes unused).

use std::{path::Path, process::Output};

use ido_api::{CachedImage, ClusterImageCachePolicy, ImageCachePolicy};
use ido_controllers::file_store::FileStore;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

fn ido(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ago(d: SignedDuration) -> String {
    (Timestamp::now() - d).to_string()
}

fn record(name: &str, source: &str, policy: &str, status: Value) -> CachedImage {
    let target = format!("cache.example:5000/mirror/{source}");
    serde_json::from_value(json!({
        "apiVersion": "ido.dev/v1alpha1", "kind": "CachedImage",
        "metadata": {"name": name},
        "spec": {"source": source, "target": target, "policy": policy},
        "status": status
    }))
    .unwrap()
}

fn workload(kind: &str, name: &str) -> Value {
    json!({"kind": kind, "namespace": "shop", "name": name})
}

/// A state directory holding two policies and four records: cached and used by five
/// workloads, pending, cached and unused (its policy keeps unused copies 72 h), and one
/// whose policy is gone.
fn state(dir: &Path) {
    let store = FileStore::open(dir).unwrap();
    let cluster: ClusterImageCachePolicy = serde_json::from_value(json!({
        "apiVersion": "ido.dev/v1alpha1", "kind": "ClusterImageCachePolicy",
        "metadata": {"name": "everything"},
        "spec": {"target": {"registry": "cache.example:5000", "pathPrefix": "mirror"}}
    }))
    .unwrap();
    let team: ImageCachePolicy = serde_json::from_value(json!({
        "apiVersion": "ido.dev/v1alpha1", "kind": "ImageCachePolicy",
        "metadata": {"name": "team", "namespace": "shop"},
        "spec": {"target": {"registry": "cache.example:5000", "pathPrefix": "mirror"},
                 "retention": "72h"}
    }))
    .unwrap();
    store.apply(&cluster).unwrap();
    store.apply(&team).unwrap();
    let digest = "sha256:1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
    store
        .apply(&record(
            "nginx",
            "docker.io/library/nginx:1.27",
            "ClusterImageCachePolicy/everything",
            json!({"phase": "Cached", "digest": digest, "workloadCount": 5,
                   "workloads": [workload("CronJob", "nightly"), workload("Deployment", "api"),
                                 workload("Deployment", "web"), workload("Pod", "debug"),
                                 workload("StatefulSet", "db")],
                   "lastUsedTime": ago(SignedDuration::from_secs(10 * 60 + 30))}),
        ))
        .unwrap();
    store
        .apply(&record(
            "busybox",
            "docker.io/library/busybox:1.36",
            "ClusterImageCachePolicy/everything",
            json!({"phase": "Pending", "workloadCount": 1, "workloads": [workload("Deployment", "web")]}),
        ))
        .unwrap();
    store
        .apply(&record(
            "tool",
            "ghcr.io/acme/tool:1",
            "ImageCachePolicy/shop/team",
            json!({"phase": "Cached", "digest": "sha256:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
                   "lastUsedTime": ago(SignedDuration::from_secs(3 * 3600 + 1800))}),
        ))
        .unwrap();
    store
        .apply(&record(
            "old",
            "quay.io/old/thing:0.1",
            "ClusterImageCachePolicy/gone",
            json!({"phase": "Failed",
                   "lastUsedTime": ago(SignedDuration::from_secs(5 * 86400 + 60))}),
        ))
        .unwrap();
}

/// The lines of a table, each cell run together with single spaces.
fn squeezed(table: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn cache_lists_each_image_with_its_copy_and_why_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("state");
    state(&st);
    let st = st.to_str().unwrap();

    let out = ido(&["cache", "--state", st]);
    assert!(out.status.success(), "{}", explain(&out));
    let text = stdout(&out);
    assert_eq!(
        squeezed(&text),
        [
            "SOURCE COPY PHASE DIGEST LAST USED POLICY WORKLOADS",
            "docker.io/library/busybox:1.36 cache.example:5000/mirror/docker.io/library/busybox:1.36 Pending - - \
             ClusterImageCachePolicy/everything 1: Deployment shop/web",
            "docker.io/library/nginx:1.27 cache.example:5000/mirror/docker.io/library/nginx:1.27 Cached 1a2b3c4d5e6f \
             10m ago ClusterImageCachePolicy/everything 5: CronJob shop/nightly, Deployment shop/api, \
             Deployment shop/web, +2 more",
            "ghcr.io/acme/tool:1 cache.example:5000/mirror/ghcr.io/acme/tool:1 Cached ffeeddccbbaa 3h ago \
             ImageCachePolicy/shop/team 0: unused, deleted in 2d",
            "quay.io/old/thing:0.1 cache.example:5000/mirror/quay.io/old/thing:0.1 Failed - 5d ago \
             ClusterImageCachePolicy/gone 0: unused, ClusterImageCachePolicy/gone is gone: the record goes, \
             the copy stays",
        ],
        "{text}"
    );
    // Columns line up under their headers.
    let lines: Vec<&str> = text.lines().collect();
    for header in ["COPY", "PHASE", "DIGEST", "LAST USED", "POLICY", "WORKLOADS"] {
        let at = lines[0].find(header).unwrap();
        for l in &lines[1..] {
            assert!(
                l[..at].ends_with("  ") && !l[at..].starts_with(' '),
                "{header} at {at}:\n{text}"
            );
        }
    }

    // Every workload named, on request.
    let out = ido(&["cache", "--state", st, "--workloads", "5"]);
    assert!(
        stdout(&out).contains(
            "5: CronJob shop/nightly, Deployment shop/api, Deployment shop/web, Pod shop/debug, StatefulSet shop/db\n"
        ),
        "{}",
        explain(&out)
    );

    // One policy's images, named with or without its kind.
    for name in ["shop/team", "ImageCachePolicy/shop/team"] {
        let out = ido(&["cache", "--state", st, "--policy", name]);
        assert!(out.status.success(), "{}", explain(&out));
        let rows = squeezed(&stdout(&out));
        assert_eq!(rows.len(), 2, "{}", explain(&out));
        assert!(rows[1].starts_with("ghcr.io/acme/tool:1 "), "{}", explain(&out));
    }
    let out = ido(&["cache", "--state", st, "--policy", "everything"]);
    let rows = squeezed(&stdout(&out));
    assert_eq!(rows.len(), 3, "{}", explain(&out));
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.contains(" ClusterImageCachePolicy/everything "))
    );

    // No match: nothing on stdout, a note on stderr, success.
    let out = ido(&["cache", "--state", st, "--policy", "nothing"]);
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(stdout(&out), "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cached image of policy nothing"),
        "{}",
        explain(&out)
    );
}

#[test]
fn cache_without_a_state_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let out = ido(&["cache", "--state", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no state directory at") && err.contains("nowhere"),
        "{err}"
    );
    assert!(!missing.exists(), "a listing creates no state directory");
}
