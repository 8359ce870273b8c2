//! Provider catalogs behind one trait.
//!
//! A provider makes a node image exist as a template in each of its configured locations.
//! Each lives in its own module ([`vsphere`], [`proxmox`], [`vcd`], [`kubevirt`]) with its
//! section of the configuration: its config struct implements [`ProviderConfig`] (the
//! section's key, `enabled`, how the provider is built from it) and the module exports its
//! [`Registration`]. Adding a provider means its module (a type implementing [`Provider`],
//! its config struct) and its registration's line in [`BUILT_IN`]: neither the controllers
//! nor a shared config struct change ([`registry`]). A provider that works through cluster
//! objects ([`kubevirt`]: DiskImports) gets them through a trait the driver binds
//! ([`Providers::bind_disk_imports`]), from the [`Bindings`] it is built with.

use std::sync::Arc;

use async_trait::async_trait;
use ido_io::s3::S3Object;

pub mod kubevirt;
pub mod proxmox;
pub mod registry;
pub mod vcd;
pub mod vsphere;

pub use registry::{Bindings, ProviderConfig, ProvidersConfig, Registration};

/// The registrations of this crate's providers: the sections `ido run` and `ido operator`
/// decode. A provider added here adds its line.
pub const BUILT_IN: &[Registration] = &[
    vsphere::REGISTRATION,
    proxmox::REGISTRATION,
    vcd::REGISTRATION,
    kubevirt::REGISTRATION,
];

/// Format of the source file a provider imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Ova,
    Qcow2,
}

impl SourceFormat {
    /// File extension in the S3 key.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Ova => "ova",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// Counts bytes sent to a provider during one upload; cheap to clone and read while it runs.
pub use ido_io::progress::Progress;

/// A template that exists in a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Provider reference, e.g. `VirtualMachine:vm-42`.
    pub reference: String,
    /// Full name in the catalog (with any suffix), e.g. `/DC0/vm/flatcar-…-suffix`.
    pub path: String,
}

/// Errors a provider reports. The variant decides the NodeImage state and retry policy.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A configured value is wrong: names the config key and the value.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// The source object does not exist (state `Missing`, checked again later).
    #[error("source missing: {0}")]
    SourceMissing(String),
    /// The image itself is unusable (state `Error`, no retry until it changes).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The provider refused or failed an operation; the provider's own error (a client
    /// error such as [`vsphere::soap::SoapError`], or one of its module's failures).
    #[error("{0}")]
    Api(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Network or transport failure; worth retrying.
    #[error("{0}")]
    Transport(String),
    /// Something with the template's name exists in the location but does not carry ido's
    /// mark (see [`MANAGED_BY_KEY`]): ido neither deletes nor overwrites it (state `Error`,
    /// checked again later). `owner` says what was found.
    #[error(
        "{NAME_CLASH_PREFIX} in location {location}: {name} is {owner}; ido does not delete or replace it (rename or remove it, or adopt it by marking it as ido's)"
    )]
    NameClash {
        /// The location (as configured).
        location: String,
        /// Where the clashing object is: the template's name or path in the location.
        name: String,
        /// What was found, e.g. `a powered-on VM without ido's mark`.
        owner: String,
    },
}

/// How every [`ProviderError::NameClash`] message begins.
pub const NAME_CLASH_PREFIX: &str = "name clash";

/// The mark ido puts on everything it creates (vSphere `extraConfig`, VCD metadata; Proxmox
/// uses the tag [`MANAGED_TAG`]), with the value [`MANAGED_BY_VALUE`]. Only objects carrying
/// it are ever deleted or replaced by ido.
pub const MANAGED_BY_KEY: &str = "ido.managed-by";
/// The value of [`MANAGED_BY_KEY`].
pub const MANAGED_BY_VALUE: &str = "ido";
/// The Proxmox VE tag ido puts on the VMs it creates (PVE tags are plain words, not key=value).
pub const MANAGED_TAG: &str = "ido-managed";

impl ProviderError {
    /// [`ProviderError::Api`] of `e`.
    pub fn api(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Api(Box::new(e))
    }

    /// Whether this is a [`ProviderError::NameClash`].
    pub fn is_name_clash(&self) -> bool {
        matches!(self, Self::NameClash { .. })
    }

    /// Whether `message` (e.g. a location's status message) is a name clash's.
    pub fn is_name_clash_message(message: &str) -> bool {
        message.starts_with(NAME_CLASH_PREFIX)
    }
}

impl From<ido_io::Error> for ProviderError {
    fn from(e: ido_io::Error) -> Self {
        use ido_io::Error as E;
        match e {
            E::NotFound { .. } => Self::SourceMissing(e.to_string()),
            E::InvalidOva(_) => Self::InvalidImage(e.to_string()),
            E::Invalid { field, .. } => Self::Config {
                key: field.to_string(),
                message: e.to_string(),
            },
            E::Denied { .. } | E::Http { .. } => Self::api(e),
            // A download that gave up (retries exhausted, unreachable, the object changed
            // under it): another round may succeed.
            E::Transport { .. } | E::Io(_) | E::Fetch(_) => Self::Transport(ido_io::error_chain(&e)),
        }
    }
}

pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// One provider (`capv`, `capvcd`, `capmox`, …) and its locations.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Provider id as in `NodeImage.spec.provider`, e.g. `capv`.
    fn id(&self) -> &'static str;
    /// The prefix of the Releases whose node images this provider makes: Release names are
    /// `<prefix>-<x.y.z>` (`vsphere` for `vsphere-30.1.0`).
    fn release_prefix(&self) -> &'static str;
    /// Format of the source file in S3.
    fn format(&self) -> SourceFormat;
    /// Names of the configured locations, sorted.
    fn locations(&self) -> Vec<String>;
    /// The template of `image` in `location`, if a complete one made by ido exists. Leftovers
    /// of ido's failed attempts (e.g. a VM never marked as template, carrying ido's mark) are
    /// removed here and reported absent; anything of that name without ido's mark is a
    /// [`ProviderError::NameClash`] and stays untouched.
    async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>>;
    /// Creates the template of `image` in `location` from `source`, counting bytes sent in
    /// `progress`, and marks it as ido's. On failure nothing half-made is left behind.
    async fn create(
        &self,
        location: &str,
        image: &str,
        source: &S3Object,
        progress: &Progress,
    ) -> Result<Template>;
    /// Removes the template of `image` from `location`; absent is success. An object of that
    /// name without ido's mark is left alone: [`ProviderError::NameClash`].
    async fn delete(&self, location: &str, image: &str) -> Result<()>;
}

/// The enabled providers, by id.
#[derive(Clone, Default)]
pub struct Providers {
    by_id: std::collections::BTreeMap<&'static str, Arc<dyn Provider>>,
    /// What the driver binds later (the DiskImport store), shared with the providers
    /// using it.
    bindings: Bindings,
}

impl Providers {
    /// Adds (or replaces) a provider.
    pub fn insert(&mut self, p: Arc<dyn Provider>) {
        self.by_id.insert(p.id(), p);
    }
    /// The enabled provider whose Releases are named like `release` (`<prefix>-<x.y.z>`).
    pub fn for_release(&self, release: &str) -> Option<&Arc<dyn Provider>> {
        let prefix = ido_api::release::prefix_of(release)?;
        self.by_id.values().find(|p| p.release_prefix() == prefix)
    }
    /// The provider with id `id`, if enabled.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Provider>> {
        self.by_id.get(id)
    }
    /// Ids of the enabled providers.
    pub fn ids(&self) -> Vec<&'static str> {
        self.by_id.keys().copied().collect()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
    /// Binds the driver's DiskImport store for the providers that create DiskImports.
    pub fn bind_disk_imports(&self, imports: Arc<dyn kubevirt::DiskImports>) {
        self.bindings.disk_imports().bind(imports);
    }
}
