//! The images a workload runs: every container of its pod template (init, main and
//! ephemeral), for Pods and every kind that makes Pods, with the pull secrets to read them.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::{Pod, PodSpec, ServiceAccount},
};

/// Where a container sits in its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerKind {
    Init,
    Main,
    Ephemeral,
}

/// One container's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedImage {
    pub kind: ContainerKind,
    /// Index in its list (`spec.<field>[index]`, what a JSON patch addresses).
    pub index: usize,
    pub container: String,
    /// The image as written in the spec (not normalised).
    pub image: String,
}

/// A workload: a Pod or an object with a pod template.
#[derive(Clone, Debug)]
pub enum Workload {
    Pod(Box<Pod>),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    ReplicaSet(Box<ReplicaSet>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
}

/// `$body` with `$o` bound to the workload's object (boxed), whatever its kind.
macro_rules! each_kind {
    ($w:expr, $o:ident => $body:expr) => {
        match $w {
            Workload::Pod($o) => $body,
            Workload::Deployment($o) => $body,
            Workload::StatefulSet($o) => $body,
            Workload::DaemonSet($o) => $body,
            Workload::ReplicaSet($o) => $body,
            Workload::Job($o) => $body,
            Workload::CronJob($o) => $body,
        }
    };
}

impl Workload {
    /// The kind, as `kubectl` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Pod(_) => "Pod",
            Workload::Deployment(_) => "Deployment",
            Workload::StatefulSet(_) => "StatefulSet",
            Workload::DaemonSet(_) => "DaemonSet",
            Workload::ReplicaSet(_) => "ReplicaSet",
            Workload::Job(_) => "Job",
            Workload::CronJob(_) => "CronJob",
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        each_kind!(self, o => &o.metadata)
    }

    /// The pod spec it runs (a Pod's own, else its template's).
    pub fn pod_spec(&self) -> Option<&PodSpec> {
        match self {
            Workload::Pod(o) => o.spec.as_ref(),
            Workload::Deployment(o) => o.spec.as_ref()?.template.spec.as_ref(),
            Workload::StatefulSet(o) => o.spec.as_ref()?.template.spec.as_ref(),
            Workload::DaemonSet(o) => o.spec.as_ref()?.template.spec.as_ref(),
            Workload::ReplicaSet(o) => o.spec.as_ref()?.template.as_ref()?.spec.as_ref(),
            Workload::Job(o) => o.spec.as_ref()?.template.spec.as_ref(),
            Workload::CronJob(o) => o
                .spec
                .as_ref()?
                .job_template
                .spec
                .as_ref()?
                .template
                .spec
                .as_ref(),
        }
    }

    /// The labels of its pod template (a Pod's own).
    pub fn template_labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        match self {
            Workload::Pod(o) => o.metadata.labels.as_ref(),
            Workload::Deployment(o) => o.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref(),
            Workload::StatefulSet(o) => o.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref(),
            Workload::DaemonSet(o) => o.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref(),
            Workload::ReplicaSet(o) => o
                .spec
                .as_ref()?
                .template
                .as_ref()?
                .metadata
                .as_ref()?
                .labels
                .as_ref(),
            Workload::Job(o) => o.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref(),
            Workload::CronJob(o) => o
                .spec
                .as_ref()?
                .job_template
                .spec
                .as_ref()?
                .template
                .metadata
                .as_ref()?
                .labels
                .as_ref(),
        }
    }

    /// The pod spec it runs, to edit.
    pub fn pod_spec_mut(&mut self) -> Option<&mut PodSpec> {
        match self {
            Workload::Pod(o) => o.spec.as_mut(),
            Workload::Deployment(o) => o.spec.as_mut()?.template.spec.as_mut(),
            Workload::StatefulSet(o) => o.spec.as_mut()?.template.spec.as_mut(),
            Workload::DaemonSet(o) => o.spec.as_mut()?.template.spec.as_mut(),
            Workload::ReplicaSet(o) => o.spec.as_mut()?.template.as_mut()?.spec.as_mut(),
            Workload::Job(o) => o.spec.as_mut()?.template.spec.as_mut(),
            Workload::CronJob(o) => o
                .spec
                .as_mut()?
                .job_template
                .spec
                .as_mut()?
                .template
                .spec
                .as_mut(),
        }
    }

    /// Writes the workload back (its spec and metadata, in one update).
    pub async fn replace<S: crate::store::Store>(&self, store: &S) -> crate::store::Result<()> {
        each_kind!(self, o => store.replace(o.as_ref()).await.map(drop))
    }

    /// Records an event about the workload.
    pub async fn event<S: crate::store::Store>(&self, store: &S, event: crate::store::Event) {
        each_kind!(self, o => store.event(o.as_ref(), event).await)
    }

    /// Whether a controller owns it (a Pod of a ReplicaSet, a ReplicaSet of a Deployment, a
    /// Job of a CronJob): its images are the owner's, counted there.
    pub fn is_owned(&self) -> bool {
        self.meta()
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.controller == Some(true)))
    }

    /// The images it runs, in pod spec order: init containers, containers, ephemeral ones.
    pub fn images(&self) -> Vec<UsedImage> {
        self.pod_spec().map(pod_images).unwrap_or_default()
    }
}

/// The images of every container of `spec`: init containers, containers, ephemeral ones.
pub fn pod_images(spec: &PodSpec) -> Vec<UsedImage> {
    let mut out = Vec::new();
    let mut add = |kind, index, name: &str, image: Option<&String>| {
        if let Some(image) = image.map(|i| i.trim()).filter(|i| !i.is_empty()) {
            out.push(UsedImage {
                kind,
                index,
                container: name.to_string(),
                image: image.to_string(),
            });
        }
    };
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        add(ContainerKind::Init, i, &c.name, c.image.as_ref());
    }
    for (i, c) in spec.containers.iter().enumerate() {
        add(ContainerKind::Main, i, &c.name, c.image.as_ref());
    }
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        add(ContainerKind::Ephemeral, i, &c.name, c.image.as_ref());
    }
    out
}

/// The pull secrets a pod reads its images with: its own `imagePullSecrets`, then its
/// ServiceAccount's (as the kubelet merges them), each name once.
pub fn pull_secret_names(spec: &PodSpec, account: Option<&ServiceAccount>) -> Vec<String> {
    let own = spec.image_pull_secrets.iter().flatten();
    let from_account = account
        .and_then(|a| a.image_pull_secrets.as_ref())
        .into_iter()
        .flatten();
    let mut out: Vec<String> = Vec::new();
    for r in own.chain(from_account) {
        if !r.name.is_empty() && !out.contains(&r.name) {
            out.push(r.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
