//! What `ido run` prints when it ends: a row per object with its state and message.

use std::collections::BTreeMap;

use ido_api::{
    DiskImport, DiskImportPhase, ImageSync, NodeImage, NodeImageState, Release, condition,
    image_operator::Image, nodeimage::conditions,
};

use crate::{
    Context, diskimport,
    file_store::{FileStore, Key, RecordedEvent},
    imagesync, release,
    store::{EventType, Store},
};

/// The outcome of a run: one row per object, and whether all settled.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

/// One object's line in the status table.
#[derive(Clone, Debug)]
pub struct Row {
    pub kind: &'static str,
    pub name: String,
    pub provider: String,
    pub state: String,
    pub releases: String,
    pub ok: bool,
    pub message: String,
    /// Per-location lines (NodeImages).
    pub locations: Vec<String>,
}

impl Report {
    /// True if every object settled well.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    /// The status table.
    pub fn table(&self) -> String {
        let name_w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
        let rel_w = self
            .rows
            .iter()
            .map(|r| r.releases.len())
            .max()
            .unwrap_or(0)
            .max(8);
        let state_w = self.rows.iter().map(|r| r.state.len()).max().unwrap_or(0).max(16);
        let mut out = format!(
            "{:<10} {:<name_w$} {:<9} {:<state_w$} {:<rel_w$} MESSAGE\n",
            "KIND", "NAME", "PROVIDER", "STATE", "RELEASES"
        );
        for r in &self.rows {
            out += &format!(
                "{:<10} {:<name_w$} {:<9} {:<state_w$} {:<rel_w$} {}\n",
                r.kind, r.name, r.provider, r.state, r.releases, r.message
            );
            for l in &r.locations {
                out += &format!("           {l}\n");
            }
        }
        out
    }
}

/// Builds the status table from the store.
pub async fn report(ctx: &Context<FileStore>, errors: &BTreeMap<Key, String>) -> anyhow::Result<Report> {
    let mut rows = vec![];
    let events = ctx.store.events();
    let images = ctx.store.list::<NodeImage>().await?;
    for r in ctx.store.list::<Release>().await? {
        rows.push(release_row(ctx, &r, &events, &images, errors));
    }
    for n in &images {
        rows.push(node_image_row(n, errors.get(&FileStore::key_of(n))));
    }
    for n in ctx.store.list::<ImageSync>().await? {
        rows.push(sync_row(&n, errors.get(&FileStore::key_of(&n))));
    }
    for n in ctx.store.list::<Image>().await? {
        rows.push(sync_row(&n, errors.get(&FileStore::key_of(&n))));
    }
    for n in ctx.store.list::<DiskImport>().await? {
        rows.push(disk_import_row(&n, errors.get(&FileStore::key_of(&n))));
    }
    Ok(Report { rows })
}

/// A Release's line: whether its NodeImage is Available, with its last warning.
fn release_row(
    ctx: &Context<FileStore>,
    r: &Release,
    events: &[RecordedEvent],
    images: &[NodeImage],
    errors: &BTreeMap<Key, String>,
) -> Row {
    let key = FileStore::key_of(r);
    let name = r.metadata.name.clone().unwrap_or_default();
    let enabled = ctx.providers.for_release(&name).map(|p| p.id());
    let last_event = events.iter().rev().find(|e| e.object == key.to_string());
    let (state, ok, message) = release_state(ctx, r, &name, enabled, images, errors.get(&key));
    let message = match last_event {
        Some(e) if e.event.type_ == EventType::Warning && ok => {
            format!("{message} (warning: {})", e.event.message)
        }
        _ => message,
    };
    let provider = match enabled {
        Some(id) => id.to_string(),
        None => ido_api::release::prefix_of(&name).unwrap_or_default().to_string(),
    };
    Row {
        kind: "Release",
        name,
        provider,
        state,
        releases: String::new(),
        ok,
        message,
        locations: vec![],
    }
}

/// A Release's state, whether that is ok, and why.
fn release_state(
    ctx: &Context<FileStore>,
    r: &Release,
    name: &str,
    enabled: Option<&str>,
    images: &[NodeImage],
    error: Option<&String>,
) -> (String, bool, String) {
    if r.metadata.deletion_timestamp.is_some() {
        ("Deleting".to_string(), false, "deletion pending".to_string())
    } else if enabled.is_none() {
        let prefix = ido_api::release::prefix_of(name).unwrap_or(name);
        (
            "Skipped".into(),
            true,
            format!("no enabled provider makes {prefix:?} releases"),
        )
    } else if let Some(e) = error {
        ("Error".into(), false, e.clone())
    } else {
        match release::image_name(r, &ctx.settings.channel) {
            Err(e) => ("Invalid".into(), false, e.to_string()),
            Ok(img) => {
                let ni_name = NodeImage::object_name(enabled.unwrap_or_default(), &img);
                match images
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(ni_name.as_str()))
                {
                    Some(n)
                        if n.status
                            .as_ref()
                            .is_some_and(|s| s.state == NodeImageState::Available) =>
                    {
                        ("Ready".into(), true, format!("image {ni_name}"))
                    }
                    Some(_) => (
                        "NotReady".into(),
                        false,
                        format!("image {ni_name} is not available"),
                    ),
                    None => (
                        "NotReady".into(),
                        false,
                        format!("image {ni_name} does not exist"),
                    ),
                }
            }
        }
    }
}

/// A NodeImage's line (its Ready condition) and one line per location.
fn node_image_row(n: &NodeImage, error: Option<&String>) -> Row {
    let st = n.status.clone().unwrap_or_default();
    let ready = condition::find(&st.conditions, conditions::READY);
    let ok = match st.state {
        NodeImageState::Available => n.metadata.deletion_timestamp.is_none(),
        NodeImageState::AwaitingDeletion => true,
        _ => false,
    };
    let mut message = ready
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default();
    if let Some(e) = error
        && !ok
    {
        message = format!("{message} (last error: {e})");
    }
    let locations = st
        .locations
        .iter()
        .map(|l| {
            format!(
                "location {:<16} {:<10} {} bytes={} {}",
                l.location,
                format!("{:?}", l.state),
                l.template.as_deref().unwrap_or("-"),
                l.bytes_transferred,
                l.message
            )
        })
        .collect();
    Row {
        kind: "NodeImage",
        name: format!(
            "{}/{}",
            n.metadata.namespace.as_deref().unwrap_or_default(),
            n.metadata.name.as_deref().unwrap_or_default()
        ),
        provider: n.spec.provider.clone(),
        state: st.state.to_string(),
        releases: st.releases.join(","),
        ok,
        message,
        locations,
    }
}

/// An ImageSync's (or Image's) line (its Ready condition) and one line per tag.
pub fn sync_row<K: imagesync::SyncKind>(n: &K, error: Option<&String>) -> Row {
    use ido_api::imagesync::conditions as c;
    let st = n.sync_status().cloned().unwrap_or_default();
    let ready = condition::find(&st.conditions, c::READY);
    let ok = ready.is_some_and(|r| r.status == ido_api::ConditionStatus::True);
    let mut message = ready
        .map(|r| format!("{}: {}", r.reason, r.message))
        .unwrap_or_else(|| "not synced yet".into());
    if !st.tag_summary.is_empty() {
        message = format!("tags {} in sync; {message}", st.tag_summary);
    }
    if let Some(e) = error
        && !ok
    {
        message = format!("{message} (last error: {e})");
    }
    let tags = st
        .tags
        .iter()
        .map(|t| {
            let tag = match &t.destination_tag {
                Some(d) => format!("{} -> {d}", t.tag),
                None => t.tag.clone(),
            };
            format!(
                "tag {tag:<20} {:<9} {} bytes={} {}",
                t.result.as_str(),
                t.destination_digest.as_deref().unwrap_or("-"),
                t.bytes,
                t.message
            )
        })
        .collect();
    Row {
        kind: if K::kind(&()) == "Image" {
            "Image"
        } else {
            "ImageSync"
        },
        name: format!(
            "{}/{}",
            n.meta().namespace.as_deref().unwrap_or_default(),
            n.meta().name.as_deref().unwrap_or_default()
        ),
        provider: "oci".into(),
        state: ready
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| "Pending".into()),
        releases: String::new(),
        ok,
        message,
        locations: tags,
    }
}

/// A DiskImport's line: its phase and Ready condition. Only Succeeded is ok.
pub fn disk_import_row(n: &DiskImport, error: Option<&String>) -> Row {
    use ido_api::diskimport::conditions as c;
    let st = n.status.clone().unwrap_or_default();
    let ok = st.phase == DiskImportPhase::Succeeded;
    let ready = condition::find(&st.conditions, c::READY);
    let mut message = match ready {
        Some(r) if !r.message.is_empty() => format!("{}: {}", r.reason, r.message),
        Some(r) => r.reason.clone(),
        None => "not reconciled yet".into(),
    };
    if let Some(size) = &st.size {
        message = format!("size {size}; {message}");
    }
    if matches!(
        st.phase,
        DiskImportPhase::ImportScheduled | DiskImportPhase::ImportInProgress
    ) {
        message = format!("{message}; importer Job {}", diskimport::job_name(n));
    }
    if let Some(e) = error
        && !ok
    {
        message = format!("{message} (last error: {e})");
    }
    Row {
        kind: "DiskImport",
        name: format!(
            "{}/{}",
            n.metadata.namespace.as_deref().unwrap_or_default(),
            n.metadata.name.as_deref().unwrap_or_default()
        ),
        provider: "disk".into(),
        state: if st.phase == DiskImportPhase::New {
            "Pending".into()
        } else {
            st.phase.to_string()
        },
        releases: String::new(),
        ok,
        message,
        locations: vec![],
    }
}
