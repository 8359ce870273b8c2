//! KubeVirt (capk): a golden PersistentVolumeClaim per location namespace, imported by a
//! [`DiskImport`].
//!
//! Each location is a namespace (with a storage class, size, access modes and volume
//! mode). The template of an image in a location is the claim of the DiskImport named after
//! the image there, once that import has `Succeeded`:
//!
//! - `exists`: the DiskImport is `Succeeded` → the claim; anything else → absent;
//! - `create`: creates the DiskImport (source `http`: the qcow2's URL, presigned for a
//!   private bucket, checksum from a `<key>.sha256` sidecar when there is one) and waits
//!   until it succeeds or fails. A failed one is deleted (with its claim) and created again;
//!   one still running when the wait times out is left running and adopted by the next call;
//! - `delete`: deletes the DiskImport with its claim and importer.
//!
//! DiskImports carry the label `app.kubernetes.io/managed-by: ido`; one of the image's name
//! without it is someone else's: a [`ProviderError::NameClash`] in all three, never deleted.
//!
//! Each image whose DiskImport succeeded also keeps its family's DiskSource (see [`family`]:
//! `kubevirt-flatcar-<channel>-kube-<major.minor>` in the location's namespace) at the
//! newest image of the family whose import succeeded, so VMs can clone `diskSource: <family>`
//! and get the newest node image. The DiskSource is created with the label
//! `app.kubernetes.io/managed-by: ido` and the annotation `ido.dev/node-image` naming the
//! image; one without the label is someone else's and is left alone. It is never deleted:
//! when the image it points at goes, the next `exists` of another image of the family
//! (every recheck) points it at that one, and the newest remaining one wins within a round.
//!
//! The provider talks to the cluster through [`DiskImports`], which the driver binds
//! (`Providers::bind_disk_imports`, the slot the provider gets from its build's
//! [`Bindings`]) over its object store: `ido operator` over the API
//! server, `ido run` over its state directory (where no importer runs: the wait times out).

mod config;
pub mod family;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use ido_api::{
    ClaimReference, DiskImport, DiskImportPhase, DiskImportSource, DiskImportSpec, DiskSource,
    DiskSourceSource, DiskSourceSpec, HttpSource, StorageSpec,
};
use ido_io::s3::S3Object;

pub use self::config::{KubevirtConfig, KubevirtLocation};
use crate::{
    Bindings, Progress, Provider, ProviderConfig, ProviderError, Registration, Result, SourceFormat, Template,
};

/// Label on the DiskImports this provider creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "ido";
/// Annotation on a family's DiskSource: the node image it points at.
pub const NODE_IMAGE_ANNOTATION: &str = "ido.dev/node-image";
/// How often `create` looks at the DiskImport while it runs.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// The DiskImport objects of the cluster, as the kubevirt provider needs them. Implemented
/// by the controllers over their object store and bound by the driver.
#[async_trait]
pub trait DiskImports: Send + Sync {
    /// The DiskImport `namespace/name`, if any.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<DiskImport>>;
    /// Creates `di` (namespace and name in its metadata).
    async fn create(&self, di: &DiskImport) -> Result<DiskImport>;
    /// Deletes the DiskImport `namespace/name` with its claim and importer Job; absent is
    /// success.
    async fn delete(&self, namespace: &str, name: &str) -> Result<()>;
    /// The DiskSource `namespace/name`, if any.
    async fn get_disk_source(&self, namespace: &str, name: &str) -> Result<Option<DiskSource>>;
    /// Creates `ds` (no `resourceVersion`), or replaces the stored one's spec, labels and
    /// annotations (`ds` as read, changed).
    async fn put_disk_source(&self, ds: &DiskSource) -> Result<()>;
}

/// Where the driver's [`DiskImports`] is bound; shared by the providers that need it.
#[derive(Clone, Default)]
pub struct DiskImportsSlot(Arc<RwLock<Option<Arc<dyn DiskImports>>>>);

impl DiskImportsSlot {
    /// Binds (or replaces) the implementation.
    pub fn bind(&self, imports: Arc<dyn DiskImports>) {
        *self.0.write().expect("lock") = Some(imports);
    }

    /// The bound implementation.
    pub fn get(&self) -> Result<Arc<dyn DiskImports>> {
        self.0
            .read()
            .expect("lock")
            .clone()
            .ok_or_else(|| ProviderError::Config {
                key: "kubevirt".into(),
                message: "no DiskImport store is bound (the driver must call Providers::bind_disk_imports)"
                    .into(),
            })
    }
}

/// The `kubevirt:` section registered ([`crate::BUILT_IN`] lists it).
pub const REGISTRATION: Registration = Registration::of::<KubevirtConfig>();

impl ProviderConfig for KubevirtConfig {
    const SECTION: &'static str = "kubevirt";
    fn enabled(&self) -> bool {
        self.enabled
    }
    /// Its templates are DiskImports' claims.
    fn creates_disk_imports(&self) -> bool {
        true
    }
    fn build(&self, bindings: &Bindings) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(KubevirtProvider::new(self, bindings.disk_imports())?))
    }
}

/// The `capk` provider.
pub struct KubevirtProvider {
    locations: BTreeMap<String, KubevirtLocation>,
    imports: DiskImportsSlot,
    timeout: Duration,
    poll: Duration,
}

impl std::fmt::Debug for KubevirtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubevirtProvider")
            .field("locations", &self.locations)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubevirtProvider {
    /// Validates `cfg`; DiskImports go through `imports` once bound.
    pub fn new(cfg: &KubevirtConfig, imports: DiskImportsSlot) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            locations: cfg.locations.clone(),
            imports,
            timeout: Duration::from_secs(cfg.timeout_seconds.unwrap_or(config::DEFAULT_TIMEOUT_SECS)),
            poll: DEFAULT_POLL,
        })
    }

    /// The same with another polling interval (tests).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    fn location(&self, name: &str) -> Result<&KubevirtLocation> {
        self.locations.get(name).ok_or_else(|| ProviderError::Config {
            key: format!("kubevirt.locations.{name}"),
            message: format!("location {name:?} is not configured"),
        })
    }

    /// The DiskImport that makes `image` in `loc` from `url`.
    pub fn disk_import(
        loc: &KubevirtLocation,
        image: &str,
        url: String,
        checksum: Option<String>,
    ) -> DiskImport {
        let mut di = DiskImport::new(
            image,
            DiskImportSpec {
                source: DiskImportSource {
                    http: Some(HttpSource {
                        url,
                        checksum,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                storage: StorageSpec {
                    storage_class_name: loc.storage_class_name.clone(),
                    access_modes: loc.access_modes.clone(),
                    volume_mode: loc.volume_mode,
                    size: loc.size.clone(),
                },
                preallocation: None,
                content_type: None,
            },
        );
        di.metadata.namespace = Some(loc.namespace.clone());
        di.metadata.labels = Some(BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())]));
        di
    }
}

impl KubevirtProvider {
    /// Points the family's DiskSource of `image` in `loc` at `di`'s claim when `image` is
    /// the newest of the family there whose import succeeded (or the one it points at is
    /// gone). Failures are logged: the node image itself is in place either way.
    async fn point_family(&self, location: &str, loc: &KubevirtLocation, image: &str, di: &DiskImport) {
        let Some(this) = family::NodeImageName::parse(self.release_prefix(), image) else {
            tracing::debug!(location, image, "no node-image family in the name: no DiskSource");
            return;
        };
        if let Err(e) = self.try_point_family(loc, image, &this, di).await {
            tracing::warn!(location, image, family = %this.family, error = %e, "the family's DiskSource was not updated");
        }
    }

    async fn try_point_family(
        &self,
        loc: &KubevirtLocation,
        image: &str,
        this: &family::NodeImageName,
        di: &DiskImport,
    ) -> Result<()> {
        let imports = self.imports.get()?;
        let ns = loc.namespace.as_str();
        let claim = template(di)
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let source = DiskSourceSource {
            pvc: ClaimReference { name: claim.clone() },
        };
        let Some(mut ds) = imports.get_disk_source(ns, &this.family).await? else {
            let mut ds = DiskSource::new(&this.family, DiskSourceSpec { source });
            ds.metadata.namespace = Some(ns.to_string());
            ds.metadata.labels = Some(BTreeMap::from([(MANAGED_BY_LABEL.into(), MANAGED_BY.into())]));
            ds.metadata.annotations = Some(BTreeMap::from([(NODE_IMAGE_ANNOTATION.into(), image.into())]));
            imports.put_disk_source(&ds).await?;
            tracing::info!(namespace = ns, family = %this.family, image, "family DiskSource created");
            return Ok(());
        };
        let ours = ds
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == MANAGED_BY);
        if !ours {
            tracing::warn!(namespace = ns, family = %this.family, "a DiskSource of the family's name without ido's label: left alone");
            return Ok(());
        }
        let current = ds
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_IMAGE_ANNOTATION))
            .cloned();
        if current.as_deref() == Some(image) && ds.spec.source.pvc.name == claim {
            return Ok(());
        }
        // The image it points at stays if it is newer and still imported.
        if let Some(cur) = current.as_deref().filter(|c| *c != image)
            && let Some(cur_name) = family::NodeImageName::parse(self.release_prefix(), cur)
            && cur_name.newer(this) == std::cmp::Ordering::Greater
            && imports.get(ns, cur).await?.is_some_and(|d| {
                phase(&d) == DiskImportPhase::Succeeded && d.metadata.deletion_timestamp.is_none()
            })
        {
            return Ok(());
        }
        ds.spec.source = source;
        ds.metadata
            .annotations
            .get_or_insert_default()
            .insert(NODE_IMAGE_ANNOTATION.into(), image.into());
        imports.put_disk_source(&ds).await?;
        tracing::info!(namespace = ns, family = %this.family, image, "family DiskSource points at the newest image");
        Ok(())
    }
}

fn template(di: &DiskImport) -> Template {
    let ns = di.metadata.namespace.clone().unwrap_or_default();
    let claim = di
        .status
        .as_ref()
        .and_then(|s| s.claim_name.clone())
        .or_else(|| di.metadata.name.clone())
        .unwrap_or_default();
    Template {
        reference: format!("PersistentVolumeClaim:{ns}/{claim}"),
        path: format!("{ns}/{claim}"),
    }
}

/// Whether ido made `di` (it carries the label [`MANAGED_BY_LABEL`] = [`MANAGED_BY`]).
fn is_ours(di: &DiskImport) -> bool {
    di.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// The clash with someone else's DiskImport `di`.
fn name_clash(location: &str, di: &DiskImport) -> ProviderError {
    let ns = di.metadata.namespace.clone().unwrap_or_default();
    let name = di.metadata.name.clone().unwrap_or_default();
    let owner = format!(
        "a DiskImport (phase {}) without the label {MANAGED_BY_LABEL}={MANAGED_BY}",
        phase(di)
    );
    tracing::warn!(location, namespace = %ns, %name, %owner, "name clash: leaving the DiskImport alone");
    ProviderError::NameClash {
        location: location.to_string(),
        name: format!("{ns}/{name}"),
        owner,
    }
}

fn phase(di: &DiskImport) -> DiskImportPhase {
    di.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// What happened to a golden image's DiskImport.
#[derive(Debug, thiserror::Error)]
pub enum KubevirtError {
    #[error("DiskImport {namespace}/{name} disappeared while importing")]
    Vanished { namespace: String, name: String },
    #[error("DiskImport {namespace}/{name} failed: {why}")]
    Failed {
        namespace: String,
        name: String,
        why: String,
    },
}

/// The Ready condition's message of a failed DiskImport.
fn failure(di: &DiskImport) -> String {
    di.status
        .as_ref()
        .and_then(|s| ido_api::condition::find(&s.conditions, ido_api::diskimport::conditions::READY))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "failed".into())
}

/// DiskImport names are claim names: a DNS subdomain.
fn check_image(image: &str) -> Result<()> {
    let ok = !image.is_empty()
        && image.len() <= 253
        && image.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ProviderError::InvalidImage(format!(
            "{image:?} cannot name a PersistentVolumeClaim (DNS subdomain: lower-case letters, digits, '-', '.')"
        )))
    }
}

#[async_trait]
impl Provider for KubevirtProvider {
    fn id(&self) -> &'static str {
        "capk"
    }
    fn release_prefix(&self) -> &'static str {
        "kubevirt"
    }

    fn format(&self) -> SourceFormat {
        SourceFormat::Qcow2
    }

    fn locations(&self) -> Vec<String> {
        self.locations.keys().cloned().collect()
    }

    async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>> {
        check_image(image)?;
        let loc = self.location(location)?;
        let di = self.imports.get()?.get(&loc.namespace, image).await?;
        if let Some(d) = di.as_ref().filter(|d| !is_ours(d)) {
            return Err(name_clash(location, d));
        }
        let Some(d) =
            di.filter(|d| phase(d) == DiskImportPhase::Succeeded && d.metadata.deletion_timestamp.is_none())
        else {
            return Ok(None);
        };
        self.point_family(location, loc, image, &d).await;
        Ok(Some(template(&d)))
    }

    async fn create(
        &self,
        location: &str,
        image: &str,
        source: &S3Object,
        _progress: &Progress,
    ) -> Result<Template> {
        check_image(image)?;
        let loc = self.location(location)?;
        let imports = self.imports.get()?;
        let ns = loc.namespace.as_str();
        let mut existing = imports.get(ns, image).await?;
        if let Some(d) = existing.as_ref().filter(|d| !is_ours(d)) {
            return Err(name_clash(location, d));
        }
        if let Some(d) = existing.as_ref().filter(|d| phase(d) == DiskImportPhase::Failed) {
            tracing::warn!(location, namespace = ns, image, reason = %failure(d), "deleting a failed DiskImport to try again");
            imports.delete(ns, image).await?;
            existing = imports.get(ns, image).await?;
        }
        match existing {
            Some(d) if d.metadata.deletion_timestamp.is_some() => {
                return Err(ProviderError::Transport(format!(
                    "DiskImport {ns}/{image} is being deleted; trying again later"
                )));
            }
            Some(_) => {}
            None => {
                let checksum = crate::proxmox::sidecar_sha256(source)
                    .await?
                    .map(|h| format!("sha256:{h}"));
                let di = Self::disk_import(loc, image, source.download_url().to_string(), checksum);
                imports.create(&di).await?;
                tracing::info!(location, namespace = ns, image, source = %source.display_url(), "DiskImport created");
            }
        }
        let started = Instant::now();
        loop {
            let Some(d) = imports.get(ns, image).await? else {
                return Err(ProviderError::api(KubevirtError::Vanished {
                    namespace: ns.to_string(),
                    name: image.to_string(),
                }));
            };
            match phase(&d) {
                DiskImportPhase::Succeeded => {
                    self.point_family(location, loc, image, &d).await;
                    return Ok(template(&d));
                }
                DiskImportPhase::Failed => {
                    let why = failure(&d);
                    imports.delete(ns, image).await?;
                    return Err(ProviderError::api(KubevirtError::Failed {
                        namespace: ns.to_string(),
                        name: image.to_string(),
                        why,
                    }));
                }
                _ => {}
            }
            if started.elapsed() >= self.timeout {
                return Err(ProviderError::Transport(format!(
                    "DiskImport {ns}/{image} is still {} after {:?}; it keeps running and is looked at again",
                    phase(&d),
                    self.timeout
                )));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn delete(&self, location: &str, image: &str) -> Result<()> {
        check_image(image)?;
        let loc = self.location(location)?;
        let imports = self.imports.get()?;
        match imports.get(&loc.namespace, image).await? {
            None => Ok(()),
            Some(d) if !is_ours(&d) => Err(name_clash(location, &d)),
            Some(_) => imports.delete(&loc.namespace, image).await,
        }
    }
}

#[cfg(test)]
mod tests;
