//! Uploading an OVA as a vApp template, streamed from the source to the catalog.
//!
//! ```text
//! S3 GET ──► OvaReader ──► descriptor (hardwareVersion patched in memory)
//!                │
//!                │   POST <catalog>/action/upload ──► vAppTemplate (status 0, upload task)
//!                │   PUT descriptor.ovf ──► poll the template until its Files list the disks
//!                └─► each disk member ──► PUT piece by piece (Content-Range) to its link
//!                                            (counted; one piece in memory at a time)
//!                    wait for the upload task ──► template status 8
//! ```
//!
//! Right after the POST, the catalog item gets ido's mark (metadata `ido.managed-by = ido`),
//! so even a half-made upload is recognisably ido's; the finished template gets it too.
//! Nothing touches the local disk. Any failure after the POST cancels the upload and
//! deletes the template (also when the future is dropped), so nothing half-made stays in
//! the catalog.

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use ido_io::{
    ova::{OvaMember, OvaReader},
    s3::S3Object,
};
use tokio::io::AsyncReadExt;

use super::{
    api::{self, Catalog, File, Template, UPLOAD_PARAMS_TYPE},
    client::Client,
    error::VcdError,
    ovf,
};
use ido_io::ovf::OvfFile;
use ido_io::xml::escape;

use crate::{MANAGED_BY_KEY, MANAGED_BY_VALUE, Progress, ProviderError, Result};

/// Operation name of the upload task.
const UPLOAD_TASK: &str = "vdcUploadOvfContents";
/// Longest wait for VCD to list the disk files after the descriptor went in.
const FILES_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Pauses while polling the template.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(3);

/// What to upload where.
#[derive(Clone, Copy, Debug)]
pub struct Upload<'a> {
    /// The target catalog.
    pub catalog: &'a Catalog,
    /// Template name.
    pub name: &'a str,
    /// `vmx-<n>` written into the OVF; 0 keeps the OVF's.
    pub hardware_version: u32,
    /// Bytes per transfer PUT.
    pub piece_size: usize,
}

/// Uploads the OVA `source` as `up.name` into `up.catalog`; returns the finished template.
pub async fn upload_ova(
    client: &Client,
    up: Upload<'_>,
    source: &S3Object,
    progress: &Progress,
) -> Result<Template> {
    let invalid = |m: String| ProviderError::InvalidImage(format!("{}: {m}", source.key()));
    let stream = source.get().await?;
    let mut ova = OvaReader::from_stream(stream).await?;
    let descriptor = ova.descriptor.trim_start_matches('\u{feff}').to_string();
    let files = ovf::references(&descriptor).map_err(|e| invalid(e.to_string()))?;
    let descriptor = match up.hardware_version {
        0 => descriptor,
        hw => {
            let (patched, n) =
                ido_io::ovf::set_hardware_version(&descriptor, hw).map_err(|e| invalid(e.to_string()))?;
            if n == 0 {
                tracing::warn!(
                    template = up.name,
                    "OVF has no VirtualSystemType: hardwareVersion not applied"
                );
            }
            patched
        }
    };

    let (href, item) = create_item(client, up.catalog, up.name).await?;
    let mut pending = Pending {
        client: client.clone(),
        href: href.clone(),
        armed: true,
    };
    let result = async {
        api::set_metadata(client, &item, MANAGED_BY_KEY, MANAGED_BY_VALUE).await?;
        transfer(client, &href, up, &descriptor, &files, &mut ova, progress).await
    }
    .await;
    pending.armed = false;
    if let Err(e) = &result {
        tracing::warn!(template = up.name, catalog = %up.catalog.name, error = %e, "upload failed; removing the template");
        if let Err(ce) = api::remove_template(client, &href).await {
            tracing::warn!(template = up.name, error = %ce, "could not remove the failed upload");
        }
        return result;
    }
    // The catalog item's mark is what counts; the template's is for people looking at it.
    if let Err(e) = api::set_metadata(client, &href, MANAGED_BY_KEY, MANAGED_BY_VALUE).await {
        tracing::warn!(template = up.name, error = %e, "could not mark the template itself (its catalog item is marked)");
    }
    result
}

/// `POST <catalog>/action/upload`; returns the hrefs of the new (empty) template and of its
/// catalog item.
async fn create_item(client: &Client, catalog: &Catalog, name: &str) -> Result<(String, String)> {
    let body = format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<UploadVAppTemplateParams xmlns="http://www.vmware.com/vcloud/v1.5" name="{}">"#,
            "<Description>{}</Description></UploadVAppTemplateParams>"
        ),
        escape(name),
        escape(&super::description(name)),
    );
    let what = format!("create {name:?} in catalog {:?}", catalog.name);
    let item = client
        .post(&what, &catalog.upload_href, UPLOAD_PARAMS_TYPE, &body)
        .await?;
    let entity = item
        .child("Entity")
        .and_then(|e| e.attr("href"))
        .ok_or_else(|| VcdError::protocol(&what, "the CatalogItem has no Entity href"))?;
    let item_href = item
        .attr("href")
        .ok_or_else(|| VcdError::protocol(&what, "the CatalogItem has no href"))?;
    tracing::debug!(
        template = name,
        href = entity,
        item = item_href,
        "catalog item created"
    );
    Ok((entity.to_string(), item_href.to_string()))
}

/// The upload after the POST: the descriptor, then the disks it references, then VCD's
/// import of them; the resolved template.
async fn transfer(
    client: &Client,
    href: &str,
    up: Upload<'_>,
    descriptor: &str,
    files: &[OvfFile],
    ova: &mut OvaReader,
    progress: &Progress,
) -> Result<Template> {
    // 1. The descriptor (and the upload task).
    let task = put_descriptor(client, href, up.name, descriptor).await?;

    // 2. VCD reads the descriptor and lists one File per References/File.
    let t = poll(client, href, "the disk upload links", |t| {
        files.iter().all(|want| {
            t.files
                .iter()
                .any(|f| f.name == want.href && f.upload_href.is_some())
        })
    })
    .await?;
    let mut todo: HashMap<&str, &File> = HashMap::new();
    for want in files {
        let f = t.files.iter().find(|f| f.name == want.href).expect("polled for");
        if let Some(size) = want.size
            && f.size >= 0
            && f.size as u64 != size
        {
            return Err(VcdError::protocol(
                href,
                format!("VCD expects {} bytes of {}, the OVF says {size}", f.size, f.name),
            )
            .into());
        }
        todo.insert(want.href.as_str(), f);
    }

    // 3. The disks, in archive order, straight from the stream.
    upload_disks(client, todo, ova, up.piece_size, progress).await?;

    // 4. VCD imports the disks; the task (or else the template status) says when done.
    if let Some(task) = task {
        api::wait_task(client, &task).await?;
    }
    let t = poll(client, href, "the template to be resolved", |t| t.status >= 1).await?;
    Ok(t)
}

/// PUTs the descriptor to its upload link, once the template has one; returns the href of
/// the upload task, if the template lists it.
async fn put_descriptor(client: &Client, href: &str, name: &str, descriptor: &str) -> Result<Option<String>> {
    let t = poll(client, href, "the descriptor upload link", |t| {
        t.files.iter().any(|f| f.upload_href.is_some())
    })
    .await?;
    let task = t.task(UPLOAD_TASK).map(|t| t.href.clone());
    let link = t
        .files
        .iter()
        .find(|f| f.name == "descriptor.ovf")
        .or_else(|| t.files.first())
        .and_then(|f| f.upload_href.clone())
        .ok_or_else(|| VcdError::protocol(href, "no descriptor upload link"))?;
    client
        .put(
            &format!("PUT descriptor of {name:?}"),
            &link,
            "text/xml",
            Bytes::copy_from_slice(descriptor.as_bytes()),
            None,
        )
        .await?;
    Ok(task)
}

/// Uploads the OVA's members that `todo` expects (by path) to their links, in archive order;
/// stops reading once every one went out. A member missing or of another size than VCD
/// expects makes the image invalid.
async fn upload_disks(
    client: &Client,
    mut todo: HashMap<&str, &File>,
    ova: &mut OvaReader,
    piece_size: usize,
    progress: &Progress,
) -> Result<()> {
    while !todo.is_empty()
        && let Some(mut member) = ova.next_member().await?
    {
        let Some(file) = todo.remove(member.path.as_str()) else {
            tracing::debug!(member = %member.path, "skipping OVA member the OVF does not reference");
            continue;
        };
        if file.size >= 0 && file.size as u64 != member.size {
            return Err(ProviderError::InvalidImage(format!(
                "OVA member {} is {} bytes, the OVF says {}",
                member.path, member.size, file.size
            )));
        }
        let link = file.upload_href.as_deref().expect("polled for");
        upload_member(client, link, &mut member, piece_size, progress).await?;
    }
    if let Some(path) = todo.keys().next() {
        return Err(ProviderError::InvalidImage(format!(
            "OVA has no member {path:?}, which its OVF references"
        )));
    }
    Ok(())
}

/// Polls the template until `ready` holds; fails when the template or its task failed.
async fn poll(
    client: &Client,
    href: &str,
    what: &str,
    ready: impl Fn(&Template) -> bool,
) -> Result<Template> {
    let start = Instant::now();
    let mut pause = POLL_MIN;
    loop {
        let t = api::get_template(client, href).await?.ok_or_else(|| {
            ProviderError::api(VcdError::Vanished {
                href: href.to_string(),
            })
        })?;
        if let Some(why) = t.failure() {
            return Err(ProviderError::api(VcdError::UploadFailed {
                name: t.name.clone(),
                what: what.to_string(),
                why: why.to_string(),
            }));
        }
        if ready(&t) {
            return Ok(t);
        }
        if start.elapsed() > FILES_TIMEOUT {
            return Err(VcdError::Timeout {
                what: format!("waiting for {what} of {href}"),
                secs: FILES_TIMEOUT.as_secs(),
            }
            .into());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// PUTs one OVA member to `link` in pieces of `piece` bytes, each with its Content-Range.
/// One piece is in memory at a time, so a piece refused with 401 is sent again after the
/// re-login.
async fn upload_member(
    client: &Client,
    link: &str,
    member: &mut OvaMember,
    piece: usize,
    progress: &Progress,
) -> Result<()> {
    let total = member.size;
    let what = format!("PUT {}", member.path);
    tracing::debug!(member = %member.path, size = total, "uploading");
    if total == 0 {
        client
            .put(&what, link, "application/octet-stream", Bytes::new(), None)
            .await?;
        return Ok(());
    }
    let mut sent = 0u64;
    while sent < total {
        let want = (total - sent).min(piece as u64) as usize;
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let left = (want - buf.len()) as u64;
            let n = (&mut member.reader)
                .take(left)
                .read_buf(&mut buf)
                .await
                .map_err(|e| read_error(&member.path, e))?;
            if n == 0 {
                return Err(ProviderError::InvalidImage(format!(
                    "OVA ends inside {}: {} of {total} bytes",
                    member.path,
                    sent + buf.len() as u64
                )));
            }
        }
        let body = buf.freeze();
        let len = body.len() as u64;
        client.keep_alive().await;
        client
            .put(&what, link, "application/octet-stream", body, Some((sent, total)))
            .await?;
        sent += len;
        progress.add(len);
    }
    Ok(())
}

fn read_error(member: &str, e: io::Error) -> ProviderError {
    // The source's network errors come wrapped; anything else is the archive itself.
    let network = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<reqwest::Error>().is_some());
    if network {
        ProviderError::Transport(format!("reading {member} from the source: {e}"))
    } else {
        ProviderError::InvalidImage(format!("reading {member} from the OVA: {e}"))
    }
}

/// A template whose upload has not finished: removed in the background if the upload
/// future is dropped.
struct Pending {
    client: Client,
    href: String,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, href) = (self.client.clone(), self.href.clone());
        tracing::warn!(%href, "upload abandoned; removing the template");
        ido_io::cleanup::spawn(async move {
            if let Err(e) = api::remove_template(&client, &href).await {
                tracing::warn!(%href, error = %e, "could not remove an abandoned upload");
            }
        });
    }
}
