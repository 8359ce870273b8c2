//! What a DiskImportCron's source holds now: a registry's manifest digest (one `HEAD`, through
//! `ido-oci`), or an HTTP object's `ETag` (else its `Last-Modified`) from one `HEAD`.
//!
//! Credentials and CAs are the template's own: its `secretRef` (a dockerconfigjson Secret
//! for a registry; keys `accessKeyId` and `secretKey`, basic auth, for HTTP) and
//! `certConfigMap`, read by name in the cron's namespace for each poll and sent only to the
//! host the template names. They never reach a log, an event or the status.

use std::{sync::Arc, time::Duration};

use ido_api::{DiskImportSpec, HttpSource, RegistrySource, SourceKind};
use ido_oci::registry::{Registry, TlsSettings};
use k8s_openapi::api::core::v1::Secret;

use crate::{
    Context,
    imagesync::{Side, side_auth, side_tls},
    store::Store,
};

/// How long one poll may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the template's source is, for polling and pinning.
pub(super) enum Polled<'a> {
    Registry(&'a RegistrySource),
    Http(&'a HttpSource),
}

/// The template's source, if it is one whose changes can be polled.
pub(super) fn source(spec: &DiskImportSpec) -> Option<Polled<'_>> {
    match spec.source.kind().ok()? {
        SourceKind::Registry(r) => Some(Polled::Registry(r)),
        SourceKind::Http(h) => Some(Polled::Http(h)),
        _ => None,
    }
}

/// `docker://REGISTRY/REPO[:TAG]` as a reference; `Err` names the field and the value.
pub(super) fn registry_reference(r: &RegistrySource) -> Result<ido_oci::Reference, String> {
    let field = "spec.template.source.registry.url";
    let rest = r
        .url
        .strip_prefix("docker://")
        .ok_or_else(|| format!("{field}: {:?} is not a docker:// reference", r.url))?;
    ido_oci::reference::parse(rest).map_err(|e| format!("{field}: {e}"))
}

/// The template's source pinned to what was polled: a registry by `digest`; an HTTP URL as
/// it is (a server gives no URL for one version of an object).
pub(super) fn pinned(spec: &DiskImportSpec, digest: &str) -> DiskImportSpec {
    let mut spec = spec.clone();
    if let Some(r) = spec.source.registry.as_mut()
        && let Ok(reference) = registry_reference(r)
    {
        r.url = format!(
            "docker://{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        );
    }
    spec
}

/// What the source is now (`sha256:…`, `etag:"…"` or `last-modified:…`); `Err` is a message
/// naming the field or the source.
pub(super) async fn poll<S: Store>(
    ctx: &Context<S>,
    ns: &str,
    spec: &DiskImportSpec,
) -> Result<String, String> {
    let work = async {
        match source(spec) {
            Some(Polled::Registry(r)) => registry_digest(ctx, ns, r).await,
            Some(Polled::Http(h)) => http_validator(ctx, ns, h).await,
            None => Err("spec.template.source: must be registry or http".into()),
        }
    };
    tokio::time::timeout(POLL_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {POLL_TIMEOUT:?}")))
}

async fn registry_digest<S: Store>(ctx: &Context<S>, ns: &str, r: &RegistrySource) -> Result<String, String> {
    let reference = registry_reference(r)?;
    let side = Side {
        field: "spec.template.source.registry",
        registry: reference.registry().to_string(),
        repository: reference.repository().to_string(),
        tls: TlsSettings::default(),
        secret: r.secret_ref.clone(),
        cert_config_map: r.cert_config_map.clone(),
        aws_irsa: false,
    };
    let auths = side_auth(ctx, ns, &side).await.map_err(|e| hint(e.to_string()))?;
    let tls = side_tls(ctx, ns, &side).await.map_err(|e| hint(e.to_string()))?;
    let reg = Registry::connect(&side.host(), &tls, Arc::new(auths), 1)
        .await
        .map_err(|e| format!("{}: {e}", side.field))?;
    match reg.manifest_digest(&reference).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(format!("{}: {} not found", side.field, reference.whole())),
        Err(e) => Err(format!("{}: {e}", side.field)),
    }
}

async fn http_validator<S: Store>(ctx: &Context<S>, ns: &str, h: &HttpSource) -> Result<String, String> {
    let field = "spec.template.source.http";
    // The CA ConfigMap is read as an ImageSync's is (every PEM bundle in it).
    let side = Side {
        field,
        registry: String::new(),
        repository: String::new(),
        tls: TlsSettings::default(),
        secret: None,
        cert_config_map: h.cert_config_map.clone(),
        aws_irsa: false,
    };
    let tls = side_tls(ctx, ns, &side).await.map_err(|e| hint(e.to_string()))?;
    let options = ido_io::http::TlsOptions {
        insecure: false,
        ca_bundle: tls.ca_bundle,
    };
    let client = ido_io::http::client(&options, "spec.template.source.http.certConfigMap")
        .map_err(|e| e.to_string())?;
    let shown = ido_io::redact::url_str(&h.url);
    let mut req = client.head(&h.url);
    for header in &h.extra_headers {
        if let Some((n, v)) = header.split_once(':') {
            req = req.header(n.trim(), v.trim());
        }
    }
    if let Some(name) = &h.secret_ref {
        let (user, password) = basic_auth(ctx, ns, name).await?;
        req = req.basic_auth(user, Some(password));
    }
    let res = req.send().await.map_err(|e| {
        format!(
            "{field}.url: HEAD {shown}: {}",
            ido_io::error_chain(&e.without_url())
        )
    })?;
    let status = res.status();
    if !status.is_success() {
        return Err(format!("{field}.url: HEAD {shown}: {status}"));
    }
    let header = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    match (header("etag"), header("last-modified")) {
        (Some(etag), _) => Ok(format!("etag:{etag}")),
        (None, Some(lm)) => Ok(format!("last-modified:{lm}")),
        (None, None) => Err(format!(
            "{field}.url: HEAD {shown} answered without ETag or Last-Modified: its changes cannot be seen"
        )),
    }
}

/// A message of a Secret or ConfigMap read the operator may not make, with what allows it.
fn hint(message: String) -> String {
    if message.to_ascii_lowercase().contains("forbidden") {
        format!(
            "{message} (the operator reads a cron's Secret and CA ConfigMap only with the chart's diskImport.cronCredentials)"
        )
    } else {
        message
    }
}

/// The basic-auth user and password of the HTTP source's Secret (CDI's keys).
async fn basic_auth<S: Store>(ctx: &Context<S>, ns: &str, name: &str) -> Result<(String, String), String> {
    let field = "spec.template.source.http.secretRef";
    let secret: Secret = ctx
        .store
        .get(Some(ns), name)
        .await
        .map_err(|e| hint(format!("{field}: reading Secret {ns}/{name}: {e}")))?
        .ok_or_else(|| format!("{field}: Secret {ns}/{name} not found"))?;
    let key = |k: &str| {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(k).cloned())
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            })
            .ok_or_else(|| format!("{field}: Secret {ns}/{name} has no key {k}"))
    };
    Ok((key("accessKeyId")?, key("secretKey")?))
}
