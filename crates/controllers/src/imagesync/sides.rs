//! The credentials and TLS settings of an ImageSync's sides, from the Secrets and ConfigMaps
//! they name (read by name in the object's namespace, at each pass) and, with `useAwsIRSA`,
//! from the operator's web identity. Errors name the spec field.

use std::sync::Arc;

use ido_oci::{auth::AuthStore, aws::IrsaConfig, registry::TlsSettings};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::{DOCKER_CONFIG_KEY, Side};
use crate::{
    Context,
    store::{Store, StoreError},
};

/// An object a field names.
#[derive(Debug)]
pub struct Named {
    pub field: String,
    pub kind: String,
    pub ns: String,
    pub name: String,
}

/// Why a side's credentials or CAs are unavailable; each names the spec field.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("{}: reading {} {}/{}: {source}", at.field, at.kind, at.ns, at.name)]
    Read {
        at: Named,
        #[source]
        source: StoreError,
    },
    #[error("{}: {} {}/{} not found", .0.field, .0.kind, .0.ns, .0.name)]
    NotFound(Named),
    #[error(
        "{field}: Secret {ns}/{name} (type {type_}) has no {DOCKER_CONFIG_KEY} key; expected a kubernetes.io/dockerconfigjson Secret"
    )]
    NotDockerConfig {
        field: String,
        ns: String,
        name: String,
        type_: String,
    },
    #[error("{field}: Secret {ns}/{name} has no credentials for registry {registry}")]
    NoCredentials {
        field: String,
        ns: String,
        name: String,
        registry: String,
    },
    #[error(
        "{field}: ConfigMap {ns}/{name} has no PEM certificate (-----BEGIN CERTIFICATE-----) in its data"
    )]
    NoPem { field: String, ns: String, name: String },
    #[error("{field}: no web identity in the operator's environment: {source}")]
    NoWebIdentity {
        field: String,
        #[source]
        source: Arc<ido_oci::Error>,
    },
    /// A docker config that does not parse, or ECR credentials that could not be had.
    #[error("{field}: {source}")]
    Oci {
        field: String,
        #[source]
        source: ido_oci::Error,
    },
}

/// The object `field` names in the ImageSync's namespace; errors name the field.
async fn referenced<S: Store, K: crate::store::Object>(
    ctx: &Context<S>,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<K, SideError> {
    let at = || Named {
        field: field.to_string(),
        kind: K::kind(&()).to_string(),
        ns: ns.to_string(),
        name: name.to_string(),
    };
    ctx.store
        .get::<K>(Some(ns), name)
        .await
        .map_err(|source| SideError::Read { at: at(), source })?
        .ok_or_else(|| SideError::NotFound(at()))
}

/// The credentials of one side: its Secret's, and with `useAwsIRSA` ECR's for its registry
/// (unless the Secret has some).
pub(crate) async fn side_auth<S: Store>(
    ctx: &Context<S>,
    ns: &str,
    side: &Side,
) -> Result<AuthStore, SideError> {
    let mut auths = secret_auth(ctx, ns, side).await?;
    if side.aws_irsa {
        let host = side.host();
        if auths.auth_for(&host) == AuthStore::default().auth_for(&host) {
            let field = format!("{}.useAwsIRSA", side.field);
            let irsa = IRSA
                .get_or_init(|| IrsaConfig::from_env().map_err(Arc::new))
                .as_ref()
                .map_err(|source| SideError::NoWebIdentity {
                    field: field.clone(),
                    source: source.clone(),
                })?;
            let creds = irsa
                .ecr_credentials(&host)
                .await
                .map_err(|source| SideError::Oci { field, source })?;
            auths.insert_if_absent(&host, creds);
        }
    }
    Ok(auths)
}

/// ECR credentials from the operator's web identity, made once (they cache their tokens).
static IRSA: std::sync::OnceLock<Result<IrsaConfig, Arc<ido_oci::Error>>> = std::sync::OnceLock::new();

/// The credentials of one side's Secret (none without one).
async fn secret_auth<S: Store>(ctx: &Context<S>, ns: &str, side: &Side) -> Result<AuthStore, SideError> {
    let Some(name) = &side.secret else {
        return Ok(AuthStore::default());
    };
    let field = format!("{}.secretRef", side.field);
    let secret: Secret = referenced(ctx, ns, name, &field).await?;
    let config: Vec<u8> = docker_config(&secret).ok_or_else(|| SideError::NotDockerConfig {
        field: field.clone(),
        ns: ns.to_string(),
        name: name.clone(),
        type_: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
    })?;
    let auths = AuthStore::from_docker_config(&config, &format!("Secret {ns}/{name}")).map_err(|source| {
        SideError::Oci {
            field: field.clone(),
            source,
        }
    })?;
    let host = side.host();
    if auths.auth_for(&host) == AuthStore::default().auth_for(&host) {
        return Err(SideError::NoCredentials {
            field,
            ns: ns.to_string(),
            name: name.clone(),
            registry: side.registry.clone(),
        });
    }
    Ok(auths)
}

/// The docker config a `kubernetes.io/dockerconfigjson` Secret holds.
fn docker_config(secret: &Secret) -> Option<Vec<u8>> {
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(DOCKER_CONFIG_KEY))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(DOCKER_CONFIG_KEY))
                .map(|b| b.0.clone())
        })
}

/// The credentials of pull Secrets `(namespace, name)`, the first Secret's for a registry
/// winning, as the kubelet takes them. A Secret that is missing or holds no docker config
/// is skipped, as the kubelet skips it; the names of those skipped are returned.
pub(crate) async fn pull_secrets_auth<S: Store>(
    ctx: &Context<S>,
    secrets: &[(String, String)],
) -> Result<(AuthStore, Vec<String>), SideError> {
    let mut auths = AuthStore::default();
    let mut skipped = Vec::new();
    for (ns, name) in secrets.iter().rev() {
        let at = || Named {
            field: "status.pullSecrets".into(),
            kind: "Secret".into(),
            ns: ns.clone(),
            name: name.clone(),
        };
        let secret = ctx
            .store
            .get::<Secret>(Some(ns), name)
            .await
            .map_err(|source| SideError::Read { at: at(), source })?;
        let parsed = secret
            .as_ref()
            .and_then(docker_config)
            .and_then(|c| AuthStore::from_docker_config(&c, &format!("Secret {ns}/{name}")).ok());
        match parsed {
            Some(a) => auths.extend(a),
            None => skipped.push(format!("{ns}/{name}")),
        }
    }
    skipped.reverse();
    Ok((auths, skipped))
}

/// The TLS settings of one side: its `caBundle` and every PEM bundle of its ConfigMap.
pub(crate) async fn side_tls<S: Store>(
    ctx: &Context<S>,
    ns: &str,
    side: &Side,
) -> Result<TlsSettings, SideError> {
    let Some(name) = &side.cert_config_map else {
        return Ok(side.tls.clone());
    };
    let field = format!("{}.certConfigMap", side.field);
    let cm: ConfigMap = referenced(ctx, ns, name, &field).await?;
    let bundles: Vec<&String> = cm
        .data
        .iter()
        .flatten()
        .map(|(_, v)| v)
        .filter(|v| v.contains("-----BEGIN CERTIFICATE-----"))
        .collect();
    if bundles.is_empty() {
        return Err(SideError::NoPem {
            field,
            ns: ns.to_string(),
            name: name.clone(),
        });
    }
    let mut pem = side.tls.ca_bundle.clone().unwrap_or_default();
    for b in bundles {
        if !pem.is_empty() && !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(b);
    }
    Ok(TlsSettings {
        verify: side.tls.verify,
        ca_bundle: Some(pem),
    })
}
