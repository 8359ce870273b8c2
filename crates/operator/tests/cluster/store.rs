//! `KubeStore` alone: error mapping, narrow writes, events.

use ido_api::{NodeImage, Release};
use ido_controllers::store::{Event, MetaPatch, Store, StoreError};
use k8s_openapi::api::events::v1::Event as K8sEvent;

use serde_json::json;

use crate::{RELEASE, env::Env, release, store};

#[tokio::test]
async fn store_maps_api_errors_and_writes_narrowly() {
    let env = Env::new("store", json!({})).await;
    let s = store(&env, env.operator_client().await);
    let ns = env.ns.as_str();
    // Releases are cluster-scoped: a name of this test's own.
    let rel_name = format!("{RELEASE}-{}", ns.rsplit('-').next().unwrap());
    let ni = NodeImage {
        metadata: kube::api::ObjectMeta {
            name: Some("capv-x".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: ido_api::NodeImageSpec {
            name: "x".into(),
            provider: "capv".into(),
        },
        status: None,
    };
    assert!(s.get::<NodeImage>(Some(ns), "capv-x").await.unwrap().is_none());
    let created = s.create(&ni).await.unwrap();
    assert!(matches!(
        s.create(&ni).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(s.list::<NodeImage>().await.unwrap().len(), 1);

    // Metadata patch: finalizer and annotation set, then a stale write conflicts.
    let mut p = MetaPatch {
        finalizers: Some(vec!["f".into()]),
        ..Default::default()
    };
    p.annotations.insert("a".into(), Some("1".into()));
    let patched = s.patch_metadata(&created, &p).await.unwrap();
    assert_eq!(patched.metadata.finalizers, Some(vec!["f".into()]));
    assert!(matches!(
        s.patch_metadata(&created, &p).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut unset = MetaPatch::default();
    unset.annotations.insert("a".into(), None);
    let patched = s.patch_metadata(&patched, &unset).await.unwrap();
    assert!(patched.metadata.annotations.as_ref().is_none_or(|a| a.is_empty()));
    assert_eq!(
        patched.metadata.finalizers,
        Some(vec!["f".into()]),
        "finalizers untouched"
    );

    // Status: replaced whole (fields left out disappear), stale copies conflict.
    let mut with_status = patched.clone();
    with_status.status = Some(ido_api::NodeImageStatus {
        releases: vec!["r".into()],
        state: ido_api::NodeImageState::Available,
        observed_generation: Some(1),
        ..Default::default()
    });
    let stored = s.update_status(&with_status).await.unwrap();
    assert_eq!(stored.status.as_ref().unwrap().releases, ["r"]);
    // Written by server-side apply on the status subresource, one field manager.
    let raw = env.get::<NodeImage>(Some(ns), "capv-x").await.unwrap();
    let managers: Vec<(&str, &str, &str)> = raw["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default(),
                m["operation"].as_str().unwrap_or_default(),
                m["subresource"].as_str().unwrap_or_default(),
            )
        })
        .filter(|(_, _, sub)| *sub == "status")
        .collect();
    assert_eq!(managers, [("ido", "Apply", "status")]);
    assert!(matches!(
        s.update_status(&with_status).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut cleared = stored.clone();
    cleared.status.as_mut().unwrap().observed_generation = None;
    let stored = s.update_status(&cleared).await.unwrap();
    assert_eq!(stored.status.unwrap().observed_generation, None);

    // Delete with a finalizer marks; removing the finalizer removes; absent is fine.
    s.delete(&patched).await.unwrap();
    let marked = s.get::<NodeImage>(Some(ns), "capv-x").await.unwrap().unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    s.patch_metadata(
        &marked,
        &MetaPatch {
            finalizers: Some(vec![]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(s.get::<NodeImage>(Some(ns), "capv-x").await.unwrap().is_none());
    s.delete(&marked).await.unwrap();
    assert!(matches!(
        s.patch_metadata(&marked, &p).await,
        Err(StoreError::NotFound { .. })
    ));

    // Events: NodeImage events in its namespace, cluster-scoped Release events in default.
    s.event(&marked, Event::normal("Tested", "Test", "a note")).await;
    let rel: Release = serde_json::from_value(env.create(&release(&rel_name)).await).unwrap();
    s.event(&rel, Event::warning("Tested", "Test", "x".repeat(5000)))
        .await;
    let ni_events = env.list::<K8sEvent>(Some(ns)).await;
    assert_eq!(ni_events[0]["regarding"]["kind"], "NodeImage");
    assert_eq!(ni_events[0]["reportingController"], "ido");
    let rel_events: Vec<_> = env
        .list::<K8sEvent>(Some("default"))
        .await
        .into_iter()
        .filter(|e| e["regarding"]["name"] == rel_name.as_str())
        .collect();
    assert_eq!(rel_events.len(), 1, "{rel_events:?}");
    assert_eq!(rel_events[0]["type"], "Warning");
    assert!(
        rel_events[0]["note"].as_str().unwrap().len() <= 1024,
        "notes are cut to the API's limit"
    );
    env.delete::<Release>(None, &rel_name).await;
}
