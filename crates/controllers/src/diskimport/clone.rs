//! Clones (`source.pvc`): the source claim, ready to be read, and for a claim of another
//! namespace the authorization and the sending half.
//!
//! ```text
//!  same namespace:   Job importer-<name>: ido import /source/disk.img /data/disk.img --verbatim
//!
//!  other namespace:  webhook (SubjectAccessReview: create diskimports/source there)
//!                      └─ annotation ido.dev/clone-token (HMAC of the operator's key)
//!                    ns of the DiskImport: Job importer-<name>: ido upload-server --verbatim
//!                    source ns: Secret + Job clone-source-<ns>-<name>:
//!                      ido clone-send /source/disk.img --url http://<upload pod IP>:8443/…
//!                    finalizer ido.dev/clone-source: the source namespace's two objects
//!                      are removed when the clone ends or the DiskImport goes
//!
//!  a snapshot:       claim restore-<ns>-<name> in its namespace, dataSource the
//!                      VolumeSnapshot (the CSI driver fills it), then cloned as above,
//!                      then removed (the finalizer again)
//! ```

use std::time::Duration;

use ido_api::{
    DiskImport, DiskImportPhase, DiskImportSource, PvcSource, SnapshotSource,
    diskimport::{quantity, reasons},
    snapshot::VolumeSnapshot,
};
use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, Pod, Secret},
};

use super::{
    Observed, Outcome, job, key, store_failed,
    upload::{CLONE_TOKEN, Claims},
};
use crate::{
    Action, Context, Error,
    store::{Store, finalizer_patch, has_finalizer, patch_metadata_retry},
};

/// Keeps a DiskImport until the sender's Job and Secret in the source namespace are gone.
pub const FINALIZER: &str = "ido.dev/clone-source";
/// How long the sender's token is good for (a sender pod replaced later gets a new Job).
const SENDER_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The source claim of a clone, ready to be read.
pub(super) struct Source {
    /// It is a Block claim.
    pub block: bool,
    /// The disk's size: what the DiskImport that filled it found, else the claim's.
    pub size: Option<u64>,
}

/// The namespace and name of what a clone reads: its claim, or its snapshot.
pub(super) fn source_ref(di: &DiskImport) -> Option<(&str, &str)> {
    let own = di.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(p) = &di.spec.source.pvc {
        return Some((p.namespace.as_deref().unwrap_or(own), &p.name));
    }
    let s = di.spec.source.snapshot.as_ref()?;
    Some((s.namespace.as_deref().unwrap_or(own), &s.name))
}

/// Whether `di` reads a claim or snapshot of another namespace.
pub(super) fn other_namespace(di: &DiskImport) -> bool {
    source_ref(di).is_some_and(|(ns, _)| Some(ns) != di.metadata.namespace.as_deref())
}

/// The namespace of the claim `pvc` names (default: the DiskImport's).
pub(super) fn source_namespace<'a>(di: &'a DiskImport, pvc: &'a PvcSource) -> &'a str {
    pvc.namespace
        .as_deref()
        .or(di.metadata.namespace.as_deref())
        .unwrap_or_default()
}

/// The source claim of `pvc`, ready to be read. Pending while it is missing, or while the
/// DiskImport that fills it has not succeeded. `size`: the DiskImport's, if known (for the
/// messages' outcome).
pub(super) async fn source<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    pvc: &PvcSource,
    size: Option<u64>,
) -> Result<Source, Observed> {
    let ns = source_namespace(di, pvc);
    let name = &pvc.name;
    let wait = |message: String| {
        let mut o = Outcome::pending(reasons::PENDING, message);
        o.size = size;
        (o, Action::Requeue(Duration::from_secs(5)))
    };
    let failed = |what: &str, e| store_failed(size.unwrap_or_default(), what, e);
    let claim = ctx
        .store
        .get::<PersistentVolumeClaim>(Some(ns), name)
        .await
        .map_err(|e| failed("reading the source claim", e))?
        .ok_or_else(|| wait(format!("the source claim {ns}/{name} does not exist yet")))?;
    let filler = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "DiskImport" && r.controller == Some(true))
        .map(|r| r.name.clone());
    let mut filled_size = None;
    if let Some(filler) = filler {
        let st = ctx
            .store
            .get::<DiskImport>(Some(ns), &filler)
            .await
            .map_err(|e| failed("reading the source claim's DiskImport", e))?
            .and_then(|d| d.status)
            .filter(|st| st.phase == DiskImportPhase::Succeeded)
            .ok_or_else(|| {
                wait(format!(
                    "the source claim {ns}/{name} is being filled by DiskImport {filler}; cloned once that succeeds"
                ))
            })?;
        filled_size = st.size.as_deref().and_then(quantity::parse);
    }
    let spec = claim.spec.as_ref();
    let block = spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    // Without a DiskImport's account, the claim's capacity (or request) bounds the disk.
    let claim_size = || {
        let capacity = claim
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref()?.get("storage"));
        let request = spec.and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"));
        capacity.or(request).and_then(|q| quantity::parse(&q.0))
    };
    Ok(Source {
        block,
        size: filled_size.or_else(claim_size),
    })
}

/// Whether `di` may clone a claim of another namespace: it carries a clone token of the
/// operator's webhook, issued for this source and target before `di` was created.
pub(super) async fn authorize<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    size: Option<u64>,
) -> Result<(), Observed> {
    let refuse = |reason: &'static str, message: String| {
        let mut o = Outcome::pending(reason, message);
        o.size = size;
        (o, Action::AwaitChange)
    };
    let Some(master) = &ctx.settings.disk_import.upload_key else {
        return Err(refuse(
            reasons::UPLOAD_UNAVAILABLE,
            "clones from another namespace are not served: the operator has no upload key (the chart's diskImport.upload.enabled)".into(),
        ));
    };
    let (ns, name) = source_ref(di).expect("a clone");
    let source = format!("{ns}/{name}");
    let target = key(di);
    let token = di.metadata.annotations.as_ref().and_then(|a| a.get(CLONE_TOKEN));
    let created = di
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let why = match token.map(|t| master.check_clone(t, &source, &target, created)) {
        Some(Ok(())) => return Ok(()),
        Some(Err(e)) => e.to_string(),
        None => "it carries no clone token".into(),
    };
    Err(refuse(
        reasons::CLONE_UNAUTHORIZED,
        format!(
            "cloning {source} from another namespace is not authorized ({why}): the operator's webhook marks a DiskImport whose creator may create diskimports/source in that namespace when it is created; delete it and create it again as such a user"
        ),
    ))
}

/// What the sender in the source namespace is doing.
pub(super) enum Sending {
    /// Its pod is on its way or runs.
    Running,
    /// It failed for good: why.
    Failed(String),
}

/// The sender Job (and its token's Secret) in the source namespace, made for the upload
/// pod at `pod_ip`; made again when that pod changed. The DiskImport gets the finalizer
/// first, so that they never outlive it.
pub(super) async fn ensure_sender<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    pod_ip: &str,
    block: bool,
    size: u64,
) -> Result<Sending, Observed> {
    let failed = |what: &str, e| store_failed(size, what, e);
    let pvc = di.spec.source.pvc.as_ref().expect("a clone");
    let source_ns = source_namespace(di, pvc);
    let name = job::sender_name(di);
    hold(di, ctx)
        .await
        .map_err(|e| failed("adding the clone's finalizer", e))?;
    let url = job::sender_url(pod_ip);
    let existing = ctx
        .store
        .get::<Job>(Some(source_ns), &name)
        .await
        .map_err(|e| failed("reading the clone's sender Job", e))?;
    if let Some(j) = existing {
        if !is_sender_of(&j.metadata, di) {
            return Err(super::name_taken(
                size,
                format!("a Job {source_ns}/{name} exists and is not this clone's"),
            ));
        }
        let js = j.status.clone().unwrap_or_default();
        let failed_cond = js
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True");
        if let Some(c) = failed_cond {
            let pods = ctx
                .store
                .list_labeled::<Pod>(source_ns, &job::sender_labels(di))
                .await
                .map_err(|e| failed("listing the clone's sender pods", e))?;
            let m = super::pods::last_failure(&pods).unwrap_or_else(|| c.message.clone().unwrap_or_default());
            return Ok(Sending::Failed(format!("the sender in {source_ns} failed: {m}")));
        }
        if job::sender_job_url(&j).as_deref() == Some(url.as_str()) || j.metadata.deletion_timestamp.is_some()
        {
            return Ok(Sending::Running);
        }
        // The upload pod was replaced: a new sender for the new one.
        ctx.store
            .delete(&j)
            .await
            .map_err(|e| failed("removing the clone's old sender Job", e))?;
        tracing::info!(diskimport = %key(di), job = %name, "sender Job removed: the upload pod changed");
        return Ok(Sending::Running);
    }
    let master = ctx.settings.disk_import.upload_key.as_ref().expect("authorized");
    let uid = di.metadata.uid.clone().unwrap_or_default();
    let claims = Claims {
        ns: di.metadata.namespace.clone().unwrap_or_default(),
        name: di.metadata.name.clone().unwrap_or_default(),
        uid: uid.clone(),
        exp: (Timestamp::now() + SENDER_TOKEN_TTL).as_second(),
    };
    let token = master.pod_key(&uid).token(&claims);
    // The token's Secret: replaced, so that a new sender holds a fresh token.
    if let Some(old) = ctx
        .store
        .get::<Secret>(Some(source_ns), &name)
        .await
        .map_err(|e| failed("reading the clone's token Secret", e))?
    {
        if !is_sender_of(&old.metadata, di) {
            return Err(super::name_taken(
                size,
                format!("a Secret {source_ns}/{name} exists and is not this clone's"),
            ));
        }
        ctx.store
            .delete(&old)
            .await
            .map_err(|e| failed("replacing the clone's token Secret", e))?;
    }
    ctx.store
        .create(&job::sender_secret(di, source_ns, &token))
        .await
        .map_err(|e| failed("creating the clone's token Secret", e))?;
    let want =
        job::sender_job(di, &ctx.settings.disk_import, block, &url).expect("a clone of another namespace");
    ctx.store
        .create(&want)
        .await
        .map_err(|e| failed("creating the clone's sender Job", e))?;
    tracing::info!(diskimport = %key(di), job = %format!("{source_ns}/{name}"), "sender Job created");
    Ok(Sending::Running)
}

/// The finalizer on `di`, before anything is made that no owner reference removes.
async fn hold<S: Store>(di: &DiskImport, ctx: &Context<S>) -> Result<(), crate::store::StoreError> {
    if !has_finalizer(di, FINALIZER) {
        patch_metadata_retry(&ctx.store, di, &finalizer_patch(di, FINALIZER, true)).await?;
    }
    Ok(())
}

/// Name of the claim a snapshot source is restored into, in the snapshot's namespace.
pub fn restore_name(di: &DiskImport) -> String {
    job::short_name(
        "restore-",
        &format!(
            "{}-{}",
            di.metadata.namespace.as_deref().unwrap_or_default(),
            di.metadata.name.as_deref().unwrap_or_default()
        ),
        253,
    )
}

/// `di` with its `snapshot` source replaced by a `pvc` source of the claim the snapshot is
/// restored into (made here: `dataSource` the snapshot, sized as the snapshot says, of the
/// snapshotted claim's class and volume mode where that claim still exists). Pending while
/// the snapshot is missing or not ready to use.
pub(super) async fn restore<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    snap: &SnapshotSource,
) -> Result<DiskImport, Observed> {
    let own = di.metadata.namespace.as_deref().unwrap_or_default();
    let ns = snap.namespace.as_deref().unwrap_or(own);
    let name = &snap.name;
    let wait = |message: String| {
        (
            Outcome::pending(reasons::PENDING, message),
            Action::Requeue(Duration::from_secs(5)),
        )
    };
    let failed = |what: &str, e| store_failed(0, what, e);
    let claim_name = restore_name(di);
    let existing = ctx
        .store
        .get::<PersistentVolumeClaim>(Some(ns), &claim_name)
        .await
        .map_err(|e| failed("reading the snapshot's restored claim", e))?;
    match existing {
        Some(c) if !is_sender_of(&c.metadata, di) => {
            return Err(super::name_taken(
                0,
                format!("a PersistentVolumeClaim {ns}/{claim_name} exists and is not this clone's"),
            ));
        }
        Some(_) => {}
        None => {
            let vs = ctx
                .store
                .get::<VolumeSnapshot>(Some(ns), name)
                .await
                .map_err(|e| failed("reading the VolumeSnapshot", e))?
                .ok_or_else(|| {
                    wait(format!(
                        "the VolumeSnapshot {ns}/{name} does not exist (or the cluster serves no snapshot.storage.k8s.io/v1)"
                    ))
                })?;
            let st = vs.status.clone().unwrap_or_default();
            if st.ready_to_use != Some(true) {
                let why = st
                    .error
                    .and_then(|e| e.message)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(wait(format!(
                    "the VolumeSnapshot {ns}/{name} is not ready to use yet{why}"
                )));
            }
            let size = st
                .restore_size
                .as_deref()
                .and_then(quantity::parse)
                .ok_or_else(|| {
                    wait(format!(
                        "the VolumeSnapshot {ns}/{name} reports no restoreSize yet"
                    ))
                })?;
            // The snapshotted claim's class and mode, where it still exists.
            let snapped = match &vs.spec.source.persistent_volume_claim_name {
                Some(c) => ctx
                    .store
                    .get::<PersistentVolumeClaim>(Some(ns), c)
                    .await
                    .map_err(|e| failed("reading the snapshotted claim", e))?
                    .and_then(|c| c.spec),
                None => None,
            };
            let class = snapped
                .as_ref()
                .and_then(|s| s.storage_class_name.clone())
                .or_else(|| di.spec.storage.storage_class_name.clone());
            let mode = snapped
                .as_ref()
                .and_then(|s| s.volume_mode.clone())
                .unwrap_or_else(|| "Filesystem".into());
            hold(di, ctx)
                .await
                .map_err(|e| failed("adding the clone's finalizer", e))?;
            let claim = job::restore_claim(di, (ns, &claim_name), name, (class, &mode), size);
            ctx.store
                .create(&claim)
                .await
                .map_err(|e| failed("creating the snapshot's restored claim", e))?;
            tracing::info!(diskimport = %key(di), claim = %format!("{ns}/{claim_name}"), snapshot = %name, "snapshot restore claim created");
        }
    }
    let mut r = di.clone();
    r.spec.source = DiskImportSource {
        pvc: Some(PvcSource {
            namespace: (ns != own).then(|| ns.to_string()),
            name: claim_name,
        }),
        ..Default::default()
    };
    Ok(r)
}

/// Whether `meta` (of a Job or Secret in the source namespace) is the sender's of `di`.
fn is_sender_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, di: &DiskImport) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(job::CLONE_TARGET_ANNOTATION))
        .is_some_and(|t| *t == key(di))
}

/// Removes the sender's Job and Secret from the source namespace, and a snapshot's
/// restored claim, then the finalizer.
pub(super) async fn clean_up<S: Store>(di: &DiskImport, ctx: &Context<S>) -> Result<(), Error> {
    if !has_finalizer(di, FINALIZER) {
        return Ok(());
    }
    if let Some((ns, _)) = source_ref(di) {
        let name = job::sender_name(di);
        let restored = restore_name(di);
        if di.spec.source.snapshot.is_some()
            && let Some(c) = ctx
                .store
                .get::<PersistentVolumeClaim>(Some(ns), &restored)
                .await?
            && is_sender_of(&c.metadata, di)
        {
            ctx.store.delete(&c).await?;
        }
        if let Some(j) = ctx.store.get::<Job>(Some(ns), &name).await?
            && is_sender_of(&j.metadata, di)
        {
            ctx.store.delete(&j).await?;
        }
        if let Some(s) = ctx.store.get::<Secret>(Some(ns), &name).await?
            && is_sender_of(&s.metadata, di)
        {
            ctx.store.delete(&s).await?;
        }
        tracing::info!(diskimport = %key(di), job = %format!("{ns}/{name}"), "clone sender removed");
    }
    patch_metadata_retry(&ctx.store, di, &finalizer_patch(di, FINALIZER, false)).await?;
    Ok(())
}
