//! CDI compatibility: a `DataVolume` (`cdi.kubevirt.io/v1beta1`) becomes a DiskImport of
//! the same name that it owns, and the DiskImport's status is mirrored back in CDI's shape.
//!
//! ```text
//!  DataVolume ──to_disk_import──▶ DiskImport <name> (owned, label ido.dev/data-volume)
//!     ▲  (a field ido cannot honour: Pending, Ready=False InvalidSpec naming it; nothing made)
//!     └── status: phase, progress, claimName, restartCount, conditions ◀── DiskImport status
//! ```
//!
//! The DiskImport does the work (claim, importer or upload Job, clone); deleting the
//! DataVolume deletes it and, through it, the claim, as CDI does. A DiskImport of the name
//! that is not the DataVolume's is never touched.

use ido_api::{
    Condition, ConditionStatus, DiskImport, Reason,
    cdi::{DataVolume, DataVolumeStatus, to_disk_import},
    condition::set_condition,
    diskimport::conditions,
};
use jiff::Timestamp;

use crate::{
    Action, Context, Error,
    diskimport::upload::CLONE_TOKEN,
    store::{Store, controller_reference, modify_status, owned_by},
};

/// Label on the DiskImports made for DataVolumes (the DataVolume's name).
pub const DATA_VOLUME_LABEL: &str = "ido.dev/data-volume";

/// Reconciles one DataVolume.
pub async fn reconcile<S: Store>(dv: &DataVolume, ctx: &Context<S>) -> Result<Action, Error> {
    if dv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let ns = dv.metadata.namespace.as_deref().unwrap_or_default();
    let name = dv.metadata.name.as_deref().unwrap_or_default();
    let pending = |reason: &str, message: String| DataVolumeStatus {
        phase: "Pending".into(),
        progress: "N/A".into(),
        conditions: vec![condition(
            conditions::READY,
            ConditionStatus::False,
            reason,
            message,
        )],
        ..Default::default()
    };
    let spec = match to_disk_import(&dv.spec) {
        Ok(s) => s,
        Err(e) => {
            write(ctx, dv, pending(Reason::InvalidSpec.as_str(), e.to_string())).await?;
            return Ok(Action::AwaitChange);
        }
    };
    // What the DiskImport's own checks (and its CRD's rules, which would refuse its
    // creation) say about the translated spec, by the DataVolume's field.
    let mut candidate = DiskImport::new(name, spec.clone());
    candidate.metadata.namespace = Some(ns.into());
    if let Err(e) = crate::diskimport::validate(&candidate) {
        let message = format!("{}: {}", data_volume_field(dv, e.field), e.message);
        write(ctx, dv, pending(Reason::InvalidSpec.as_str(), message)).await?;
        return Ok(Action::AwaitChange);
    }
    let di = match ctx.store.get::<DiskImport>(Some(ns), name).await? {
        Some(di) if owned_by(&di.metadata, dv) => di,
        Some(_) => {
            let message = format!(
                "a DiskImport {ns}/{name} exists and is not this DataVolume's; delete it or rename the DataVolume"
            );
            write(ctx, dv, pending(Reason::CreateFailed.as_str(), message)).await?;
            return Ok(Action::AwaitChange);
        }
        None => {
            let mut di = DiskImport::new(name, spec);
            di.metadata.namespace = Some(ns.into());
            if let Some(token) = clone_token(dv, &di, ctx) {
                di.metadata.annotations = Some([(CLONE_TOKEN.to_string(), token)].into());
            }
            di.metadata.labels = Some([(DATA_VOLUME_LABEL.to_string(), name.to_string())].into());
            di.metadata.owner_references = Some(vec![
                serde_json::from_value(controller_reference(dv)).expect("an owner reference"),
            ]);
            let di = ctx.store.create(&di).await?;
            tracing::info!(datavolume = %format!("{ns}/{name}"), "DiskImport created for the DataVolume");
            di
        }
    };
    write(ctx, dv, mirrored(&di)).await?;
    // Woken by its DiskImport's changes (it owns it).
    Ok(Action::AwaitChange)
}

/// For a DataVolume that clones from another namespace and was authorized to (the
/// webhook's token, checked against its creation), a fresh token for its DiskImport.
fn clone_token<S: Store>(dv: &DataVolume, di: &DiskImport, ctx: &Context<S>) -> Option<String> {
    let source = match (&di.spec.source.pvc, &di.spec.source.snapshot) {
        (Some(p), _) => format!("{}/{}", p.namespace.as_deref()?, p.name),
        (_, Some(s)) => format!("{}/{}", s.namespace.as_deref()?, s.name),
        _ => return None,
    };
    let target = format!(
        "{}/{}",
        dv.metadata.namespace.as_deref().unwrap_or_default(),
        dv.metadata.name.as_deref().unwrap_or_default()
    );
    let key = ctx.settings.disk_import.upload_key.as_ref()?;
    let token = dv.metadata.annotations.as_ref()?.get(CLONE_TOKEN)?;
    let created = dv.metadata.creation_timestamp.as_ref()?.0;
    key.check_clone(token, &source, &target, created).ok()?;
    Some(key.issue_clone(&source, &target, Timestamp::now()))
}

/// The DataVolume field a DiskImport field comes from: `spec.storage.size` is the claim's
/// `resources.requests.storage`, other `spec.storage.*` fields are the claim's (`spec.pvc`
/// or `spec.storage`, as the DataVolume has it); the rest have the same path.
fn data_volume_field(dv: &DataVolume, field: &str) -> String {
    let claim = if dv.spec.fields.contains_key("pvc") {
        "spec.pvc"
    } else {
        "spec.storage"
    };
    match field.strip_prefix("spec.storage") {
        Some(".size") => format!("{claim}.resources.requests.storage"),
        Some(rest) => format!("{claim}{rest}"),
        None => field.to_string(),
    }
}

/// CDI's status from the DiskImport's.
pub fn mirrored(di: &DiskImport) -> DataVolumeStatus {
    let st = di.status.clone().unwrap_or_default();
    DataVolumeStatus {
        claim_name: st.claim_name,
        phase: match st.phase.as_str() {
            "" => "Pending".into(),
            p => p.into(),
        },
        progress: if st.progress.is_empty() {
            "N/A".into()
        } else {
            st.progress
        },
        restart_count: st.restart_count,
        conditions: st.conditions,
    }
}

fn condition(t: &str, status: ConditionStatus, reason: &str, message: String) -> Condition {
    Condition {
        type_: t.into(),
        status,
        observed_generation: None,
        last_transition_time: Timestamp::now(),
        reason: reason.into(),
        message,
    }
}

/// Writes `want` when it differs (conditions keep their transition times).
async fn write<S: Store>(ctx: &Context<S>, dv: &DataVolume, want: DataVolumeStatus) -> Result<(), Error> {
    let have = dv.status.clone().unwrap_or_default();
    let same = have.phase == want.phase
        && have.progress == want.progress
        && have.claim_name == want.claim_name
        && have.restart_count == want.restart_count
        && want.conditions.iter().all(|c| {
            have.conditions.iter().any(|h| {
                h.type_ == c.type_ && h.status == c.status && h.reason == c.reason && h.message == c.message
            })
        });
    if same {
        return Ok(());
    }
    modify_status(&ctx.store, dv, |o: &mut DataVolume| {
        let st = o.status.get_or_insert_with(DataVolumeStatus::default);
        st.phase = want.phase.clone();
        st.progress = want.progress.clone();
        st.claim_name = want.claim_name.clone();
        st.restart_count = want.restart_count;
        for c in &want.conditions {
            set_condition(&mut st.conditions, c.clone());
        }
    })
    .await?;
    if have.phase != want.phase {
        tracing::info!(
            datavolume = %format!("{}/{}", dv.metadata.namespace.as_deref().unwrap_or_default(), dv.metadata.name.as_deref().unwrap_or_default()),
            phase = %want.phase,
            "DataVolume phase"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ido_api::DiskImportPhase;
    use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim};
    use serde_json::json;

    use super::*;
    use crate::{Settings, diskimport::ImporterSettings, file_store::FileStore};

    fn context(dir: &std::path::Path) -> Context<FileStore> {
        Context::new(
            FileStore::open(dir).unwrap(),
            Settings {
                disk_import: ImporterSettings {
                    image: "ido:test".into(),
                    recheck: Duration::from_millis(100),
                    ..ImporterSettings::default()
                },
                ..Settings::default()
            },
        )
    }

    async fn dv(ctx: &Context<FileStore>, y: &str) -> DataVolume {
        let d: DataVolume = yaml::from_str(y).unwrap();
        ctx.store.create(&d).await.unwrap()
    }

    async fn step_dv(ctx: &Context<FileStore>, name: &str) -> DataVolume {
        let d: DataVolume = ctx.store.get(Some("vms"), name).await.unwrap().unwrap();
        reconcile(&d, ctx).await.unwrap();
        ctx.store.get(Some("vms"), name).await.unwrap().unwrap()
    }

    async fn step_di(ctx: &Context<FileStore>, name: &str) {
        let d: DiskImport = ctx.store.get(Some("vms"), name).await.unwrap().unwrap();
        crate::diskimport::reconcile(&d, ctx).await.unwrap();
    }

    #[tokio::test]
    async fn a_data_volume_imports_through_its_disk_import_and_reads_like_cdis() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        // CDI's manifests/example/import-kubevirt-datavolume.yaml, in a namespace.
        dv(
            &ctx,
            r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: example-import-dv, namespace: vms}
spec:
  source:
    http:
      url: "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img"
  pvc:
    accessModes: [ReadWriteOnce]
    resources: {requests: {storage: "500Mi"}}
"#,
        )
        .await;
        let d = step_dv(&ctx, "example-import-dv").await;
        let di: DiskImport = ctx
            .store
            .get(Some("vms"), "example-import-dv")
            .await
            .unwrap()
            .expect("its DiskImport");
        assert!(owned_by(&di.metadata, &d));
        assert_eq!(
            di.metadata.labels.as_ref().unwrap()[DATA_VOLUME_LABEL],
            "example-import-dv"
        );
        assert_eq!(di.spec.storage.size.as_deref(), Some("500Mi"));
        assert_eq!(d.status.as_ref().unwrap().phase, "Pending");

        // The DiskImport runs: claim and importer Job; the DataVolume says ImportScheduled.
        step_di(&ctx, "example-import-dv").await;
        assert!(
            ctx.store
                .get::<PersistentVolumeClaim>(Some("vms"), "example-import-dv")
                .await
                .unwrap()
                .is_some()
        );
        let job: Job = ctx
            .store
            .get(Some("vms"), "importer-example-import-dv")
            .await
            .unwrap()
            .unwrap();
        let mut job_json = serde_json::to_value(&job).unwrap();
        job_json["status"] = json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]});
        let done: Job = serde_json::from_value(job_json).unwrap();
        let d = step_dv(&ctx, "example-import-dv").await;
        assert_eq!(d.status.as_ref().unwrap().phase, "ImportScheduled");
        assert_eq!(d.status.as_ref().unwrap().progress, "N/A");
        ctx.store.update_status(&done).await.unwrap();
        step_di(&ctx, "example-import-dv").await;
        let di: DiskImport = ctx
            .store
            .get(Some("vms"), "example-import-dv")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(di.status.as_ref().unwrap().phase, DiskImportPhase::Succeeded);
        let d = step_dv(&ctx, "example-import-dv").await;
        let st = d.status.unwrap();
        assert_eq!(st.phase, "Succeeded");
        assert_eq!(st.progress, "100.0%");
        assert_eq!(st.claim_name.as_deref(), Some("example-import-dv"));
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, ConditionStatus::True);
    }

    #[tokio::test]
    async fn refused_fields_are_named_and_foreign_disk_imports_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        dv(
            &ctx,
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: gcs, namespace: vms}\nspec:\n  source: {gcs: {url: 'gs://b/k'}}\n  pvc: {resources: {requests: {storage: 1Gi}}}\n",
        )
        .await;
        let d = step_dv(&ctx, "gcs").await;
        let st = d.status.unwrap();
        assert_eq!(st.phase, "Pending");
        let ready = &st.conditions[0];
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(
            ready.message.starts_with("spec.source.gcs: "),
            "{}",
            ready.message
        );
        assert!(
            ctx.store
                .get::<DiskImport>(Some("vms"), "gcs")
                .await
                .unwrap()
                .is_none()
        );

        // A DiskImport of the name that someone else made.
        let mut other = DiskImport::new(
            "taken",
            serde_json::from_value(json!({"source": {"blank": {}}, "storage": {"size": "1Gi"}})).unwrap(),
        );
        other.metadata.namespace = Some("vms".into());
        ctx.store.create(&other).await.unwrap();
        dv(
            &ctx,
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: taken, namespace: vms}\nspec:\n  source: {blank: {}}\n  storage: {resources: {requests: {storage: 2Gi}}}\n",
        )
        .await;
        let d = step_dv(&ctx, "taken").await;
        assert!(
            d.status.unwrap().conditions[0]
                .message
                .contains("is not this DataVolume's")
        );
        let still: DiskImport = ctx.store.get(Some("vms"), "taken").await.unwrap().unwrap();
        assert_eq!(still.spec.storage.size.as_deref(), Some("1Gi"), "untouched");
    }

    #[tokio::test]
    async fn what_the_disk_import_would_refuse_is_named_by_the_data_volumes_field() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        // CDI's manifests/example/import-archive-block-datavolume.yaml (CDI refuses it too:
        // "ContentType Archive cannot have block volumeMode").
        dv(
            &ctx,
            r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: import-archive-block-datavolume, namespace: vms}
spec:
  source:
      http:
         url: "http://geolite.maxmind.com/download/geoip/database/GeoLite2-Country.tar.gz"
  contentType: archive
  storage:
    volumeMode: Block
    resources:
      requests:
        storage: 500Mi
"#,
        )
        .await;
        // A blank disk of no size, asked with `pvc`.
        dv(
            &ctx,
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: no-size, namespace: vms}\nspec:\n  source: {blank: {}}\n  pvc: {accessModes: [ReadWriteOnce]}\n",
        )
        .await;
        for (name, field) in [
            ("import-archive-block-datavolume", "spec.storage.volumeMode: "),
            ("no-size", "spec.pvc.resources.requests.storage: "),
        ] {
            let d = step_dv(&ctx, name).await;
            let st = d.status.unwrap();
            assert_eq!(st.phase, "Pending");
            let ready = &st.conditions[0];
            assert_eq!(ready.reason, "InvalidSpec");
            assert!(ready.message.starts_with(field), "{}", ready.message);
            assert!(
                ctx.store
                    .get::<DiskImport>(Some("vms"), name)
                    .await
                    .unwrap()
                    .is_none(),
                "nothing made for {name}"
            );
        }
    }
}
