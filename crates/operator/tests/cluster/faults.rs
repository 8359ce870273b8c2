//! Faults against the real API server: the API server restarted in the middle of an upload,
//! and the leader killed in the middle of one (either way each location ends with exactly one
//! template, uploaded once to completion, and the NodeImage's status is right); watches sent
//! away with 410 Gone (relist, nothing missed); status writes that meet 409 Conflict from
//! another writer (retried on a fresh copy).

use std::{sync::Arc, time::Duration};

use ido_api::{NodeImage, Release};
use ido_controllers::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

use crate::{IMAGE, MemProvider, RELEASE, env::Env, operator::replica, parts, release, s3_source, wait_for};

async fn start(
    env: &Env,
    provider: Arc<MemProvider>,
    identity: &str,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let parts = parts(provider, s3_source().await, Metrics::default(), &env.ns);
    tokio::spawn(ido_operator::run_until(
        env.operator_client().await,
        parts,
        replica(&env.op_ns, identity),
        std::future::pending(),
    ))
}

/// Waits (up to 60 s) for the NodeImage to be Available in both locations.
async fn available(env: &Env) {
    for _ in 0..600 {
        if let Some(ni) = env.get::<NodeImage>(Some(&env.ns), IMAGE).await {
            let locs = ni["status"]["locations"].as_array().cloned().unwrap_or_default();
            if ni["status"]["state"] == "Available"
                && locs.len() == 2
                && locs.iter().all(|l| l["state"] == "Available")
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the NodeImage never became Available: {:?}",
        env.get::<NodeImage>(Some(&env.ns), IMAGE).await
    );
}

#[tokio::test]
async fn an_api_server_restart_mid_upload_leaves_one_template_per_location() {
    let env = Env::private("restart", json!({})).await;
    let provider = Arc::new(MemProvider {
        delay: Duration::from_secs(8),
        ..MemProvider::default()
    });
    let op = start(&env, provider.clone(), "ido-0").await;
    env.create(&release(RELEASE)).await;
    wait_for("the uploads to start", async || {
        *provider.creates.lock().unwrap() == 2
    })
    .await;

    env.cluster().restart("kube-apiserver").await.unwrap();
    available(&env).await;
    assert_eq!(
        *provider.completed.lock().unwrap(),
        2,
        "each location uploaded once"
    );
    assert_eq!(provider.templates.lock().unwrap().len(), 2);
    assert!(
        !op.is_finished(),
        "the operator kept running (and leading) through the restart"
    );
    op.abort();
}

#[tokio::test]
async fn a_leader_killed_mid_upload_is_replaced_within_the_lease_and_one_template_results() {
    let env = Env::private("failover", json!({})).await;
    let op_ns = env.op_ns.clone();
    // One catalog seen by both replicas, as one vCenter would be.
    let provider = Arc::new(MemProvider {
        delay: Duration::from_secs(6),
        ..MemProvider::default()
    });
    let a = start(&env, provider.clone(), "ido-0").await;
    let holder = async || {
        env.get::<Lease>(Some(&op_ns), "ido-leader")
            .await
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    wait_for("ido-0 to lead", async || holder().await == Some(json!("ido-0"))).await;
    let b = start(&env, provider.clone(), "ido-1").await;
    env.create(&release(RELEASE)).await;
    wait_for("the uploads to start", async || {
        *provider.creates.lock().unwrap() == 2
    })
    .await;

    // Killed: no clean shutdown, the lease is not given up, the uploads never finish.
    a.abort();
    let killed = std::time::Instant::now();
    for _ in 0..250 {
        if holder().await == Some(json!("ido-1")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    assert_eq!(
        holder().await,
        Some(json!("ido-1")),
        "the standby never took over"
    );
    // The lease lasts 15 s; the standby retries every 5 s.
    assert!(took < Duration::from_secs(22), "took over after {took:?}");
    available(&env).await;
    assert_eq!(
        *provider.completed.lock().unwrap(),
        2,
        "one finished upload per location"
    );
    assert_eq!(
        provider.templates.lock().unwrap().len(),
        2,
        "exactly one template per location"
    );
    assert!(!b.is_finished());
    b.abort();
}

/// The API server's own count of requests matching every `label="value"` of `labels`
/// (`apiserver_request_total`), read from its /metrics as the admin.
async fn apiserver_requests(env: &Env, labels: &[&str]) -> u64 {
    let text = env
        .cluster()
        .kubectl(&["get", "--raw", "/metrics"])
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && labels.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Warnings logged on this thread (the test's runtime runs the operator's tasks on it).
#[derive(Clone, Default)]
struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        struct Text<'a>(&'a mut String);
        impl tracing::field::Visit for Text<'_> {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={v:?}", f.name()));
            }
        }
        let mut s = String::new();
        e.record(&mut Text(&mut s));
        self.0.lock().unwrap().push(s);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The API server restarts: its watch cache starts again from the current revision, so the
/// operator's watches come back with resource versions it no longer has (410 Gone). The
/// watchers list again, and a Release created while they were away is not missed.
#[tokio::test]
async fn watches_expired_by_a_restart_relist_and_miss_nothing() {
    let warnings = Warnings::default();
    let _log = tracing::subscriber::set_default(warnings.clone());
    let env = Env::private("expired", json!({})).await;
    let provider = Arc::new(MemProvider::default());
    let op = start(&env, provider.clone(), "ido-0").await;
    env.create(&release(RELEASE)).await;
    available(&env).await;

    // Writes that move the revision on, then the restart.
    for i in 0..20 {
        env.create(
            &serde_json::from_value::<k8s_openapi::api::core::v1::ConfigMap>(json!({
                "metadata": {"name": format!("churn-{i}"), "namespace": env.ns}
            }))
            .unwrap(),
        )
        .await;
    }
    env.cluster().restart("kube-apiserver").await.unwrap();
    // At once, before the operator's watches are back: a Release with another image.
    let other = Release::with_components(
        "vsphere-31.0.0",
        &[
            ("flatcar", "4152.2.0"),
            ("kubernetes", "v1.31.1"),
            ("os-tooling", "v1.19.0"),
        ],
    );
    env.create(&other).await;
    wait_for("the second NodeImage", async || {
        env.list::<NodeImage>(Some(&env.ns)).await.len() == 2
    })
    .await;
    // The watchers listed Releases again after the restart (the server's counters start
    // at 0 with it): a relist, not a resumed watch.
    let relists = apiserver_requests(&env, &["verb=\"LIST\"", "resource=\"releases\""]).await;
    assert!(relists >= 1, "no LIST of releases after the restart");
    // And the operator's own Release watch was the one sent away with 410 Gone.
    let seen = warnings.0.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|w| w.contains("controller=\"release\"") && w.contains("too old resource version")),
        "the Release watch never expired: {seen:#?}"
    );
    assert!(!op.is_finished());
    op.abort();
}

/// Another writer keeps changing the NodeImage while the operator writes its status: the
/// operator's stale writes get 409 Conflict, are retried on a fresh copy, and the status
/// ends right.
#[tokio::test]
async fn status_conflicts_with_another_writer_are_retried() {
    let env = Env::private("conflict", json!({})).await;
    let provider = Arc::new(MemProvider {
        delay: Duration::from_secs(3),
        ..MemProvider::default()
    });
    let op = start(&env, provider.clone(), "ido-0").await;
    env.create(&release(RELEASE)).await;
    wait_for("the NodeImage", async || {
        env.get::<NodeImage>(Some(&env.ns), IMAGE).await.is_some()
    })
    .await;
    // The other writer: an annotation changed every 20 ms until the image is Available.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, ns, stop) = (env.admin.clone(), env.ns.clone(), stop.clone());
        tokio::spawn(async move {
            let api: kube::Api<NodeImage> = kube::Api::namespaced(client, &ns);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let patch = json!({"metadata": {"annotations": {"test.ido.dev/touched": n.to_string()}}});
                let _ = api
                    .patch(
                        IMAGE,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    available(&env).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let touched = writer.await.unwrap();
    assert!(touched > 10, "the other writer wrote {touched} times");
    let conflicts = apiserver_requests(
        &env,
        &[
            "code=\"409\"",
            "resource=\"nodeimages\"",
            "subresource=\"status\"",
        ],
    )
    .await;
    assert!(conflicts >= 1, "no status write met a conflict");
    let ni = env.get::<NodeImage>(Some(&env.ns), IMAGE).await.unwrap();
    assert_eq!(ni["status"]["state"], "Available", "{ni}");
    assert_eq!(ni["status"]["releases"], json!([RELEASE]), "{ni}");
    assert_eq!(provider.templates.lock().unwrap().len(), 2);
    assert!(!op.is_finished());
    op.abort();
}
