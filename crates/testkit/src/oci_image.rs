//! Test images: an OCI image layout on disk (single-arch or a multi-arch index), with
//! layers of deterministic pseudo-random bytes, pushed to a registry with skopeo (an
//! independent tool, so the project's copy engine is not tested with its own output).
//! [`build_shape`] writes the shapes registries hold: Docker manifest lists or OCI indexes,
//! gzip, zstd, uncompressed, zero-byte and foreign layers, attestation manifests; and
//! [`build_artifact`] an OCI 1.1 artifact with `artifactType` and `subject`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ova::disk_reader, registry::DockerRegistry};

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image layout written by [`build_layout`].
#[derive(Clone, Debug)]
pub struct Layout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag in `index.json`.
    pub tag: String,
    /// Digest the tag names (a manifest, or an index for several platforms).
    pub digest: String,
    /// `(platform, manifest digest)` per image.
    pub images: Vec<(String, String)>,
    /// Bytes of all layers.
    pub layer_bytes: u64,
}

/// Writes an OCI layout in `dir` with one image per platform (`linux/amd64`, …), each with
/// `layers` layers of `layer_size` bytes (`seed` makes them differ between images/tags).
pub async fn build_layout(
    dir: &Path,
    tag: &str,
    platforms: &[&str],
    layers: usize,
    layer_size: u64,
    seed: u64,
) -> anyhow::Result<Layout> {
    let shape = Shape {
        platforms: platforms.iter().map(ToString::to_string).collect(),
        layers: vec![LayerKind::Uncompressed; layers],
        layer_size,
        seed,
        ..Shape::default()
    };
    build_shape(dir, tag, &shape).await
}

/// The manifest format of a [`Shape`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifests and an OCI image index.
    #[default]
    Oci,
    /// Docker schema 2 manifests and a Docker manifest list.
    Docker,
}

/// A layer of a [`Shape`]: its media type says the compression; its bytes are
/// deterministic pseudo-random bytes whatever it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// `…tar+gzip` (Docker: `…rootfs.diff.tar.gzip`).
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd` (OCI only).
    Zstd,
    /// `…tar` (Docker: `…rootfs.diff.tar`).
    Uncompressed,
    /// An uncompressed layer of zero bytes.
    Empty,
    /// A layer that lives elsewhere (`urls`): Docker's `…rootfs.foreign.diff.tar.gzip`, OCI's
    /// `…nondistributable.v1.tar+gzip`. Its bytes are in the layout all the same.
    Foreign,
}

/// The URL foreign layers name.
pub const FOREIGN_URL: &str = "https://foreign.example.invalid/layer.tar.gz";

/// What [`build_shape`] writes: one image per platform, each with `layers`.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Manifest and index media types.
    pub format: Format,
    /// `os/arch` per image.
    pub platforms: Vec<String>,
    /// The layers of every image (their bytes differ between images).
    pub layers: Vec<LayerKind>,
    /// Bytes of each layer but [`LayerKind::Empty`] ones.
    pub layer_size: u64,
    /// An index even for one platform (several platforms always make one).
    pub index: bool,
    /// Per image, an attestation manifest in the index as BuildKit writes it (platform
    /// `unknown/unknown`, `vnd.docker.reference.type: attestation-manifest`,
    /// `vnd.docker.reference.digest`). OCI only.
    pub attestations: bool,
    /// Makes the bytes differ between layouts.
    pub seed: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            format: Format::Oci,
            platforms: vec!["linux/amd64".into()],
            layers: vec![LayerKind::Uncompressed],
            layer_size: 1024,
            index: false,
            attestations: false,
            seed: 0,
        }
    }
}

fn layer_type(format: Format, kind: LayerKind) -> anyhow::Result<&'static str> {
    Ok(match (format, kind) {
        (Format::Oci, LayerKind::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (_, LayerKind::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Format::Oci, LayerKind::Uncompressed | LayerKind::Empty) => LAYER,
        (Format::Oci, LayerKind::Foreign) => "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        (Format::Docker, LayerKind::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        (Format::Docker, LayerKind::Uncompressed | LayerKind::Empty) => {
            "application/vnd.docker.image.rootfs.diff.tar"
        }
        (Format::Docker, LayerKind::Foreign) => "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    })
}

/// Writes an OCI layout in `dir` holding `shape` under `tag`.
pub async fn build_shape(dir: &Path, tag: &str, shape: &Shape) -> anyhow::Result<Layout> {
    let docker = shape.format == Format::Docker;
    if docker && shape.layers.contains(&LayerKind::Zstd) {
        anyhow::bail!("zstd layers are OCI only");
    }
    if docker && shape.attestations {
        anyhow::bail!("attestation manifests are OCI only");
    }
    let (manifest_type, config_type, index_type) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.index.v1+json",
        )
    };
    let seed = shape.seed;
    let blobs = dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs).await?;
    tokio::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
    let mut images = vec![];
    let mut descs = vec![];
    let mut layer_bytes = 0;
    for (pi, platform) in shape.platforms.iter().enumerate() {
        let (os, arch) = platform.split_once('/').context("platform OS/ARCH")?;
        let mut layer_descs = vec![];
        let mut diff_ids = vec![];
        for (li, kind) in shape.layers.iter().enumerate() {
            let s = seed
                .wrapping_mul(1_000_003)
                .wrapping_add((pi * 1000 + li) as u64 + 1);
            let size = if *kind == LayerKind::Empty {
                0
            } else {
                shape.layer_size
            };
            let d = write_stream_blob(&blobs, disk_reader(s, size)).await?;
            layer_bytes += size;
            diff_ids.push(d.clone());
            let mut desc = json!({"mediaType": layer_type(shape.format, *kind)?, "digest": d, "size": size});
            if *kind == LayerKind::Foreign {
                desc["urls"] = json!([FOREIGN_URL]);
            }
            layer_descs.push(desc);
        }
        let config = json!({
            "architecture": arch, "os": os,
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, cs) = write_blob(&blobs, &serde_json::to_vec(&config)?).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": cd, "size": cs},
            "layers": layer_descs,
        });
        let (md, ms) = write_blob(&blobs, &serde_json::to_vec(&manifest)?).await?;
        images.push((platform.to_string(), md.clone()));
        descs.push(json!({
            "mediaType": manifest_type, "digest": md, "size": ms,
            "platform": {"os": os, "architecture": arch},
        }));
    }
    if shape.attestations {
        for (pi, (_, image)) in images.iter().enumerate() {
            let statement = serde_json::to_vec(&json!({
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://spdx.dev/Document",
                "subject": [{"name": "image", "digest": {"sha256": image.trim_start_matches("sha256:")}}],
                "predicate": {"seed": seed, "image": pi},
            }))?;
            let (sd, ss) = write_blob(&blobs, &statement).await?;
            let config = json!({
                "architecture": "unknown", "os": "unknown", "config": {},
                "rootfs": {"type": "layers", "diff_ids": [sd]},
            });
            let (cd, cs) = write_blob(&blobs, &serde_json::to_vec(&config)?).await?;
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {"mediaType": config_type, "digest": cd, "size": cs},
                "layers": [{
                    "mediaType": "application/vnd.in-toto+json", "digest": sd, "size": ss,
                    "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
                }],
            });
            let (md, ms) = write_blob(&blobs, &serde_json::to_vec(&manifest)?).await?;
            descs.push(json!({
                "mediaType": manifest_type, "digest": md, "size": ms,
                "annotations": {
                    "vnd.docker.reference.digest": image,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"os": "unknown", "architecture": "unknown"},
            }));
        }
    }
    let top = if descs.len() == 1 && !shape.index {
        let mut d = descs.remove(0);
        d.as_object_mut().expect("object").remove("platform");
        d
    } else {
        let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": descs});
        let (d, s) = write_blob(&blobs, &serde_json::to_vec(&index)?).await?;
        json!({"mediaType": index_type, "digest": d, "size": s})
    };
    if docker {
        write_dir_transport(dir, &top, &descs).await?;
    }
    write_index(dir, tag, top, images, layer_bytes).await
}

/// Docker manifests in an OCI layout are invisible to skopeo's `oci:` transport, so a
/// Docker shape is also written as its `dir:` transport (which [`push_layout`] then reads):
/// `manifest.json`, `HEX.manifest.json` per image of a list (`children`, empty for a single
/// image), blobs as `HEX`.
async fn write_dir_transport(
    dir: &Path,
    top: &serde_json::Value,
    children: &[serde_json::Value],
) -> anyhow::Result<()> {
    let hex_of = |d: &serde_json::Value| {
        d["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .map(str::to_string)
            .context("sha256 digest")
    };
    let blobs = dir.join("blobs/sha256");
    let top_hex = hex_of(top)?;
    tokio::fs::copy(blobs.join(&top_hex), dir.join("manifest.json")).await?;
    let mut manifests = vec![top_hex.clone()];
    for c in children {
        let h = hex_of(c)?;
        tokio::fs::copy(blobs.join(&h), dir.join(format!("{h}.manifest.json"))).await?;
        manifests.push(h);
    }
    for m in &manifests {
        let bytes = tokio::fs::read(blobs.join(m)).await?;
        let m: serde_json::Value = serde_json::from_slice(&bytes)?;
        let descs = std::iter::once(&m["config"])
            .filter(|c| c.is_object())
            .chain(m["layers"].as_array().into_iter().flatten());
        for d in descs {
            let h = hex_of(d)?;
            if !dir.join(&h).exists() {
                tokio::fs::hard_link(blobs.join(&h), dir.join(&h)).await?;
            }
        }
    }
    tokio::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").await?;
    Ok(())
}

/// Writes an OCI layout in `dir` holding, under `tag`, an OCI 1.1 artifact: an image manifest
/// with `artifact_type`, the empty config (`application/vnd.oci.empty.v1+json`), one layer of
/// `size` bytes of that type, and `subject` naming what `subject` tags (the artifact refers
/// to it; its bytes are not in this layout).
pub async fn build_artifact(
    dir: &Path,
    tag: &str,
    artifact_type: &str,
    subject: &Layout,
    size: u64,
    seed: u64,
) -> anyhow::Result<Layout> {
    let subject = subject.descriptor().await?;
    let blobs = dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs).await?;
    tokio::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
    let (cd, cs) = write_blob(&blobs, b"{}").await?;
    let ld = write_stream_blob(
        &blobs,
        disk_reader(seed.wrapping_mul(7_919).wrapping_add(1), size),
    )
    .await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": artifact_type, "digest": ld, "size": size}],
        "subject": {
            "mediaType": subject["mediaType"], "digest": subject["digest"], "size": subject["size"],
        },
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    });
    let (md, ms) = write_blob(&blobs, &serde_json::to_vec(&manifest)?).await?;
    let top = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "artifactType": artifact_type,
    });
    write_index(dir, tag, top, vec![], size).await
}

impl Layout {
    /// The descriptor of what the tag names, as `index.json` has it (`mediaType`, `digest`,
    /// `size`).
    pub async fn descriptor(&self) -> anyhow::Result<serde_json::Value> {
        let index: serde_json::Value =
            serde_json::from_slice(&tokio::fs::read(self.dir.join("index.json")).await?)?;
        let mut d = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["digest"] == self.digest.as_str())
            .cloned()
            .context("the tag's descriptor in index.json")?;
        d.as_object_mut().expect("object").remove("annotations");
        Ok(d)
    }
}

async fn write_index(
    dir: &Path,
    tag: &str,
    mut top: serde_json::Value,
    images: Vec<(String, String)>,
    layer_bytes: u64,
) -> anyhow::Result<Layout> {
    let digest = top["digest"].as_str().expect("digest").to_string();
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = json!({"schemaVersion": 2, "manifests": [top]});
    tokio::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?).await?;
    Ok(Layout {
        dir: dir.to_path_buf(),
        tag: tag.into(),
        digest,
        images,
        layer_bytes,
    })
}

async fn write_blob(blobs: &Path, data: &[u8]) -> anyhow::Result<(String, u64)> {
    let hex = hex(&sha2::Sha256::digest(data));
    tokio::fs::write(blobs.join(&hex), data).await?;
    Ok((format!("sha256:{hex}"), data.len() as u64))
}

async fn write_stream_blob(blobs: &Path, mut r: impl tokio::io::AsyncRead + Unpin) -> anyhow::Result<String> {
    let tmp = blobs.join(".tmp");
    let mut f = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await?);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).await?;
    }
    f.flush().await?;
    let hex = hex(&h.finalize());
    tokio::fs::rename(&tmp, blobs.join(&hex)).await?;
    Ok(format!("sha256:{hex}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Pushes `layout` to `reg` as `repo:tag` with `skopeo copy --all --preserve-digests` (from
/// its `dir:` form if it has one, as Docker shapes do).
pub async fn push_layout(layout: &Layout, reg: &DockerRegistry, repo_tag: &str) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut args = vec![
        "copy".to_string(),
        "--all".into(),
        "--preserve-digests".into(),
        "-q".into(),
    ];
    args.extend(reg.skopeo_flags("dest", scratch.path())?);
    if layout.dir.join("manifest.json").exists() {
        args.push(format!("dir:{}", layout.dir.display()));
    } else {
        args.push(format!("oci:{}:{}", layout.dir.display(), layout.tag));
    }
    args.push(format!("docker://{}/{repo_tag}", reg.host()));
    crate::registry::skopeo(&args).await.map(drop)
}
