//! Images built here, pushed by digest, and the tag that names them.
//!
//! ```text
//!  buildah build -t dir:OUT ─▶ OUT/manifest.json, OUT/<hex> (config, layers), OUT/version
//!  push_dir:  each blob: HEAD, else streamed from its file (sha256 checked) ─▶ REG/repo
//!             manifest.json's exact bytes ─▶ REG/repo@sha256(manifest.json)     (no tag)
//!  publish:   one image: its manifest bytes ─▶ REG/repo:tag
//!             several:   their index (OCI, or a Docker list) ─▶ REG/repo:tag
//! ```
//!
//! `buildah push` cannot push by digest (an untagged destination becomes `:latest`), so
//! the images a build makes per architecture are pushed here, untagged, and the tag is
//! written once all of them are there. The manifest is pushed as the bytes buildah wrote:
//! its digest is `sha256(manifest.json)`, known before anything is sent.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    blob::push_file_blob,
    copy::{Progress, existing_digest, pull_manifest, push_manifest},
    media::{self, Descriptor, Manifest, Platform},
    registry::Registry,
};

/// One built image, as pushed: what an index entry says of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltImage {
    /// `sha256:…` of its manifest.
    pub digest: String,
    /// Its manifest's size in bytes.
    pub size: u64,
    /// Its manifest's media type (OCI image manifest, or Docker v2 schema 2).
    pub media_type: String,
    /// From its config blob.
    pub platform: Platform,
}

/// The `version` file containers/image's `dir:` transport writes (1.1 since it names blobs
/// by hex digest alone).
const DIR_VERSION_PREFIX: &str = "Directory Transport Version: 1.";

/// Pushes the image in `dir` (containers/image `dir:` layout: manifest.json, blobs named by
/// hex digest, version) to `repo` untagged: each blob (skipped when the registry has it:
/// HEAD), then manifest.json's exact bytes at repo@sha256(manifest.json). The platform comes
/// from the config blob. `repo`'s tag or digest, if any, is not used.
///
/// Bad input (no manifest.json, a manifest naming a missing blob, a blob whose bytes do not
/// match its name) is an error naming the file and the digest; nothing is pushed for a
/// missing blob, and a mismatching one fails its upload before the commit.
pub async fn push_dir(dir: &Path, dst: &Registry, repo: &Reference) -> Result<BuiltImage> {
    push_dir_with_progress(dir, dst, repo, &Progress::default()).await
}

/// [`push_dir`], counting the blobs' bytes in `progress` as they go.
pub async fn push_dir_with_progress(
    dir: &Path,
    dst: &Registry,
    repo: &Reference,
    progress: &Progress,
) -> Result<BuiltImage> {
    check_version(dir)?;
    let manifest_path = dir.join("manifest.json");
    let bytes = read(&manifest_path, "the image manifest")?;
    let digest = media::sha256(&bytes);
    let (media_type, config, layers) = match media::parse(&bytes, &manifest_path.display().to_string())? {
        Manifest::Image {
            media_type,
            config,
            layers,
        } => (media_type, config, layers),
        Manifest::Index { .. } => {
            return Err(Error::File {
                path: manifest_path,
                message: "an index, not an image manifest".into(),
            });
        }
    };

    // Every blob's file is there with its size before anything is sent.
    let mut blobs: Vec<(PathBuf, Descriptor)> = vec![];
    for d in std::iter::once(&config).chain(&layers) {
        // Foreign layers (non-distributable) live where their URLs say.
        if !d.urls.is_empty() || blobs.iter().any(|(_, b)| b.digest == d.digest) {
            continue;
        }
        blobs.push((blob_file(dir, d, &manifest_path)?, d.clone()));
    }
    let config_path = &blob_file(dir, &config, &manifest_path)?;
    let config_bytes = read(config_path, "the image config")?;
    let actual = media::sha256(&config_bytes);
    if actual != config.digest {
        return Err(Error::Digest {
            what: format!("reading blob {} from {}", config.digest, config_path.display()),
            expected: config.digest.clone(),
            actual,
        });
    }
    let platform = media::config_platform(&config_bytes, &config_path.display().to_string())?;

    dst.prepare(repo).await;
    progress.add_total(blobs.iter().map(|(_, d)| d.size).sum());
    let n = blobs.len();
    stream::iter(&blobs)
        .map(|(path, d)| push_file_blob(path, dst, repo, d, progress))
        .buffer_unordered(dst.concurrency() * 2)
        .try_collect::<Vec<_>>()
        .await?;
    let at = by_digest(repo, &digest);
    let size = bytes.len() as u64;
    push_manifest(dst, &at, Bytes::from(bytes), &media_type).await?;
    tracing::debug!(dst = %at.whole(), blobs = n, %platform, "pushed");
    Ok(BuiltImage {
        digest,
        size,
        media_type,
        platform,
    })
}

/// The index (OCI image index; Docker manifest list when the images are Docker v2s2) of
/// `images`, in their order: the same images give the same bytes. Its media type with it.
pub fn index(images: &[BuiltImage]) -> (Vec<u8>, &'static str) {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index<'a> {
        schema_version: u32,
        media_type: &'static str,
        manifests: Vec<Entry<'a>>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry<'a> {
        media_type: &'a str,
        digest: &'a str,
        size: u64,
        platform: &'a Platform,
    }
    let docker = !images.is_empty() && images.iter().all(|i| i.media_type == media::DOCKER_MANIFEST);
    let media_type = if docker {
        media::DOCKER_LIST
    } else {
        media::OCI_INDEX
    };
    let index = Index {
        schema_version: 2,
        media_type,
        manifests: images
            .iter()
            .map(|i| Entry {
                media_type: &i.media_type,
                digest: &i.digest,
                size: i.size,
                platform: &i.platform,
            })
            .collect(),
    };
    (serde_json::to_vec(&index).expect("json"), media_type)
}

/// Makes `tag` name the images (pushed before, by digest, to its repository): one image →
/// its manifest bytes (pulled by digest, verified) put under the tag; several → their
/// [`index`]. Returns the tag's digest. Nothing is put when the tag already names that
/// digest.
pub async fn publish(dst: &Registry, tag: &Reference, images: &[BuiltImage]) -> Result<String> {
    if tag.digest().is_some() {
        return Err(Error::Invalid {
            field: "tag",
            value: tag.whole(),
            reason: "publishing names a tag, not a digest".into(),
        });
    }
    let (digest, media_type, bytes) = match images {
        [] => {
            return Err(Error::Invalid {
                field: "images",
                value: tag.whole(),
                reason: "no image to publish".into(),
            });
        }
        [one] => (one.digest.clone(), one.media_type.clone(), None),
        several => {
            let (bytes, media_type) = index(several);
            (
                media::sha256(&bytes),
                media_type.to_string(),
                Some(Bytes::from(bytes)),
            )
        }
    };
    dst.prepare(tag).await;
    if existing_digest(dst, tag).await.as_deref() == Some(digest.as_str()) {
        tracing::debug!(tag = %tag.whole(), %digest, "tag up to date");
        return Ok(digest);
    }
    let bytes = match bytes {
        Some(b) => b,
        None => pull_manifest(dst, &by_digest(tag, &digest)).await?.0,
    };
    push_manifest(dst, tag, bytes, &media_type).await?;
    tracing::debug!(tag = %tag.whole(), %digest, images = images.len(), "published");
    Ok(digest)
}

/// `r`'s repository at `digest`.
fn by_digest(r: &Reference, digest: &str) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), digest.into())
}

/// Refuses a `version` file of another major version of the `dir:` layout (none is fine).
fn check_version(dir: &Path) -> Result<()> {
    let path = dir.join("version");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.starts_with(DIR_VERSION_PREFIX) => Ok(()),
        Ok(v) => Err(Error::File {
            path,
            message: format!(
                "not a containers/image dir: layout this understands ({:?}; expected {DIR_VERSION_PREFIX}x)",
                v.trim()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::File {
            path,
            message: format!("cannot read: {e}"),
        }),
    }
}

/// The bytes of `path`; `what` it is, in errors.
fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::File {
        path: path.into(),
        message: match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{what} is missing (not an image directory of containers/image's dir: transport, \
                 as `buildah build -t dir:DIR` writes)"
            ),
            _ => format!("cannot read {what}: {e}"),
        },
    })
}

/// The file of blob `d` in `dir` (named by its hex digest), there and of the size the
/// manifest at `manifest` gives.
fn blob_file(dir: &Path, d: &Descriptor, manifest: &Path) -> Result<PathBuf> {
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| Error::File {
            path: manifest.into(),
            message: format!("blob digest {:?} is not a sha256 digest", d.digest),
        })?;
    let path = dir.join(hex);
    let named = || format!("blob {} named by {}", d.digest, manifest.display());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() == d.size => Ok(path),
        Ok(m) if m.is_file() => Err(Error::File {
            path,
            message: format!("{}: {} bytes, the manifest says {}", named(), m.len(), d.size),
        }),
        Ok(_) => Err(Error::File {
            path,
            message: format!("{}: not a regular file", named()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::File {
            path,
            message: format!("{} is missing", named()),
        }),
        Err(e) => Err(Error::File {
            path,
            message: format!("{}: {e}", named()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(arch: &str, media_type: &str, digit: char) -> BuiltImage {
        BuiltImage {
            digest: format!("sha256:{}", digit.to_string().repeat(64)),
            size: 400,
            media_type: media_type.into(),
            platform: Platform::parse(&format!("linux/{arch}")).unwrap(),
        }
    }

    #[test]
    fn oci_index_bytes() {
        let images = [
            image("amd64", media::OCI_MANIFEST, 'a'),
            image("arm/v7", media::OCI_MANIFEST, 'b'),
        ];
        let (bytes, media_type) = index(&images);
        assert_eq!(media_type, media::OCI_INDEX);
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{a}","size":400,"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{b}","size":400,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), want);
        // Deterministic, and what the copy engine reads back.
        assert_eq!(index(&images).0, bytes);
        match media::parse(&bytes, "i").unwrap() {
            Manifest::Index { manifests, .. } => {
                assert_eq!(manifests.len(), 2);
                assert_eq!(manifests[1].platform, Some(images[1].platform.clone()));
                assert_eq!(manifests[0].digest, images[0].digest);
            }
            m => panic!("{m:?}"),
        }
        // The given order is kept.
        let swapped = [images[1].clone(), images[0].clone()];
        assert_ne!(index(&swapped).0, bytes);
    }

    #[test]
    fn docker_images_give_a_manifest_list() {
        let docker = [
            image("amd64", media::DOCKER_MANIFEST, 'a'),
            image("arm64", media::DOCKER_MANIFEST, 'b'),
        ];
        let (bytes, media_type) = index(&docker);
        assert_eq!(media_type, media::DOCKER_LIST);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["mediaType"], media::DOCKER_LIST);
        assert_eq!(v["manifests"][1]["mediaType"], media::DOCKER_MANIFEST);
        // Mixed formats: an OCI index.
        let mixed = [docker[0].clone(), image("arm64", media::OCI_MANIFEST, 'c')];
        assert_eq!(index(&mixed).1, media::OCI_INDEX);
    }

    #[test]
    fn built_image_json() {
        let i = image("arm64", media::OCI_MANIFEST, 'a');
        let json = serde_json::to_string(&i).unwrap();
        assert!(
            json.contains(r#""mediaType""#) && !json.contains("variant"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<BuiltImage>(&json).unwrap(), i);
    }

    #[test]
    fn bad_directories_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(&dir.path().join("manifest.json"), "the image manifest")
            .unwrap_err()
            .to_string();
        assert!(e.contains("manifest.json") && e.contains("missing"), "{e}");
        std::fs::write(dir.path().join("version"), "Directory Transport Version: 2.0\n").unwrap();
        let e = check_version(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version") && e.contains("2.0"), "{e}");
        std::fs::write(dir.path().join("version"), "Directory Transport Version: 1.1\n").unwrap();
        check_version(dir.path()).unwrap();

        let manifest = dir.path().join("manifest.json");
        let d = |digest: &str, size| Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: digest.into(),
            size,
            platform: None,
            urls: vec![],
            annotations: Default::default(),
            artifact_type: None,
        };
        let hex = "c".repeat(64);
        let e = blob_file(dir.path(), &d(&format!("sha256:{hex}"), 5), &manifest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&hex) && e.contains("manifest.json") && e.contains("missing"),
            "{e}"
        );
        std::fs::write(dir.path().join(&hex), "1234").unwrap();
        let e = blob_file(dir.path(), &d(&format!("sha256:{hex}"), 5), &manifest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 bytes") && e.contains(&hex), "{e}");
        assert!(blob_file(dir.path(), &d(&format!("sha256:{hex}"), 4), &manifest).is_ok());
        for bad in ["sha256:../../etc/passwd", "sha512:cc", "sha256:CC"] {
            let e = blob_file(dir.path(), &d(bad, 4), &manifest)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a sha256 digest"), "{e}");
        }
    }
}
