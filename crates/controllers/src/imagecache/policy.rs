//! A policy as the cache's reconcilers and webhook use it: both kinds behind one trait,
//! checked once into a [`Compiled`] policy whose errors name the spec field.

use std::{collections::BTreeMap, time::Duration};

use ido_api::{
    CachePolicy, CachePolicyStatus, ClusterImageCachePolicy, ImageCachePolicy,
    imagecache::{CacheMode, DEFAULT_REFRESH_INTERVAL, DEFAULT_RETENTION},
};
use ido_oci::{
    copy::Platforms,
    media::Platform,
    registry::{Registry, TlsSettings},
};

use super::{CacheTarget, ImageFilter, Scope};
use crate::{
    Context,
    imagesync::{Side, SideError},
    store::{Object, Store},
};

/// What the reconcilers need of a policy kind.
pub trait PolicyKind: Object {
    fn policy(&self) -> &CachePolicy;
    fn cache_status(&self) -> Option<&CachePolicyStatus>;
    fn cache_status_mut(&mut self) -> &mut CachePolicyStatus;
    /// The workloads it covers; `own` is ido's namespace.
    fn scope(&self, own: &str) -> Result<Scope, String>;
    /// Where its Secrets and ConfigMaps are read: its namespace, or ido's.
    fn config_namespace(&self, own: &str) -> String;
    /// How CachedImages name it: `ClusterImageCachePolicy/<name>`,
    /// `ImageCachePolicy/<namespace>/<name>`.
    fn reference(&self) -> String;
}

impl PolicyKind for ImageCachePolicy {
    fn policy(&self) -> &CachePolicy {
        &self.spec.policy
    }
    fn cache_status(&self) -> Option<&CachePolicyStatus> {
        self.status.as_ref()
    }
    fn cache_status_mut(&mut self) -> &mut CachePolicyStatus {
        self.status.get_or_insert_default()
    }
    fn scope(&self, _own: &str) -> Result<Scope, String> {
        let ns = self.metadata.namespace.as_deref().unwrap_or_default();
        Scope::namespace(ns, self.spec.policy.workload_selector.as_ref()).map_err(|e| e.to_string())
    }
    fn config_namespace(&self, _own: &str) -> String {
        self.metadata.namespace.clone().unwrap_or_default()
    }
    fn reference(&self) -> String {
        format!(
            "ImageCachePolicy/{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

impl PolicyKind for ClusterImageCachePolicy {
    fn policy(&self) -> &CachePolicy {
        &self.spec.policy
    }
    fn cache_status(&self) -> Option<&CachePolicyStatus> {
        self.status.as_ref()
    }
    fn cache_status_mut(&mut self) -> &mut CachePolicyStatus {
        self.status.get_or_insert_default()
    }
    fn scope(&self, own: &str) -> Result<Scope, String> {
        Scope::cluster(&self.spec, own).map_err(|e| e.to_string())
    }
    fn config_namespace(&self, own: &str) -> String {
        own.to_string()
    }
    fn reference(&self) -> String {
        format!(
            "ClusterImageCachePolicy/{}",
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

/// A policy, checked.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// [`PolicyKind::reference`].
    pub reference: String,
    pub generation: Option<i64>,
    pub target: CacheTarget,
    pub filter: ImageFilter,
    pub scope: Scope,
    pub platforms: Platforms,
    pub mode: CacheMode,
    pub pin_digest: bool,
    pub retention: Duration,
    pub refresh: Duration,
    /// TLS settings by source registry host.
    pub sources: BTreeMap<String, TlsSettings>,
    /// The cache registry as a copy's side (its Secret and CAs in `config_namespace`).
    pub side: Side,
    pub config_namespace: String,
    pub pull_secret: Option<String>,
}

/// The spec's errors, each naming its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct PolicyError(pub Vec<String>);

/// Checks `p` (ido runs in `own`).
pub fn compile<P: PolicyKind>(p: &P, own: &str) -> Result<Compiled, PolicyError> {
    let spec = p.policy();
    let mut errs = Vec::new();
    let t = &spec.target;
    let target = CacheTarget::new(&t.registry, t.path_prefix.as_deref().unwrap_or_default())
        .map_err(|e| errs.push(format!("spec.target: {e}")))
        .ok();
    let filter = ImageFilter::new(&spec.images.include, &spec.images.exclude)
        .map_err(|e| errs.push(format!("spec.images: {e}")))
        .ok();
    let scope = p.scope(own).map_err(|e| errs.push(format!("spec: {e}"))).ok();
    let mut platforms = Vec::new();
    for (i, s) in spec.platforms.iter().enumerate() {
        match Platform::parse(s) {
            Ok(p) => platforms.push(p),
            Err(e) => errs.push(format!("spec.platforms[{i}]: invalid value {s:?}: {e}")),
        }
    }
    let mut duration = |field: &str, value: Option<&String>, default: &str| {
        let v = value.map_or(default, |s| s.trim());
        match ido_api::duration::parse_duration(v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(format!("spec.{field}: invalid value {v:?}: must be more than 0"));
                Duration::ZERO
            }
            Err(e) => {
                errs.push(format!("spec.{field}: invalid value {v:?}: {e}"));
                Duration::ZERO
            }
        }
    };
    let retention = duration("retention", spec.retention.as_ref(), DEFAULT_RETENTION);
    let refresh = duration(
        "refreshInterval",
        spec.refresh_interval.as_ref(),
        DEFAULT_REFRESH_INTERVAL,
    );
    let mut sources = BTreeMap::new();
    for (i, s) in spec.sources.iter().enumerate() {
        let host = ido_oci::auth::normalize_host(&s.registry);
        if host.is_empty() || host.contains('/') {
            errs.push(format!(
                "spec.sources[{i}].registry: invalid value {:?}: expected a host with an optional port",
                s.registry
            ));
            continue;
        }
        let tls = TlsSettings {
            verify: s.tls_verify.unwrap_or(true),
            ca_bundle: s.ca_bundle.clone(),
        };
        if sources.insert(host, tls).is_some() {
            errs.push(format!(
                "spec.sources[{i}].registry: {:?} is listed twice",
                s.registry
            ));
        }
    }
    let (Some(target), Some(filter), Some(scope), true) = (target, filter, scope, errs.is_empty()) else {
        return Err(PolicyError(errs));
    };
    Ok(Compiled {
        reference: p.reference(),
        generation: p.meta().generation,
        target,
        filter,
        scope,
        platforms: if platforms.is_empty() {
            Platforms::All
        } else {
            Platforms::Only(platforms)
        },
        mode: spec.mode,
        pin_digest: spec.pin_digest,
        retention,
        refresh,
        sources,
        side: Side {
            field: "spec.target",
            registry: t.registry.clone(),
            repository: String::new(),
            tls: TlsSettings {
                verify: t.tls_verify.unwrap_or(true),
                ca_bundle: t.ca_bundle.clone(),
            },
            secret: t.secret_ref.as_ref().map(|s| s.name.clone()),
            cert_config_map: t.cert_config_map.clone(),
            aws_irsa: false,
        },
        config_namespace: p.config_namespace(own),
        pull_secret: t.pull_secret_name.clone().filter(|s| !s.is_empty()),
    })
}

impl Compiled {
    /// The cache registry, connected with the policy's credentials and CAs.
    pub async fn connect<S: Store>(&self, ctx: &Context<S>) -> Result<Registry, String> {
        let ns = &self.config_namespace;
        let auths = crate::imagesync::side_auth(ctx, ns, &self.side)
            .await
            .map_err(|e: SideError| e.to_string())?;
        let tls = crate::imagesync::side_tls(ctx, ns, &self.side)
            .await
            .map_err(|e| e.to_string())?;
        Registry::connect(
            &self.side.host(),
            &tls,
            std::sync::Arc::new(auths),
            ido_oci::registry::DEFAULT_CONCURRENCY,
        )
        .await
        .map_err(|e| format!("spec.target.registry: {e}"))
    }

    /// TLS settings for the source registry `host`.
    pub fn source_tls(&self, host: &str) -> TlsSettings {
        self.sources
            .get(&ido_oci::auth::normalize_host(host))
            .cloned()
            .unwrap_or_default()
    }
}

/// The policy a CachedImage's `spec.policy` names, if it still exists.
pub async fn find<S: Store>(store: &S, reference: &str) -> crate::store::Result<Option<Policy>> {
    let parts: Vec<&str> = reference.split('/').collect();
    Ok(match parts.as_slice() {
        ["ClusterImageCachePolicy", name] => store
            .get::<ClusterImageCachePolicy>(None, name)
            .await?
            .map(Policy::Cluster),
        ["ImageCachePolicy", ns, name] => store
            .get::<ImageCachePolicy>(Some(ns), name)
            .await?
            .map(Policy::Namespaced),
        _ => None,
    })
}

/// Either policy kind.
#[derive(Clone, Debug)]
pub enum Policy {
    Cluster(ClusterImageCachePolicy),
    Namespaced(ImageCachePolicy),
}

impl Policy {
    pub fn compile(&self, own: &str) -> Result<Compiled, PolicyError> {
        match self {
            Policy::Cluster(p) => compile(p, own),
            Policy::Namespaced(p) => compile(p, own),
        }
    }
}
