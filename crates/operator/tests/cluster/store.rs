//! `KubeStore` alone: error mapping, narrow writes, events.

use ido_api::{NodeImage, Release};
use ido_controllers::store::{Event, MetaPatch, Store, StoreError};
use k8s_openapi::api::events::v1::Event as K8sEvent;

use crate::{NS, RELEASE, fake_api::FakeApi, rbac::assert_granted, release, store};

#[tokio::test]
async fn store_maps_api_errors_and_writes_narrowly() {
    let fake = FakeApi::new();
    let s = store(&fake);
    let ni = NodeImage {
        metadata: kube::api::ObjectMeta {
            name: Some("capv-x".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: ido_api::NodeImageSpec {
            name: "x".into(),
            provider: "capv".into(),
        },
        status: None,
    };
    assert!(s.get::<NodeImage>(Some(NS), "capv-x").await.unwrap().is_none());
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
    let marked = s.get::<NodeImage>(Some(NS), "capv-x").await.unwrap().unwrap();
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
    assert!(s.get::<NodeImage>(Some(NS), "capv-x").await.unwrap().is_none());
    s.delete(&marked).await.unwrap();
    assert!(matches!(
        s.patch_metadata(&marked, &p).await,
        Err(StoreError::NotFound { .. })
    ));

    // Events: NodeImage events in its namespace, cluster-scoped Release events in default.
    s.event(&marked, Event::normal("Tested", "Test", "a note")).await;
    let rel: Release = serde_json::from_value(fake.create(&release(RELEASE))).unwrap();
    s.event(&rel, Event::warning("Tested", "Test", "x".repeat(5000)))
        .await;
    let ev = |ns: &str| {
        fake.list::<K8sEvent>()
            .into_iter()
            .filter(|e| e["metadata"]["namespace"] == ns)
            .collect::<Vec<_>>()
    };
    assert_eq!(ev(NS)[0]["regarding"]["kind"], "NodeImage");
    assert_eq!(ev(NS)[0]["reportingController"], "ido");
    let rel_ev = &ev("default")[0];
    assert_eq!(
        (rel_ev["regarding"]["name"].as_str(), rel_ev["type"].as_str()),
        (Some(RELEASE), Some("Warning"))
    );
    assert!(
        rel_ev["note"].as_str().unwrap().len() <= 1024,
        "notes are cut to the API's limit"
    );
    assert_granted(&fake.calls());
}
