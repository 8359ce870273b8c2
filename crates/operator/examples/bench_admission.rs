//! The image cache's admission webhook under load, and one copy per image however many
//! pods ask at once (`scripts/bench-cache.sh`, figures in docs/benchmarks.md).
//!
//! Set-up (not timed): two `docker-registry` instances on loopback (plain HTTP), the
//! cache and a source; the copies of a Deployment pod's four images (one init container,
//! three containers: `busybox:1.36`, `ghcr.io/acme/shop/web:2.14.0`,
//! `envoyproxy/envoy:v1.31.2`, `fluent/fluent-bit:3.1.9`) pushed with skopeo to the cache,
//! where a `ClusterImageCachePolicy` (webhook mode, `pathPrefix: mirror`, `pinDigest`, a
//! `pullSecretName`) puts them; a file store holding the policy (on tmpfs by default).
//!
//! - **(a) admission latency.** The webhook as `ido operator` serves it
//!   (`webhook::router` over `tls::TlsListener`, a self-signed certificate, on its own
//!   2-thread runtime), the Admission refreshed and one warm-up request per image. A load
//!   generator (its own thread and runtime, HTTP/1.1 keep-alive, TLS) posts
//!   AdmissionReview v1 requests of the pod, each with its own uid, open-loop: request `i`
//!   is due at `i / rate` and sent then whatever is still in flight; its latency runs from
//!   that due time to the last byte of the answer. First every image cached (warm), then
//!   with a share of requests (`--cold-share`, default 10 %) whose web image is one never
//!   seen (a new tag each time: a HEAD at the cache, a miss, a CachedImage queued).
//! - **(b) one copy per image.** A fresh file store and webhook; `--burst` (100)
//!   AdmissionReviews of pods whose web image is new (pushed to the source registry) sent at
//!   once; then the CachedImage controller (`imagecache::cached::reconcile` on every
//!   CachedImage of the store, its copies as tasks) until each is `Cached`. Counted: the
//!   CachedImage objects, the copies (`ido_cache_copies_total`) and the cache registry's
//!   manifest PUTs for that image (its access log); each must be 1.
//!
//! Every answer is checked: allowed, its uid, and the JSON patch exactly the expected one
//! (each cached image replaced by its copy at the pushed digest, the pull secret added; a
//! missing image left), so no empty answer is timed. A request left unanswered (a transport
//! error, or nothing within 10 s) counts at the time it was waited for; more than 1 % of
//! them fail the run.
//!
//! ```text
//! bench_admission [--runs 3] [--seconds 20] [--rate 500] [--cold-share 0.1] [--burst 100]
//!     [--dir target/bench-cache] [--state-dir DIR] [--svg docs/bench-cache.svg]
//!     [--json docs/bench-cache.json]
//! ```
//! `--dir` holds the test images; `--state-dir` the file stores (default: a temporary
//! directory on `/dev/shm` where there is one, see `main`).
//! The last line is JSON with every run's figures (also written to `--json`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use ido_api::{CachePhase, CachedImage, ClusterImageCachePolicy};
use ido_controllers::{
    Action, Context, Settings,
    file_store::FileStore,
    imagecache::{admission::Admission, cached},
    metrics::CacheCopyLabels,
    store::Store,
};
use ido_operator::{tls, webhook};
use ido_testkit::{
    oci_image::{build_layout, push_layout},
    plot,
    registry::{DockerRegistry, RegistryOptions},
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// The policy's name, and how CachedImages name it.
const POLICY: &str = "bench";
const POLICY_REF: &str = "ClusterImageCachePolicy/bench";
const PULL_SECRET: &str = "cache-pull";
const NAMESPACE: &str = "shop";
/// The p99 goal of (a).
const GOAL_P99_MS: f64 = 5.0;
/// How long a request may take (the API server's default webhook timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The pod's images as its Deployment writes them: (JSON pointer of the image, the image,
/// its copy's repository and tag under the cache).
const IMAGES: [(&str, &str, &str); 4] = [
    (
        "/spec/initContainers/0/image",
        "busybox:1.36",
        "mirror/docker.io/library/busybox:1.36",
    ),
    (
        "/spec/containers/0/image",
        "ghcr.io/acme/shop/web:2.14.0",
        "mirror/ghcr.io/acme/shop/web:2.14.0",
    ),
    (
        "/spec/containers/1/image",
        "envoyproxy/envoy:v1.31.2",
        "mirror/docker.io/envoyproxy/envoy:v1.31.2",
    ),
    (
        "/spec/containers/2/image",
        "fluent/fluent-bit:3.1.9",
        "mirror/docker.io/fluent/fluent-bit:3.1.9",
    ),
];
/// The image a cold request or a burst pod replaces (the web container's).
const REPLACED: usize = 1;

struct Args {
    runs: usize,
    seconds: f64,
    rate: f64,
    cold_share: f64,
    burst: usize,
    dir: PathBuf,
    state_dir: Option<PathBuf>,
    svg: Option<PathBuf>,
    json: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let root = ido_testkit::workspace_root();
    let mut a = Args {
        runs: 3,
        seconds: 20.0,
        rate: 500.0,
        cold_share: 0.1,
        burst: 100,
        dir: root.join("target/bench-cache"),
        state_dir: None,
        svg: None,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        let num = |v: String| v.parse::<f64>().with_context(|| format!("{arg}: a number"));
        match arg.as_str() {
            "--runs" => a.runs = num(val()?)? as usize,
            "--seconds" => a.seconds = num(val()?)?,
            "--rate" => a.rate = num(val()?)?,
            "--cold-share" => a.cold_share = num(val()?)?,
            "--burst" => a.burst = num(val()?)? as usize,
            "--dir" => a.dir = val()?.into(),
            "--state-dir" => a.state_dir = Some(val()?.into()),
            "--svg" => a.svg = Some(val()?.into()),
            "--json" => a.json = Some(val()?.into()),
            other => bail!("unknown argument {other:?} (see the source's doc comment)"),
        }
    }
    ensure!(a.runs >= 1 && a.rate > 0.0 && a.seconds > 0.0 && a.burst >= 1);
    ensure!((0.0..=1.0).contains(&a.cold_share), "--cold-share: 0 to 1");
    Ok(a)
}

/// A pod as the ReplicaSet controller creates it and the API server hands it to mutating
/// webhooks (defaults and the service account's token volume in place, no name yet).
fn pod(images: [&str; 4]) -> Value {
    let container = |name: &str, image: &str, port: Option<u16>| {
        let mut c = json!({
            "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                          "requests": {"cpu": "100m", "memory": "128Mi"}},
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {"name": "LOG_LEVEL", "value": "info"}],
            "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                "capabilities": {"drop": ["ALL"]}}
        });
        if let Some(p) = port {
            c["ports"] = json!([{"name": "http", "containerPort": p, "protocol": "TCP"}]);
            c["readinessProbe"] = json!({"httpGet": {"path": "/healthz", "port": p, "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3});
        }
        c
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9c8b5f4-", "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop",
                       "pod-template-hash": "7d9c8b5f4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T09:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c8b5f4",
                                 "uid": "5b0e8f3a-6c1d-4e2b-9a7f-3d2c1b0a9e8f",
                                 "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "time": "2026-12-07T10:00:00Z",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}}}}]
        },
        "spec": {
            "initContainers": [{
                "name": "wait-for-db", "image": images[0], "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "until nc -z db 5432; do sleep 1; done"],
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
            }],
            "containers": [container("web", images[1], Some(8080)),
                           container("envoy", images[2], Some(9901)),
                           container("fluent-bit", images[3], None)],
            "imagePullSecrets": [{"name": "ghcr-acme"}],
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": "web", "serviceAccount": "web",
            "securityContext": {"fsGroup": 2000}, "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        }
    })
}

/// An AdmissionReview v1 of `pod` (CREATE by the ReplicaSet controller), `uid` its request.
fn review(pod: &Value, uid: &str) -> Vec<u8> {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": "", "namespace": NAMESPACE, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "0f6c1a52-8a8e-4c35-b7a3-55f0e4a1c2d9",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                    "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .expect("JSON")
}

fn uid(phase: &str, run: usize, i: usize) -> String {
    format!("{phase:0>8.8}-{run:04x}-4000-8000-{i:012x}")
}

/// The JSON patch a correct answer carries: the images at `cached` pointers replaced by
/// their copies (by tag and digest), the cache's pull secret added.
fn expected_patch(copies: &BTreeMap<usize, String>) -> Value {
    let mut ops: Vec<Value> = copies
        .iter()
        .map(|(i, to)| json!({"op": "replace", "path": IMAGES[*i].0, "value": to}))
        .collect();
    if !ops.is_empty() {
        ops.push(json!({"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": PULL_SECRET}}));
    }
    Value::Array(ops)
}

/// Checks an answer: allowed, for `uid`, with exactly `want` as its patch.
fn check(body: &[u8], uid: &str, want: &Value) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(body).context("the answer is not JSON")?;
    let r = &v["response"];
    ensure!(v["kind"] == "AdmissionReview", "not an AdmissionReview: {v}");
    ensure!(r["uid"] == uid, "uid {} for {uid}", r["uid"]);
    ensure!(r["allowed"] == true, "not allowed: {v}");
    let patch: Value = match &r["patch"] {
        Value::Null => json!([]),
        // kube-core writes the bytes as an array of numbers, Go's []byte as base64: the API
        // server reads either.
        Value::Array(bytes) => serde_json::from_slice(
            &bytes
                .iter()
                .map(|b| b.as_u64().map(|b| b as u8))
                .collect::<Option<Vec<u8>>>()
                .context("patch bytes")?,
        )?,
        Value::String(b64) => {
            use base64::Engine as _;
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64)?)?
        }
        other => bail!("patch {other}"),
    };
    if want.as_array().is_some_and(|a| !a.is_empty()) {
        ensure!(r["patchType"] == "JSONPatch", "patchType {}", r["patchType"]);
    }
    ensure!(&patch == want, "patch {patch}, expected {want}");
    Ok(())
}

/// One request's result.
struct Outcome {
    cold: bool,
    /// When it was due, from the first request's due time (s).
    due_s: f64,
    /// From its due time to the last byte of the answer (or to the failure: an unanswered
    /// request counts as slow as it was waited for).
    latency: Duration,
    /// How late it left (the generator's own lag).
    lag: Duration,
    uid: String,
    body: Result<Vec<u8>, String>,
}

/// What one request is.
struct Request {
    body: Vec<u8>,
    uid: String,
    cold: bool,
}

async fn send(client: reqwest::Client, url: String, req: Request, due: Instant, due_s: f64) -> Outcome {
    let lag = due.elapsed();
    let sent = async {
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .body(req.body)
            .send()
            .await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        anyhow::Ok((status, bytes))
    };
    let (latency, body) = match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
        Ok(Ok((status, bytes))) if status.is_success() => (due.elapsed(), Ok(bytes.to_vec())),
        Ok(Ok((status, bytes))) => (
            due.elapsed(),
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes))),
        ),
        Ok(Err(e)) => (due.elapsed(), Err(format!("{e:#}"))),
        Err(_) => (
            due.elapsed(),
            Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        ),
    };
    Outcome {
        cold: req.cold,
        due_s,
        latency,
        lag,
        uid: req.uid,
        body,
    }
}

/// The load generator: its runtime (one worker) and client.
struct Generator {
    rt: Runtime,
    client: reqwest::Client,
}

impl Generator {
    fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("load")
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tls_danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(usize::MAX)
            .build()?;
        Ok(Self { rt, client })
    }

    /// Sends `n` requests open-loop at `rate` per second (request `i` due at `i / rate`),
    /// `make(i)` building each just before it is due; waits for every answer.
    fn open_loop(
        &self,
        url: &str,
        n: usize,
        rate: f64,
        mut make: impl FnMut(usize) -> Request,
    ) -> Vec<Outcome> {
        let start = Instant::now() + Duration::from_millis(20);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let req = make(i);
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            // The thread sleeps until the due time (the kernel's timers: tens of µs late at
            // most on an idle core), then hands the request to the runtime.
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            handles.push(self.rt.spawn(send(
                self.client.clone(),
                url.to_string(),
                req,
                due,
                i as f64 / rate,
            )));
        }
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(n);
            for h in handles {
                out.push(h.await.expect("request task"));
            }
            out
        })
    }

    /// Sends every request at once; waits for every answer.
    fn burst(&self, url: &str, reqs: Vec<Request>) -> Vec<Outcome> {
        self.rt.block_on(async {
            let due = Instant::now();
            let handles: Vec<_> = reqs
                .into_iter()
                .map(|r| tokio::spawn(send(self.client.clone(), url.to_string(), r, due, 0.0)))
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("request task"));
            }
            out
        })
    }
}

/// Latency figures of a set of outcomes, in ms.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// When the slowest request was due (s into the run).
    max_at_s: f64,
}

/// Requests left unanswered.
#[derive(Clone, Debug, Default)]
struct Unanswered {
    n: usize,
    cold: usize,
    first: Option<String>,
}

fn stats<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Stats {
    let mut v: Vec<(f64, f64)> = outcomes
        .map(|o| (o.latency.as_secs_f64() * 1e3, o.due_s))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(max, max_at_s)) = v.last() else {
        return Stats::default();
    };
    let v: Vec<f64> = v.into_iter().map(|(ms, _)| ms).collect();
    // Nearest rank.
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        n: v.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max,
        max_at_s,
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({"n": s.n, "p50_ms": s.p50, "p99_ms": s.p99, "p999_ms": s.p999, "max_ms": s.max,
           "max_due_at_s": s.max_at_s})
}

/// The webhook served as `ido operator` serves it, on `rt`; its URL.
fn serve(rt: &Runtime, admission: Arc<Admission<FileStore>>) -> anyhow::Result<String> {
    rt.block_on(async {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let config = tls::server_config(&tls::CertSource::SelfSigned)?;
        let listener = tls::TlsListener::new(tcp, config)?;
        let addr = axum::serve::Listener::local_addr(&listener)?;
        tokio::spawn(ido_operator::http::serve(
            listener,
            webhook::router(admission),
            std::future::pending(),
        ));
        anyhow::Ok(format!("https://{addr}{}", webhook::PATH))
    })
}

fn policy(cache: &DockerRegistry, source: &DockerRegistry) -> anyhow::Result<ClusterImageCachePolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "ido.dev/v1alpha1", "kind": "ClusterImageCachePolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "target": {"registry": cache.host(), "pathPrefix": "mirror", "tlsVerify": false,
                       "pullSecretName": PULL_SECRET},
            "sources": [{"registry": source.host(), "tlsVerify": false}],
            "mode": "webhook", "pinDigest": true
        }
    }))?)
}

/// A context over a fresh file store at `dir` holding the policy.
fn context(dir: &Path, policy: &ClusterImageCachePolicy) -> anyhow::Result<Arc<Context<FileStore>>> {
    let _ = std::fs::remove_dir_all(dir);
    let store = FileStore::open(dir)?;
    store.apply(policy)?;
    Ok(Arc::new(Context::new(
        store,
        Settings {
            image_cache: true,
            ..Settings::default()
        },
    )))
}

/// Requests of the access log of `reg` from line `from` on: `METHOD path` for each.
fn access_log(reg: &DockerRegistry, from: usize) -> Vec<String> {
    std::fs::read_to_string(reg.log_path())
        .unwrap_or_default()
        .lines()
        .skip(from)
        .filter_map(|l| {
            let q = l.split('"').nth(1)?;
            let mut w = q.split(' ');
            Some(format!("{} {}", w.next()?, w.next()?))
        })
        .collect()
}

fn log_len(reg: &DockerRegistry) -> usize {
    std::fs::read_to_string(reg.log_path())
        .unwrap_or_default()
        .lines()
        .count()
}

/// The `_sum` and `_count` of a histogram in the metrics' text.
fn histogram_mean(text: &str, name: &str) -> Option<f64> {
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(&format!("{name}{suffix}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(value("_sum")? / value("_count")?)
}

/// Writes a small file in a directory and renames it over another every 20 ms, as the
/// file store writes an object, until stopped: how slow the disk under the state is.
struct DiskProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl DiskProbe {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tmp, path) = (dir.join("probe.json.tmp"), dir.join("probe.json"));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let _ = std::fs::write(&tmp, [b'x'; 1024]).and_then(|()| std::fs::rename(&tmp, &path));
                slowest = slowest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_file(&path);
            slowest.as_secs_f64() * 1e3
        });
        Self { stop, thread }
    }

    /// The slowest write, in ms.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(f64::NAN)
    }
}

fn cpu_seconds() -> f64 {
    ido_testkit::bench::cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

/// CPU time the hypervisor gave other guests while this one wanted it, summed over the
/// machine's CPUs (`steal` of `/proc/stat`), in ms.
fn steal_ms() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?.split_whitespace().nth(8)?.parse::<f64>().ok()?;
            Some(cpu * 10.0)
        })
        .unwrap_or(f64::NAN)
}

/// One run of (a): warm, then with cold lookups.
struct LatencyRun {
    warm: Stats,
    mixed: Stats,
    mixed_warm: Stats,
    mixed_cold: Stats,
    warm_lag_p99_ms: f64,
    warm_cpu_ms_per_request: f64,
    warm_steal_ms: f64,
    server_mean_ms: f64,
    cold_heads: usize,
    warm_unanswered: Unanswered,
    mixed_unanswered: Unanswered,
    /// The slowest write of a small file in the state directory during the cold phase.
    slowest_write_ms: f64,
}

/// One run of (b).
struct BurstRun {
    answered_ms: f64,
    records: usize,
    copies: u64,
    manifest_puts: usize,
    heads: usize,
    cached_after_ms: f64,
}

struct Bench {
    a: Args,
    /// Where the file stores live.
    state: PathBuf,
    server: Runtime,
    load: Generator,
    cache: DockerRegistry,
    source: DockerRegistry,
    policy: ClusterImageCachePolicy,
    /// The copies' references (tag and digest) by image index.
    copies: BTreeMap<usize, String>,
}

impl Bench {
    fn warm_pod(&self) -> Value {
        pod(IMAGES.map(|(_, image, _)| image))
    }

    /// Checks every answer: a wrong one fails the run; requests left unanswered (a
    /// transport error, or none within [`REQUEST_TIMEOUT`]) are counted, and fail the run
    /// past 1 %.
    fn verify(&self, outcomes: &[Outcome], want: impl Fn(&Outcome) -> Value) -> anyhow::Result<Unanswered> {
        let mut wrong = 0;
        let mut first = None;
        let mut missing = Unanswered::default();
        for o in outcomes {
            match &o.body {
                Ok(b) => {
                    if let Err(e) = check(b, &o.uid, &want(o)) {
                        wrong += 1;
                        first.get_or_insert(format!("{}: {e:#}", o.uid));
                    }
                }
                Err(e) => {
                    missing.n += 1;
                    missing.cold += usize::from(o.cold);
                    missing
                        .first
                        .get_or_insert(format!("{} (due at {:.2} s): {e}", o.uid, o.due_s));
                }
            }
        }
        if let Some(first) = first {
            bail!(
                "{wrong} of {} answers are wrong; the first: {first}",
                outcomes.len()
            );
        }
        if missing.n * 100 > outcomes.len() {
            bail!(
                "{} of {} requests were not answered; the first: {}",
                missing.n,
                outcomes.len(),
                missing.first.unwrap_or_default()
            );
        }
        Ok(missing)
    }

    fn cold_patch(&self) -> Value {
        let mut c = self.copies.clone();
        c.remove(&REPLACED);
        expected_patch(&c)
    }

    /// (a) for run `run`.
    fn latency(&self, run: usize) -> anyhow::Result<LatencyRun> {
        let state = self.state.join(format!("state-a-{run}"));
        let ctx = context(&state, &self.policy)?;
        let admission = Admission::new(ctx.clone());
        self.server.block_on(admission.refresh())?;
        let url = serve(&self.server, admission.clone())?;
        let warm_patch = expected_patch(&self.copies);
        // The check refuses an answer without the patch, or with another one.
        let empty = json!({"kind": "AdmissionReview", "response": {"uid": "u", "allowed": true}});
        ensure!(check(&serde_json::to_vec(&empty)?, "u", &warm_patch).is_err());
        ensure!(check(&serde_json::to_vec(&empty)?, "u", &self.cold_patch()).is_err());
        // One warm-up request per image: the pod with that image, its other places
        // already pointing at the cache (left alone, as on a reinvocation).
        let at_cache: Vec<String> = IMAGES
            .iter()
            .map(|(_, _, at)| format!("{}/{at}", self.cache.host()))
            .collect();
        let warmups: Vec<Request> = (0..IMAGES.len())
            .map(|k| {
                let mut images: [&str; 4] = std::array::from_fn(|j| at_cache[j].as_str());
                images[k] = IMAGES[k].1;
                Request {
                    body: review(&pod(images), &uid("warmup", run, k)),
                    uid: uid("warmup", run, k),
                    cold: false,
                }
            })
            .collect();
        let out = self.load.burst(&url, warmups);
        for (k, o) in out.iter().enumerate() {
            let mut c = BTreeMap::new();
            c.insert(k, self.copies[&k].clone());
            check(
                o.body.as_deref().map_err(|e| anyhow::anyhow!("{e}"))?,
                &o.uid,
                &expected_patch(&c),
            )
            .with_context(|| format!("warm-up request {k}"))?;
        }

        let n = (self.a.rate * self.a.seconds).round() as usize;
        let warm_pod = self.warm_pod();
        // Each request's own uid, spliced into one serialised review.
        let template = String::from_utf8(review(&warm_pod, "@UID@"))?;
        let (cpu0, steal0) = (cpu_seconds(), steal_ms());
        let warm = self.load.open_loop(&url, n, self.a.rate, |i| {
            let uid = uid("warm", run, i);
            Request {
                body: template.replace("@UID@", &uid).into_bytes(),
                uid,
                cold: false,
            }
        });
        let (cpu_warm, warm_steal_ms) = (cpu_seconds() - cpu0, steal_ms() - steal0);
        let warm_unanswered = self.verify(&warm, |_| warm_patch.clone())?;
        let server_mean_ms = histogram_mean(&ctx.metrics.encode(), "ido_cache_admission_duration_seconds")
            .unwrap_or(f64::NAN)
            * 1e3;

        // With cold lookups: request i is cold when the share's running count steps up.
        let cold_patch = self.cold_patch();
        let share = self.a.cold_share;
        let is_cold = |i: usize| ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
        let cold_template = template.replace(IMAGES[REPLACED].1, "ghcr.io/acme/shop/web:@TAG@");
        let log0 = log_len(&self.cache);
        let probe = DiskProbe::start(&state);
        let mixed = self.load.open_loop(&url, n, self.a.rate, |i| {
            let uid = uid("mixed", run, i);
            let body = if is_cold(i) {
                cold_template
                    .replace("@UID@", &uid)
                    .replace("@TAG@", &format!("pr-{run}-{i}"))
            } else {
                template.replace("@UID@", &uid)
            };
            Request {
                body: body.into_bytes(),
                uid,
                cold: is_cold(i),
            }
        });
        let slowest_write_ms = probe.stop();
        let mixed_unanswered = self.verify(&mixed, |o| {
            if o.cold {
                cold_patch.clone()
            } else {
                warm_patch.clone()
            }
        })?;
        let cold_heads = access_log(&self.cache, log0)
            .iter()
            .filter(|r| r.starts_with("HEAD /v2/mirror/ghcr.io/acme/shop/web/manifests/pr-"))
            .count();
        let mut lags: Vec<f64> = warm.iter().map(|o| o.lag.as_secs_f64() * 1e3).collect();
        lags.sort_by(f64::total_cmp);
        Ok(LatencyRun {
            warm: stats(warm.iter()),
            mixed: stats(mixed.iter()),
            mixed_warm: stats(mixed.iter().filter(|o| !o.cold)),
            mixed_cold: stats(mixed.iter().filter(|o| o.cold)),
            warm_lag_p99_ms: lags[((0.99 * lags.len() as f64).ceil() as usize).clamp(1, lags.len()) - 1],
            warm_cpu_ms_per_request: cpu_warm * 1e3 / n as f64,
            warm_steal_ms,
            server_mean_ms,
            cold_heads,
            warm_unanswered,
            mixed_unanswered,
            slowest_write_ms,
        })
    }

    /// (b) for run `run`.
    fn burst(&self, run: usize) -> anyhow::Result<BurstRun> {
        // The new image, at the source only.
        let repo = format!("bench/new-{run}");
        let layout = self.server.block_on(build_layout(
            &self.a.dir.join(format!("new-{run}")),
            "1.0",
            &["linux/amd64"],
            2,
            256 << 10,
            1000 + run as u64,
        ))?;
        self.server
            .block_on(push_layout(&layout, &self.source, &format!("{repo}:1.0")))?;
        let image = format!("{}/{repo}:1.0", self.source.host());
        let copy_repo = format!("mirror/{}/{repo}", self.source.host().replace(':', "_"));

        let ctx = context(&self.state.join(format!("state-b-{run}")), &self.policy)?;
        let admission = Admission::new(ctx.clone());
        self.server.block_on(admission.refresh())?;
        let url = serve(&self.server, admission)?;
        let mut images = IMAGES.map(|(_, image, _)| image);
        images[REPLACED] = &image;
        let template = String::from_utf8(review(&pod(images), "@UID@"))?;
        let reqs = (0..self.a.burst)
            .map(|i| {
                let uid = uid("burst", run, i);
                Request {
                    body: template.replace("@UID@", &uid).into_bytes(),
                    uid,
                    cold: true,
                }
            })
            .collect();
        let log0 = log_len(&self.cache);
        let t = Instant::now();
        let out = self.load.burst(&url, reqs);
        let answered_ms = t.elapsed().as_secs_f64() * 1e3;
        let unanswered = self.verify(&out, |_| self.cold_patch())?;
        ensure!(
            unanswered.n == 0,
            "{} of the burst's requests were not answered; the first: {}",
            unanswered.n,
            unanswered.first.unwrap_or_default()
        );
        let heads = access_log(&self.cache, log0)
            .iter()
            .filter(|r| r.starts_with("HEAD "))
            .count();

        // The records are created in the background: wait for them to settle.
        let records = self.server.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let n = ctx.store.list::<CachedImage>().await?.len();
                if n > 0 || Instant::now() > deadline {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return anyhow::Ok(ctx.store.list::<CachedImage>().await?);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })?;
        ensure!(!records.is_empty(), "no CachedImage was created");

        // The CachedImage controller until every record is Cached.
        let t = Instant::now();
        self.server.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let all = ctx.store.list::<CachedImage>().await?;
                if all
                    .iter()
                    .all(|c| c.status.as_ref().is_some_and(|s| s.phase == CachePhase::Cached))
                {
                    return anyhow::Ok(());
                }
                ensure!(Instant::now() < deadline, "not Cached within 120 s: {all:?}");
                for c in &all {
                    match cached::reconcile(c, &ctx).await {
                        Ok(Action::Requeue(_) | Action::AwaitChange) => {}
                        Err(e) => bail!("reconciling {:?}: {e}", c.metadata.name),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })?;
        let cached_after_ms = t.elapsed().as_secs_f64() * 1e3;
        let all = self.server.block_on(ctx.store.list::<CachedImage>())?;
        let copied: Vec<(&str, Option<&str>)> = all
            .iter()
            .map(|c| {
                (
                    c.spec.source.as_str(),
                    c.status.as_ref().and_then(|s| s.digest.as_deref()),
                )
            })
            .collect();
        ensure!(
            copied == [(image.as_str(), Some(layout.digest.as_str()))],
            "CachedImages {copied:?}, expected one of {image} at {}",
            layout.digest
        );
        let copies: u64 = ["copied", "present", "failed"]
            .iter()
            .map(|r| {
                ctx.metrics
                    .cache_copies
                    .get_or_create(&CacheCopyLabels {
                        policy: POLICY_REF.into(),
                        result: (*r).into(),
                    })
                    .get()
            })
            .sum();
        let manifest_puts = access_log(&self.cache, log0)
            .iter()
            .filter(|r| r.starts_with(&format!("PUT /v2/{copy_repo}/manifests/")))
            .count();
        // The copy is there, at the source's digest (skopeo, not ido, says so).
        let scratch = tempfile::tempdir()?;
        let (_, digest) = self.server.block_on(ido_testkit::registry::skopeo_raw(
            &self.cache,
            &format!("{copy_repo}:1.0"),
            scratch.path(),
        ))?;
        ensure!(
            digest == layout.digest,
            "the copy's digest {digest}, not {}",
            layout.digest
        );
        Ok(BurstRun {
            answered_ms,
            records: records.len(),
            copies,
            manifest_puts,
            heads,
            cached_after_ms,
        })
    }
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    ido_testkit::bench::median(&v.collect::<Vec<_>>())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    ido_testkit::install_crypto_provider();
    std::fs::create_dir_all(&a.dir)?;
    // The webhook's runtime: two workers, as `ido operator` has on a 2-core node.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("webhook")
        .enable_all()
        .build()?;
    let load = Generator::new()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "bench_admission: {} run(s) of {} s at {} requests/s ({} % cold), burst {}; {cores} cores; loadavg {loadavg}",
        a.runs,
        a.seconds,
        a.rate,
        a.cold_share * 100.0,
        a.burst,
    );

    let (cache, source) = server.block_on(async {
        tokio::try_join!(
            DockerRegistry::start(RegistryOptions::default()),
            DockerRegistry::start(RegistryOptions::default())
        )
    })?;
    // The copies, pushed where the policy puts them.
    let mut copies = BTreeMap::new();
    for (k, (_, _, at)) in IMAGES.iter().enumerate() {
        let layout = server.block_on(build_layout(
            &a.dir.join(format!("image-{k}")),
            "1",
            &["linux/amd64"],
            2,
            64 << 10,
            k as u64,
        ))?;
        server.block_on(push_layout(&layout, &cache, at))?;
        copies.insert(k, format!("{}/{at}@{}", cache.host(), layout.digest));
    }
    let policy = policy(&cache, &source)?;
    // The file stores write each object synchronously on the webhook's runtime (the
    // operator's store is the API server, reached asynchronously): on a disk, a slow write
    // would stall every answer. By default they live in memory (tmpfs).
    let shm = Path::new("/dev/shm");
    let _temp;
    let state = match (&a.state_dir, shm.is_dir()) {
        (Some(d), _) => d.clone(),
        (None, true) => {
            _temp = tempfile::Builder::new()
                .prefix("ido-bench-cache-")
                .tempdir_in(shm)?;
            _temp.path().to_path_buf()
        }
        (None, false) => a.dir.join("state"),
    };
    println!("file stores under {}", state.display());
    let bench = Bench {
        state,
        a,
        server,
        load,
        cache,
        source,
        policy,
        copies,
    };

    let mut lat = Vec::new();
    let mut bursts = Vec::new();
    for run in 0..bench.a.runs {
        let l = bench.latency(run)?;
        println!(
            "run {}/{}: warm p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (due at {:.2} s) ({} requests; \
             sender lag p99 {:.2} ms; {:.3} ms CPU per request, client and server; server's own mean {:.3} ms; \
             {:.0} ms of CPU stolen by the host)",
            run + 1,
            bench.a.runs,
            l.warm.p50,
            l.warm.p99,
            l.warm.p999,
            l.warm.max,
            l.warm.max_at_s,
            l.warm.n,
            l.warm_lag_p99_ms,
            l.warm_cpu_ms_per_request,
            l.server_mean_ms,
            l.warm_steal_ms,
        );
        println!(
            "         {:.0} % cold: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (due at {:.2} s) (warm requests \
             p99 {:.2} ms; cold p50 {:.2} ms, p99 {:.2} ms, {} of them, {} HEADs at the cache)",
            bench.a.cold_share * 100.0,
            l.mixed.p50,
            l.mixed.p99,
            l.mixed.p999,
            l.mixed.max,
            l.mixed.max_at_s,
            l.mixed_warm.p99,
            l.mixed_cold.p50,
            l.mixed_cold.p99,
            l.mixed_cold.n,
            l.cold_heads,
        );
        println!(
            "         slowest small-file write in the state directory meanwhile: {:.1} ms",
            l.slowest_write_ms
        );
        for (phase, u) in [("warm", &l.warm_unanswered), ("cold", &l.mixed_unanswered)] {
            if let Some(first) = &u.first {
                println!(
                    "         {phase} phase: {} request(s) unanswered ({} of them cold), counted at the time waited; the first: {first}",
                    u.n, u.cold
                );
            }
        }
        let b = bench.burst(run)?;
        println!(
            "         burst of {} pods with one new image: answered in {:.1} ms ({} HEADs at the cache); \
             {} CachedImage, {} copy, {} manifest PUT; Cached {:.0} ms after the controller started",
            bench.a.burst, b.answered_ms, b.heads, b.records, b.copies, b.manifest_puts, b.cached_after_ms
        );
        lat.push(l);
        bursts.push(b);
    }

    let m = |f: &dyn Fn(&LatencyRun) -> f64| median(lat.iter().map(f));
    let worst = |f: &dyn Fn(&LatencyRun) -> f64| lat.iter().map(f).fold(0.0, f64::max);
    let (warm_p50, warm_p99, warm_p999, warm_max) = (
        m(&|l| l.warm.p50),
        m(&|l| l.warm.p99),
        m(&|l| l.warm.p999),
        worst(&|l| l.warm.max),
    );
    let (mixed_p50, mixed_p99, mixed_p999, mixed_max) = (
        m(&|l| l.mixed.p50),
        m(&|l| l.mixed.p99),
        m(&|l| l.mixed.p999),
        worst(&|l| l.mixed.max),
    );
    let records = bursts.iter().map(|b| b.records).max().unwrap_or(0);
    let copies = bursts.iter().map(|b| b.copies).max().unwrap_or(0);
    let puts = bursts.iter().map(|b| b.manifest_puts).max().unwrap_or(0);
    println!(
        "\nmedians over {} runs (max: the largest of any run):",
        bench.a.runs
    );
    println!(
        "  (a) warm:          p50 {warm_p50:.2} ms   p99 {warm_p99:.2} ms   p99.9 {warm_p999:.2} ms   max {warm_max:.2} ms   goal p99 <= {GOAL_P99_MS} ms: {}",
        if warm_p99 <= GOAL_P99_MS { "met" } else { "NOT met" }
    );
    println!(
        "  (a) {:.0} % cold:     p50 {mixed_p50:.2} ms   p99 {mixed_p99:.2} ms   p99.9 {mixed_p999:.2} ms   max {mixed_max:.2} ms   (cold requests alone: p50 {:.2} ms, p99 {:.2} ms)",
        bench.a.cold_share * 100.0,
        m(&|l| l.mixed_cold.p50),
        m(&|l| l.mixed_cold.p99),
    );
    println!(
        "  (b) {} pods at once, one new image: {records} CachedImage, {copies} copy, {puts} manifest PUT (each must be 1): {}",
        bench.a.burst,
        if records == 1 && copies == 1 && puts == 1 {
            "met"
        } else {
            "NOT met"
        }
    );
    if let Some(svg) = &bench.a.svg {
        let chart = plot::bars_svg(
            &format!(
                "Image cache admission webhook, HTTPS on loopback, {} requests/s for {} s (median of {} runs)",
                bench.a.rate, bench.a.seconds, bench.a.runs
            ),
            "",
            &[
                plot::group(
                    "(a) every image cached: latency (ms)",
                    &[
                        ("p50", warm_p50),
                        ("p99", warm_p99),
                        ("goal p99", GOAL_P99_MS),
                        ("p99.9", warm_p999),
                        ("max (any run)", warm_max),
                    ],
                ),
                plot::group(
                    &format!(
                        "(a) {:.0} % cold lookups: latency (ms)",
                        bench.a.cold_share * 100.0
                    ),
                    &[
                        ("p50", mixed_p50),
                        ("p99", mixed_p99),
                        ("goal p99", GOAL_P99_MS),
                        ("p99.9", mixed_p999),
                        ("max (any run)", mixed_max),
                    ],
                ),
                plot::group(
                    &format!(
                        "(b) {} pods at once with one new image (goal: 1 each)",
                        bench.a.burst
                    ),
                    &[
                        ("CachedImages", records as f64),
                        ("copies", copies as f64),
                        ("manifest PUTs", puts as f64),
                    ],
                ),
            ],
        );
        std::fs::write(svg, chart).with_context(|| format!("writing {}", svg.display()))?;
        println!("plot: {}", svg.display());
    }
    let runs: Vec<Value> = lat
        .iter()
        .zip(&bursts)
        .map(|(l, b)| {
            json!({"warm": stats_json(&l.warm), "mixed": stats_json(&l.mixed),
                   "mixed_warm": stats_json(&l.mixed_warm), "mixed_cold": stats_json(&l.mixed_cold),
                   "warm_sender_lag_p99_ms": l.warm_lag_p99_ms,
                   "warm_cpu_ms_per_request": l.warm_cpu_ms_per_request,
                   "warm_steal_ms": l.warm_steal_ms,
                   "server_mean_ms": l.server_mean_ms, "cold_heads": l.cold_heads,
                   "warm_unanswered": l.warm_unanswered.n, "mixed_unanswered": l.mixed_unanswered.n,
                   "mixed_unanswered_cold": l.mixed_unanswered.cold,
                   "slowest_state_write_ms": l.slowest_write_ms,
                   "burst": {"answered_ms": b.answered_ms, "cached_images": b.records, "copies": b.copies,
                             "manifest_puts": b.manifest_puts, "heads": b.heads,
                             "cached_after_ms": b.cached_after_ms}})
        })
        .collect();
    let figures = json!({"cores": cores, "loadavg_at_start": loadavg, "rate": bench.a.rate, "seconds": bench.a.seconds, "cold_share": bench.a.cold_share,
               "burst": bench.a.burst, "goal_p99_ms": GOAL_P99_MS,
               "warm": {"p50_ms": warm_p50, "p99_ms": warm_p99, "p999_ms": warm_p999, "max_ms": warm_max},
               "mixed": {"p50_ms": mixed_p50, "p99_ms": mixed_p99, "p999_ms": mixed_p999, "max_ms": mixed_max},
               "cached_images": records, "copies": copies, "manifest_puts": puts, "runs": runs});
    if let Some(path) = &bench.a.json {
        std::fs::write(path, format!("{figures:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures: {}", path.display());
    }
    println!("{figures}");
    Ok(())
}
