//! The real reconcilers of `ido-controllers` through `KubeStore`, one call at a time.

use std::{collections::BTreeSet, sync::Arc};

use ido_api::{NodeImage, Release, nodeimage, release};
use ido_controllers::{Action, Context, metrics::Metrics, store::Store};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use serde_json::json;

use crate::{
    IMAGE, MemProvider, NS, RELEASE,
    fake_api::{Call, FakeApi},
    has_finalizer, parts,
    rbac::assert_granted,
    release, s3_source, store,
};

/// A Release makes a NodeImage that becomes Available in every location; deleting the
/// Release deletes the NodeImage and its templates. Returns the requests made.
pub(crate) async fn reconcilers_scenario() -> Vec<Call> {
    let fake = FakeApi::new();
    let provider = Arc::new(MemProvider::default());
    let p = parts(provider.clone(), s3_source().await, Metrics::default());
    let ctx = Context {
        store: store(&fake),
        providers: p.providers,
        source: p.source,
        settings: p.settings,
        metrics: p.metrics,
    };
    fake.create(&release(RELEASE));

    let rel = ctx.store.get::<Release>(None, RELEASE).await.unwrap().unwrap();
    assert_eq!(
        ido_controllers::release::reconcile(&rel, &ctx).await.unwrap(),
        Action::Requeue(ido_controllers::release::RECHECK)
    );
    assert!(has_finalizer(
        &fake.get::<Release>(None, RELEASE).unwrap(),
        release::FINALIZER
    ));
    let ni = fake.get::<NodeImage>(Some(NS), IMAGE).expect("NodeImage created");
    assert_eq!(ni["status"]["releases"], json!([RELEASE]));
    assert_eq!(ni["status"]["state"], "Pending");

    for round in 0..2 {
        let ni = ctx
            .store
            .get::<NodeImage>(Some(NS), IMAGE)
            .await
            .unwrap()
            .unwrap();
        let action = ido_controllers::nodeimage::reconcile(&ni, &ctx).await.unwrap();
        assert_eq!(action, Action::Requeue(ctx.settings.recheck), "round {round}");
    }
    let ni = fake.get::<NodeImage>(Some(NS), IMAGE).unwrap();
    assert!(has_finalizer(&ni, nodeimage::FINALIZER));
    assert_eq!(ni["status"]["state"], "Available", "{ni}");
    let locs: Vec<&str> = ni["status"]["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["state"].as_str().unwrap())
        .collect();
    assert_eq!(locs, ["Available", "Available"]);
    assert_eq!(
        *provider.creates.lock().unwrap(),
        2,
        "imported once per location, not again"
    );

    fake.delete::<Release>(None, RELEASE);
    let rel = ctx.store.get::<Release>(None, RELEASE).await.unwrap().unwrap();
    assert_eq!(
        ido_controllers::release::reconcile(&rel, &ctx).await.unwrap(),
        Action::AwaitChange
    );
    assert!(
        fake.get::<Release>(None, RELEASE).is_none(),
        "finalizer removed, Release gone"
    );
    let ni = ctx
        .store
        .get::<NodeImage>(Some(NS), IMAGE)
        .await
        .unwrap()
        .unwrap();
    assert!(
        ni.metadata.deletion_timestamp.is_some(),
        "unused image deleted (retention 0)"
    );
    assert_eq!(
        ido_controllers::nodeimage::reconcile(&ni, &ctx).await.unwrap(),
        Action::AwaitChange
    );
    assert!(fake.get::<NodeImage>(Some(NS), IMAGE).is_none());
    assert!(
        provider.templates.lock().unwrap().is_empty(),
        "templates removed from every location"
    );
    let reasons: BTreeSet<String> = fake
        .list::<K8sEvent>()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    for r in ["NodeImageCreated", "Uploaded", "Deleted"] {
        assert!(reasons.contains(r), "event {r} missing: {reasons:?}");
    }
    fake.calls()
}

#[tokio::test]
async fn reconcilers_run_through_the_kube_store() {
    assert_granted(&reconcilers_scenario().await);
}
