//! The DiskImport controller: a claim and an importer Job per DiskImport, and CDI's phases
//! from what they report.
//!
//! ```text
//!  spec ──validate──▶ size: storage.size, or the image's virtual size (probe: first 64 KiB;
//!                     never for an archive, whose size is required)
//!    ──▶ PersistentVolumeClaim <name>         (owned; Filesystem: size + overhead;
//!                                              archive: Filesystem, the size as it is)
//!    ──▶ Job importer-<name>: ido import …     (owned; a clone: the source claim mounted
//!                                              read-only once it is filled, a diskSource's
//!                                              claim once it is Ready; blank: `blank:`, no Job for a
//!                                              Block claim without preallocation; archive:
//!                                              `--content-type archive SOURCE /data`)
//!    Job/pod status ──▶ phase, restartCount, conditions Ready/Running/Bound, events
//!    Succeeded ──▶ the Job is deleted, the claim stays (it is the product)
//! ```
//!
//! | phase            | when                                                        |
//! |------------------|-------------------------------------------------------------|
//! | Pending          | invalid spec, size unknown, claim name taken                |
//! | ImportScheduled  | claim and Job created, no importer pod running yet          |
//! | ImportInProgress | an importer pod runs                                        |
//! | Succeeded        | the Job completed (blank Block claim: the claim exists)     |
//! | Failed           | the Job failed: retries exhausted or a permanent error      |
//!
//! The importer is never given credentials by the controller: Secrets are mounted by
//! name, and the controller reads neither Secrets nor ConfigMaps. The messages of failed
//! importer pods (their termination message, or the last log lines) become the Running
//! condition's message while the Job retries and the Ready condition's when it fails.
//!
//! Deleting a DiskImport deletes its claim and Job through their owner references (the
//! cluster's garbage collector; [`crate::file_store`] does the same). A Failed DiskImport
//! stays Failed: delete it and create it again to retry (the spec is immutable).

mod clone;
mod job;
mod pods;
pub mod probe;
mod provider;
pub mod upload;
mod validation;

use std::time::Duration;

use ido_api::{
    Condition, ConditionStatus, DiskImport, DiskImportPhase, DiskImportSource, DiskImportStatus, DiskSource,
    PvcSource, Reason, SourceKind,
    condition::set_condition,
    diskimport::{ContentType, conditions, quantity, reasons},
};
use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, Pod, ResourceRequirements},
};

pub use clone::FINALIZER as CLONE_FINALIZER;
pub use job::{
    CA_DIR, CLONE_TARGET_ANNOTATION, CLONE_TARGET_LABEL, CONTAINER, CREDENTIALS_DIR, DATA_DIR, DEVICE,
    DISK_FILE, DISK_IMPORT_LABEL, PERMANENT_EXIT_CODE, claim, claim_request, cross_namespace, importer_job,
    job_name, labels, owned_by, sender_job, sender_name, short_name, source_claim,
};
pub use pods::progress_of;
use pods::{importer_progress, last_failure, pending_reason, ready_pod_ip, running_pod};
pub use provider::StoreDiskImports;
pub(crate) use validation::validate;

use crate::{
    Action, Context, Error,
    store::{Event, Store, StoreError, modify_status},
};

/// How the importer Jobs are made (the configuration's `diskImport` section).
#[derive(Clone, Debug, PartialEq)]
pub struct ImporterSettings {
    /// Whether the DiskImport controller runs (`ido operator`).
    pub enabled: bool,
    /// The image of the importer: the operator's own (it runs `ido import`).
    pub image: String,
    /// `IfNotPresent` unless configured.
    pub image_pull_policy: String,
    /// Fraction added to a Filesystem claim for the filesystem (default 0.055).
    pub filesystem_overhead: f64,
    /// Importer pods replaced after a failure before the import fails (default 3).
    pub backoff_limit: i32,
    /// Resources of the importer container (default: none set).
    pub resources: Option<ResourceRequirements>,
    /// How often a running import is looked at besides Job and claim changes.
    pub recheck: Duration,
    /// The master key of upload tokens ([`upload`]); `None`: uploads are not served (a
    /// DiskImport with an `upload` source waits, `UploadUnavailable`).
    pub upload_key: Option<upload::UploadKey>,
}

/// Default of `diskImport.filesystemOverhead` (CDI uses 0.055 too for most classes).
pub const DEFAULT_FILESYSTEM_OVERHEAD: f64 = 0.055;
/// Default of `diskImport.image`.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/ido-dev/ido:", env!("CARGO_PKG_VERSION"));

impl Default for ImporterSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            image: DEFAULT_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            filesystem_overhead: DEFAULT_FILESYSTEM_OVERHEAD,
            backoff_limit: 3,
            resources: None,
            recheck: Duration::from_secs(30),
            upload_key: None,
        }
    }
}

/// The `namespace/name` of `di`, for logs.
fn key(di: &DiskImport) -> String {
    format!(
        "{}/{}",
        di.metadata.namespace.as_deref().unwrap_or_default(),
        di.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What one reconcile concluded.
struct Outcome {
    phase: DiskImportPhase,
    /// (status, reason, message) of each condition.
    ready: (ConditionStatus, &'static str, String),
    running: (ConditionStatus, &'static str, String),
    bound: Option<(ConditionStatus, &'static str, String)>,
    size: Option<u64>,
    restarts: i32,
    /// The running importer's last reported percentage (`42.0%`).
    progress: Option<String>,
}

impl Outcome {
    fn pending(reason: &'static str, message: String) -> Self {
        Self {
            phase: DiskImportPhase::Pending,
            ready: (ConditionStatus::False, reason, message),
            running: (ConditionStatus::False, reasons::PENDING, String::new()),
            bound: None,
            size: None,
            restarts: 0,
            progress: None,
        }
    }
}

/// The disk's size: given, found before (status), or probed. `Err` = pending with a reason.
async fn disk_size(
    di: &DiskImport,
    cloned: Option<&clone::Source>,
) -> Result<u64, (&'static str, String, Option<Duration>)> {
    if let Some(s) = &di.spec.storage.size {
        return Ok(quantity::parse(s).expect("validated"));
    }
    if let Some(s) = di
        .status
        .as_ref()
        .and_then(|s| s.size.as_deref())
        .and_then(quantity::parse)
    {
        return Ok(s);
    }
    // A clone's: the source disk's (CDI's `storage: {}`).
    if let Some(s) = cloned.and_then(|c| c.size) {
        return Ok(s);
    }
    let ask = |why: String| {
        (
            reasons::SIZE_UNKNOWN,
            format!("{why}; set spec.storage.size"),
            None,
        )
    };
    let url = match di.spec.source.kind().expect("validated") {
        SourceKind::Http(h) if h.secret_ref.is_none() => h.url.clone(),
        SourceKind::S3(s) if s.secret_ref.is_none() && !s.url.starts_with("s3:") => s.url.clone(),
        SourceKind::Http(_) | SourceKind::S3(_) => {
            return Err(ask(
                "the virtual size of a source with credentials is not probed (the controller never reads Secrets)"
                    .into(),
            ));
        }
        _ => return Err(ask("the virtual size of this source is not probed".into())),
    };
    let client = ido_io::http::client(&Default::default(), "spec.source").map_err(|e| {
        (
            reasons::SIZE_UNKNOWN,
            e.to_string(),
            Some(Duration::from_secs(60)),
        )
    })?;
    match probe::probe(&client, &url).await {
        Ok(probe::Probed::Size(s)) if s > 0 => Ok(s),
        Ok(probe::Probed::Size(_)) => Err(ask("the image is empty".into())),
        Ok(probe::Probed::Unknown(why)) => Err(ask(why)),
        Err(e) => Err((
            reasons::SIZE_UNKNOWN,
            format!("{e}; retrying in 1m (or set spec.storage.size)"),
            Some(Duration::from_secs(60)),
        )),
    }
}

/// Reconciles one DiskImport.
pub async fn reconcile<S: Store>(di: &DiskImport, ctx: &Context<S>) -> Result<Action, Error> {
    if di.metadata.deletion_timestamp.is_some() {
        // Owned objects go with it (owner references); a clone's sender in the source
        // namespace is removed here.
        clone::clean_up(di, ctx).await?;
        return Ok(Action::AwaitChange);
    }
    // The stored copy, not a cache's: a Job removed after success wakes this with a cached
    // DiskImport that may not show Succeeded yet, which must not make a new importer.
    let fresh = match ctx
        .store
        .get::<DiskImport>(
            di.metadata.namespace.as_deref(),
            di.metadata.name.as_deref().unwrap_or_default(),
        )
        .await?
    {
        Some(f) => f,
        None => return Ok(Action::AwaitChange),
    };
    let di = &fresh;
    let before = di.status.clone().unwrap_or_default();
    match before.phase {
        DiskImportPhase::Succeeded => return finished(di, ctx).await,
        DiskImportPhase::Failed => {
            clone::clean_up(di, ctx).await?;
            return Ok(Action::AwaitChange);
        }
        _ => {}
    }
    let (outcome, next) = match observe(di, ctx).await {
        Ok(o) => o,
        Err((outcome, next)) => (outcome, next),
    };
    let phase = outcome.phase;
    let stored = write_status(ctx, di, &before, outcome).await?;
    let obj = stored.as_ref().unwrap_or(di);
    if phase == DiskImportPhase::Succeeded {
        return finished(obj, ctx).await;
    }
    Ok(next)
}

type Observed = (Outcome, Action);

/// Creates what is missing and reads the state of the claim, Job and pods.
async fn observe<S: Store>(di: &DiskImport, ctx: &Context<S>) -> Result<Observed, Observed> {
    let settings = &ctx.settings.disk_import;
    validate(di).map_err(|e| {
        (
            Outcome::pending(reasons::INVALID_SPEC, e.to_string()),
            Action::AwaitChange,
        )
    })?;
    // A clone's source, ready to be read (it gives the size when the spec does not).
    // A clone of another namespace: only with the webhook's mark, before anything is made.
    if clone::other_namespace(di) {
        clone::authorize(di, ctx, None).await?;
    }
    // A snapshot: the claim it is restored into, then exactly as a `pvc` clone of it.
    let restored;
    let di = match di.spec.source.kind() {
        Ok(SourceKind::Snapshot(s)) => {
            restored = clone::restore(di, ctx, s).await?;
            &restored
        }
        _ => di,
    };
    let cloned = match di.spec.source.kind() {
        Ok(SourceKind::Pvc(c)) => Some(clone::source(di, ctx, c, None).await?),
        _ => None,
    };
    let size = match disk_size(di, cloned.as_ref()).await {
        Ok(s) => s,
        Err((reason, message, retry)) => {
            let next = retry.map_or(Action::AwaitChange, Action::Requeue);
            return Err((Outcome::pending(reason, message), next));
        }
    };
    let pvc = ensure_claim(di, ctx, size).await?;
    let mut out = Outcome {
        phase: DiskImportPhase::ImportScheduled,
        ready: (ConditionStatus::False, reasons::PENDING, String::new()),
        running: (ConditionStatus::False, reasons::PENDING, String::new()),
        bound: Some(claim_bound(&pvc)),
        size: Some(size),
        restarts: 0,
        progress: None,
    };

    // A DiskSource: the claim it resolves to, then exactly as a `pvc` clone of it.
    let resolved;
    let di = match di.spec.source.kind() {
        Ok(SourceKind::DiskSource(d)) => {
            resolved = resolve_disk_source(di, ctx, &d.name, size).await?;
            &resolved
        }
        _ => di,
    };
    let source_block = match di.spec.source.kind() {
        Ok(SourceKind::Pvc(c)) => {
            let block = match &cloned {
                Some(s) => s.block,
                // A DiskSource's claim, resolved above.
                None => clone::source(di, ctx, c, Some(size)).await?.block,
            };
            if cross_namespace(di) {
                upload_key(di, ctx, size).await?;
            }
            out.phase = DiskImportPhase::CloneScheduled;
            block
        }
        Ok(SourceKind::Upload(_)) => {
            upload_key(di, ctx, size).await?;
            out.phase = DiskImportPhase::UploadScheduled;
            false
        }
        _ => false,
    };
    // A blank Block claim without preallocation: the claim is the disk.
    let Some(want) = importer_job(di, settings, size, source_block) else {
        out.phase = DiskImportPhase::Succeeded;
        out.ready = (ConditionStatus::True, reasons::COMPLETED, "blank disk".into());
        out.running = (ConditionStatus::False, reasons::COMPLETED, String::new());
        return Ok((out, Action::AwaitChange));
    };

    let job = ensure_job(di, ctx, &want, size).await?;
    follow_job(di, ctx, &job, (size, source_block), out).await
}

/// The Secret with the upload pod's key, created when missing. Pending while the operator
/// serves no uploads (no master key).
async fn upload_key<S: Store>(di: &DiskImport, ctx: &Context<S>, size: u64) -> Result<(), Observed> {
    let Some(master) = &ctx.settings.disk_import.upload_key else {
        let mut o = Outcome::pending(
            reasons::UPLOAD_UNAVAILABLE,
            "uploads are not served: the operator has no upload key (the chart's diskImport.upload.enabled)"
                .into(),
        );
        o.size = Some(size);
        return Err((o, Action::AwaitChange));
    };
    let ns = di.metadata.namespace.as_deref().unwrap_or_default();
    let name = upload::key_secret_name(di);
    // Only the metadata is looked at: whose it is.
    match ctx
        .store
        .get::<k8s_openapi::api::core::v1::Secret>(Some(ns), &name)
        .await
        .map_err(|e| store_failed(size, "reading the upload key's Secret", e))?
    {
        Some(s) if owned_by(&s.metadata, di) => Ok(()),
        Some(_) => Err(name_taken(
            size,
            format!("a Secret {ns}/{name} exists and is not this DiskImport's"),
        )),
        None => {
            ctx.store
                .create(&upload::key_secret(di, master))
                .await
                .map_err(|e| store_failed(size, "creating the upload key's Secret", e))?;
            tracing::info!(diskimport = %key(di), secret = %name, "upload key created");
            Ok(())
        }
    }
}

/// `di` with its `diskSource` replaced by a `pvc` source of the claim the DiskSource
/// resolves to. The claim is pinned once the importer Job exists (its `source` volume names
/// it), wherever the DiskSource points later. Pending while the DiskSource is missing or
/// not Ready.
async fn resolve_disk_source<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    name: &str,
    size: u64,
) -> Result<DiskImport, Observed> {
    let ns = di.metadata.namespace.as_deref().unwrap_or_default();
    let wait = |message: String| {
        let mut o = Outcome::pending(reasons::PENDING, message);
        o.size = Some(size);
        (o, Action::Requeue(Duration::from_secs(5)))
    };
    let job = ctx
        .store
        .get::<Job>(Some(ns), &job_name(di))
        .await
        .map_err(|e| store_failed(size, "reading the importer Job", e))?;
    let claim = match job
        .filter(|j| owned_by(&j.metadata, di))
        .and_then(|j| job::source_claim(&j))
    {
        Some(c) => c,
        None => {
            let ds = ctx
                .store
                .get::<DiskSource>(Some(ns), name)
                .await
                .map_err(|e| store_failed(size, "reading the DiskSource", e))?
                .ok_or_else(|| wait(format!("the DiskSource {ns}/{name} does not exist yet")))?;
            ds.ready_claim()
                .map(str::to_string)
                .map_err(|why| wait(format!("the DiskSource {ns}/{name} is not ready: {why}")))?
        }
    };
    let mut r = di.clone();
    r.spec.source = DiskImportSource {
        pvc: Some(PvcSource {
            namespace: None,
            name: claim,
        }),
        ..Default::default()
    };
    Ok(r)
}

/// Pending after a failed store call: retried in 30 s.
fn store_failed(size: u64, what: &str, e: StoreError) -> Observed {
    let mut o = Outcome::pending(reasons::CREATE_FAILED, format!("{what}: {e}"));
    o.size = Some(size);
    (o, Action::Requeue(Duration::from_secs(30)))
}

/// Pending because an object of the name is someone else's: until the DiskImport changes.
fn name_taken(size: u64, message: String) -> Observed {
    let mut o = Outcome::pending(reasons::CREATE_FAILED, message);
    o.size = Some(size);
    (o, Action::AwaitChange)
}

/// Annotation on a claim ido did not make (a user's, CDI's annotation flow): the UID of the
/// one DiskImport that may fill it ([`given_claim`]).
pub const FILL_ANNOTATION: &str = "ido.dev/disk-import-uid";

/// The UID of the claim that controls `di` (its controller owner reference), if a claim
/// does: such a DiskImport fills that claim instead of making its own.
fn controlling_claim(di: &DiskImport) -> Option<&str> {
    di.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "PersistentVolumeClaim" && r.api_version == "v1" && r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Whether `pvc`, a claim ido did not make, is given to `di` to fill: both must say so, the
/// DiskImport by its controller owner reference to the claim (so it goes with the claim)
/// and the claim by [`FILL_ANNOTATION`] naming the DiskImport's UID (which only someone who
/// may change the claim can write). A DiskImport alone cannot make ido write into a claim.
fn given_claim(pvc: &PersistentVolumeClaim, di: &DiskImport) -> bool {
    let named = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FILL_ANNOTATION));
    controlling_claim(di).is_some_and(|uid| pvc.metadata.uid.as_deref() == Some(uid))
        && named.is_some_and(|uid| di.metadata.uid.as_ref() == Some(uid))
}

/// The claim of `di`, created when missing; `Err` when it cannot be had or is not ours.
/// A claim ido did not make is filled only when it is given to `di` ([`given_claim`]); it is
/// then never created, and never deleted with `di` (it does not own it).
async fn ensure_claim<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    size: u64,
) -> Result<PersistentVolumeClaim, Observed> {
    let settings = &ctx.settings.disk_import;
    let ns = di.metadata.namespace.clone().unwrap_or_default();
    let name = di.metadata.name.clone().unwrap_or_default();
    let mode = job::volume_mode(di);
    let pvc = match ctx
        .store
        .get::<PersistentVolumeClaim>(Some(&ns), &name)
        .await
        .map_err(|e| store_failed(size, "reading the claim", e))?
    {
        Some(p) => p,
        None if controlling_claim(di).is_some() => {
            // The claim it was made to fill is gone (and this DiskImport goes with it).
            return Err(name_taken(
                size,
                format!("the claim {ns}/{name} this DiskImport fills does not exist"),
            ));
        }
        None => {
            // An archive's size is the file system's: the claim asks for it as it is.
            let overhead = match di.spec.content_type() {
                ContentType::Kubevirt => settings.filesystem_overhead,
                ContentType::Archive => 0.0,
            };
            let request = claim_request(size, mode, overhead);
            let c = ctx
                .store
                .create(&claim(di, request))
                .await
                .map_err(|e| store_failed(size, "creating the claim", e))?;
            tracing::info!(diskimport = %key(di), size, request, "claim created");
            c
        }
    };
    if given_claim(&pvc, di) {
        return Ok(pvc);
    }
    if controlling_claim(di).is_some_and(|uid| pvc.metadata.uid.as_deref() == Some(uid)) {
        // Made for the claim, which does not name it yet: it is about to (the claim's
        // annotation is written right after the DiskImport is created).
        let mut o = Outcome::pending(
            reasons::PENDING,
            format!(
                "the claim {ns}/{name} does not name this DiskImport in its annotation {FILL_ANNOTATION}"
            ),
        );
        o.size = Some(size);
        return Err((o, Action::Requeue(Duration::from_secs(2))));
    }
    if !owned_by(&pvc.metadata, di) {
        return Err(name_taken(
            size,
            format!(
                "a PersistentVolumeClaim {ns}/{name} exists and is not this DiskImport's; delete it or rename the DiskImport"
            ),
        ));
    }
    Ok(pvc)
}

/// The Bound condition from the claim's phase.
fn claim_bound(pvc: &PersistentVolumeClaim) -> (ConditionStatus, &'static str, String) {
    match pvc.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Bound") => (ConditionStatus::True, reasons::BOUND, String::new()),
        Some("Lost") => (
            ConditionStatus::False,
            reasons::CLAIM_LOST,
            "the claim lost its volume".into(),
        ),
        _ => (
            ConditionStatus::False,
            reasons::PENDING,
            "the claim is not bound yet (a WaitForFirstConsumer class binds when the importer starts)".into(),
        ),
    }
}

/// The importer Job of `di`, created from `want` when missing; `Err` when it cannot be had
/// or is not ours.
async fn ensure_job<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    want: &Job,
    size: u64,
) -> Result<Job, Observed> {
    let ns = di.metadata.namespace.clone().unwrap_or_default();
    let job_name = job_name(di);
    match ctx
        .store
        .get::<Job>(Some(&ns), &job_name)
        .await
        .map_err(|e| store_failed(size, "reading the importer Job", e))?
    {
        Some(j) if owned_by(&j.metadata, di) => Ok(j),
        Some(_) => Err(name_taken(
            size,
            format!("a Job {ns}/{job_name} exists and is not this DiskImport's"),
        )),
        None => {
            let j = ctx
                .store
                .create(want)
                .await
                .map_err(|e| store_failed(size, "creating the importer Job", e))?;
            tracing::info!(diskimport = %key(di), job = %job_name, "importer Job created");
            Ok(j)
        }
    }
}

/// The phase and conditions from the importer Job's status and its pods.
async fn follow_job<S: Store>(
    di: &DiskImport,
    ctx: &Context<S>,
    job: &Job,
    (size, source_block): (u64, bool),
    mut out: Outcome,
) -> Result<Observed, Observed> {
    let ns = di.metadata.namespace.clone().unwrap_or_default();
    let js = job.status.clone().unwrap_or_default();
    let cond = |t: &str| {
        js.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    out.restarts = js.failed.unwrap_or(0);
    let pods = ctx
        .store
        .list_labeled::<Pod>(&ns, &labels(di))
        .await
        .map_err(|e| store_failed(size, "listing the importer pods", e))?;
    let last_failure = last_failure(&pods);
    let recheck = Action::Requeue(ctx.settings.disk_import.recheck);

    if cond("Complete").is_some() || js.succeeded.unwrap_or(0) > 0 {
        out.phase = DiskImportPhase::Succeeded;
        out.ready = (ConditionStatus::True, reasons::COMPLETED, String::new());
        out.running = (ConditionStatus::False, reasons::COMPLETED, String::new());
        return Ok((out, Action::AwaitChange));
    }
    if let Some(c) = cond("Failed") {
        let message = last_failure.unwrap_or_else(|| c.message.clone().unwrap_or_default());
        out.phase = DiskImportPhase::Failed;
        out.ready = (ConditionStatus::False, reasons::IMPORT_FAILED, message.clone());
        out.running = (ConditionStatus::False, reasons::ERROR, message);
        return Ok((out, Action::AwaitChange));
    }
    let running = running_pod(&pods);
    if out.phase == DiskImportPhase::UploadScheduled {
        // An upload: ready once its pod is (it then takes the upload, which may take long).
        if js.ready.unwrap_or(0) > 0 {
            out.phase = DiskImportPhase::UploadReady;
            out.ready = (ConditionStatus::False, reasons::UPLOAD_READY, String::new());
            out.running = (ConditionStatus::True, reasons::POD_RUNNING, String::new());
            if let Some(pod) = running {
                out.progress = importer_progress(ctx, &ns, pod).await;
            }
        } else if let Some(m) = last_failure {
            out.running = (ConditionStatus::False, reasons::ERROR, m);
        } else if let Some((reason, m)) = pending_reason(&pods) {
            out.running = (ConditionStatus::False, reason, m);
        }
        return Ok((out, recheck));
    }
    if cross_namespace(di) {
        // A clone from another namespace: once the upload pod is ready, the sender beside
        // the source claim sends it the disk.
        let ip = if js.ready.unwrap_or(0) > 0 {
            ready_pod_ip(&pods)
        } else {
            None
        };
        if let Some(ip) = ip {
            match clone::ensure_sender(di, ctx, &ip, source_block, size).await? {
                clone::Sending::Running => {
                    out.phase = DiskImportPhase::CloneInProgress;
                    out.ready = (ConditionStatus::False, reasons::TRANSFER_RUNNING, String::new());
                    out.running = (ConditionStatus::True, reasons::POD_RUNNING, String::new());
                    if let Some(pod) = running {
                        out.progress = importer_progress(ctx, &ns, pod).await;
                    }
                }
                clone::Sending::Failed(m) => {
                    out.phase = DiskImportPhase::Failed;
                    out.ready = (ConditionStatus::False, reasons::IMPORT_FAILED, m.clone());
                    out.running = (ConditionStatus::False, reasons::ERROR, m);
                    return Ok((out, Action::AwaitChange));
                }
            }
        } else if let Some(m) = last_failure {
            out.running = (ConditionStatus::False, reasons::ERROR, m);
        } else if let Some((reason, m)) = pending_reason(&pods) {
            out.running = (ConditionStatus::False, reason, m);
        }
        return Ok((out, recheck));
    }
    let clone = out.phase == DiskImportPhase::CloneScheduled;
    if running.is_some() || js.ready.unwrap_or(0) > 0 {
        out.phase = if clone {
            DiskImportPhase::CloneInProgress
        } else {
            DiskImportPhase::ImportInProgress
        };
        out.ready = (ConditionStatus::False, reasons::TRANSFER_RUNNING, String::new());
        out.running = (ConditionStatus::True, reasons::POD_RUNNING, String::new());
        if let Some(pod) = running {
            out.progress = importer_progress(ctx, &ns, pod).await;
        }
    } else if let Some(m) = last_failure {
        // Between attempts: still in progress, the Running condition says why it stopped.
        out.phase = if clone {
            DiskImportPhase::CloneInProgress
        } else {
            DiskImportPhase::ImportInProgress
        };
        out.ready = (ConditionStatus::False, reasons::TRANSFER_RUNNING, String::new());
        out.running = (ConditionStatus::False, reasons::ERROR, m);
    } else if let Some((reason, m)) = pending_reason(&pods) {
        out.running = (ConditionStatus::False, reason, m);
    }
    Ok((out, recheck))
}

/// Writes the outcome; an event for each change of phase or of a pending reason.
async fn write_status<S: Store>(
    ctx: &Context<S>,
    di: &DiskImport,
    before: &DiskImportStatus,
    out: Outcome,
) -> Result<Option<DiskImport>, Error> {
    let g = di.metadata.generation;
    let now = Timestamp::now();
    let cond = |t: &str, (s, r, m): &(ConditionStatus, &'static str, String)| Condition {
        type_: t.into(),
        status: *s,
        observed_generation: g,
        last_transition_time: now,
        reason: (*r).into(),
        message: m.clone(),
    };
    let ready = cond(conditions::READY, &out.ready);
    let running = cond(conditions::RUNNING, &out.running);
    let bound = out.bound.as_ref().map(|b| cond(conditions::BOUND, b));
    let name = di.metadata.name.clone();
    let stored = modify_status(&ctx.store, di, |o: &mut DiskImport| {
        let st = o.status.get_or_insert_with(DiskImportStatus::default);
        // An end is final: a stale look never takes it back.
        if matches!(st.phase, DiskImportPhase::Succeeded | DiskImportPhase::Failed) {
            return;
        }
        st.observed_generation = g;
        st.phase = out.phase;
        st.progress = match (out.phase, &out.progress) {
            (DiskImportPhase::Succeeded, _) => "100.0%".into(),
            (_, Some(p)) => p.clone(),
            // A log that could not be read this time: keep what the importer last said.
            (DiskImportPhase::ImportInProgress | DiskImportPhase::UploadReady, None)
                if st.progress.ends_with('%') =>
            {
                st.progress.clone()
            }
            _ => "N/A".into(),
        };
        st.restart_count = out.restarts;
        if let Some(s) = out.size {
            st.size = Some(quantity::format(s));
        }
        if bound.is_some() {
            st.claim_name = name.clone();
        }
        set_condition(&mut st.conditions, ready.clone());
        set_condition(&mut st.conditions, running.clone());
        if let Some(b) = &bound {
            set_condition(&mut st.conditions, b.clone());
        }
    })
    .await?;

    let obj = stored.as_ref().unwrap_or(di);
    if let Some(e) = phase_event(di, before, &out) {
        tracing::info!(diskimport = %key(di), phase = %out.phase, reason = %e.reason, "{}", e.message);
        ctx.store.event(obj, e).await;
    }
    // A retried importer failure: one warning per new failure.
    if out.restarts > before.restart_count
        && out.running.1 == reasons::ERROR
        && out.phase != DiskImportPhase::Failed
    {
        ctx.store
            .event(
                obj,
                Event::warning(
                    "ImporterFailed",
                    "Import",
                    format!(
                        "importer attempt {} failed, retrying: {}",
                        out.restarts, out.running.2
                    ),
                ),
            )
            .await;
    }
    Ok(stored)
}

/// The event of a change of phase, or else of a new pending reason.
fn phase_event(di: &DiskImport, before: &DiskImportStatus, out: &Outcome) -> Option<Event> {
    let old_reason =
        ido_api::condition::find(&before.conditions, conditions::READY).map(|c| c.reason.clone());
    let (_, reason, message) = &out.ready;
    let event = if out.phase != before.phase {
        match out.phase {
            DiskImportPhase::ImportScheduled => Some(Event::normal(
                Reason::ImportScheduled.as_str(),
                "Import",
                format!("created claim {} and importer Job {}", key(di), job_name(di)),
            )),
            DiskImportPhase::ImportInProgress => Some(Event::normal(
                Reason::ImportInProgress.as_str(),
                "Import",
                "the importer is running",
            )),
            DiskImportPhase::UploadScheduled => Some(Event::normal(
                Reason::UploadScheduled.as_str(),
                "Upload",
                format!("created claim {} and upload Job {}", key(di), job_name(di)),
            )),
            DiskImportPhase::CloneScheduled => Some(Event::normal(
                Reason::CloneScheduled.as_str(),
                "Clone",
                format!("created claim {} and clone Job {}", key(di), job_name(di)),
            )),
            DiskImportPhase::CloneInProgress => Some(Event::normal(
                Reason::CloneInProgress.as_str(),
                "Clone",
                "the copy is running",
            )),
            DiskImportPhase::UploadReady => Some(Event::normal(
                Reason::UploadReady.as_str(),
                "Upload",
                "the upload pod is ready to take the upload",
            )),
            DiskImportPhase::Succeeded => Some(Event::normal(
                Reason::ImportSucceeded.as_str(),
                "Import",
                format!(
                    "imported into claim {} ({})",
                    key(di),
                    out.size.map(quantity::format).unwrap_or_default()
                ),
            )),
            DiskImportPhase::Failed => Some(Event::warning(
                Reason::ImportFailed.as_str(),
                "Import",
                message.clone(),
            )),
            _ => None,
        }
    } else {
        None
    };
    event.or_else(|| {
        (out.phase == DiskImportPhase::Pending && old_reason.as_deref() != Some(*reason))
            .then(|| Event::warning(reason, "Validate", message.clone()))
    })
}

/// After success: the importer Job is removed (its pods with it); the claim stays.
async fn finished<S: Store>(di: &DiskImport, ctx: &Context<S>) -> Result<Action, Error> {
    clone::clean_up(di, ctx).await?;
    let ns = di.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(job) = ctx.store.get::<Job>(Some(ns), &job_name(di)).await?
        && owned_by(&job.metadata, di)
        && job.metadata.deletion_timestamp.is_none()
    {
        ctx.store.delete(&job).await?;
        tracing::info!(diskimport = %key(di), job = %job_name(di), "importer Job removed after success");
    }
    // An upload's key opens nothing any more.
    if job::serves_uploads(di)
        && let Some(secret) = ctx
            .store
            .get::<k8s_openapi::api::core::v1::Secret>(Some(ns), &upload::key_secret_name(di))
            .await?
        && owned_by(&secret.metadata, di)
        && secret.metadata.deletion_timestamp.is_none()
    {
        ctx.store.delete(&secret).await?;
    }
    Ok(Action::AwaitChange)
}

#[cfg(test)]
mod tests;
