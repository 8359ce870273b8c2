//! The operator against a real Kubernetes API server (the test kit's control plane, built
//! from upstream): the `KubeStore` adapter, the real reconcilers through it, the whole
//! operator (leader election, kube-runtime controllers, watches) authenticated as the
//! chart's ServiceAccount, so the server enforces the chart's RBAC on every request.
//! ImageSyncs copy between real `docker-registry` instances of the test kit; DiskImports
//! get their Jobs and Pods from the real job controller, the test playing the kubelet.
//!
//! The provider is an in-memory test double (vSphere itself is tested against the vCenter
//! simulator in `ido-providers`); the S3 source is a real HTTP server on loopback.

mod diskimport;
mod env;
mod faults;
mod imagecache;
mod imagesync;
mod lease;
mod metrics;
mod operator;
mod rbac;
mod reconcile;
mod store;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use env::Env;
use ido_api::Release;
use ido_controllers::{Settings, config::Config, metrics::Metrics};
use ido_io::s3::{S3Object, S3Source};
use ido_operator::{ContextParts, KubeStore};
use ido_providers::{Progress, Provider, ProviderError, Providers, SourceFormat, Template};
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

const RELEASE: &str = "vsphere-30.0.0";
const IMAGE: &str = "capv-flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";

// === test doubles ===

/// A provider whose catalog is a set in memory; an upload takes `delay`.
#[derive(Default)]
struct MemProvider {
    templates: Mutex<BTreeSet<(String, String)>>,
    /// Uploads started.
    creates: Mutex<u32>,
    /// Uploads that finished (a cancelled one does not).
    completed: Mutex<u32>,
    delay: Duration,
}

#[async_trait]
impl Provider for MemProvider {
    fn id(&self) -> &'static str {
        "capv"
    }
    fn release_prefix(&self) -> &'static str {
        "vsphere"
    }
    fn format(&self) -> SourceFormat {
        SourceFormat::Ova
    }
    fn locations(&self) -> Vec<String> {
        vec!["dc0".into(), "dc1".into()]
    }
    async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>, ProviderError> {
        let t = self.templates.lock().unwrap();
        Ok(t.contains(&(location.into(), image.into()))
            .then(|| template(location, image)))
    }
    async fn create(
        &self,
        location: &str,
        image: &str,
        _: &S3Object,
        progress: &Progress,
    ) -> Result<Template, ProviderError> {
        progress.add(1024);
        *self.creates.lock().unwrap() += 1;
        tokio::time::sleep(self.delay).await;
        *self.completed.lock().unwrap() += 1;
        self.templates
            .lock()
            .unwrap()
            .insert((location.into(), image.into()));
        Ok(template(location, image))
    }
    async fn delete(&self, location: &str, image: &str) -> Result<(), ProviderError> {
        self.templates
            .lock()
            .unwrap()
            .remove(&(location.to_string(), image.to_string()));
        Ok(())
    }
}

fn template(location: &str, image: &str) -> Template {
    Template {
        reference: format!("VirtualMachine:{location}"),
        path: format!("/{location}/vm/{image}"),
    }
}

/// An S3 endpoint on loopback that has every object.
async fn s3_source() -> S3Source {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        async move { axum::serve(listener, axum::Router::new().fallback(|| async { "ova" })).await },
    );
    let config = Config::from_value(json!({"s3": {"bucket": "images", "endpoint": endpoint}})).unwrap();
    config.source().unwrap().unwrap()
}

fn parts(provider: Arc<MemProvider>, source: S3Source, metrics: Metrics, ns: &str) -> ContextParts {
    let mut providers = Providers::default();
    providers.insert(provider);
    ContextParts {
        providers,
        source: Some(source),
        settings: Settings {
            namespace: ns.into(),
            ..Settings::default()
        },
        metrics,
    }
}

fn release(name: &str) -> Release {
    Release::with_components(
        name,
        &[
            ("flatcar", "3975.2.0"),
            ("kubernetes", "v1.30.4"),
            ("os-tooling", "v1.18.1"),
        ],
    )
}

/// A `KubeStore` over `client` for the test's NodeImage namespace.
fn store(env: &Env, client: kube::Client) -> KubeStore {
    let reporter = Reporter {
        controller: "ido".into(),
        instance: Some("ido-0".into()),
    };
    KubeStore::new(client, reporter, Some(env.ns.clone()))
}

fn has_finalizer(v: &Value, f: &str) -> bool {
    v["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == f))
}

/// Waits up to 30 s for `cond`.
async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
