//! CDI compatibility: CDI's PVC annotation flow. A claim the user made, annotated with
//! `cdi.kubevirt.io/storage.import.endpoint` (or `…import.source`), is filled by a DiskImport
//! of its name that it owns, and the import's state is written back into the claim's
//! annotations as CDI's import controller writes them.
//!
//! ```text
//!  PVC <name> (the user's) ──claim::to_disk_import──▶ DiskImport <name> (owned by the claim,
//!     │   (an annotation ido cannot honour:                label ido.dev/claim)
//!     │    running=false, InvalidSpec naming it,             │ fills the claim, never makes
//!     │    a warning event; nothing made)                    │ or deletes it: the claim names
//!     │                                                      │ it in ido.dev/disk-import-uid
//!     └── annotations: storage.pod.phase, …pod.restarts, …condition.running[.reason|.message],
//!         …import.importPodName, …pod.schedulable ◀── DiskImport status, importer pods
//! ```
//!
//! The claim stays the user's: deleting the DiskImport deletes its importer Job, never the
//! claim (it does not own it); deleting the claim deletes the DiskImport. A DiskImport of the
//! name that is not the claim's is never touched. A claim whose `storage.pod.phase` is
//! `Succeeded` is complete, as for CDI: it is never imported into again.

use std::{collections::BTreeMap, time::Duration};

use ido_api::{
    ConditionStatus, DiskImport, DiskImportPhase, Reason,
    cdi::claim::{self, annotations as ann},
    condition::find,
    diskimport::conditions,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use crate::{
    Action, Context, Error,
    diskimport::{FILL_ANNOTATION, labels},
    store::{Event, MetaPatch, Store, controller_reference, owned_by, patch_metadata_retry},
};

/// Label on the DiskImports made for claims (the claim's name).
pub const CLAIM_LABEL: &str = "ido.dev/claim";

/// Reconciles one PersistentVolumeClaim: nothing unless it asks for an import.
pub async fn reconcile<S: Store>(pvc: &PersistentVolumeClaim, ctx: &Context<S>) -> Result<Action, Error> {
    if pvc.metadata.deletion_timestamp.is_some() || !claim::wants_import(pvc) {
        return Ok(Action::AwaitChange);
    }
    let have = pvc.metadata.annotations.clone().unwrap_or_default();
    if have.get(ann::POD_PHASE).map(String::as_str) == Some("Succeeded") {
        return Ok(Action::AwaitChange);
    }
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    let existing = ctx.store.get::<DiskImport>(Some(ns), name).await?;
    let di = match existing {
        // The claim's import, whatever its annotations say now (as CDI, an import under way
        // is not changed).
        Some(di)
            if owned_by(&di.metadata, pvc)
                && di.metadata.uid.is_some()
                && have.get(FILL_ANNOTATION) == di.metadata.uid.as_ref() =>
        {
            di
        }
        existing => {
            let spec = match claim::to_disk_import(pvc, ctx.settings.disk_import.filesystem_overhead) {
                Ok(s) => s,
                Err(e) => {
                    refuse(ctx, pvc, Reason::InvalidSpec, e.to_string()).await?;
                    return Ok(Action::AwaitChange);
                }
            };
            match existing {
                // Made here, the claim not written yet: it asks for what the annotations ask.
                Some(di) if owned_by(&di.metadata, pvc) && di.spec == spec => di,
                Some(_) => {
                    let message = format!(
                        "a DiskImport {ns}/{name} exists and is not this claim's; delete it or rename the claim"
                    );
                    refuse(ctx, pvc, Reason::CreateFailed, message).await?;
                    // Nothing of it tells this claim when it goes.
                    return Ok(Action::Requeue(Duration::from_secs(60)));
                }
                None => {
                    let mut di = DiskImport::new(name, spec);
                    di.metadata.namespace = Some(ns.into());
                    di.metadata.labels = Some([(CLAIM_LABEL.to_string(), name.to_string())].into());
                    di.metadata.owner_references = Some(vec![
                        serde_json::from_value(controller_reference(pvc)).expect("an owner reference"),
                    ]);
                    let di = ctx.store.create(&di).await?;
                    tracing::info!(claim = %format!("{ns}/{name}"), "DiskImport created to fill the claim");
                    di
                }
            }
        }
    };
    let pods = ctx.store.list_labeled::<Pod>(ns, &labels(&di)).await?;
    let mut want = mirrored(&di, &pods);
    // The claim gives itself to this DiskImport (see `diskimport::FILL_ANNOTATION`).
    want.insert(FILL_ANNOTATION, di.metadata.uid.clone().unwrap_or_default());
    write(ctx, pvc, &have, want).await?;
    // Woken by its DiskImport's changes (it owns it).
    Ok(Action::AwaitChange)
}

/// The annotations that say why nothing is imported, and a warning event when that is news.
async fn refuse<S: Store>(
    ctx: &Context<S>,
    pvc: &PersistentVolumeClaim,
    reason: Reason,
    message: String,
) -> Result<(), Error> {
    let have = pvc.metadata.annotations.clone().unwrap_or_default();
    let want = BTreeMap::from([
        (ann::RUNNING, "false".to_string()),
        (ann::RUNNING_REASON, reason.as_str().to_string()),
        (ann::RUNNING_MESSAGE, message.clone()),
    ]);
    let news = have.get(ann::RUNNING_MESSAGE) != Some(&message);
    write(ctx, pvc, &have, want).await?;
    if news {
        tracing::warn!(
            claim = %format!("{}/{}", pvc.metadata.namespace.as_deref().unwrap_or_default(), pvc.metadata.name.as_deref().unwrap_or_default()),
            %message,
            "claim not imported"
        );
        ctx.store
            .event(pvc, Event::warning(reason.as_str(), "Import", message))
            .await;
    }
    Ok(())
}

/// CDI's annotations from the DiskImport's status and its importer pods (`pods`).
pub fn mirrored(di: &DiskImport, pods: &[Pod]) -> BTreeMap<&'static str, String> {
    let st = di.status.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let phase = match st.phase {
        DiskImportPhase::ImportScheduled | DiskImportPhase::UploadScheduled => Some("Pending"),
        DiskImportPhase::ImportInProgress | DiskImportPhase::UploadReady => Some("Running"),
        DiskImportPhase::Succeeded => Some("Succeeded"),
        DiskImportPhase::Failed => Some("Failed"),
        _ => None,
    };
    let ready = find(&st.conditions, conditions::READY);
    let running = find(&st.conditions, conditions::RUNNING);
    match (phase, running) {
        (Some(_), Some(r)) if r.status == ConditionStatus::True => {
            out.insert(ann::RUNNING, "true".into());
            out.insert(ann::RUNNING_REASON, r.reason.clone());
            out.insert(ann::RUNNING_MESSAGE, r.message.clone());
        }
        // Failed: why, from the Ready condition when the Running one has no message.
        (Some(_), Some(r)) if !r.message.is_empty() || ready.is_none() => {
            out.insert(ann::RUNNING, "false".into());
            out.insert(ann::RUNNING_REASON, r.reason.clone());
            out.insert(ann::RUNNING_MESSAGE, r.message.clone());
        }
        // Not started (or refused by the DiskImport's checks): the Ready condition says why.
        _ => {
            if let Some(r) = ready {
                out.insert(ann::RUNNING, "false".into());
                out.insert(ann::RUNNING_REASON, r.reason.clone());
                out.insert(ann::RUNNING_MESSAGE, in_cdis_terms(&r.message));
            }
        }
    }
    if let Some(phase) = phase {
        out.insert(ann::POD_PHASE, phase.into());
        out.insert(ann::POD_RESTARTS, st.restart_count.to_string());
        let unschedulable = running.is_some_and(|r| r.reason == Reason::Unschedulable.as_str());
        out.insert(ann::POD_SCHEDULABLE, (!unschedulable).to_string());
    }
    if let Some(pod) = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .and_then(|p| p.metadata.name.clone())
    {
        out.insert(ann::IMPORT_POD_NAME, pod);
    }
    out
}

/// A DiskImport's message about its spec, naming the annotation the field came from.
fn in_cdis_terms(message: &str) -> String {
    for (field, annotation) in [
        ("spec.source.http.url", ann::ENDPOINT),
        ("spec.source.s3.url", ann::ENDPOINT),
        ("spec.source.registry.url", ann::ENDPOINT),
        ("spec.source.http.checksum", ann::CHECKSUM),
        ("spec.source.http.extraHeaders", ann::EXTRA_HEADERS),
        ("spec.storage.size", "spec.resources.requests.storage"),
    ] {
        if let Some(rest) = message.strip_prefix(field) {
            return format!("{annotation}{rest}");
        }
    }
    message.to_string()
}

/// Writes the annotations of `want` that differ from `have`, and the claim's events of a
/// finished import.
async fn write<S: Store>(
    ctx: &Context<S>,
    pvc: &PersistentVolumeClaim,
    have: &BTreeMap<String, String>,
    want: BTreeMap<&'static str, String>,
) -> Result<(), Error> {
    let patch = MetaPatch {
        finalizers: None,
        annotations: want
            .iter()
            .filter(|(k, v)| have.get(**k) != Some(*v))
            .map(|(k, v)| (k.to_string(), Some(v.clone())))
            .collect(),
    };
    if patch.annotations.is_empty() {
        return Ok(());
    }
    patch_metadata_retry(&ctx.store, pvc, &patch).await?;
    let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
    let name = pvc.metadata.name.as_deref().unwrap_or_default();
    let phase = want.get(ann::POD_PHASE);
    if phase != have.get(ann::POD_PHASE) {
        tracing::info!(claim = %format!("{ns}/{name}"), phase = ?phase, "claim import phase");
        let message = want.get(ann::RUNNING_MESSAGE).cloned().unwrap_or_default();
        let event = match phase.map(String::as_str) {
            Some("Succeeded") => Some(Event::normal(
                Reason::ImportSucceeded.as_str(),
                "Import",
                format!("imported into claim {ns}/{name}"),
            )),
            Some("Failed") => Some(Event::warning(Reason::ImportFailed.as_str(), "Import", message)),
            _ => None,
        };
        if let Some(e) = event {
            ctx.store.event(pvc, e).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::batch::v1::Job;
    use serde_json::json;

    use super::*;
    use crate::{Settings, diskimport::ImporterSettings, file_store::FileStore};

    const NS: &str = "vms";

    fn context(dir: &std::path::Path) -> Context<FileStore> {
        Context::new(
            FileStore::open(dir).unwrap(),
            Settings {
                cdi_compat: true,
                disk_import: ImporterSettings {
                    enabled: true,
                    image: "ido:test".into(),
                    recheck: Duration::from_millis(100),
                    ..ImporterSettings::default()
                },
                ..Settings::default()
            },
        )
    }

    /// CDI's manifests/example/golden-pvc.yaml in namespace `vms`, named `name`, with
    /// `annotations` (YAML lines, indented by four).
    async fn claim(ctx: &Context<FileStore>, name: &str, annotations: &str) -> PersistentVolumeClaim {
        let y = format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    app: containerized-data-importer\n  annotations:\n{annotations}\nspec:\n  accessModes:\n  - ReadWriteOnce\n  resources:\n    requests:\n      storage: 10Gi\n"
        );
        let c: PersistentVolumeClaim = yaml::from_str(&y).unwrap();
        ctx.store.create(&c).await.unwrap()
    }

    async fn get_claim(ctx: &Context<FileStore>, name: &str) -> PersistentVolumeClaim {
        ctx.store.get(Some(NS), name).await.unwrap().unwrap()
    }

    async fn step_claim(ctx: &Context<FileStore>, name: &str) -> (Action, PersistentVolumeClaim) {
        let c = get_claim(ctx, name).await;
        let a = reconcile(&c, ctx).await.unwrap();
        (a, get_claim(ctx, name).await)
    }

    async fn step_di(ctx: &Context<FileStore>, name: &str) -> (Action, DiskImport) {
        let d: DiskImport = ctx.store.get(Some(NS), name).await.unwrap().unwrap();
        let a = crate::diskimport::reconcile(&d, ctx).await.unwrap();
        (a, ctx.store.get(Some(NS), name).await.unwrap().unwrap())
    }

    fn ready_message(di: &DiskImport) -> String {
        find(&di.status.as_ref().unwrap().conditions, conditions::READY)
            .unwrap()
            .message
            .clone()
    }

    fn ann_of<'a>(c: &'a PersistentVolumeClaim, k: &str) -> Option<&'a str> {
        c.metadata.annotations.as_ref()?.get(k).map(String::as_str)
    }

    async fn job(ctx: &Context<FileStore>, name: &str) -> Option<Job> {
        ctx.store
            .get(Some(NS), &format!("importer-{name}"))
            .await
            .unwrap()
    }

    async fn set_job_status(ctx: &Context<FileStore>, name: &str, st: serde_json::Value) {
        let mut v = serde_json::to_value(job(ctx, name).await.unwrap()).unwrap();
        v["status"] = st;
        ctx.store
            .update_status(&serde_json::from_value::<Job>(v).unwrap())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn cdis_golden_claim_is_filled_by_a_disk_import_and_annotated_like_cdis() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        claim(
            &ctx,
            "golden-pvc",
            "    cdi.kubevirt.io/storage.import.endpoint: \"https://mirror.example/disk.qcow2\"\n    cdi.kubevirt.io/storage.import.secretName: \"\"",
        )
        .await;
        let (_, c) = step_claim(&ctx, "golden-pvc").await;
        let di: DiskImport = ctx
            .store
            .get(Some(NS), "golden-pvc")
            .await
            .unwrap()
            .expect("its DiskImport");
        assert!(
            owned_by(&di.metadata, &c),
            "the claim owns it: it goes with the claim"
        );
        assert_eq!(di.metadata.labels.as_ref().unwrap()[CLAIM_LABEL], "golden-pvc");
        let h = di.spec.source.http.as_ref().unwrap();
        assert_eq!(h.url, "https://mirror.example/disk.qcow2");
        assert_eq!(h.secret_ref, None);
        assert_eq!(ann_of(&c, FILL_ANNOTATION), di.metadata.uid.as_deref());

        // The DiskImport fills the user's claim: no claim of its own, the user's untouched.
        let (_, di) = step_di(&ctx, "golden-pvc").await;
        assert_eq!(
            di.status.as_ref().unwrap().phase,
            DiskImportPhase::ImportScheduled
        );
        let c = get_claim(&ctx, "golden-pvc").await;
        assert!(c.metadata.owner_references.is_none());
        assert_eq!(
            c.spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "10Gi"
        );
        let j = job(&ctx, "golden-pvc").await.expect("the importer Job");
        let volumes =
            serde_json::to_value(&j.spec.as_ref().unwrap().template.spec.as_ref().unwrap().volumes).unwrap();
        assert!(
            volumes.to_string().contains(r#""claimName":"golden-pvc""#),
            "{volumes}"
        );
        let (_, c) = step_claim(&ctx, "golden-pvc").await;
        assert_eq!(ann_of(&c, ann::POD_PHASE), Some("Pending"));
        assert_eq!(ann_of(&c, ann::POD_RESTARTS), Some("0"));
        assert_eq!(ann_of(&c, ann::RUNNING), Some("false"));

        // An importer pod runs.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "importer-golden-pvc-x7k2p", "namespace": NS, "labels": labels(&di),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "importer", "ready": true, "restartCount": 0,
                       "image": "ido:test", "imageID": "", "state": {"running": {}}}]},
        }))
        .unwrap();
        ctx.store.create(&pod).await.unwrap();
        set_job_status(&ctx, "golden-pvc", json!({"active": 1, "ready": 1})).await;
        let (_, di) = step_di(&ctx, "golden-pvc").await;
        assert_eq!(
            di.status.as_ref().unwrap().phase,
            DiskImportPhase::ImportInProgress
        );
        let (_, c) = step_claim(&ctx, "golden-pvc").await;
        assert_eq!(ann_of(&c, ann::POD_PHASE), Some("Running"));
        assert_eq!(ann_of(&c, ann::RUNNING), Some("true"));
        assert_eq!(ann_of(&c, ann::RUNNING_REASON), Some("PodRunning"));
        assert_eq!(ann_of(&c, ann::POD_SCHEDULABLE), Some("true"));
        assert_eq!(
            ann_of(&c, ann::IMPORT_POD_NAME),
            Some("importer-golden-pvc-x7k2p")
        );

        // Done: Succeeded, the Job removed, the claim kept and complete.
        set_job_status(
            &ctx,
            "golden-pvc",
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        )
        .await;
        let (_, di) = step_di(&ctx, "golden-pvc").await;
        assert_eq!(di.status.as_ref().unwrap().phase, DiskImportPhase::Succeeded);
        let (_, c) = step_claim(&ctx, "golden-pvc").await;
        assert_eq!(ann_of(&c, ann::POD_PHASE), Some("Succeeded"));
        assert_eq!(ann_of(&c, ann::RUNNING), Some("false"));
        assert_eq!(ann_of(&c, ann::RUNNING_REASON), Some("Completed"));
        assert!(job(&ctx, "golden-pvc").await.is_none());

        // Deleting the DiskImport never deletes the claim; a complete claim is not imported
        // into again.
        ctx.store.delete(&di).await.unwrap();
        assert!(
            ctx.store
                .get::<DiskImport>(Some(NS), "golden-pvc")
                .await
                .unwrap()
                .is_none()
        );
        let (_, c) = step_claim(&ctx, "golden-pvc").await;
        assert_eq!(ann_of(&c, ann::POD_PHASE), Some("Succeeded"));
        assert!(
            ctx.store
                .get::<DiskImport>(Some(NS), "golden-pvc")
                .await
                .unwrap()
                .is_none()
        );

        // Deleting the claim deletes a DiskImport that fills it.
        claim(&ctx, "other", "    cdi.kubevirt.io/storage.import.source: none").await;
        step_claim(&ctx, "other").await;
        let di: DiskImport = ctx.store.get(Some(NS), "other").await.unwrap().unwrap();
        assert!(di.spec.source.blank.is_some());
        ctx.store.delete(&get_claim(&ctx, "other").await).await.unwrap();
        assert!(
            ctx.store
                .get::<DiskImport>(Some(NS), "other")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn refused_annotations_are_named_and_foreign_disk_imports_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        claim(
            &ctx,
            "gcs",
            "    cdi.kubevirt.io/storage.import.source: gcs\n    cdi.kubevirt.io/storage.import.endpoint: gs://bucket/disk.img",
        )
        .await;
        let (_, c) = step_claim(&ctx, "gcs").await;
        assert_eq!(ann_of(&c, ann::RUNNING), Some("false"));
        assert_eq!(ann_of(&c, ann::RUNNING_REASON), Some("InvalidSpec"));
        let m = ann_of(&c, ann::RUNNING_MESSAGE).unwrap();
        assert!(
            m.starts_with("cdi.kubevirt.io/storage.import.source: \"gcs\" is not supported"),
            "{m}"
        );
        assert_eq!(ann_of(&c, ann::POD_PHASE), None);
        assert!(
            ctx.store
                .get::<DiskImport>(Some(NS), "gcs")
                .await
                .unwrap()
                .is_none()
        );

        // A DiskImport's own checks, in CDI's terms.
        claim(
            &ctx,
            "sum",
            "    cdi.kubevirt.io/storage.import.endpoint: https://h/d.img\n    cdi.kubevirt.io/storage.import.checksum: \"sha256:00\"",
        )
        .await;
        step_claim(&ctx, "sum").await;
        step_di(&ctx, "sum").await;
        let (_, c) = step_claim(&ctx, "sum").await;
        let m = ann_of(&c, ann::RUNNING_MESSAGE).unwrap();
        assert!(m.starts_with("cdi.kubevirt.io/storage.import.checksum: "), "{m}");
        assert_eq!(ann_of(&c, ann::RUNNING_REASON), Some("InvalidSpec"));

        // A claim without CDI's annotations is no business of this controller.
        let plain = claim(&ctx, "plain", "    team: a").await;
        assert_eq!(reconcile(&plain, &ctx).await.unwrap(), Action::AwaitChange);
        assert!(
            ctx.store
                .get::<DiskImport>(Some(NS), "plain")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            get_claim(&ctx, "plain").await.metadata.annotations,
            plain.metadata.annotations
        );

        // A DiskImport of the name that someone else made.
        let mut other = DiskImport::new(
            "taken",
            serde_json::from_value(json!({"source": {"blank": {}}, "storage": {"size": "1Gi"}})).unwrap(),
        );
        other.metadata.namespace = Some(NS.into());
        ctx.store.create(&other).await.unwrap();
        claim(
            &ctx,
            "taken",
            "    cdi.kubevirt.io/storage.import.endpoint: https://h/d.img",
        )
        .await;
        let (_, c) = step_claim(&ctx, "taken").await;
        assert_eq!(ann_of(&c, ann::RUNNING_REASON), Some("CreateFailed"));
        assert!(
            ann_of(&c, ann::RUNNING_MESSAGE)
                .unwrap()
                .contains("is not this claim's")
        );
        assert_eq!(ann_of(&c, FILL_ANNOTATION), None);
        let still: DiskImport = ctx.store.get(Some(NS), "taken").await.unwrap().unwrap();
        assert_eq!(still.spec.storage.size.as_deref(), Some("1Gi"), "untouched");
    }

    /// Neither a DiskImport owned by a claim nor a claim naming a DiskImport alone makes ido
    /// write into a claim it did not make: both must say so.
    #[tokio::test]
    async fn a_claim_is_filled_only_when_both_it_and_the_disk_import_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let spec = || {
            serde_json::from_value::<ido_api::DiskImportSpec>(
                json!({"source": {"http": {"url": "https://evil.example/d.img"}}, "storage": {"size": "1Gi"}}),
            )
            .unwrap()
        };

        // Someone's DiskImport, claiming to be owned by a claim that does not name it.
        let victim = claim(&ctx, "victim", "    team: a").await;
        let mut di = DiskImport::new("victim", spec());
        di.metadata.namespace = Some(NS.into());
        di.metadata.owner_references = Some(vec![
            serde_json::from_value(controller_reference(&victim)).unwrap(),
        ]);
        ctx.store.create(&di).await.unwrap();
        let (action, di) = step_di(&ctx, "victim").await;
        assert_eq!(di.status.as_ref().unwrap().phase, DiskImportPhase::Pending);
        assert!(ready_message(&di).contains(FILL_ANNOTATION), "{:?}", di.status);
        assert_eq!(action, Action::Requeue(Duration::from_secs(2)));
        assert!(job(&ctx, "victim").await.is_none());

        // A claim naming a DiskImport that it does not own.
        let mut stray = DiskImport::new("stray", spec());
        stray.metadata.namespace = Some(NS.into());
        let stray = ctx.store.create(&stray).await.unwrap();
        let uid = stray.metadata.uid.clone().unwrap();
        claim(&ctx, "stray", &format!("    {FILL_ANNOTATION}: {uid}")).await;
        let (action, di) = step_di(&ctx, "stray").await;
        assert_eq!(action, Action::AwaitChange);
        assert!(
            ready_message(&di).contains("is not this DiskImport's"),
            "{:?}",
            di.status
        );
        assert!(job(&ctx, "stray").await.is_none());
        assert!(get_claim(&ctx, "stray").await.metadata.owner_references.is_none());
    }
}
