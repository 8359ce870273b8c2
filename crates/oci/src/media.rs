//! Manifest media types and the parts of manifests the copy needs.

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Media types asked for when pulling a manifest.
pub const ACCEPTED: &[&str] = &[
    OCI_INDEX,
    DOCKER_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_V1_SIGNED,
    DOCKER_V1,
];

/// A content descriptor.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Foreign layers (non-distributable) name where they live instead.
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// An artifact's type, as an index of referrers lists it.
    #[serde(default, rename = "artifactType")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// An attestation manifest of an index (BuildKit's provenance and SBOMs): platform
    /// `unknown/unknown`, or the `vnd.docker.reference.type` annotation.
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get("vnd.docker.reference.type")
            .map(String::as_str)
            == Some("attestation-manifest")
            || self
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }
}

/// An OS/architecture[/variant] triple.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(crate::Error::Invalid {
                field: "platform",
                value: s.into(),
                reason: "expected OS/ARCH[/VARIANT], e.g. linux/arm64".into(),
            }),
        }
    }

    /// The platform this process runs on, in OCI names.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// Whether `self` (asked for) selects `other` (offered); no variant asked = any variant.
    pub fn selects(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest is, with what the copy must follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// An index / manifest list: the child manifests.
    Index {
        media_type: String,
        manifests: Vec<Descriptor>,
    },
    /// An image (or artifact) manifest: its config and layer blobs.
    Image {
        media_type: String,
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Parses manifest bytes. Schema 1 is refused.
pub fn parse(bytes: &[u8], reference: &str) -> crate::Result<Manifest> {
    let unsupported = |message: String| crate::Error::Unsupported {
        reference: reference.into(),
        message,
    };
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| unsupported(format!("manifest is not valid JSON: {e}")))?;
    if raw.schema_version == Some(1)
        || matches!(raw.media_type.as_deref(), Some(DOCKER_V1 | DOCKER_V1_SIGNED))
    {
        return Err(unsupported(
            "Docker image manifest schema 1 is not supported (deprecated and insecure); re-push the image with a current client".into(),
        ));
    }
    match (raw.manifests, raw.config) {
        (Some(manifests), _) => Ok(Manifest::Index {
            media_type: raw.media_type.unwrap_or_else(|| OCI_INDEX.into()),
            manifests,
        }),
        (None, Some(config)) => Ok(Manifest::Image {
            media_type: raw.media_type.unwrap_or_else(|| OCI_MANIFEST.into()),
            config,
            layers: raw.layers.unwrap_or_default(),
        }),
        _ => Err(unsupported("manifest has neither manifests nor config".into())),
    }
}

/// The platform an image config (OCI or Docker) names: its `os`, `architecture` and
/// `variant`. `what` names the config in errors.
pub fn config_platform(bytes: &[u8], what: &str) -> crate::Result<Platform> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let unsupported = |message: String| crate::Error::Unsupported {
        reference: what.into(),
        message,
    };
    let c: Config = serde_json::from_slice(bytes)
        .map_err(|e| unsupported(format!("image config is not valid JSON: {e}")))?;
    if c.os.is_empty() || c.architecture.is_empty() {
        return Err(unsupported(format!(
            "image config names no platform (os {:?}, architecture {:?})",
            c.os, c.architecture
        )));
    }
    Ok(Platform {
        os: c.os,
        architecture: c.architecture,
        variant: c.variant.filter(|v| !v.is_empty()),
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_is_refused_clearly() {
        let e = parse(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, "r/x:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 1") && e.contains("r/x:1"), "{e}");
    }

    #[test]
    fn kinds_are_told_apart() {
        let idx = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;
        match parse(idx, "r").unwrap() {
            Manifest::Index {
                media_type,
                manifests,
            } => {
                assert_eq!(media_type, OCI_INDEX);
                assert_eq!(
                    manifests[0].platform.as_ref().unwrap().variant.as_deref(),
                    Some("v8")
                );
            }
            m => panic!("{m:?}"),
        }
        let img = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"digest":"sha256:c","size":2},"layers":[{"digest":"sha256:l","size":3}]}"#;
        assert!(matches!(parse(img, "r").unwrap(), Manifest::Image { layers, .. } if layers.len() == 1));
    }

    #[test]
    fn config_platforms() {
        // As buildah writes them (OCI, then Docker), trimmed.
        let oci = br#"{"created":"2026-12-08T00:00:00Z","architecture":"arm64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        assert_eq!(
            config_platform(oci, "c").unwrap(),
            Platform::parse("linux/arm64").unwrap()
        );
        let docker = br#"{"architecture":"arm","os":"linux","variant":"v7","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(
            config_platform(docker, "c").unwrap(),
            Platform::parse("linux/arm/v7").unwrap()
        );
        let empty_variant = br#"{"architecture":"amd64","os":"linux","variant":""}"#;
        assert_eq!(config_platform(empty_variant, "c").unwrap().variant, None);
        let e = config_platform(br#"{"os":"linux"}"#, "dir/abc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dir/abc") && e.contains("no platform"), "{e}");
        let e = config_platform(b"not json", "dir/abc").unwrap_err().to_string();
        assert!(e.contains("dir/abc") && e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64").unwrap();
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(p.selects(&v8) && !v8.selects(&Platform::parse("linux/arm64/v7").unwrap()));
        assert!(
            Platform::parse("linux")
                .unwrap_err()
                .to_string()
                .contains("platform")
        );
    }
}
