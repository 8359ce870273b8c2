//! The mutating admission webhook's decisions: a Pod's images pointed at copies known to
//! be present, the rest left as they are and their copies queued.
//!
//! ```text
//!   AdmissionReview(Pod) ─▶ skip (ido's namespace, kube-system, the cache registry's own
//!                            namespace, pods labelled ido.dev/image-cache=skip, static pods'
//!                            mirrors, no webhook-mode policy)
//!     per image the policy caches: copy present? ─ known (cached answer) ──────────▶ hit
//!                                                └ HEAD at the cache (≤ LOOKUP_TIMEOUT) ─▶ hit / miss
//!     hits ─▶ JSON patch (images, plus the cache's pull secret; the pod's own kept)
//!     misses ─▶ the image left; its CachedImage created in the background (not on dry runs;
//!               one per image however many pods ask)
//! ```
//!
//! Answers come from memory once warm: the policies are compiled and their registries
//! connected by [`Admission::refresh`] (every [`REFRESH_EVERY`]), and a lookup's answer is
//! kept ([`PRESENT_FOR`], [`ABSENT_FOR`]). A cache registry found down at a refresh is
//! asked nothing until it is back (its pods pass unchanged); one that goes down between
//! refreshes costs a miss at most [`LOOKUP_TIMEOUT`].
//! Copies already point at the cache and are left, so a second admission (reinvocation)
//! changes nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use futures::{FutureExt, future::join_all};
use ido_api::{ClusterImageCachePolicy, ImageCachePolicy, imagecache::CacheMode};
use ido_oci::{Reference, registry::Registry};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;

use super::{
    ALWAYS_SKIPPED,
    policy::{Compiled, compile},
    pull_secret_names,
    reconcile::{create, pointed_at},
    rewrite,
};
use crate::{Context, metrics::LookupLabels, store::Store};

/// How long a lookup at the cache may take before the image is taken as absent.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a copy found present is taken to be.
pub const PRESENT_FOR: Duration = Duration::from_secs(300);
/// How long a copy found absent (or a cache that did not answer) is taken to be.
pub const ABSENT_FOR: Duration = Duration::from_secs(5);
/// How often the policies are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long connecting a cache registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a queued copy is not queued again.
const QUEUED_FOR: Duration = Duration::from_secs(60);

/// A webhook-mode policy, ready to answer.
struct Live {
    policy: Compiled,
    /// The cache registry (`None` while it cannot be reached: every lookup misses).
    registry: Option<Registry>,
}

/// The webhook's state: policies, lookups and queued copies.
pub struct Admission<S: Store> {
    ctx: Arc<Context<S>>,
    policies: RwLock<Arc<Vec<Arc<Live>>>>,
    /// Copy reference → (digest if present, when learnt).
    known: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// Lookups running now, by copy reference.
    inflight: Mutex<HashMap<String, Lookup>>,
    queued: Mutex<HashMap<String, Instant>>,
}

/// A lookup at the cache that several requests may wait for.
type Lookup = futures::future::Shared<futures::future::BoxFuture<'static, Option<String>>>;

impl<S: Store> Admission<S> {
    pub fn new(ctx: Arc<Context<S>>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            policies: RwLock::default(),
            known: Mutex::default(),
            inflight: Mutex::default(),
            queued: Mutex::default(),
        })
    }

    /// Reads the webhook-mode policies and connects their registries.
    pub async fn refresh(&self) -> crate::store::Result<()> {
        let own = self.ctx.settings.namespace.clone();
        let mut compiled: Vec<Compiled> = Vec::new();
        for p in self.ctx.store.list::<ClusterImageCachePolicy>().await? {
            compiled.extend(compile(&p, &own).ok());
        }
        for p in self.ctx.store.list_in::<ImageCachePolicy>(None).await? {
            compiled.extend(compile(&p, &own).ok());
        }
        compiled.retain(|c| c.mode == CacheMode::Webhook);
        // Namespaced policies first: they are the more specific.
        compiled.sort_by_key(|c| (!c.reference.starts_with("ImageCachePolicy/"), c.reference.clone()));
        // Each registry is connected again (one `GET /v2/`): a cache that went down is
        // noticed here, and its pods pass unchanged until it is back.
        let mut live = Vec::new();
        for policy in compiled {
            let registry = match tokio::time::timeout(CONNECT_TIMEOUT, policy.connect(&self.ctx)).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    tracing::warn!(policy = %policy.reference, error = %e, "the cache registry cannot be reached: pods pass unchanged");
                    None
                }
                Err(_) => {
                    tracing::warn!(policy = %policy.reference, "the cache registry did not answer: pods pass unchanged");
                    None
                }
            };
            live.push(Arc::new(Live { policy, registry }));
        }
        *self.policies.write().expect("lock") = Arc::new(live);
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] (a second after a failure) until dropped.
    pub async fn refresh_loop(self: Arc<Self>) {
        loop {
            let wait = match self.refresh().await {
                Ok(()) => REFRESH_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the image cache policies failed: pods pass unchanged");
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Records how long an answer took (`ido_cache_admission_duration_seconds`).
    pub fn observe(&self, took: Duration) {
        self.ctx.metrics.admission_seconds.observe(took.as_secs_f64());
    }

    /// Answers one AdmissionReview (as JSON): always allowed, with a patch when images were
    /// pointed at copies.
    pub async fn review(&self, body: &[u8]) -> Value {
        let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return to_json(AdmissionResponse::invalid(format!("not an AdmissionReview: {e}"))),
        };
        let req: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return to_json(AdmissionResponse::invalid(e.to_string())),
        };
        let response = AdmissionResponse::from(&req);
        let ops = self.decide(&req).await;
        if ops.is_empty() {
            return to_json(response);
        }
        match serde_json::from_value::<json_patch::Patch>(Value::Array(ops))
            .map(|p| response.clone().with_patch(p))
        {
            Ok(Ok(r)) => to_json(r),
            _ => to_json(response),
        }
    }

    /// The JSON patch for the pod of `req` (empty: unchanged).
    async fn decide(&self, req: &AdmissionRequest<Pod>) -> Vec<Value> {
        let Some(pod) = &req.object else { return vec![] };
        let ns = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        if ns == self.ctx.settings.namespace || ALWAYS_SKIPPED.contains(&ns.as_str()) {
            return vec![];
        }
        let Some(spec) = &pod.spec else { return vec![] };
        let mut meta = pod.metadata.clone();
        meta.namespace = Some(ns.clone());
        let policies = self.policies.read().expect("lock").clone();
        let Some(live) = policies.iter().find(|l| l.policy.scope.covers(&meta)).cloned() else {
            return vec![];
        };
        if super::scan::skipped(&meta, &live.policy.target) || is_mirror_pod(&meta) {
            return vec![];
        }
        // The images this policy caches, with their copies.
        let mut wanted: Vec<(String, Reference, Reference)> = Vec::new();
        for used in super::collect::pod_images(spec) {
            let Ok(source) = ido_oci::reference::parse(&used.image) else {
                continue;
            };
            if live.policy.target.holds(&source) || !live.policy.filter.admits(&source) {
                continue;
            }
            if let Ok(copy) = live.policy.target.cached(&source) {
                wanted.push((used.image.clone(), source, copy));
            }
        }
        if wanted.is_empty() {
            return vec![];
        }
        let answers = join_all(wanted.iter().map(|(_, _, copy)| self.lookup(&live, copy))).await;
        let mut to: HashMap<&str, String> = HashMap::new();
        let mut misses = Vec::new();
        for ((image, source, copy), digest) in wanted.iter().zip(answers) {
            let result = if digest.is_some() { "hit" } else { "miss" };
            self.ctx
                .metrics
                .cache_lookups
                .get_or_create(&LookupLabels {
                    result: result.into(),
                })
                .inc();
            match digest {
                Some(d) => {
                    to.insert(image, pointed_at(&live.policy, &copy.whole(), Some(&d)));
                }
                None => misses.push(source.clone()),
            }
        }
        if !misses.is_empty() && !req.dry_run {
            self.queue(&live, misses, &ns, spec);
        }
        let rewrites = rewrite::rewrites(spec, |image| to.get(image).cloned());
        rewrite::json_patch(spec, &rewrites, live.policy.pull_secret.as_deref())
    }

    /// The digest of `copy` if it is present, from memory or one HEAD.
    async fn lookup(&self, live: &Live, copy: &Reference) -> Option<String> {
        let registry = live.registry.as_ref()?;
        let key = copy.whole();
        if let Some((digest, at)) = self.known.lock().expect("lock").get(&key) {
            let fresh = if digest.is_some() { PRESENT_FOR } else { ABSENT_FOR };
            if at.elapsed() < fresh {
                return digest.clone();
            }
        }
        // One HEAD per copy at a time: requests that arrive while it runs wait for it.
        let pending = {
            let mut inflight = self.inflight.lock().expect("lock");
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let (registry, copy) = (registry.clone(), copy.clone());
                    async move {
                        tokio::time::timeout(LOOKUP_TIMEOUT, registry.manifest_digest(&copy))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten()
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let digest = pending.await;
        self.known
            .lock()
            .expect("lock")
            .insert(key.clone(), (digest.clone(), Instant::now()));
        self.inflight.lock().expect("lock").remove(&key);
        digest
    }

    /// Creates the records of `sources` in the background, each at most once a minute.
    fn queue(
        &self,
        live: &Arc<Live>,
        sources: Vec<Reference>,
        ns: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
    ) {
        let fresh: Vec<Reference> = {
            let mut q = self.queued.lock().expect("lock");
            q.retain(|_, at| at.elapsed() < QUEUED_FOR);
            sources
                .into_iter()
                .filter(|s| q.insert(s.whole(), Instant::now()).is_none())
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let (ctx, live, ns, spec) = (self.ctx.clone(), live.clone(), ns.to_string(), spec.clone());
        tokio::spawn(async move {
            let account = spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into());
            let sa = ctx
                .store
                .get::<ServiceAccount>(Some(&ns), &account)
                .await
                .ok()
                .flatten();
            let secrets: Vec<ido_api::imagecache::PullSecretReference> =
                pull_secret_names(&spec, sa.as_ref())
                    .into_iter()
                    .map(|name| ido_api::imagecache::PullSecretReference {
                        namespace: ns.clone(),
                        name,
                    })
                    .collect();
            for source in fresh {
                if let Err(e) = create(&ctx, &live.policy, &source, &secrets).await {
                    tracing::warn!(source = %source.whole(), error = %e, "queueing a copy failed");
                }
            }
        });
    }
}

/// A static pod's mirror, which the kubelet owns: changing it would make the kubelet
/// replace it over and over.
fn is_mirror_pod(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
}

fn to_json(r: AdmissionResponse) -> Value {
    serde_json::to_value(r.into_review()).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Settings, file_store::FileStore};
    use ido_api::CachedImage;
    use serde_json::json;

    fn context(dir: &std::path::Path) -> Arc<Context<FileStore>> {
        Arc::new(Context::new(FileStore::open(dir).unwrap(), Settings::default()))
    }

    fn review(uid: usize, ns: &str, image: &str, dry_run: bool) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("uid-{uid}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns, "operation": "CREATE", "dryRun": dry_run,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"generateName": "web-", "namespace": ns},
                           "spec": {"containers": [{"name": "web", "image": image}]}}
            }
        })
        .to_string()
        .into_bytes()
    }

    /// A cache that does not answer: every pod passes unchanged at once, and however many
    /// pods of a new image arrive there is one record; a dry run queues nothing.
    #[tokio::test]
    async fn pods_pass_unchanged_while_the_cache_is_down_and_one_copy_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let policy: ClusterImageCachePolicy = serde_json::from_value(json!({
            "apiVersion": "ido.dev/v1alpha1", "kind": "ClusterImageCachePolicy",
            "metadata": {"name": "all"},
            "spec": {"target": {"registry": "127.0.0.1:1", "tlsVerify": false}}
        }))
        .unwrap();
        ctx.store.create(&policy).await.unwrap();
        let admission = Admission::new(ctx.clone());
        admission.refresh().await.unwrap();
        assert_eq!(admission.policies.read().unwrap().len(), 1);

        let dry = admission.review(&review(0, "apps", "nginx:1.27", true)).await;
        assert_eq!(dry["response"]["allowed"], true);
        let started = Instant::now();
        let answers = join_all((1..=100).map(|i| {
            let body = review(i, "apps", "nginx:1.27", false);
            let a = admission.clone();
            async move { a.review(&body).await }
        }))
        .await;
        assert!(started.elapsed() < LOOKUP_TIMEOUT, "{:?}", started.elapsed());
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a["response"]["uid"], format!("uid-{}", i + 1));
            assert_eq!(a["response"]["allowed"], true);
            assert!(a["response"].get("patch").is_none(), "{a}");
        }
        // ido's own namespace and kube-system are never looked at.
        for ns in ["giantswarm", "kube-system"] {
            let a = admission.review(&review(200, ns, "busybox", false)).await;
            assert!(a["response"].get("patch").is_none());
        }
        // Nor are pods that opt out: no record for their image.
        let mut skip: Value = serde_json::from_slice(&review(300, "apps", "redis:7", false)).unwrap();
        skip["request"]["object"]["metadata"]["labels"] = json!({"ido.dev/image-cache": "skip"});
        admission.review(skip.to_string().as_bytes()).await;
        // Nor are static pods' mirrors.
        let mut mirror: Value = serde_json::from_slice(&review(301, "apps", "etcd:3", false)).unwrap();
        mirror["request"]["object"]["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
        admission.review(mirror.to_string().as_bytes()).await;
        for _ in 0..50 {
            if !ctx.store.list::<CachedImage>().await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let records = ctx.store.list::<CachedImage>().await.unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].spec.source, "docker.io/library/nginx:1.27");
        assert_eq!(records[0].spec.target, "127.0.0.1:1/docker.io/library/nginx:1.27");
        assert_eq!(records[0].spec.policy, "ClusterImageCachePolicy/all");

        let bad = admission.review(b"{}").await;
        assert_eq!(bad["response"]["allowed"], false);
    }
}
