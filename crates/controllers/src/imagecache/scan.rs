//! The images in use in a policy's scope: every workload of every kind listed, those a
//! controller owns left to their owner, and each image normalised, filtered and counted
//! with the workloads that run it and the pull secrets they read it with.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ido_api::imagecache::{ClusterImageCachePolicySpec, WorkloadReference};
use ido_oci::Reference;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::{Pod, ServiceAccount},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use super::{CacheTarget, ImageFilter, Workload, pull_secret_names};
use crate::store::{Object, Result, Store};

/// A label on a workload or pod (a pod template's, for both) that keeps the cache away
/// from it: its images are neither cached nor rewritten.
pub const SKIP_LABEL: &str = "ido.dev/image-cache";
/// [`SKIP_LABEL`]'s value.
pub const SKIP_VALUE: &str = "skip";

/// Whether the object with `meta` opted out of the cache ([`SKIP_LABEL`]) or runs in the
/// cache registry's own namespace.
pub fn skipped(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    target: &CacheTarget,
) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(SKIP_LABEL))
        .is_some_and(|v| v == SKIP_VALUE)
        || target
            .namespace()
            .is_some_and(|ns| meta.namespace.as_deref() == Some(ns))
}

/// Namespaces never in a cluster policy's scope.
pub const ALWAYS_SKIPPED: [&str; 1] = ["kube-system"];

/// A `workloadSelector` the API server would refuse.
#[derive(Debug, thiserror::Error)]
#[error("invalid workloadSelector: {0}")]
pub struct SelectorError(String);

/// Which workloads a policy looks at.
#[derive(Clone, Debug)]
pub struct Scope {
    namespaces: Namespaces,
    selector: Option<Selector>,
}

#[derive(Clone, Debug)]
enum Namespaces {
    One(String),
    Select {
        include: Vec<String>,
        exclude: BTreeSet<String>,
    },
}

impl Scope {
    /// A namespaced policy: the workloads of `namespace`.
    pub fn namespace(namespace: &str, selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        Ok(Self {
            namespaces: Namespaces::One(namespace.to_string()),
            selector: selector_of(selector)?,
        })
    }

    /// A cluster policy: the namespaces it selects, never `own` (ido's) nor `kube-system`.
    pub fn cluster(spec: &ClusterImageCachePolicySpec, own: &str) -> Result<Self, SelectorError> {
        let mut exclude: BTreeSet<String> = spec.namespaces.exclude.iter().cloned().collect();
        exclude.extend(ALWAYS_SKIPPED.map(String::from));
        exclude.insert(own.to_string());
        Ok(Self {
            namespaces: Namespaces::Select {
                include: spec.namespaces.include.clone(),
                exclude,
            },
            selector: selector_of(spec.policy.workload_selector.as_ref())?,
        })
    }

    /// The one namespace in scope, if it is one (else every namespace is listed).
    pub fn single_namespace(&self) -> Option<&str> {
        match &self.namespaces {
            Namespaces::One(n) => Some(n),
            Namespaces::Select { include, .. } if include.len() == 1 => Some(&include[0]),
            Namespaces::Select { .. } => None,
        }
    }

    /// Whether the workload with `meta` is in scope.
    pub fn covers(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        let in_namespaces = match &self.namespaces {
            Namespaces::One(n) => n == ns,
            Namespaces::Select { include, exclude } => {
                !exclude.contains(ns) && (include.is_empty() || include.iter().any(|i| i == ns))
            }
        };
        let empty = BTreeMap::new();
        in_namespaces
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(meta.labels.as_ref().unwrap_or(&empty)))
    }
}

fn selector_of(s: Option<&LabelSelector>) -> Result<Option<Selector>, SelectorError> {
    s.cloned()
        .map(Selector::try_from)
        .transpose()
        .map_err(|e| SelectorError(e.to_string()))
}

/// One source image in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUse {
    /// The normalised source reference.
    pub source: Reference,
    /// The workloads that run it.
    pub workloads: BTreeSet<WorkloadReference>,
    /// Per namespace, the pull secrets its workloads read it with (their own, then their
    /// ServiceAccount's).
    pub pull_secrets: BTreeMap<String, Vec<String>>,
}

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Images to cache, by normalised reference.
    pub images: BTreeMap<String, InUse>,
    /// Images in scope that are not references (left alone, reported).
    pub unreadable: Vec<(WorkloadReference, String)>,
    /// Copies in the cache that workloads run already (by normalised reference), with the
    /// workloads that run them.
    pub in_cache: BTreeMap<String, BTreeSet<WorkloadReference>>,
}

/// The images the workloads in `scope` run that `filter` admits and `target` does not hold
/// already ([`workloads`], then [`tally`]).
pub async fn scan<S: Store>(
    store: &S,
    scope: &Scope,
    filter: &ImageFilter,
    target: &CacheTarget,
) -> Result<Scan> {
    let found = workloads(store, scope).await?;
    tally(store, &found, filter, target).await
}

/// Every workload in `scope` that no controller owns.
pub async fn workloads<S: Store>(store: &S, scope: &Scope) -> Result<Vec<Workload>> {
    let mut workloads: Vec<Workload> = Vec::new();
    collect::<S, Pod>(store, scope, &mut workloads, |o| Workload::Pod(Box::new(o))).await?;
    collect::<S, Deployment>(store, scope, &mut workloads, |o| {
        Workload::Deployment(Box::new(o))
    })
    .await?;
    collect::<S, StatefulSet>(store, scope, &mut workloads, |o| {
        Workload::StatefulSet(Box::new(o))
    })
    .await?;
    collect::<S, DaemonSet>(store, scope, &mut workloads, |o| Workload::DaemonSet(Box::new(o))).await?;
    collect::<S, ReplicaSet>(store, scope, &mut workloads, |o| {
        Workload::ReplicaSet(Box::new(o))
    })
    .await?;
    collect::<S, Job>(store, scope, &mut workloads, |o| Workload::Job(Box::new(o))).await?;
    collect::<S, CronJob>(store, scope, &mut workloads, |o| Workload::CronJob(Box::new(o))).await?;
    Ok(workloads)
}

/// The images `workloads` run, counted with the workloads that run them: those `filter`
/// admits as sources, those `target` holds (copies a workload already points at) apart.
pub async fn tally<S: Store>(
    store: &S,
    workloads: &[Workload],
    filter: &ImageFilter,
    target: &CacheTarget,
) -> Result<Scan> {
    let mut accounts: HashMap<(String, String), Option<ServiceAccount>> = HashMap::new();
    let mut out = Scan::default();
    for w in workloads {
        let Some(spec) = w.pod_spec() else { continue };
        if skipped(w.meta(), target)
            || w.template_labels()
                .is_some_and(|l| l.get(SKIP_LABEL).is_some_and(|v| v == SKIP_VALUE))
        {
            continue;
        }
        let meta = w.meta();
        let ns = meta.namespace.clone().unwrap_or_default();
        let who = WorkloadReference {
            kind: w.kind().to_string(),
            namespace: ns.clone(),
            name: meta.name.clone().unwrap_or_default(),
        };
        let account_name = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = (ns.clone(), account_name);
        if !accounts.contains_key(&key) {
            let sa = store.get::<ServiceAccount>(Some(&key.0), &key.1).await?;
            accounts.insert(key.clone(), sa);
        }
        let secrets = pull_secret_names(spec, accounts[&key].as_ref());
        for used in w.images() {
            let source = match ido_oci::reference::parse(&used.image) {
                Ok(r) => r,
                Err(e) => {
                    out.unreadable.push((who.clone(), e.to_string()));
                    continue;
                }
            };
            if target.holds(&source) {
                out.in_cache
                    .entry(source.whole())
                    .or_default()
                    .insert(who.clone());
                continue;
            }
            if !filter.admits(&source) {
                continue;
            }
            let entry = out.images.entry(source.whole()).or_insert_with(|| InUse {
                source: source.clone(),
                workloads: BTreeSet::new(),
                pull_secrets: BTreeMap::new(),
            });
            entry.workloads.insert(who.clone());
            let names = entry.pull_secrets.entry(ns.clone()).or_default();
            for s in &secrets {
                if !names.contains(s) {
                    names.push(s.clone());
                }
            }
        }
    }
    Ok(out)
}

/// Adds the objects of kind `K` in scope that no controller owns.
async fn collect<S: Store, K: Object>(
    store: &S,
    scope: &Scope,
    out: &mut Vec<Workload>,
    wrap: impl Fn(K) -> Workload,
) -> Result<()> {
    for obj in store.list_in::<K>(scope.single_namespace()).await? {
        let w = wrap(obj);
        if scope.covers(w.meta()) && !w.is_owned() {
            out.push(w);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
