//! One test's corner of a real Kubernetes control plane (the test kit's [`Cluster`]).
//!
//! [`Env::new`] takes the cluster shared by the test run; [`Env::private`] starts one of the
//! test's own (for tests whose controllers watch cluster-scoped Releases, which would see
//! every other test's). Either way the test gets its own NodeImage namespace and operator
//! namespace, the CRDs, and the chart's ServiceAccount and RBAC rendered by the real `helm`
//! and applied there: [`Env::operator_client`] authenticates as that ServiceAccount, so the
//! API server enforces exactly the chart's grants on every request the operator makes.

use std::path::Path;

use ido_testkit::Cluster;
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// The chart, relative to this crate.
pub(crate) fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/image-distribution-operator")
}

enum Held {
    Shared(&'static Cluster),
    Private(Box<Cluster>),
}

/// A test's namespaces, CRDs and RBAC on a real API server.
pub(crate) struct Env {
    held: Held,
    /// A cluster-admin client (the test's own view).
    pub admin: Client,
    /// Where NodeImages, ImageSyncs and their Secrets live (the chart's `namespace`).
    pub ns: String,
    /// Where the operator runs: its ServiceAccount and Lease.
    pub op_ns: String,
    /// The operator's ServiceAccount (as the chart names it).
    pub service_account: String,
}

impl Env {
    /// On the shared cluster, with the chart's RBAC for `values` (`namespace` is set here).
    pub(crate) async fn new(prefix: &str, values: Value) -> Self {
        let cluster = Cluster::shared().await.expect("the shared cluster");
        Self::setup(Held::Shared(cluster), prefix, values).await
    }

    /// On a cluster of the test's own.
    pub(crate) async fn private(prefix: &str, values: Value) -> Self {
        let cluster = Cluster::start().await.expect("a private cluster");
        Self::setup(Held::Private(Box::new(cluster)), prefix, values).await
    }

    async fn setup(held: Held, prefix: &str, mut values: Value) -> Self {
        let c = match &held {
            Held::Shared(c) => *c,
            Held::Private(c) => c.as_ref(),
        };
        install_crds(c).await;
        let ns = c.namespace(prefix).await.unwrap();
        let op_ns = c.namespace(&format!("{prefix}-op")).await.unwrap();
        values["namespace"] = json!(ns);
        let values_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(values_file.path(), values.to_string()).unwrap();
        // The helm release is named after the test's namespace, so that cluster-scoped
        // names (ClusterRoles) of concurrent tests differ.
        let release = format!("ido-{}", ns.rsplit('-').next().unwrap());
        let rendered = c
            .helm(&[
                "template",
                &release,
                &chart_dir().display().to_string(),
                "--namespace",
                &op_ns,
                "--values",
                &values_file.path().display().to_string(),
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/serviceaccount.yaml",
            ])
            .await
            .unwrap();
        let service_account = rendered
            .split("\n---")
            .filter_map(|d| yaml::from_str::<Value>(d).ok())
            .find(|d| d["kind"] == "ServiceAccount")
            .and_then(|d| d["metadata"]["name"].as_str().map(String::from))
            .expect("the chart renders a ServiceAccount");
        // Every rendered object names its namespace (the operator's, the NodeImages', and
        // `default` for Release events).
        c.kubectl_stdin(&["apply", "-f", "-"], &rendered).await.unwrap();
        let admin = c.client().await.unwrap();
        Self {
            held,
            admin,
            ns,
            op_ns,
            service_account,
        }
    }

    /// The cluster.
    pub(crate) fn cluster(&self) -> &Cluster {
        match &self.held {
            Held::Shared(c) => c,
            Held::Private(c) => c,
        }
    }

    /// A client authenticated as the chart's ServiceAccount (RBAC enforced), defaulting to
    /// the operator's namespace.
    pub(crate) async fn operator_client(&self) -> Client {
        let token = self
            .cluster()
            .token(&self.op_ns, &self.service_account)
            .await
            .unwrap();
        self.cluster()
            .client_with_token(&token, &self.op_ns)
            .await
            .unwrap()
    }

    fn api<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<K>(&());
        match namespace {
            Some(ns) => Api::namespaced_with(self.admin.clone(), ns, &ar),
            None => Api::all_with(self.admin.clone(), &ar),
        }
    }

    /// The object as JSON, `None` when absent.
    pub(crate) async fn get<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.api::<K>(namespace)
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Creates `obj` (in its own namespace) as the admin.
    pub(crate) async fn create<K: Resource<DynamicType = ()> + serde::Serialize>(&self, obj: &K) -> Value {
        let ns = obj.meta().namespace.clone();
        let mut v = serde_json::to_value(obj).unwrap();
        v["apiVersion"] = json!(K::api_version(&()));
        v["kind"] = json!(K::kind(&()));
        let o: DynamicObject = serde_json::from_value(v).unwrap();
        let created = self
            .api::<K>(ns.as_deref())
            .create(&PostParams::default(), &o)
            .await
            .unwrap();
        serde_json::to_value(created).unwrap()
    }

    /// Every object of kind `K` in `namespace` (all namespaces when `None`).
    pub(crate) async fn list<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>) -> Vec<Value> {
        self.api::<K>(namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    /// Deletes the object (background propagation); absent is fine.
    pub(crate) async fn delete<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>, name: &str) {
        match self
            .api::<K>(namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting {name}: {e}"),
        }
    }

    /// Merge-patches the object's status subresource, as a controller or kubelet would.
    pub(crate) async fn set_status<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) {
        self.api::<K>(namespace)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    /// Merge-patches the object itself.
    pub(crate) async fn patch<K: Resource<DynamicType = ()>>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) {
        self.api::<K>(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }
}

/// The project's CRDs (and the Release CRD), applied server-side: idempotent, so
/// concurrent tests may all do it.
async fn install_crds(c: &Cluster) {
    let mut docs: Vec<String> = ido_api::crds()
        .iter()
        .map(|crd| serde_json::to_string(crd).unwrap())
        .collect();
    docs.sort();
    let list = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
        docs.join(",")
    );
    c.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=ido-tests",
            "-f",
            "-",
        ],
        &list,
    )
    .await
    .unwrap();
    // kubectl wait fails at once ("accessor error: <nil>") on a CRD the API server has not
    // given any status yet: asked again until it has one.
    let mut last = None;
    for _ in 0..20 {
        match c
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/nodeimages.image.giantswarm.io",
                "crd/releases.release.giantswarm.io",
                "crd/imagesyncs.ido.dev",
                "crd/diskimports.ido.dev",
            ])
            .await
        {
            Ok(_) => return,
            Err(e) if e.to_string().contains("accessor error") => last = Some(e),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the CRDs never got a status: {}", last.unwrap());
}
