//! Byte-exact copies between registries.
//!
//! The manifest (or index) is pulled as raw bytes and pushed as the same bytes, so digests
//! are preserved. What the destination tag will name is known from the source's top
//! manifest alone, so a copy whose destination tag already has that digest stops after two
//! requests (made at once). Otherwise the blobs of every selected image are collected,
//! de-duplicated and copied concurrently, bounded per registry (module `blob`): skipped
//! when present, mounted within a registry, else streamed source → destination with the
//! digest verified on the way. Transient failures (5xx, 429, connection resets) are retried
//! with backoff (module `retry`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, future::try_join_all, stream};
use oci_client::Reference;
use reqwest::header::HeaderValue;

use crate::{
    Error, Result,
    blob::{BlobOutcome, copy_blob},
    media::{self, Descriptor, Manifest, Platform},
    registry::Registry,
    retry::with_retries,
};

/// Which images of an index to copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Platforms {
    /// The platform of this machine (skopeo's default); an image manifest is copied as is.
    #[default]
    Host,
    /// Every image, and the index itself (skopeo's `--all`).
    All,
    /// The given platforms: one is copied as a plain image, several as a new index.
    Only(Vec<Platform>),
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Digest of the manifest now at the destination.
    pub digest: String,
    /// The destination already had it: nothing was copied.
    pub skipped: bool,
    pub manifests: usize,
    pub blobs_copied: usize,
    pub blobs_present: usize,
    pub blobs_mounted: usize,
    /// Blob bytes streamed from source to destination.
    pub bytes: u64,
}

/// A copy's progress, readable while it runs (for a progress bar): the total is the bytes
/// of the blobs to copy, `get` how many of them are done (streamed, or found present or
/// mounted). A retried transfer takes its bytes back, so it never passes the total.
pub use ido_io::progress::Progress;

/// Copies `src_ref` on `src` to `dst_ref` on `dst`.
///
/// Requests on the way: the source's manifest and the destination tag, at once; nothing
/// more when the tag already has the digest to push. Otherwise the selected images'
/// manifests (at once), per blob a HEAD at the destination and, if missing, a mount (same
/// registry) or a streamed GET → POST → PUT; then the manifests, children first.
pub async fn copy(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    platforms: &Platforms,
) -> Result<CopyReport> {
    copy_with_progress(src, src_ref, dst, dst_ref, platforms, &Progress::default()).await
}

/// [`copy`], for a caller that knows what the destination tag holds: `known` is its
/// digest, as an earlier copy left it (and the caller has checked that the tag is still
/// there). The destination tag is then not read: a tag whose source has not moved costs
/// the source's manifest alone.
pub async fn copy_known(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    platforms: &Platforms,
    known: Option<&str>,
) -> Result<CopyReport> {
    copy_inner(src, src_ref, dst, dst_ref, platforms, &Progress::default(), known).await
}

/// [`copy`], counting its bytes in `progress` as they go.
pub async fn copy_with_progress(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    platforms: &Platforms,
    progress: &Progress,
) -> Result<CopyReport> {
    copy_inner(src, src_ref, dst, dst_ref, platforms, progress, None).await
}

async fn copy_inner(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    platforms: &Platforms,
    progress: &Progress,
    known: Option<&str>,
) -> Result<CopyReport> {
    let name = src_ref.whole();
    src.prepare(src_ref).await;
    dst.prepare(dst_ref).await;

    let existing = async {
        match known {
            Some(d) => Some(d.to_string()),
            None => existing_digest(dst, dst_ref).await,
        }
    };
    let (top, existing) = tokio::join!(pull_manifest(src, src_ref), existing);
    let (top, top_digest) = top?;
    let plan = plan(&top, &top_digest, platforms, &name)?;
    let mut report = CopyReport {
        digest: plan.digest.clone(),
        ..CopyReport::default()
    };
    if existing.as_deref() == Some(plan.digest.as_str()) {
        tracing::debug!(dst = %dst_ref.whole(), digest = %plan.digest, "destination up to date");
        report.skipped = true;
        return Ok(report);
    }

    // The images under the tag (an image manifest is its own only image).
    let images: Vec<(String, Bytes, Manifest)> = match &plan.children {
        None => vec![(top_digest, top.clone(), media::parse(&top, &name)?)],
        Some(children) => try_join_all(children.iter().map(|d| pull_image(src, src_ref, d))).await?,
    };
    let (push_bytes, push_type) = match plan.bytes {
        Some(b) => (b, plan.media_type),
        // One platform of an index: that image's manifest, byte-exact.
        None => (images[0].1.clone(), media_type(&images[0].2)),
    };

    copy_blobs(
        src,
        src_ref,
        dst,
        dst_ref,
        blobs_of(&images),
        progress,
        &mut report,
    )
    .await?;

    // Children first (by digest, at once), then the tag.
    if plan.children.is_some() && (images.len() > 1 || push_bytes != images[0].1) {
        try_join_all(images.iter().map(|(digest, bytes, m)| {
            let r = Reference::with_digest(
                dst_ref.registry().into(),
                dst_ref.repository().into(),
                digest.clone(),
            );
            async move { push_manifest(dst, &r, bytes.clone(), &media_type(m)).await }
        }))
        .await?;
        report.manifests += images.len();
    }
    push_manifest(dst, dst_ref, push_bytes, &push_type).await?;
    report.manifests += 1;
    tracing::debug!(dst = %dst_ref.whole(), digest = %report.digest, blobs = report.blobs_copied, bytes = report.bytes, "copied");
    Ok(report)
}

/// Every blob of every image, once (foreign layers aside); the largest first (they bound
/// the copy's length).
fn blobs_of(images: &[(String, Bytes, Manifest)]) -> Vec<Descriptor> {
    let mut blobs: BTreeMap<String, Descriptor> = BTreeMap::new();
    for (_, _, m) in images {
        if let Manifest::Image { config, layers, .. } = m {
            for d in std::iter::once(config).chain(layers) {
                if d.urls.is_empty() {
                    blobs.entry(d.digest.clone()).or_insert_with(|| d.clone());
                }
            }
        }
    }
    let mut blobs: Vec<Descriptor> = blobs.into_values().collect();
    blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
    blobs
}

/// Copies `blobs`, a few at once, counting what happened to them in `report`.
async fn copy_blobs(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    blobs: Vec<Descriptor>,
    progress: &Progress,
    report: &mut CopyReport,
) -> Result<()> {
    progress.add_total(blobs.iter().map(|b| b.size).sum());
    let bytes = Arc::new(AtomicU64::new(0));
    let outcomes: Vec<BlobOutcome> = stream::iter(blobs)
        .map(|d| copy_blob(src, src_ref, dst, dst_ref, d, bytes.clone(), progress))
        .buffer_unordered(dst.concurrency() * 2)
        .try_collect()
        .await?;
    for o in outcomes {
        match o {
            BlobOutcome::Copied => report.blobs_copied += 1,
            BlobOutcome::Present => report.blobs_present += 1,
            BlobOutcome::Mounted => report.blobs_mounted += 1,
        }
    }
    report.bytes = bytes.load(Ordering::Relaxed);
    Ok(())
}

/// Copies every `(source, destination)` pair from `src` to `dst`, `images` copies at once.
///
/// The copies share the registries' clients (connections, tokens) and their blob limits, so
/// a batch costs one process and one connection pool instead of one per image. One result
/// per pair, in order; a failed copy does not stop the others.
pub async fn copy_many(
    src: &Registry,
    dst: &Registry,
    pairs: &[(Reference, Reference)],
    platforms: &Platforms,
    images: usize,
) -> Vec<Result<CopyReport>> {
    // Unordered, so one slow copy does not hold back the window; results go back in order.
    let mut results: Vec<Option<Result<CopyReport>>> = (0..pairs.len()).map(|_| None).collect();
    let mut done = stream::iter(pairs.iter().enumerate())
        .map(|(i, (s, d))| async move { (i, copy(src, s, dst, d, platforms).await) })
        .buffer_unordered(images.max(1));
    while let Some((i, r)) = done.next().await {
        results[i] = Some(r);
    }
    results.into_iter().map(|r| r.expect("every copy ran")).collect()
}

/// Copies the artifacts that refer to `digest` in `src_ref`'s repository (signatures,
/// SBOMs, attestations: OCI 1.1 manifests whose `subject` is it) to `dst_ref`'s repository,
/// as `oras cp -r` does, and the artifacts that refer to those (a signature of an SBOM), level
/// by level; returns how many, all levels. They are found through the registry's referrers
/// API, else through the fallback tag `sha256-<hex>` (an index of them, the OCI 1.1 scheme
/// for registries without the API). A destination without the API gets that fallback tag too,
/// so clients find them there as well. Each manifest is followed once (a fallback tag may list
/// anything, even a cycle), and at most 8 levels deep.
pub async fn copy_referrers(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    digest: &str,
) -> Result<usize> {
    const MAX_DEPTH: usize = 8;
    let mut seen = std::collections::HashSet::from([digest.to_string()]);
    let mut level = vec![digest.to_string()];
    for depth in 1..=MAX_DEPTH {
        let mut next = vec![];
        for subject in &level {
            for d in copy_referrers_of(src, src_ref, dst, dst_ref, subject, &seen).await? {
                if seen.insert(d.clone()) {
                    next.push(d);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        if depth == MAX_DEPTH {
            tracing::warn!(src = %src_ref.whole(), %digest, depth, not_followed = ?next, "referrers this deep: theirs are not looked for");
        }
        level = next;
    }
    Ok(seen.len() - 1)
}

/// One level of [`copy_referrers`]: copies the referrers of `subject` (those in `seen` are
/// copied already, except through a fallback index, which goes whole) and, when the
/// destination has no referrers API, writes its fallback tag; returns their digests.
async fn copy_referrers_of(
    src: &Registry,
    src_ref: &Reference,
    dst: &Registry,
    dst_ref: &Reference,
    subject: &str,
    seen: &std::collections::HashSet<String>,
) -> Result<Vec<String>> {
    let tag = subject.replacen(':', "-", 1);
    let at = |reg: &Reference, t: &str| {
        Reference::with_tag(reg.registry().into(), reg.repository().into(), t.into())
    };
    let (src_tag, dst_tag) = (at(src_ref, &tag), at(dst_ref, &tag));
    let Some(mut referrers) = referrers_api(src, src_ref, subject).await? else {
        return copy_fallback_tag(src, &src_tag, dst, &dst_tag, subject).await;
    };
    // The API lists them in no particular order: sorted, the fallback tag written below is
    // the same bytes on every copy.
    referrers.sort_by(|a, b| a.digest.cmp(&b.digest));
    referrers.dedup_by(|a, b| a.digest == b.digest);
    for d in referrers.iter().filter(|d| !seen.contains(&d.digest)) {
        let (from, to) = (by_digest(src_ref, &d.digest), by_digest(dst_ref, &d.digest));
        copy(src, &from, dst, &to, &Platforms::All).await?;
    }
    if !referrers.is_empty() && referrers_api(dst, dst_ref, subject).await?.is_none() {
        let mut entries = vec![];
        for d in &referrers {
            entries.push(referrer_entry(src, src_ref, d).await?);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": entries,
        });
        let bytes = Bytes::from(serde_json::to_vec(&index).expect("json"));
        push_manifest(dst, &dst_tag, bytes, media::OCI_INDEX).await?;
    }
    Ok(referrers.into_iter().map(|d| d.digest).collect())
}

/// `r`'s repository at `digest`.
fn by_digest(r: &Reference, digest: &str) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), digest.into())
}

/// The referrers of `subject` from a source without the referrers API: its fallback tag
/// `src_tag`, an index that carries them, copied whole (children first) to `dst_tag`;
/// their digests (none when the tag is absent).
async fn copy_fallback_tag(
    src: &Registry,
    src_tag: &Reference,
    dst: &Registry,
    dst_tag: &Reference,
    subject: &str,
) -> Result<Vec<String>> {
    match src.pull_manifest_raw(src_tag).await {
        Ok((bytes, _)) => {
            let listed = match media::parse(&bytes, &src_tag.whole())? {
                Manifest::Index { manifests, .. } => manifests,
                Manifest::Image { .. } => vec![],
            };
            if !listed.is_empty() {
                copy(src, src_tag, dst, dst_tag, &Platforms::All).await?;
            }
            Ok(listed.into_iter().map(|d| d.digest).collect())
        }
        Err(a) if crate::retry::status(&a.error) == Some(404) => Ok(vec![]),
        Err(a) => Err(Error::Registry {
            what: format!("reading the referrers of {subject} ({})", src_tag.whole()),
            error: a.error,
        }),
    }
}

/// The entry of a fallback index for referrer `d`, described from the manifest itself, as
/// OCI 1.1 says a referrers list does: registries' own lists are not always right
/// (go-containerregistry's gives the config's media type as every artifact's
/// `artifactType`).
async fn referrer_entry(src: &Registry, src_ref: &Reference, d: &Descriptor) -> Result<serde_json::Value> {
    let from = by_digest(src_ref, &d.digest);
    let bytes = src.pull_manifest_raw(&from).await.map_err(|a| Error::Registry {
        what: format!("reading the referrer {}", from.whole()),
        error: a.error,
    })?;
    let m: serde_json::Value = serde_json::from_slice(&bytes.0).unwrap_or_default();
    let media_type = m["mediaType"].as_str().unwrap_or(&d.media_type);
    let mut e = serde_json::json!({"mediaType": media_type, "digest": d.digest, "size": bytes.0.len()});
    let artifact_type = m["artifactType"]
        .as_str()
        .or_else(|| m["config"]["mediaType"].as_str());
    if let Some(t) = artifact_type {
        e["artifactType"] = serde_json::json!(t);
    }
    if m["annotations"].as_object().is_some_and(|a| !a.is_empty()) {
        e["annotations"] = m["annotations"].clone();
    }
    Ok(e)
}

/// The referrers of `digest` through the registry's referrers API, every page; `None` when
/// the registry has no such API (404).
async fn referrers_api(reg: &Registry, r: &Reference, digest: &str) -> Result<Option<Vec<Descriptor>>> {
    let what = || {
        format!(
            "listing the referrers of {digest} in {}/{}",
            reg.host,
            r.repository()
        )
    };
    let auth = reg
        .pull_authorization(r)
        .await
        .map_err(|error| Error::Registry { what: what(), error })?;
    let mut url = reg.url(&format!("/v2/{}/referrers/{digest}", r.repository()));
    let mut out = vec![];
    // A registry that keeps sending the same page would loop forever.
    for _ in 0..1_000 {
        let next = match reg.get_page(&url, auth.as_ref()).await {
            Ok((body, next)) => {
                if let Manifest::Index { manifests, .. } = media::parse(&body, &what())? {
                    out.extend(manifests);
                }
                next
            }
            Err(e) if out.is_empty() && crate::retry::status(&e) == Some(404) => return Ok(None),
            Err(error) => return Err(Error::Registry { what: what(), error }),
        };
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    Ok(Some(out))
}

/// What goes to the destination tag, decided from the source's top manifest alone.
struct Plan {
    /// Digest of the manifest the tag will name.
    digest: String,
    /// Its bytes, unless it is one image of the index (pulled with the children).
    bytes: Option<Bytes>,
    media_type: String,
    /// Index entries to copy (`None`: the top manifest is an image).
    children: Option<Vec<Descriptor>>,
}

fn plan(top: &Bytes, top_digest: &str, platforms: &Platforms, name: &str) -> Result<Plan> {
    let (media_type, manifests) = match media::parse(top, name)? {
        m @ Manifest::Image { .. } => {
            return Ok(Plan {
                digest: top_digest.into(),
                bytes: Some(top.clone()),
                media_type: media_type(&m),
                children: None,
            });
        }
        Manifest::Index {
            media_type,
            manifests,
        } => (media_type, manifests),
    };
    // `--all`: the index as it is, with every image.
    if *platforms == Platforms::All {
        return Ok(Plan {
            digest: top_digest.into(),
            bytes: Some(top.clone()),
            media_type,
            children: Some(manifests),
        });
    }
    let selected = select(&manifests, platforms, name)?;
    // One platform: that image alone, as skopeo copies it (also from a one-entry index).
    if let [one] = selected.as_slice() {
        return Ok(Plan {
            digest: one.digest.clone(),
            bytes: None,
            media_type: one.media_type.clone(),
            children: Some(selected),
        });
    }
    // Several platforms: the source index with only their entries, each entry verbatim
    // (platform, os.version, os.features, annotations) and in the source's order.
    let bytes = if selected.len() == manifests.len() {
        top.clone()
    } else {
        let mut index: serde_json::Value = serde_json::from_slice(top).map_err(|e| Error::Unsupported {
            reference: name.into(),
            message: format!("index is not valid JSON: {e}"),
        })?;
        let keep = |e: &serde_json::Value| selected.iter().any(|d| e["digest"] == d.digest.as_str());
        if let Some(entries) = index["manifests"].as_array_mut() {
            entries.retain(keep);
        }
        Bytes::from(serde_json::to_vec(&index).expect("json"))
    };
    let mut children = selected;
    children.sort_by_key(|d| manifests.iter().position(|m| m == d));
    Ok(Plan {
        digest: media::sha256(&bytes),
        bytes: Some(bytes),
        media_type,
        children: Some(children),
    })
}

fn media_type(m: &Manifest) -> String {
    match m {
        Manifest::Index { media_type, .. } | Manifest::Image { media_type, .. } => media_type.clone(),
    }
}

/// The index entries `platforms` selects (never `All`): per wanted platform the first
/// entry whose platform matches; attestation manifests (platform `unknown/unknown`) are
/// never chosen; an index whose only image has no platform gives that image.
fn select(manifests: &[Descriptor], platforms: &Platforms, name: &str) -> Result<Vec<Descriptor>> {
    let wanted = match platforms {
        Platforms::All => return Ok(manifests.to_vec()),
        Platforms::Host => vec![Platform::host()],
        Platforms::Only(p) => p.clone(),
    };
    let images: Vec<&Descriptor> = manifests.iter().filter(|d| !d.is_attestation()).collect();
    let mut out: Vec<Descriptor> = vec![];
    for w in &wanted {
        let found = images
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| w.selects(p)))
            .or_else(|| match images.as_slice() {
                [only] if only.platform.is_none() => Some(only),
                _ => None,
            });
        match found {
            Some(d) if !out.contains(d) => out.push((*d).clone()),
            Some(_) => {}
            None => {
                let available: Vec<String> = images
                    .iter()
                    .map(|d| {
                        d.platform
                            .as_ref()
                            .map_or("(no platform)".into(), ToString::to_string)
                    })
                    .collect();
                return Err(Error::NoPlatform {
                    reference: name.into(),
                    platform: w.to_string(),
                    available: available.join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// The digest of what `r` names on `dst` now, if anything. Any failure counts as nothing:
/// the copy then goes ahead, and reports real errors from its own requests.
pub(crate) async fn existing_digest(dst: &Registry, r: &Reference) -> Option<String> {
    let (bytes, _) = dst.pull_manifest_raw(r).await.ok()?;
    Some(media::sha256(&bytes))
}

/// One image of an index: `(digest, bytes, parsed)`; nested indexes are refused.
async fn pull_image(
    src: &Registry,
    src_ref: &Reference,
    d: &Descriptor,
) -> Result<(String, Bytes, Manifest)> {
    let r = Reference::with_digest(
        src_ref.registry().into(),
        src_ref.repository().into(),
        d.digest.clone(),
    );
    let (bytes, digest) = pull_manifest(src, &r).await?;
    match media::parse(&bytes, &r.whole())? {
        Manifest::Index { .. } => Err(Error::Unsupported {
            reference: r.whole(),
            message: "nested indexes are not supported".into(),
        }),
        m => Ok((digest, bytes, m)),
    }
}

/// A manifest's bytes and their digest, checked against the reference's digest if it has
/// one, and against the registry's `Docker-Content-Digest` (when it sends a sha256 one).
pub(crate) async fn pull_manifest(src: &Registry, r: &Reference) -> Result<(Bytes, String)> {
    let what = format!("manifest {}", r.whole());
    let (bytes, digest) = with_retries(&what, || src.pull_manifest_raw(r)).await?;
    let actual = media::sha256(&bytes);
    if let Some(want) = r.digest()
        && want != actual
    {
        return Err(Error::Digest {
            what,
            expected: want.into(),
            actual,
        });
    }
    if digest != actual && digest.starts_with("sha256:") {
        return Err(Error::Digest {
            what,
            expected: digest,
            actual,
        });
    }
    Ok((bytes, actual))
}

pub(crate) async fn push_manifest(
    dst: &Registry,
    r: &Reference,
    bytes: Bytes,
    media_type: &str,
) -> Result<()> {
    let what = format!("pushing manifest {}", r.whole());
    let ct = HeaderValue::from_str(media_type).map_err(|_| Error::Unsupported {
        reference: r.whole(),
        message: format!("bad media type {media_type:?}"),
    })?;
    with_retries(&what, || dst.push_manifest_raw(r, bytes.clone(), &ct)).await?;
    Ok(())
}
