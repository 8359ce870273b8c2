//! The ImageSync reconciler through `KubeStore`: credentials from Secrets read from the API
//! (both sides, the destination over TLS with the test kit's CA from a ConfigMap), a copy
//! between real registries, status and events written through the API.

use std::{collections::BTreeMap, time::Duration};

use ido_api::{ImageSync, ImageSyncSpec, SecretReference, SyncEndpoint, SyncMode};
use ido_controllers::{Action, Context, Settings, imagesync, store::Store};
use ido_testkit::{
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    api::events::v1::Event as K8sEvent,
};
use serde_json::json;

use crate::{env::Env, store};

/// A `kubernetes.io/dockerconfigjson` Secret with `user`/`password` for `host`, in `ns`.
pub(crate) fn docker_secret(ns: &str, name: &str, host: &str, user: &str, password: &str) -> Secret {
    let config = json!({"auths": {host: {"username": user, "password": password}}}).to_string();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(config.into_bytes()),
        )])),
        ..Default::default()
    }
}

/// An ImageSync in `ns`.
pub(crate) fn image_sync(ns: &str, name: &str, spec: ImageSyncSpec) -> ImageSync {
    let mut is = ImageSync::new(name, spec);
    is.metadata.namespace = Some(ns.into());
    is
}

/// Copies every `1.x.x` tag between two registries requiring credentials; the operator's
/// ServiceAccount reads the Secrets and the CA ConfigMap by name (the chart grants only
/// `get` on them: a list or watch would be refused).
/// A OnceByTag spec (every hour) from `source` to `destination`, `concurrency` tags at once.
fn sync_spec(source: SyncEndpoint, destination: SyncEndpoint, concurrency: u32) -> ImageSyncSpec {
    ImageSyncSpec {
        mode: SyncMode::OnceByTag,
        frequency: Some("1h".into()),
        schedule: None,
        allow_candidate_release: false,
        source,
        destination,
        platforms: vec![],
        max_tags: None,
        concurrency: Some(concurrency),
    }
}

/// The reconcilers' context over the API server as `client`, for the test's namespace.
fn sync_context(env: &Env, client: kube::Client) -> std::sync::Arc<Context<ido_operator::KubeStore>> {
    std::sync::Arc::new(Context::new(
        store(env, client),
        Settings {
            namespace: env.ns.clone(),
            ..Settings::default()
        },
    ))
}

#[tokio::test]
async fn imagesync_reads_secrets_and_copies_through_the_kube_store() {
    let (src, dst) = tokio::join!(
        DockerRegistry::start(RegistryOptions {
            tls: false,
            auth: Some(("puller".into(), "op-src-pw".into())),
        }),
        DockerRegistry::start(RegistryOptions {
            tls: true,
            auth: Some(("pusher".into(), "op-dst-pw".into())),
        })
    );
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "1.2.0", &["linux/amd64"], 1, 2048, 9)
        .await
        .unwrap();
    push_layout(&layout, &src, "app:1.2.0").await.unwrap();

    let env = Env::new("imagesync", json!({})).await;
    let ns = env.ns.as_str();
    env.create(&docker_secret(ns, "src", src.host(), "puller", "op-src-pw"))
        .await;
    env.create(&docker_secret(ns, "dst", dst.host(), "pusher", "op-dst-pw"))
        .await;
    env.create(&ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("dst-ca".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ca.crt".to_string(),
            dst.ca().unwrap().ca_pem(),
        )])),
        ..Default::default()
    })
    .await;
    env.create(&image_sync(
        ns,
        "app",
        sync_spec(
            SyncEndpoint {
                name: format!("{}/app", src.host()),
                version: Some("1.x.x".into()),
                secret_ref: Some(SecretReference { name: "src".into() }),
                tls_verify: Some(false),
                ..Default::default()
            },
            SyncEndpoint {
                name: format!("{}/mirror/app", dst.host()),
                secret_ref: Some(SecretReference { name: "dst".into() }),
                cert_config_map: Some("dst-ca".into()),
                ..Default::default()
            },
            2,
        ),
    ))
    .await;
    let ctx = sync_context(&env, env.operator_client().await);

    let is = ctx
        .store
        .get::<ImageSync>(Some(ns), "app")
        .await
        .unwrap()
        .unwrap();
    // The reconcile starts the pass as a task and returns; once the pass has ended, the
    // next reconcile takes its outcome: the wait until the next pass.
    imagesync::reconcile(&is, &ctx).await.unwrap();
    let key = ido_controllers::tasks::TaskKey::of(&is);
    assert!(ctx.tasks.occupied(&key), "a pass runs as a task");
    ctx.tasks.ended(&key).await;
    let is = ctx
        .store
        .get::<ImageSync>(Some(ns), "app")
        .await
        .unwrap()
        .unwrap();
    let Action::Requeue(next) = imagesync::reconcile(&is, &ctx).await.unwrap() else {
        panic!("OnceByTag plans its next pass")
    };
    assert!(next > Duration::from_secs(3500), "{next:?}");
    let v = env.get::<ImageSync>(Some(ns), "app").await.unwrap();
    let st = &v["status"];
    assert_eq!(st["conditions"][0]["type"], "Ready");
    assert_eq!(st["conditions"][0]["status"], "True", "{st}");
    assert_eq!(st["tags"][0]["tag"], "1.2.0");
    assert_eq!(st["tags"][0]["result"], "Copied");
    assert_eq!(st["tags"][0]["destinationDigest"], json!(layout.digest));
    assert_eq!(st["tagSummary"], "1/1");
    let (_, d) = skopeo_raw(&dst, "mirror/app:1.2.0", dir.path()).await.unwrap();
    assert_eq!(d, layout.digest);

    // Reconciled again (as after its own status write): not due, nothing copied.
    let is = ctx
        .store
        .get::<ImageSync>(Some(ns), "app")
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        imagesync::reconcile(&is, &ctx).await.unwrap(),
        Action::Requeue(d) if d > Duration::from_secs(3500)
    ));
    let events: Vec<String> = env
        .list::<K8sEvent>(Some(ns))
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["Synced"]);
    let all = serde_json::to_string(&env.list::<ImageSync>(Some(ns)).await).unwrap()
        + &serde_json::to_string(&env.list::<K8sEvent>(Some(ns)).await).unwrap();
    assert!(!all.contains("op-src-pw") && !all.contains("op-dst-pw"));
}

/// An ImageSync deleted in the middle of its pass: kube-runtime does not reconcile a deleted
/// object, so the operator's watch cancels the pass as the deletion arrives, instead of the
/// transfer running on until its next progress write.
#[tokio::test]
async fn a_deleted_imagesyncs_pass_is_cancelled_by_the_operator() {
    use ido_testkit::fault_proxy::{Fault, FaultProxy, Rule};

    let plain = || RegistryOptions {
        tls: false,
        auth: None,
    };
    let (src, dst) = tokio::join!(DockerRegistry::start(plain()), DockerRegistry::start(plain()));
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "1.0.0", &["linux/amd64"], 1, 4096, 11)
        .await
        .unwrap();
    push_layout(&layout, &src, "app:1.0.0").await.unwrap();
    // Blobs at 128 bytes a second: the pass would take half a minute.
    let proxy = FaultProxy::start(&src.base_url()).await.unwrap();
    proxy.set_rules(vec![
        Rule::new(Fault::Throttle { bytes_per_sec: 128 })
            .method("GET")
            .path("/blobs/"),
    ]);

    let env = Env::new("imagesync-delete", json!({})).await;
    let ns = env.ns.as_str();
    env.create(&image_sync(
        ns,
        "slow",
        sync_spec(
            SyncEndpoint {
                name: format!("{}/app", proxy.host()),
                version: Some("1.0.0".into()),
                tls_verify: Some(false),
                ..Default::default()
            },
            SyncEndpoint {
                name: format!("{}/mirror/app", dst.host()),
                tls_verify: Some(false),
                ..Default::default()
            },
            1,
        ),
    ))
    .await;
    let client = env.operator_client().await;
    let ctx = sync_context(&env, client.clone());
    let op = tokio::spawn(ido_operator::controller::run(
        client,
        ctx.clone(),
        ido_operator::controller::Concurrency {
            images: 1,
            syncs: 1,
            releases: 1,
        },
        std::future::pending::<()>,
    ));
    let key = ido_controllers::tasks::TaskKey::named::<ImageSync>(Some(ns), "slow");
    crate::wait_for("the pass to start", async || {
        ctx.tasks.occupied(&key) && proxy.counts().requests > 0
    })
    .await;
    env.delete::<ImageSync>(Some(ns), "slow").await;
    let started = std::time::Instant::now();
    crate::wait_for("the pass to be cancelled", async || {
        !ctx.tasks.occupied(&key) && ctx.tasks.running() == 0
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancelled {:?} after the deletion",
        started.elapsed()
    );
    assert!(
        skopeo_raw(&dst, "mirror/app:1.0.0", dir.path()).await.is_err(),
        "nothing was copied"
    );
    op.abort();
}
