//! End to end: Releases → NodeImages → VM templates in the vCenter simulator, from OVAs in
//! SeaweedFS, driven by the `ido run` driver over the file store. pyvmomi is the oracle.

use std::{path::Path, sync::Arc, time::Duration};

use ido_api::{LocationState, NodeImage, NodeImageState, Release, nodeimage, release};
use ido_controllers::{
    Context, Store,
    config::Config,
    file_store::FileStore,
    run::{Manifest, Report, RunOptions, apply_desired, run},
};
use ido_io::s3::node_image_key;
use ido_testkit::{
    oracle::oracle_list_vms,
    ova::{OvaFixture, invalid_ova},
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};
use serde_json::{Value, json};

const FLATCAR: &str = "3975.2.0";

fn release(name: &str, kube: &str) -> Release {
    Release::with_components(
        name,
        &[
            ("flatcar", FLATCAR),
            ("kubernetes", kube),
            ("os-tooling", "v1.18.1"),
        ],
    )
}

fn image_of(kube: &str) -> String {
    format!(
        "flatcar-stable-{FLATCAR}-kube-{}-tooling-1.18.1-gs",
        kube.trim_start_matches('v')
    )
}

/// Publishes an OVA for `image` in the public bucket; returns the declared disk bytes.
async fn publish(s3: &SeaweedFs, dir: &Path, image: &str) -> u64 {
    let path = dir.join(format!("{image}.ova"));
    let f = OvaFixture::write(
        &path,
        "flatcar",
        &[("disk-0.vmdk", 300_000), ("disk-1.vmdk", 70_000)],
        "nic0",
    )
    .await
    .unwrap();
    s3.put_object(
        PUBLIC_BUCKET,
        &node_image_key("capv", image, "ova"),
        path.as_path(),
    )
    .await
    .unwrap();
    f.total_disk_bytes()
}

fn config(s3: &SeaweedFs, vc: &Vcsim, locations: Value, extra: Value) -> Config {
    let mut v = json!({
        "namespace": "giantswarm",
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
        "vsphere": {
            "enabled": true,
            "caBundle": vc.ca_pem().unwrap(),
            "credentials": {"vcenter": vc.url(), "username": vc.username(), "password": vc.password()},
            "locations": locations,
        }
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    Config::from_value(v).unwrap()
}

fn dc0(extra: Value) -> Value {
    let mut l = json!({"datacenter": "DC0", "datastore": "LocalDS_0", "cluster": "DC0_C0", "folder": "vm"});
    for (k, val) in extra.as_object().unwrap() {
        l[k] = val.clone();
    }
    l
}

struct Env {
    ctx: Arc<Context<FileStore>>,
}

impl Env {
    fn new(config: &Config, state: &Path) -> Self {
        use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
        let targets: tracing_subscriber::filter::Targets = std::env::var("IDO_LOG")
            .unwrap_or_default()
            .parse()
            .unwrap_or_default();
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .with(targets)
            .try_init();
        let store = FileStore::open(state).unwrap();
        Self {
            ctx: Arc::new(config.context(store).unwrap()),
        }
    }

    async fn run(&self, releases: &[Release]) -> Report {
        let m: Vec<Manifest> = releases
            .iter()
            .cloned()
            .map(|r| Manifest::Release(Box::new(r)))
            .collect();
        apply_desired(&self.ctx.store, &m).await.unwrap();
        let opts = RunOptions {
            timeout: Duration::from_secs(120),
            ..RunOptions::default()
        };
        let report = run(self.ctx.clone(), opts).await.unwrap();
        eprintln!("{}", report.table());
        report
    }

    async fn images(&self) -> Vec<NodeImage> {
        self.ctx.store.list::<NodeImage>().await.unwrap()
    }

    fn uploads(&self) -> usize {
        self.ctx
            .store
            .events()
            .iter()
            .filter(|e| e.event.reason == "Uploaded")
            .count()
    }
}

async fn templates(vc: &Vcsim) -> Vec<(String, bool)> {
    oracle_list_vms(vc, "/DC0/vm")
        .await
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["template"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[tokio::test]
async fn import_idempotency_and_delete() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = image_of("v1.30.4");
    let disk_bytes = publish(s3, dir.path(), &image).await;
    let cfg = config(s3, &vc, json!({"loc1": dc0(json!({}))}), json!({}));
    let env = Env::new(&cfg, &dir.path().join("state"));

    // Import → Available, a template the oracle sees.
    let rel = release("vsphere-30.0.0", "v1.30.4");
    let report = env.run(std::slice::from_ref(&rel)).await;
    assert!(report.ok(), "{}", report.table());
    let ni = &env.images().await[0];
    assert_eq!(
        ni.metadata.name.as_deref(),
        Some(format!("capv-{image}").as_str())
    );
    let st = ni.status.as_ref().unwrap();
    assert_eq!(st.state, NodeImageState::Available);
    assert_eq!(st.releases, vec!["vsphere-30.0.0".to_string()]);
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.locations.len(), 1);
    assert_eq!(st.locations[0].state, LocationState::Available);
    assert_eq!(
        st.locations[0].bytes_transferred, disk_bytes,
        "bytes on the wire = disk sizes in the OVF"
    );
    assert!(
        ni.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == nodeimage::FINALIZER)
    );
    let rel_stored = env
        .ctx
        .store
        .get::<Release>(None, "vsphere-30.0.0")
        .await
        .unwrap()
        .unwrap();
    assert!(
        rel_stored
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == release::FINALIZER)
    );
    assert!(templates(&vc).await.contains(&(image.clone(), true)));
    assert_eq!(env.uploads(), 1);

    // Idempotency: a second run imports nothing and keeps the same template.
    let template = st.locations[0].template.clone();
    let report = env.run(std::slice::from_ref(&rel)).await;
    assert!(report.ok());
    assert_eq!(env.uploads(), 1, "no second import");
    assert_eq!(
        env.images().await[0].status.as_ref().unwrap().locations[0].template,
        template
    );

    // Delete: running without the Release removes the template and the NodeImage.
    let report = env.run(&[]).await;
    assert!(report.ok(), "{}", report.table());
    assert!(env.images().await.is_empty());
    assert!(env.ctx.store.list::<Release>().await.unwrap().is_empty());
    assert!(!templates(&vc).await.iter().any(|(n, _)| n == &image));
}

#[tokio::test]
async fn two_locations_with_suffix_and_retention() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = image_of("v1.31.1");
    publish(s3, dir.path(), &image).await;
    let locations = json!({
        "a": dc0(json!({})),
        "b": dc0(json!({"imagesuffix": "b", "network": "DC0_DVPG0", "host": "DC0_C0_H1"})),
    });
    let cfg = config(s3, &vc, locations, json!({"imageRetentionPeriod": "1h"}));
    let env = Env::new(&cfg, &dir.path().join("state"));
    let rel = release("vsphere-31.0.0", "1.31.1");
    let report = env.run(std::slice::from_ref(&rel)).await;
    assert!(report.ok(), "{}", report.table());
    let t = templates(&vc).await;
    assert!(t.contains(&(image.clone(), true)), "{t:?}");
    assert!(t.contains(&(format!("{image}-b"), true)), "{t:?}");
    let st = env.images().await[0].status.clone().unwrap();
    assert_eq!(
        st.locations
            .iter()
            .map(|l| l.location.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );

    // Release removed with a retention period: kept, AwaitingDeletion, templates stay.
    let report = env.run(&[]).await;
    assert!(report.ok(), "{}", report.table());
    let ni = env.images().await.remove(0);
    assert_eq!(
        ni.status.as_ref().unwrap().state,
        NodeImageState::AwaitingDeletion
    );
    assert!(ni.status.as_ref().unwrap().releases.is_empty());
    assert!(
        ni.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(nodeimage::LAST_USED_ANNOTATION)
    );
    assert_eq!(
        templates(&vc)
            .await
            .iter()
            .filter(|(n, _)| n.starts_with(&image))
            .count(),
        2
    );

    // Re-added: in use again, annotation dropped, no new import.
    let uploads = env.uploads();
    let report = env.run(std::slice::from_ref(&rel)).await;
    assert!(report.ok(), "{}", report.table());
    let ni = env.images().await.remove(0);
    assert_eq!(ni.status.as_ref().unwrap().state, NodeImageState::Available);
    assert_eq!(
        ni.status.as_ref().unwrap().releases,
        vec!["vsphere-31.0.0".to_string()]
    );
    assert!(
        !ni.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(nodeimage::LAST_USED_ANNOTATION)
    );
    assert_eq!(env.uploads(), uploads);
}

#[tokio::test]
async fn missing_and_invalid_sources() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = image_of("v1.29.9");
    let bad_path = dir.path().join("bad.ova");
    invalid_ova(&bad_path).await.unwrap();
    s3.put_object(
        PUBLIC_BUCKET,
        &node_image_key("capv", &bad, "ova"),
        bad_path.as_path(),
    )
    .await
    .unwrap();
    let cfg = config(s3, &vc, json!({"loc1": dc0(json!({}))}), json!({}));
    let env = Env::new(&cfg, &dir.path().join("state"));

    // 1.28.0 has no OVA in the bucket: Missing, not an error loop; 1.29.9 is garbage: Error.
    let report = env
        .run(&[
            release("vsphere-28.0.0", "1.28.0"),
            release("vsphere-29.0.0", "1.29.9"),
        ])
        .await;
    assert!(!report.ok());
    let images = env.images().await;
    let state_of = |k: &str| {
        images
            .iter()
            .find(|n| n.spec.name == image_of(k))
            .unwrap()
            .status
            .clone()
            .unwrap()
    };
    let missing = state_of("1.28.0");
    assert_eq!(missing.state, NodeImageState::Missing);
    assert!(missing.conditions.iter().any(|c| c.reason == "SourceMissing"));
    let invalid = state_of("1.29.9");
    assert_eq!(invalid.state, NodeImageState::Error);
    assert!(
        invalid.locations[0].message.contains("invalid image"),
        "{:?}",
        invalid.locations
    );
    // Nothing half-made is left in the simulator.
    let names: Vec<String> = templates(&vc).await.into_iter().map(|t| t.0).collect();
    assert!(!names.iter().any(|n| n.contains("flatcar")), "{names:?}");
}

#[tokio::test]
async fn skipped_and_invalid_releases() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(s3, &vc, json!({"loc1": dc0(json!({}))}), json!({}));
    let env = Env::new(&cfg, &dir.path().join("state"));
    let mut broken = release("vsphere-32.0.0", "1.32.0");
    broken.spec.components.retain(|c| c.name != "os-tooling");
    let report = env.run(&[release("proxmox-1.0.0", "1.30.0"), broken]).await;
    // The disabled provider's Release is skipped without a finalizer; the broken one fails
    // clearly, once, without a finalizer.
    let prox = env
        .ctx
        .store
        .get::<Release>(None, "proxmox-1.0.0")
        .await
        .unwrap()
        .unwrap();
    assert!(prox.metadata.finalizers.unwrap_or_default().is_empty());
    let broken = env
        .ctx
        .store
        .get::<Release>(None, "vsphere-32.0.0")
        .await
        .unwrap()
        .unwrap();
    assert!(broken.metadata.finalizers.unwrap_or_default().is_empty());
    assert!(env.images().await.is_empty());
    let rows: Vec<_> = report
        .rows
        .iter()
        .map(|r| (r.name.as_str(), r.state.as_str(), r.ok))
        .collect();
    assert!(rows.contains(&("proxmox-1.0.0", "Skipped", true)), "{rows:?}");
    assert!(rows.contains(&("vsphere-32.0.0", "Invalid", false)), "{rows:?}");
    let warnings = env
        .ctx
        .store
        .events()
        .iter()
        .filter(|e| e.event.reason == "MissingComponent")
        .count();
    assert_eq!(warnings, 1, "one warning, no error loop");
}

#[test]
fn bad_config_values_name_the_key() {
    ido_testkit::install_crypto_provider();
    let err = |v: Value| Config::from_value(v).unwrap_err().to_string();
    let e = err(json!({"imageRetentionPeriod": "forever"}));
    assert!(e.contains("imageRetentionPeriod") && e.contains("forever"), "{e}");
    let e = err(json!({"concurrency": {"images": "many"}}));
    assert!(e.contains("concurrency.images"), "{e}");
    let e = err(json!({"vsphere": {"credentials": {"vcenter": "x", "username": "u", "password": 7}}}));
    assert!(e.contains("vsphere") && !e.contains('7'), "{e}");
    let cfg = Config::from_value(json!({
        "vsphere": {"enabled": true, "credentials": {"vcenter": "vc.example", "username": "u", "password": "secret-pw"},
                    "locations": {"l1": {"datacenter": "DC0", "cluster": "C", "folder": "vm"}}}
    }))
    .unwrap();
    let e = cfg.providers().err().unwrap().to_string();
    assert!(e.contains("vsphere.locations.l1.datastore"), "{e}");
    assert!(!e.contains("secret-pw"));
    let cfg = Config::from_value(json!({"s3": {"bucket": "Bad Bucket", "region": "eu-west-1"}})).unwrap();
    let e = cfg.source().err().unwrap().to_string();
    assert!(e.contains("s3.bucket") && e.contains("Bad Bucket"), "{e}");
}

#[tokio::test]
async fn retention_expiry_deletes_the_image() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = image_of("v1.34.0");
    publish(s3, dir.path(), &image).await;
    let cfg = config(
        s3,
        &vc,
        json!({"loc1": dc0(json!({}))}),
        json!({"imageRetentionPeriod": "2s"}),
    );
    let env = Env::new(&cfg, &dir.path().join("state"));
    let report = env.run(&[release("vsphere-34.0.0", "1.34.0")]).await;
    assert!(report.ok(), "{}", report.table());
    assert!(templates(&vc).await.contains(&(image.clone(), true)));
    // Unused: kept for 2 s (AwaitingDeletion), then deleted with its template, in one run.
    let started = std::time::Instant::now();
    let report = env.run(&[]).await;
    assert!(report.ok(), "{}", report.table());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "kept for the retention period"
    );
    assert!(env.images().await.is_empty());
    assert!(!templates(&vc).await.iter().any(|(n, _)| n == &image));
    let reasons: Vec<String> = env
        .ctx
        .store
        .events()
        .iter()
        .map(|e| e.event.reason.clone())
        .collect();
    assert!(reasons.contains(&"RetentionExpired".to_string()), "{reasons:?}");
}

/// A name clash end to end: a running VM ido did not make, with the template's name, is
/// reported on the NodeImage (location Error, reason NameClash, an event) and never touched,
/// on import and on deletion; once its owner removes it, the NodeImage goes.
#[tokio::test]
async fn a_foreign_vm_with_the_template_name_is_a_name_clash_left_alone() {
    use ido_api::condition;
    use ido_controllers::nodeimage::NAME_CLASH;
    use ido_providers::vsphere::{VsphereConfig, VsphereProvider};
    use ido_testkit::{
        oracle::oracle_find,
        vcsim::{RESOURCE_POOL_PATH, VM_FOLDER},
    };

    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kube = "1.31.1";
    let image = image_of(kube);
    publish(s3, dir.path(), &image).await;
    let cfg = config(s3, &vc, json!({"loc1": dc0(json!({}))}), json!({}));
    let env = Env::new(&cfg, &dir.path().join("state"));

    // Someone else's running VM named like the template.
    let vcfg: VsphereConfig = serde_json::from_value(json!({
        "enabled": true,
        "caBundle": vc.ca_pem().unwrap(),
        "credentials": {"vcenter": vc.url(), "username": vc.username(), "password": vc.password()},
        "locations": {"loc1": dc0(json!({}))},
    }))
    .unwrap();
    let own = VsphereProvider::new(&vcfg).unwrap();
    let c = own.client();
    let folder = c.find_by_inventory_path(VM_FOLDER).await.unwrap().unwrap();
    let pool = c
        .find_by_inventory_path(RESOURCE_POOL_PATH)
        .await
        .unwrap()
        .unwrap();
    let spec = format!(
        concat!(
            "<config><name>{}</name><guestId>otherGuest</guestId>",
            "<files><vmPathName>[LocalDS_0]</vmPathName></files><numCPUs>1</numCPUs><memoryMB>64</memoryMB></config>",
            r#"<pool type="ResourcePool">{}</pool>"#
        ),
        image, pool.value
    );
    c.run_task("CreateVM_Task", &folder, &spec).await.unwrap();
    let path = format!("{VM_FOLDER}/{image}");
    let vm = c.find_by_inventory_path(&path).await.unwrap().unwrap();
    c.run_task("PowerOnVM_Task", &vm, "").await.unwrap();
    let before = oracle_find(&vc, &path).await.unwrap().unwrap();

    let rel = release("vsphere-31.0.0", kube);
    env.run(std::slice::from_ref(&rel)).await;
    let nis = env.images().await;
    let st = nis[0].status.clone().unwrap();
    assert_eq!(st.state, NodeImageState::Error);
    let l = &st.locations[0];
    assert_eq!(l.state, LocationState::Error);
    assert!(
        l.message
            .starts_with(&format!("name clash in location loc1: {path} (VirtualMachine:")),
        "{}",
        l.message
    );
    assert!(
        l.message.contains("is a powered-on VM without ido's mark"),
        "{}",
        l.message
    );
    for t in [nodeimage::conditions::READY, nodeimage::conditions::DEGRADED] {
        let cond = condition::find(&st.conditions, t).unwrap();
        assert_eq!(cond.reason, NAME_CLASH, "{t}: {cond:?}");
        assert!(cond.message.contains(&l.message), "{t}: {cond:?}");
    }
    assert!(
        env.ctx
            .store
            .events()
            .iter()
            .any(|e| e.event.reason == NAME_CLASH),
        "a NameClash event"
    );
    assert_eq!(
        oracle_find(&vc, &path).await.unwrap().unwrap(),
        before,
        "neither deleted nor replaced"
    );

    // The release goes: the NodeImage keeps its finalizer while the name is taken, and
    // the VM stays.
    env.run(&[]).await;
    let nis = env.images().await;
    assert_eq!(nis.len(), 1, "held by its finalizer");
    let st = nis[0].status.clone().unwrap();
    assert_eq!(st.locations[0].state, LocationState::Error);
    assert_eq!(
        condition::find(&st.conditions, nodeimage::conditions::READY)
            .unwrap()
            .reason,
        NAME_CLASH
    );
    assert_eq!(oracle_find(&vc, &path).await.unwrap().unwrap(), before);

    // Its owner removes it: the NodeImage goes.
    c.power_off(&vm).await.unwrap();
    c.destroy(&vm).await.unwrap();
    env.run(&[]).await;
    assert!(env.images().await.is_empty());
}

/// A Release creates its NodeImage, then records itself in `status.releases` in a second
/// write. A NodeImage reconcile in between (the template already there: Available at once)
/// must not take the image for unused and delete it, even without retention.
#[tokio::test]
async fn a_new_node_image_waits_for_its_release_to_record_itself() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let vc = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = image_of("v1.35.0");
    publish(s3, dir.path(), &image).await;
    let cfg = config(
        s3,
        &vc,
        json!({"loc1": dc0(json!({}))}),
        json!({"imageRetentionPeriod": "0"}),
    );
    let env = Env::new(&cfg, &dir.path().join("state"));
    let ni: NodeImage = serde_json::from_value(json!({
        "apiVersion": "image.giantswarm.io/v1alpha1", "kind": "NodeImage",
        "metadata": {"name": NodeImage::object_name("capv", &image), "namespace": "giantswarm"},
        "spec": {"name": image, "provider": "capv"},
    }))
    .unwrap();
    env.ctx.store.create(&ni).await.unwrap();
    let get = async || {
        env.ctx
            .store
            .get::<NodeImage>(Some("giantswarm"), &NodeImage::object_name("capv", &image))
            .await
            .unwrap()
    };
    // The first pass makes (or finds) the template; the next ones see no release yet.
    for _ in 0..3 {
        let current = get().await.expect("the NodeImage is still there");
        ido_controllers::nodeimage::reconcile(&current, &env.ctx)
            .await
            .unwrap();
        // The uploads run as a task; wait for it as a driver would be woken by it.
        env.ctx
            .tasks
            .ended(&ido_controllers::tasks::TaskKey::of(&current))
            .await;
    }
    let current = get()
        .await
        .expect("not deleted before its release recorded itself");
    assert_eq!(current.status.unwrap().state, NodeImageState::Available);
    assert!(templates(&vc).await.contains(&(image.clone(), true)));
}
