//! Test images: an OCI image layout on disk (single-arch or a multi-arch index), with
//! layers of deterministic pseudo-random bytes, pushed to a registry with skopeo (an
//! independent tool, so the project's copy engine is not tested with its own output).

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
    let blobs = dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs).await?;
    tokio::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
    let mut images = vec![];
    let mut descs = vec![];
    let mut layer_bytes = 0;
    for (pi, platform) in platforms.iter().enumerate() {
        let (os, arch) = platform.split_once('/').context("platform OS/ARCH")?;
        let mut layer_descs = vec![];
        let mut diff_ids = vec![];
        for li in 0..layers {
            let s = seed
                .wrapping_mul(1_000_003)
                .wrapping_add((pi * 1000 + li) as u64 + 1);
            let d = write_stream_blob(&blobs, disk_reader(s, layer_size)).await?;
            layer_bytes += layer_size;
            diff_ids.push(d.clone());
            layer_descs.push(json!({"mediaType": LAYER, "digest": d, "size": layer_size}));
        }
        let config = json!({
            "architecture": arch, "os": os,
            "config": {"Env": [format!("SEED={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, cs) = write_blob(&blobs, &serde_json::to_vec(&config)?).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layer_descs,
        });
        let (md, ms) = write_blob(&blobs, &serde_json::to_vec(&manifest)?).await?;
        images.push((platform.to_string(), md.clone()));
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"os": os, "architecture": arch},
        }));
    }
    let top = if descs.len() == 1 {
        let mut d = descs.remove(0);
        d.as_object_mut().expect("object").remove("platform");
        d
    } else {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs});
        let (d, s) = write_blob(&blobs, &serde_json::to_vec(&index)?).await?;
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    };
    let digest = top["digest"].as_str().expect("digest").to_string();
    let mut top = top;
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

/// Pushes `layout` to `reg` as `repo:tag` with `skopeo copy --all --preserve-digests`.
pub async fn push_layout(layout: &Layout, reg: &DockerRegistry, repo_tag: &str) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let mut args = vec![
        "copy".to_string(),
        "--all".into(),
        "--preserve-digests".into(),
        "-q".into(),
    ];
    args.extend(reg.skopeo_flags("dest", scratch.path())?);
    args.push(format!("oci:{}:{}", layout.dir.display(), layout.tag));
    args.push(format!("docker://{}/{repo_tag}", reg.host()));
    crate::registry::skopeo(&args).await.map(drop)
}
