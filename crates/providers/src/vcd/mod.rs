//! VMware Cloud Director (capvcd): vApp templates in catalogs, uploaded by streaming the OVA.
//!
//! - [`config`]: the `vcd:` section (credentials, CA bundle, many locations) and validation.
//! - [`client`]: the typed client (API version, cloudapi login with a bearer token, one
//!   re-login on 401, keepalive).
//! - [`error`]: [`VcdError`] and the one function mapping a status and `<Error>` body to it.
//! - [`types`]: catalogs, templates, files and tasks as read from their XML.
//! - [`api`]: the query API, template reads, task waits, template removal (requests go
//!   through the client's helpers in `requests.rs`).
//! - [`ovf`]: the descriptor's file list and the `hardwareVersion` patch (in memory).
//! - [`upload`]: the streamed upload with cleanup on failure.
//! - this module: the [`Provider`] implementation and the section's [`REGISTRATION`].
//!
//! Templates are named after the image and described `Node image <name>`. ido marks what it
//! uploads with the metadata `ido.managed-by = ido` (on the catalog item as soon as it exists,
//! and on the finished template). A marked template of that name whose upload failed or never
//! finished is a leftover: `exists` removes it and reports the template absent. A template of
//! that name without the mark is a [`ProviderError::NameClash`]: never removed. XML is read with ido-io's namespace-aware tree
//! ([`ido_io::xml`]).

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod ovf;
mod requests;
pub mod types;
pub mod upload;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use ido_io::{http::TlsOptions, s3::S3Object};

use self::{api::Catalog, client::Login, upload::Upload};
pub use self::{
    client::Client,
    config::{VcdConfig, VcdCredentials, VcdLocation},
    error::VcdError,
};
use crate::{
    Bindings, MANAGED_BY_KEY, MANAGED_BY_VALUE, Progress, Provider, ProviderConfig, ProviderError,
    Registration, Result, SourceFormat, Template,
};

/// Longest template name VCD accepts.
const MAX_NAME: usize = 128;

/// The description of the template of `image`.
pub fn description(image: &str) -> String {
    format!("Node image {image}")
}

/// One async lock per (location, image).
type Locks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// The `vcd:` section registered ([`crate::BUILT_IN`] lists it).
pub const REGISTRATION: Registration = Registration::of::<VcdConfig>();

impl ProviderConfig for VcdConfig {
    const SECTION: &'static str = "vcd";
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn build(&self, _: &Bindings) -> Result<Arc<dyn Provider>> {
        Ok(Arc::new(VcdProvider::new(self)?))
    }
}

/// The `capvcd` provider: one VCD session shared by all locations.
#[derive(Debug)]
pub struct VcdProvider {
    client: Client,
    credentials: VcdCredentials,
    locations: BTreeMap<String, VcdLocation>,
    piece_size: usize,
    /// One operation at a time per (location, image).
    locks: Locks,
}

impl VcdProvider {
    /// Validates `cfg` and prepares the client; connects lazily on first use.
    pub fn new(cfg: &VcdConfig) -> Result<Self> {
        cfg.validate()?;
        let tls = TlsOptions {
            insecure: cfg.credentials.insecure,
            ca_bundle: cfg.ca_bundle.clone(),
        };
        let http = ido_io::http::client(&tls, "vcd.caBundle")?;
        let login = Login {
            org: cfg.credentials.org.trim().to_string(),
            username: cfg.credentials.username.trim().to_string(),
            password: cfg.credentials.password.clone(),
        };
        let client = Client::new(http, cfg.credentials.base_url()?, login, cfg.session_refresh()?);
        Ok(Self {
            client,
            credentials: cfg.credentials.clone(),
            locations: cfg.locations.clone(),
            piece_size: cfg.piece_size(),
            locks: Mutex::default(),
        })
    }

    /// The VCD client (shared session).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configured location `name`.
    pub fn location(&self, name: &str) -> Result<&VcdLocation> {
        self.locations.get(name).ok_or_else(|| ProviderError::Config {
            key: format!("vcd.locations.{name}"),
            message: format!("location {name:?} is not configured"),
        })
    }

    /// The catalog of `location`; a config error naming the key when VCD has none.
    pub async fn catalog(&self, location: &str) -> Result<Catalog> {
        let loc = self.location(location)?;
        let org = loc.org(&self.credentials);
        match api::find_catalog(&self.client, org, loc.catalog.trim()).await? {
            Some(c) => Ok(c),
            None => Err(ProviderError::Config {
                key: format!("vcd.locations.{location}.catalog"),
                message: format!(
                    "{:?}: no such catalog in org {org:?} visible to {}@{}",
                    loc.catalog,
                    self.credentials.username.trim(),
                    self.client.org()
                ),
            }),
        }
    }

    fn lock(&self, location: &str, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks
            .entry((location.to_string(), image.to_string()))
            .or_default()
            .clone()
    }

    /// The complete template of `image` in `cat` made by ido; ido's failed or unfinished ones
    /// are removed. Without one of ido's, a template of that name not made by ido is a
    /// [`ProviderError::NameClash`].
    async fn find_complete(&self, location: &str, cat: &Catalog, image: &str) -> Result<Option<Template>> {
        let mut found = None;
        let mut clash = None;
        for r in api::find_templates(&self.client, cat, image).await? {
            let Some(t) = api::get_template(&self.client, &r.href).await? else {
                continue;
            };
            match is_ours(&self.client, &t).await? {
                None => continue,
                Some(false) => {
                    clash.get_or_insert((t, r.status));
                    continue;
                }
                Some(true) => {}
            }
            // Being deleted (an earlier delete was interrupted): let it finish; it is gone.
            if let Some(d) = t
                .tasks
                .iter()
                .find(|k| k.operation_name == "vdcDeleteTemplate" && !k.status.is_done())
            {
                api::wait_task(&self.client, &d.href).await?;
                continue;
            }
            if t.status >= 1 && found.is_none() {
                found = Some(template(cat, &t));
                continue;
            }
            tracing::warn!(
                location, template = image, status = t.status, record_status = %r.status,
                failure = ?t.failure(), "removing ido's failed or unfinished upload"
            );
            api::remove_template(&self.client, &t.href).await?;
        }
        match (found, clash) {
            (Some(t), Some((c, _))) => {
                tracing::warn!(location, template = image, other = %c.href, "another template has the same name");
                Ok(Some(t))
            }
            (None, Some((c, status))) => Err(name_clash(location, cat, &c, &status)),
            (found, None) => Ok(found),
        }
    }
}

/// Whether `t` carries ido's mark: metadata `ido.managed-by = ido` on its catalog item (set
/// when the upload starts) or on the template itself. `None` when the template is gone.
async fn is_ours(client: &Client, t: &api::Template) -> Result<Option<bool>> {
    let marked = |m: &[(String, String)]| {
        m.iter()
            .any(|(k, v)| k == MANAGED_BY_KEY && v == MANAGED_BY_VALUE)
    };
    let Some(own) = api::metadata(client, &t.href).await? else {
        return Ok(None);
    };
    if marked(&own) {
        return Ok(Some(true));
    }
    match &t.catalog_item_href {
        Some(item) => Ok(Some(
            api::metadata(client, item).await?.is_some_and(|m| marked(&m)),
        )),
        None => Ok(Some(false)),
    }
}

/// The clash with template `t` (query status `status`), logged.
fn name_clash(location: &str, cat: &Catalog, t: &api::Template, status: &str) -> ProviderError {
    let status = if status.is_empty() {
        format!("status {}", t.status)
    } else {
        status.to_string()
    };
    let owner = format!(
        "a vApp template ({status}{}) without ido's metadata {MANAGED_BY_KEY}={MANAGED_BY_VALUE}",
        t.owner
            .as_deref()
            .map(|o| format!(", owned by {o}"))
            .unwrap_or_default()
    );
    tracing::warn!(location, template = %t.name, href = %t.href, %owner, "name clash: leaving the template alone");
    ProviderError::NameClash {
        location: location.to_string(),
        name: format!("{}/{}/{}", cat.org, cat.name, t.name),
        owner,
    }
}

fn template(cat: &Catalog, t: &api::Template) -> Template {
    Template {
        reference: if t.id.is_empty() {
            t.href.clone()
        } else {
            t.id.clone()
        },
        path: format!("{}/{}/{}", cat.org, cat.name, t.name),
    }
}

fn check_image(image: &str) -> Result<()> {
    if image.trim().is_empty() || image.len() > MAX_NAME || image.chars().any(char::is_control) {
        return Err(ProviderError::InvalidImage(format!(
            "{image:?} cannot name a VCD vApp template (1..{MAX_NAME} characters, no control characters)"
        )));
    }
    Ok(())
}

#[async_trait]
impl Provider for VcdProvider {
    fn id(&self) -> &'static str {
        "capvcd"
    }
    fn release_prefix(&self) -> &'static str {
        "cloud-director"
    }

    fn format(&self) -> SourceFormat {
        SourceFormat::Ova
    }

    fn locations(&self) -> Vec<String> {
        self.locations.keys().cloned().collect()
    }

    async fn exists(&self, location: &str, image: &str) -> Result<Option<Template>> {
        check_image(image)?;
        let lock = self.lock(location, image);
        let _held = lock.lock().await;
        let cat = self.catalog(location).await?;
        self.find_complete(location, &cat, image).await
    }

    async fn create(
        &self,
        location: &str,
        image: &str,
        source: &S3Object,
        progress: &Progress,
    ) -> Result<Template> {
        check_image(image)?;
        let loc = self.location(location)?;
        let lock = self.lock(location, image);
        let _held = lock.lock().await;
        let cat = self.catalog(location).await?;
        if let Some(t) = self.find_complete(location, &cat, image).await? {
            return Ok(t);
        }
        tracing::info!(
            location, template = image, catalog = %cat.name, org = %cat.org,
            source = %source.display_url(), "uploading OVA"
        );
        let up = Upload {
            catalog: &cat,
            name: image,
            hardware_version: loc.hardware_version,
            piece_size: self.piece_size,
        };
        let t = upload::upload_ova(&self.client, up, source, progress).await?;
        tracing::info!(location, template = image, id = %t.id, bytes = progress.get(), "template created");
        Ok(template(&cat, &t))
    }

    async fn delete(&self, location: &str, image: &str) -> Result<()> {
        check_image(image)?;
        let lock = self.lock(location, image);
        let _held = lock.lock().await;
        let cat = self.catalog(location).await?;
        let mut clash = None;
        for r in api::find_templates(&self.client, &cat, image).await? {
            let Some(t) = api::get_template(&self.client, &r.href).await? else {
                continue;
            };
            match is_ours(&self.client, &t).await? {
                None => continue,
                Some(false) => {
                    clash.get_or_insert((t, r.status));
                    continue;
                }
                Some(true) => {}
            }
            api::remove_template(&self.client, &t.href).await?;
            tracing::info!(location, template = image, catalog = %cat.name, "template deleted");
        }
        match clash {
            Some((t, status)) => Err(name_clash(location, &cat, &t, &status)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
