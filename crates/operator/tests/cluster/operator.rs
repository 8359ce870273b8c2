//! The whole operator: `run_until` with leader election, watches and both controllers.

use std::{sync::Arc, time::Duration};

use ido_api::{NodeImage, Release, release};
use ido_controllers::metrics::Metrics;
use ido_operator::OperatorOptions;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{Value, json};

use crate::{
    IMAGE, MemProvider, NS, OPERATOR_NS, RELEASE,
    fake_api::{Call, FakeApi},
    free_addr, has_finalizer, parts,
    rbac::assert_granted,
    release, s3_source, wait_for,
};

/// `run_until` with leader election and both controllers; a Release comes and goes.
pub(crate) async fn operator_scenario() -> Vec<Call> {
    let fake = FakeApi::new();
    let provider = Arc::new(MemProvider::default());
    let metrics = Metrics::default();
    let parts = parts(provider.clone(), s3_source().await, metrics.clone());
    let opts = OperatorOptions {
        metrics_addr: free_addr(),
        lease_namespace: Some(OPERATOR_NS.into()),
        identity: Some("ido-0".into()),
        images_concurrency: 2,
        ..OperatorOptions::default()
    };
    let opts_addr = opts.metrics_addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let op = tokio::spawn(ido_operator::run_until(
        fake.client(OPERATOR_NS),
        parts,
        opts,
        async {
            let _ = stopped.await;
        },
    ));
    let holder = |f: &FakeApi| {
        f.get::<Lease>(Some(OPERATOR_NS), "ido-leader")
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    wait_for("the lease", || holder(&fake) == Some(json!("ido-0"))).await;
    let (code, head, body) = http_get(opts_addr, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "leading"), "{head}");

    fake.create(&release(RELEASE));
    // The third controller: an ImageSync with a bad frequency gets a condition naming it.
    let bad: ido_api::ImageSyncSpec = serde_json::from_value(json!({
        "mode": "Recurrent", "frequency": "every hour",
        "source": {"name": "registry.invalid/app", "version": "1.x"},
        "destination": {"name": "registry.invalid/mirror/app"},
    }))
    .unwrap();
    fake.create(&crate::imagesync::image_sync("bad", bad));
    wait_for("an InvalidSpec ImageSync", || {
        fake.get::<ido_api::ImageSync>(Some(NS), "bad").is_some_and(|v| {
            let c = &v["status"]["conditions"][0];
            c["reason"] == "InvalidSpec" && c["message"].as_str().unwrap_or("").starts_with("spec.frequency")
        })
    })
    .await;
    wait_for("an Available NodeImage", || {
        fake.get::<NodeImage>(Some(NS), IMAGE)
            .is_some_and(|n| n["status"]["state"] == "Available")
    })
    .await;
    assert!(has_finalizer(
        &fake.get::<Release>(None, RELEASE).unwrap(),
        release::FINALIZER
    ));

    fake.delete::<Release>(None, RELEASE);
    wait_for("Release and NodeImage gone", || {
        fake.get::<Release>(None, RELEASE).is_none() && fake.get::<NodeImage>(Some(NS), IMAGE).is_none()
    })
    .await;
    assert!(provider.templates.lock().unwrap().is_empty());
    let (code, head, text) = http_get(opts_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(text.contains("ido_node_images"), "{text}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .expect("clean shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(
        holder(&fake),
        Some(Value::Null),
        "the lease is given up on shutdown"
    );
    let text = metrics.encode();
    assert!(
        text.contains(r#"ido_reconciles_total{controller="nodeimage"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ido_reconciles_total{controller="release"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ido_reconciles_total{controller="imagesync"}"#),
        "{text}"
    );
    fake.calls()
}

#[tokio::test]
async fn operator_distributes_and_cleans_up_as_leader() {
    assert_granted(&operator_scenario().await);
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
fn replica(identity: &str) -> OperatorOptions {
    OperatorOptions {
        metrics_addr: free_addr(),
        lease_namespace: Some(OPERATOR_NS.into()),
        identity: Some(identity.into()),
        ..OperatorOptions::default()
    }
}

/// Starts one replica of the operator; it stops cleanly when `stop` fires or is dropped.
async fn start_replica(
    fake: &FakeApi,
    opts: OperatorOptions,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let parts = parts(
        Arc::new(MemProvider::default()),
        s3_source().await,
        Metrics::default(),
    );
    tokio::spawn(ido_operator::run_until(
        fake.client(OPERATOR_NS),
        parts,
        opts,
        async {
            let _ = stop.await;
        },
    ))
}

#[tokio::test]
async fn standby_is_ready_takes_over_on_handover_and_stops_when_the_lease_is_taken() {
    let fake = FakeApi::new();
    let holder = || {
        fake.get::<Lease>(Some(OPERATOR_NS), "ido-leader")
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    let (a_opts, b_opts) = (replica("ido-0"), replica("ido-1"));
    let (a_addr, b_addr) = (a_opts.metrics_addr, b_opts.metrics_addr);
    let (stop_a, a_stopped) = tokio::sync::oneshot::channel();
    let (_stop_b, b_stopped) = tokio::sync::oneshot::channel();
    let a = start_replica(&fake, a_opts, a_stopped).await;
    wait_for("ido-0 to lead", || holder() == Some(json!("ido-0"))).await;
    let b = start_replica(&fake, b_opts, b_stopped).await;
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
    wait_for("ido-1 to lead", || holder() == Some(json!("ido-1"))).await;
    assert_eq!(http_get(b_addr, "/readyz").await.2, "leading");

    // Another holder appears: at its next renewal (every 5 s) ido-1 stops everything.
    fake.modify::<Lease>(Some(OPERATOR_NS), "ido-leader", |l| {
        l["spec"]["holderIdentity"] = json!("ido-2")
    });
    let r = tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .expect("stops")
        .unwrap();
    let e = r.expect_err("losing the lease is an error");
    assert!(format!("{e:#}").contains("taken over by \"ido-2\""), "{e:#}");
    assert_granted(&fake.calls());
}
