//! The real reconcilers of `ido-controllers` through `KubeStore`, one call at a time.

use std::{collections::BTreeSet, sync::Arc};

use ido_api::{NodeImage, Release, nodeimage, release};
use ido_controllers::{Action, Context, metrics::Metrics, store::Store};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use serde_json::json;

use crate::{IMAGE, MemProvider, RELEASE, env::Env, has_finalizer, parts, release, s3_source, store};

/// A Release makes a NodeImage that becomes Available in every location; deleting the
/// Release deletes the NodeImage and its templates. Every request is the operator's
/// ServiceAccount's, under the chart's RBAC.
#[tokio::test]
async fn reconcilers_run_through_the_kube_store() {
    let env = Env::new("reconcile", json!({})).await;
    let ns = env.ns.as_str();
    // Releases are cluster-scoped: a name of this test's own (still `vsphere-x.y.z`).
    let rel_name = format!(
        "{RELEASE}{}",
        u32::from_str_radix(ns.rsplit('-').next().unwrap(), 16).unwrap()
    );
    let image = IMAGE;
    let provider = Arc::new(MemProvider::default());
    let p = parts(provider.clone(), s3_source().await, Metrics::default(), ns);
    let ctx = Arc::new(Context {
        providers: p.providers,
        source: p.source,
        metrics: p.metrics,
        ..Context::new(store(&env, env.operator_client().await), p.settings)
    });
    env.create(&release(&rel_name)).await;

    let rel = ctx.store.get::<Release>(None, &rel_name).await.unwrap().unwrap();
    assert_eq!(
        ido_controllers::release::reconcile(&rel, &ctx).await.unwrap(),
        Action::Requeue(ido_controllers::release::RECHECK)
    );
    assert!(has_finalizer(
        &env.get::<Release>(None, &rel_name).await.unwrap(),
        release::FINALIZER
    ));
    let ni = env
        .get::<NodeImage>(Some(ns), image)
        .await
        .expect("NodeImage created");
    assert_eq!(ni["status"]["releases"], json!([rel_name]));
    assert_eq!(ni["status"]["state"], "Pending");

    for round in 0..2 {
        let ni = ctx
            .store
            .get::<NodeImage>(Some(ns), image)
            .await
            .unwrap()
            .unwrap();
        // The reconcile hands the uploads to a task and returns; the task's end wakes the
        // object (here: the loop), whose next reconcile takes the outcome.
        ido_controllers::nodeimage::reconcile(&ni, &ctx).await.unwrap();
        let key = ido_controllers::tasks::TaskKey::of(&ni);
        assert!(
            ctx.tasks.occupied(&key),
            "round {round}: the uploads run as a task"
        );
        ctx.tasks.ended(&key).await;
        let ni = ctx
            .store
            .get::<NodeImage>(Some(ns), image)
            .await
            .unwrap()
            .unwrap();
        let action = ido_controllers::nodeimage::reconcile(&ni, &ctx).await.unwrap();
        assert_eq!(action, Action::Requeue(ctx.settings.recheck), "round {round}");
    }
    let ni = env.get::<NodeImage>(Some(ns), image).await.unwrap();
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

    env.delete::<Release>(None, &rel_name).await;
    let rel = ctx.store.get::<Release>(None, &rel_name).await.unwrap().unwrap();
    assert_eq!(
        ido_controllers::release::reconcile(&rel, &ctx).await.unwrap(),
        Action::AwaitChange
    );
    assert!(
        env.get::<Release>(None, &rel_name).await.is_none(),
        "finalizer removed, Release gone"
    );
    let ni = ctx
        .store
        .get::<NodeImage>(Some(ns), image)
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
    assert!(env.get::<NodeImage>(Some(ns), image).await.is_none());
    assert!(
        provider.templates.lock().unwrap().is_empty(),
        "templates removed from every location"
    );
    // NodeImage events in its namespace; the Release's (cluster-scoped) in `default`.
    let mut events = env.list::<K8sEvent>(Some(ns)).await;
    events.extend(
        env.list::<K8sEvent>(Some("default"))
            .await
            .into_iter()
            .filter(|e| e["regarding"]["name"] == rel_name.as_str()),
    );
    let reasons: BTreeSet<String> = events
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    for r in ["NodeImageCreated", "Uploaded", "Deleted"] {
        assert!(reasons.contains(r), "event {r} missing: {reasons:?}");
    }
}
