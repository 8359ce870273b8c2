//! The whole operator: `run_until` with leader election, watches and both controllers, its
//! endpoints (HTTPS metrics behind the API server's authentication, plain probes), and its
//! start-up check of the API server.

use std::{sync::Arc, time::Duration};

use ido_api::{NodeImage, Release, release};
use ido_controllers::metrics::Metrics;
use ido_operator::OperatorOptions;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{Value, json};

use crate::{
    IMAGE, MemProvider, RELEASE,
    env::Env,
    free_addr, has_finalizer,
    metrics::{grant_metrics_access, https_get, insecure_tls, sample, sum},
    parts, release, s3_source, wait_for,
};

/// `run_until` with leader election and every controller, authenticated as the chart's
/// ServiceAccount; a Release comes and goes. A cluster of its own: the release controller
/// watches Releases cluster-wide. Metrics as the defaults serve them: HTTPS with a
/// self-signed certificate, to a ServiceAccount allowed `get` on `/metrics`.
#[tokio::test]
async fn operator_distributes_and_cleans_up_as_leader() {
    let env = Env::private("operator", json!({})).await;
    let (ns, op_ns) = (env.ns.as_str(), env.op_ns.as_str());
    grant_metrics_access(&env).await;
    let scraper = env.cluster().token(op_ns, "scraper").await.unwrap();
    let provider = Arc::new(MemProvider::default());
    let metrics = Metrics::default();
    let parts = parts(provider.clone(), s3_source().await, metrics.clone(), ns);
    let opts = OperatorOptions {
        metrics_addr: free_addr(),
        health_probe_addr: Some(free_addr()),
        lease_namespace: Some(op_ns.into()),
        identity: Some("ido-0".into()),
        images_concurrency: 2,
        ..OperatorOptions::default()
    };
    assert!(opts.metrics_secure, "secure by default");
    let (metrics_addr, probe_addr) = (opts.metrics_addr, opts.health_probe_addr.unwrap());
    let (tls, _) = insecure_tls();
    let scrape = async || {
        let (code, _, body) = https_get(metrics_addr, "/metrics", Some(&scraper), tls.clone())
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        body
    };
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
    let (code, head, body) = http_get(probe_addr, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "leading"), "{head}");
    assert_eq!(http_get(probe_addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(probe_addr, "/metrics").await.0,
        404,
        "metrics have their own port"
    );
    // Without a token: 401, over HTTPS only.
    assert_eq!(
        https_get(metrics_addr, "/metrics", None, tls.clone())
            .await
            .unwrap()
            .0,
        401
    );

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
        scrape()
            .await
            .contains(r#"ido_node_images{provider="capv",state="Available"} 1"#)
    })
    .await;
    check_controller_runtime_metrics(&scrape().await);

    env.delete::<Release>(None, RELEASE).await;
    wait_for("Release and NodeImage gone", async || {
        env.get::<Release>(None, RELEASE).await.is_none()
            && env.get::<NodeImage>(Some(ns), IMAGE).await.is_none()
    })
    .await;
    assert!(provider.templates.lock().unwrap().is_empty());
    let (code, head, _) = https_get(metrics_addr, "/metrics", Some(&scraper), tls.clone())
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    // The deleted NodeImage's last requests were dropped by the scheduler: nothing is due.
    wait_for("an empty nodeimage queue", async || {
        sample(&scrape().await, r#"workqueue_depth{name="nodeimage"}"#) == Some(0.0)
    })
    .await;

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

/// controller-runtime's metrics after a Release made a NodeImage Available: every name,
/// labelled per controller (per queue), with values that agree with each other.
fn check_controller_runtime_metrics(text: &str) {
    let get = |series: &str| sample(text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    for c in ["release", "nodeimage", "imagesync"] {
        let total = sum(
            text,
            &format!(r#"controller_runtime_reconcile_total{{controller="{c}","#),
        );
        for result in ["success", "error", "requeue", "requeue_after"] {
            get(&format!(
                r#"controller_runtime_reconcile_total{{controller="{c}",result="{result}"}}"#
            ));
        }
        assert!(total > 0.0, "{c} reconciled:\n{text}");
        let errors = get(&format!(
            r#"controller_runtime_reconcile_errors_total{{controller="{c}"}}"#
        ));
        assert_eq!(
            errors,
            get(&format!(
                r#"controller_runtime_reconcile_total{{controller="{c}",result="error"}}"#
            )),
        );
        // Every finished reconcile is timed once, in both histograms.
        let timed = get(&format!(
            r#"controller_runtime_reconcile_time_seconds_count{{controller="{c}"}}"#
        ));
        assert_eq!(timed, total, "{c}:\n{text}");
        assert_eq!(
            get(&format!(r#"workqueue_work_duration_seconds_count{{name="{c}"}}"#)),
            total
        );
        // Each reconcile started from a queued object; nothing runs twice from one add.
        let adds = get(&format!(r#"workqueue_adds_total{{name="{c}"}}"#));
        let started = get(&format!(
            r#"workqueue_queue_duration_seconds_count{{name="{c}"}}"#
        ));
        assert!(
            started >= total && adds >= started,
            "{c}: adds {adds}, started {started}, finished {total}"
        );
        let workers = get(&format!(
            r#"controller_runtime_active_workers{{controller="{c}"}}"#
        ));
        let max = get(&format!(
            r#"controller_runtime_max_concurrent_reconciles{{controller="{c}"}}"#
        ));
        assert!((0.0..=max).contains(&workers), "{c}: {workers} of {max}");
        assert!(get(&format!(r#"workqueue_depth{{name="{c}"}}"#)) >= 0.0);
        get(&format!(r#"workqueue_retries_total{{name="{c}"}}"#));
        get(&format!(r#"workqueue_unfinished_work_seconds{{name="{c}"}}"#));
        get(&format!(
            r#"workqueue_longest_running_processor_seconds{{name="{c}"}}"#
        ));
        assert!(text.contains(&format!(
            r#"controller_runtime_reconcile_time_seconds_bucket{{le="60.0",controller="{c}"}}"#
        )));
        // controller-runtime's buckets: 10 ns to 1000 s by tens, and +Inf.
        let buckets = text
            .lines()
            .filter(|l| {
                l.starts_with("workqueue_queue_duration_seconds_bucket{")
                    && l.contains(&format!(r#"name="{c}""#))
            })
            .count();
        assert_eq!(buckets, 13, "{text}");
    }
    assert_eq!(
        get(r#"controller_runtime_max_concurrent_reconciles{controller="nodeimage"}"#),
        2.0
    );
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

/// Options of replica `identity` of the operator: probes on a port of their own, plain
/// metrics.
pub(crate) fn replica(op_ns: &str, identity: &str) -> OperatorOptions {
    OperatorOptions {
        metrics_addr: free_addr(),
        metrics_secure: false,
        health_probe_addr: Some(free_addr()),
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
    let (a_addr, b_addr) = (
        a_opts.health_probe_addr.unwrap(),
        b_opts.health_probe_addr.unwrap(),
    );
    let a_metrics = a_opts.metrics_addr;
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
    // --metrics-secure=false: plain HTTP, no token needed.
    let (code, _, body) = http_get(a_metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("controller_runtime_reconcile_total"), "{body}");

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

/// Options for a start-up test: no leader election, probes and metrics on free ports.
fn starting(api_server: &str, timeout: Duration) -> OperatorOptions {
    OperatorOptions {
        metrics_addr: free_addr(),
        metrics_secure: false,
        health_probe_addr: Some(free_addr()),
        leader_election: false,
        identity: Some("ido-0".into()),
        startup_timeout: Some(timeout),
        api_server: Some(api_server.into()),
        ..OperatorOptions::default()
    }
}

/// `run_until` with `client` and `opts` (the test's NodeImage namespace `ns`), stopped
/// after `limit` at the latest: its result and how long it ran.
async fn run_for(
    client: kube::Client,
    ns: &str,
    opts: OperatorOptions,
    limit: Duration,
) -> (anyhow::Result<()>, Duration) {
    let parts = parts(
        Arc::new(MemProvider::default()),
        s3_source().await,
        Metrics::default(),
        ns,
    );
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(
        limit,
        ido_operator::run_until(client, parts, opts, std::future::pending()),
    )
    .await
    .expect("the operator gives up by itself");
    (r, t.elapsed())
}

/// Nothing listens at the API server's address: each attempt is logged and `/readyz` says
/// why it is not ready; after the start-up timeout (3 s) the operator ends with an error
/// naming the address.
#[tokio::test]
async fn an_unreachable_api_server_ends_the_operator_at_its_startup_timeout() {
    ido_testkit::install_crypto_provider();
    let closed = free_addr();
    let url = format!("https://{closed}");
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let opts = starting(&url, Duration::from_secs(3));
    let probe = opts.health_probe_addr.unwrap();
    let run = tokio::spawn(async move { run_for(client, "giantswarm", opts, Duration::from_secs(20)).await });
    let mut ready = (0, String::new(), String::new());
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), http_get(probe, "/readyz")).await {
            ready = r;
            if ready.2.contains("connection refused") || ready.2.contains("Connection refused") {
                break;
            }
        }
    }
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(
        ready.2.starts_with(&format!(
            "starting: waiting for the Kubernetes API server at {url}"
        )),
        "{ready:?}"
    );
    let (r, took) = run.await.unwrap();
    let e = format!("{:#}", r.expect_err("the operator gives up"));
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "{took:?}: {e}"
    );
    assert!(e.contains(&closed.to_string()), "names the address: {e}");
    assert!(e.contains("not reachable within 3s"), "{e}");
    assert!(e.to_lowercase().contains("connection refused"), "{e}");
}

/// A token the API server does not accept: the operator ends at once (well before its
/// start-up timeout) saying it is unauthorised.
#[tokio::test]
async fn rejected_credentials_end_the_operator_at_once() {
    let cluster = ido_testkit::Cluster::shared().await.unwrap();
    let client = cluster
        .client_with_token("not-a-valid-token", "default")
        .await
        .unwrap();
    let url = cluster.server().unwrap();
    let (r, took) = run_for(
        client,
        "giantswarm",
        starting(&url, Duration::from_secs(60)),
        Duration::from_secs(30),
    )
    .await;
    let e = format!("{:#}", r.expect_err("the operator refuses to go on"));
    assert!(took < Duration::from_secs(10), "{took:?}: {e}");
    assert!(e.contains("unauthorised (401 Unauthorized)"), "{e}");
    assert!(e.contains(&url), "{e}");
}

/// A valid token without the operator's grants: 403 on its first NodeImage list ends it at
/// once, naming who may not do what.
#[tokio::test]
async fn missing_rights_end_the_operator_at_once() {
    let cluster = ido_testkit::Cluster::shared().await.unwrap();
    let ns = cluster.namespace("norights").await.unwrap();
    cluster
        .kubectl(&["create", "serviceaccount", "nobody", "-n", &ns])
        .await
        .unwrap();
    let token = cluster.token(&ns, "nobody").await.unwrap();
    let client = cluster.client_with_token(&token, &ns).await.unwrap();
    let url = cluster.server().unwrap();
    let (r, took) = run_for(
        client,
        &ns,
        starting(&url, Duration::from_secs(60)),
        Duration::from_secs(30),
    )
    .await;
    let e = format!("{:#}", r.expect_err("the operator refuses to go on"));
    assert!(took < Duration::from_secs(10), "{took:?}: {e}");
    assert!(e.contains("forbidden (403 Forbidden)"), "{e}");
    assert!(
        e.contains(&format!(
            "system:serviceaccount:{ns}:nobody may not list nodeimages.image.giantswarm.io in namespace {ns}"
        )),
        "{e}"
    );
}
