//! The whole operator: `run_until` with leader election, watches and both controllers.

use std::{sync::Arc, time::Duration};

use ido_api::{NodeImage, Release, release};
use ido_controllers::metrics::Metrics;
use ido_operator::OperatorOptions;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{Value, json};

use crate::{
    IMAGE, MemProvider, RELEASE, env::Env, free_addr, has_finalizer, parts, release, s3_source, wait_for,
};

/// `run_until` with leader election and every controller, authenticated as the chart's
/// ServiceAccount; a Release comes and goes. A cluster of its own: the release controller
/// watches Releases cluster-wide.
#[tokio::test]
async fn operator_distributes_and_cleans_up_as_leader() {
    let env = Env::private("operator", json!({})).await;
    let (ns, op_ns) = (env.ns.as_str(), env.op_ns.as_str());
    let provider = Arc::new(MemProvider::default());
    let metrics = Metrics::default();
    let parts = parts(provider.clone(), s3_source().await, metrics.clone(), ns);
    let opts = OperatorOptions {
        metrics_addr: free_addr(),
        lease_namespace: Some(op_ns.into()),
        identity: Some("ido-0".into()),
        images_concurrency: 2,
        ..OperatorOptions::default()
    };
    let opts_addr = opts.metrics_addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let op = tokio::spawn(ido_operator::run_until(
        env.operator_client().await,
        parts,
        opts,
        async {
            let _ = stopped.await;
        },
    ));
    let holder = async || {
        env.get::<Lease>(Some(op_ns), "ido-leader")
            .await
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    wait_for("the lease", async || holder().await == Some(json!("ido-0"))).await;
    let (code, head, body) = http_get(opts_addr, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "leading"), "{head}");

    env.create(&release(RELEASE)).await;
    // The third controller: an ImageSync with a bad frequency gets a condition naming it.
    let bad: ido_api::ImageSyncSpec = serde_json::from_value(json!({
        "mode": "Recurrent", "frequency": "every hour",
        "source": {"name": "registry.invalid/app", "version": "1.x"},
        "destination": {"name": "registry.invalid/mirror/app"},
    }))
    .unwrap();
    env.create(&crate::imagesync::image_sync(ns, "bad", bad)).await;
    wait_for("an InvalidSpec ImageSync", async || {
        env.get::<ido_api::ImageSync>(Some(ns), "bad")
            .await
            .is_some_and(|v| {
                let c = &v["status"]["conditions"][0];
                c["reason"] == "InvalidSpec"
                    && c["message"].as_str().unwrap_or("").starts_with("spec.frequency")
            })
    })
    .await;
    wait_for("an Available NodeImage", async || {
        env.get::<NodeImage>(Some(ns), IMAGE)
            .await
            .is_some_and(|n| n["status"]["state"] == "Available")
    })
    .await;
    assert!(has_finalizer(
        &env.get::<Release>(None, RELEASE).await.unwrap(),
        release::FINALIZER
    ));
    // What `kubectl get nodeimages` shows: the printer columns of the CRD.
    let table = env
        .cluster()
        .kubectl(&["get", "nodeimages", "-n", ns])
        .await
        .unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PROVIDER", "STATE", "RELEASES", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..3], [IMAGE, "capv", "Available"], "{table}");
    assert!(row[3].contains(RELEASE), "{table}");

    // The gauge follows the watch cache.
    wait_for("ido_node_images", async || {
        http_get(opts_addr, "/metrics")
            .await
            .2
            .contains(r#"ido_node_images{provider="capv",state="Available"} 1"#)
    })
    .await;

    env.delete::<Release>(None, RELEASE).await;
    wait_for("Release and NodeImage gone", async || {
        env.get::<Release>(None, RELEASE).await.is_none()
            && env.get::<NodeImage>(Some(ns), IMAGE).await.is_none()
    })
    .await;
    assert!(provider.templates.lock().unwrap().is_empty());
    let (code, head, _) = http_get(opts_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .expect("clean shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(
        holder().await,
        Some(Value::Null),
        "the lease is given up on shutdown"
    );
    let text = metrics.encode();
    for controller in ["nodeimage", "release", "imagesync"] {
        assert!(
            text.contains(&format!(r#"ido_reconciles_total{{controller="{controller}"}}"#)),
            "{text}"
        );
    }
}

/// A plain HTTP/1.0 GET: (status, head, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), head.to_string(), body.to_string())
}

/// Options of replica `identity` of the operator.
fn replica(op_ns: &str, identity: &str) -> OperatorOptions {
    OperatorOptions {
        metrics_addr: free_addr(),
        lease_namespace: Some(op_ns.into()),
        identity: Some(identity.into()),
        ..OperatorOptions::default()
    }
}

/// Starts one replica of the operator; it stops cleanly when `stop` fires or is dropped.
async fn start_replica(
    env: &Env,
    opts: OperatorOptions,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let parts = parts(
        Arc::new(MemProvider::default()),
        s3_source().await,
        Metrics::default(),
        &env.ns,
    );
    tokio::spawn(ido_operator::run_until(
        env.operator_client().await,
        parts,
        opts,
        async {
            let _ = stop.await;
        },
    ))
}

#[tokio::test]
async fn standby_is_ready_takes_over_on_handover_and_stops_when_the_lease_is_taken() {
    let env = Env::private("replicas", json!({})).await;
    let op_ns = env.op_ns.as_str();
    let holder = async || {
        env.get::<Lease>(Some(op_ns), "ido-leader")
            .await
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    let (a_opts, b_opts) = (replica(op_ns, "ido-0"), replica(op_ns, "ido-1"));
    let (a_addr, b_addr) = (a_opts.metrics_addr, b_opts.metrics_addr);
    let (stop_a, a_stopped) = tokio::sync::oneshot::channel();
    let (_stop_b, b_stopped) = tokio::sync::oneshot::channel();
    let a = start_replica(&env, a_opts, a_stopped).await;
    wait_for("ido-0 to lead", async || holder().await == Some(json!("ido-0"))).await;
    let b = start_replica(&env, b_opts, b_stopped).await;
    let mut b_ready = (0, String::new(), String::new());
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::spawn(http_get(b_addr, "/readyz"))).await
        {
            b_ready = r;
            if b_ready.0 == 200 {
                break;
            }
        }
    }
    assert_eq!(
        (b_ready.0, b_ready.2.as_str()),
        (200, "standby"),
        "a standby is ready"
    );
    assert_eq!(http_get(a_addr, "/readyz").await.2, "leading");

    // A clean stop of the leader hands the lease over without waiting for expiry.
    stop_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    wait_for("ido-1 to lead", async || holder().await == Some(json!("ido-1"))).await;
    assert_eq!(http_get(b_addr, "/readyz").await.2, "leading");

    // Another holder appears: at its next renewal (every 5 s) ido-1 stops everything.
    env.patch::<Lease>(
        Some(op_ns),
        "ido-leader",
        json!({"spec": {"holderIdentity": "ido-2"}}),
    )
    .await;
    let r = tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .expect("stops")
        .unwrap();
    let e = r.expect_err("losing the lease is an error");
    assert!(format!("{e:#}").contains("taken over by \"ido-2\""), "{e:#}");
}
