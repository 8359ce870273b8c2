//! The DiskImport reconciler over the file store: what it creates, and the phases it reads
//! from Job and pod states written into the store as the cluster would.

use std::collections::BTreeMap;

use ido_api::{
    DiskImportSource, DiskImportSpec, HttpSource, RegistrySource, S3Source, StorageSpec, VolumeMode,
    diskimport::ContentType,
};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::{Settings, file_store::FileStore, store::Object};

const NS: &str = "vms";
const PASSWORD: &str = "s3cr3t-pw-never-shown";

fn context(dir: &std::path::Path) -> Context<FileStore> {
    ido_testkit::install_crypto_provider();
    Context::new(
        FileStore::open(dir).unwrap(),
        Settings {
            disk_import: ImporterSettings {
                image: "ido:test".into(),
                ..ImporterSettings::default()
            },
            ..Settings::default()
        },
    )
}

fn disk_import(name: &str, source: DiskImportSource, storage: StorageSpec) -> DiskImport {
    let mut di = DiskImport::new(
        name,
        DiskImportSpec {
            source,
            storage,
            preallocation: None,
            content_type: None,
        },
    );
    di.metadata.namespace = Some(NS.into());
    di
}

fn http(url: &str) -> DiskImportSource {
    DiskImportSource {
        http: Some(HttpSource {
            url: url.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sized(size: &str) -> StorageSpec {
    StorageSpec {
        size: Some(size.into()),
        ..Default::default()
    }
}

/// Reconciles the stored copy of `name` once; returns the DiskImport as stored after.
async fn step(ctx: &Context<FileStore>, name: &str) -> (Action, DiskImport) {
    let di: DiskImport = ctx.store.get(Some(NS), name).await.unwrap().unwrap();
    let action = reconcile(&di, ctx).await.unwrap();
    (action, ctx.store.get(Some(NS), name).await.unwrap().unwrap())
}

fn status(di: &DiskImport) -> DiskImportStatus {
    di.status.clone().unwrap()
}

fn cond<'a>(di: &'a DiskImport, t: &str) -> &'a Condition {
    ido_api::condition::find(&di.status.as_ref().unwrap().conditions, t).unwrap()
}

fn json_of<K: Object>(k: &K) -> Value {
    serde_json::to_value(k).unwrap()
}

/// Writes `f(status)` as the Job's status, as the Job controller would.
async fn set_job_status(ctx: &Context<FileStore>, name: &str, st: Value) {
    let job: Job = ctx.store.get(Some(NS), name).await.unwrap().unwrap();
    let mut v = json_of(&job);
    v["status"] = st;
    ctx.store
        .update_status(&serde_json::from_value::<Job>(v).unwrap())
        .await
        .unwrap();
}

/// Marks Job `name` Complete, as the Job controller would.
async fn complete_job(ctx: &Context<FileStore>, name: &str) {
    set_job_status(
        ctx,
        name,
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .await;
}

/// Whether the store holds no `K` named `ns/name`.
async fn absent<K: Object>(ctx: &Context<FileStore>, ns: &str, name: &str) -> bool {
    ctx.store.get::<K>(Some(ns), name).await.unwrap().is_none()
}

/// Stores an importer pod of `di` in `phase`, with a terminated container when `exit`.
async fn add_pod(
    ctx: &Context<FileStore>,
    di: &DiskImport,
    name: &str,
    phase: &str,
    exit: Option<(i32, &str)>,
) {
    let mut container = json!({"name": CONTAINER, "ready": phase == "Running", "restartCount": 0, "image": "ido:test", "imageID": ""});
    if let Some((code, message)) = exit {
        container["state"] = json!({"terminated": {"exitCode": code, "message": message}});
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": labels(di)},
        "status": {"phase": phase, "containerStatuses": [container]},
    }))
    .unwrap();
    ctx.store.create(&pod).await.unwrap();
}

fn args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
}

mod archive;
mod clone;
mod lifecycle;
mod probing;
mod sources;
mod upload;
mod validation;
