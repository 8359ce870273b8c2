//! The kubevirt provider over an in-memory DiskImport store, with a loopback S3 endpoint.

use std::sync::Mutex;

use ido_api::{ConditionStatus, DiskImportStatus, condition::Condition};
use ido_io::s3::{S3Location, S3Source};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;

const IMAGE: &str = "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";
const DIGEST: &str = "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4";

/// DiskImports in memory; `then` says what the "cluster" does with a created one.
#[derive(Default)]
struct MemImports {
    objects: Mutex<BTreeMap<(String, String), DiskImport>>,
    created: Mutex<Vec<DiskImport>>,
    deleted: Mutex<Vec<String>>,
    /// Phase a created DiskImport reaches at its first `get`.
    then: Mutex<Option<(DiskImportPhase, String)>>,
    /// DiskSources; a write gives them a resourceVersion.
    sources: Mutex<BTreeMap<(String, String), DiskSource>>,
}

fn with_phase(mut d: DiskImport, phase: DiskImportPhase, message: &str) -> DiskImport {
    let name = d.metadata.name.clone();
    d.status = Some(DiskImportStatus {
        phase,
        claim_name: name,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: if phase == DiskImportPhase::Succeeded {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            observed_generation: Some(1),
            last_transition_time: jiff::Timestamp::now(),
            reason: if phase == DiskImportPhase::Failed {
                "ImportFailed".into()
            } else {
                "Completed".into()
            },
            message: message.into(),
        }],
        ..Default::default()
    });
    d
}

#[async_trait]
impl DiskImports for MemImports {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<DiskImport>> {
        let key = (namespace.to_string(), name.to_string());
        let mut objects = self.objects.lock().unwrap();
        if let Some(d) = objects.get_mut(&key)
            && d.status.is_none()
            && let Some((phase, msg)) = self.then.lock().unwrap().clone()
        {
            *d = with_phase(d.clone(), phase, &msg);
        }
        Ok(objects.get(&key).cloned())
    }
    async fn create(&self, di: &DiskImport) -> Result<DiskImport> {
        let key = (
            di.metadata.namespace.clone().unwrap(),
            di.metadata.name.clone().unwrap(),
        );
        self.created.lock().unwrap().push(di.clone());
        self.objects.lock().unwrap().insert(key, di.clone());
        Ok(di.clone())
    }
    async fn delete(&self, namespace: &str, name: &str) -> Result<()> {
        self.deleted.lock().unwrap().push(format!("{namespace}/{name}"));
        self.objects
            .lock()
            .unwrap()
            .remove(&(namespace.to_string(), name.to_string()));
        Ok(())
    }
    async fn get_disk_source(&self, namespace: &str, name: &str) -> Result<Option<DiskSource>> {
        Ok(self
            .sources
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned())
    }
    async fn put_disk_source(&self, ds: &DiskSource) -> Result<()> {
        let key = (
            ds.metadata.namespace.clone().unwrap(),
            ds.metadata.name.clone().unwrap(),
        );
        let mut sources = self.sources.lock().unwrap();
        let stored = sources
            .get(&key)
            .and_then(|d| d.metadata.resource_version.clone());
        assert_eq!(
            ds.metadata.resource_version, stored,
            "create new, replace as read"
        );
        let mut ds = ds.clone();
        let v = stored.map_or(1, |v| v.parse::<u64>().unwrap() + 1);
        ds.metadata.resource_version = Some(v.to_string());
        sources.insert(key, ds);
        Ok(())
    }
}

/// An S3 endpoint on loopback: the `.sha256` sidecar of every key, 404 for anything else.
async fn s3_object() -> S3Object {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let resp = if path.ends_with(".sha256") {
                    let body = format!("{DIGEST}  f.qcow2\n");
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
                };
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    let loc = S3Location {
        bucket: "images".into(),
        region: String::new(),
        endpoint: Some(endpoint),
        http: false,
        credentials: None,
    };
    ido_testkit::install_crypto_provider();
    let client = ido_io::http::client(&Default::default(), "s3.caBundle").unwrap();
    S3Source::new(&loc, client)
        .unwrap()
        .object(&format!("capk/{IMAGE}/f.qcow2"))
}

fn config() -> KubevirtConfig {
    yaml::from_str(
        r#"
enabled: true
timeoutSeconds: 1
locations:
  vms: {namespace: vm-images, storageClassName: fast, size: 20Gi, accessModes: [ReadWriteMany], volumeMode: Block}
  small: {namespace: small}
"#,
    )
    .unwrap()
}

fn provider(imports: &Arc<MemImports>) -> KubevirtProvider {
    let slot = DiskImportsSlot::default();
    slot.bind(imports.clone());
    KubevirtProvider::new(&config(), slot)
        .unwrap()
        .with_poll(Duration::from_millis(20))
}

#[test]
fn bad_values_name_their_key() {
    let bad = |y: &str| {
        let c: KubevirtConfig = yaml::from_str(y).unwrap();
        match c.validate() {
            Err(ProviderError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        bad("locations: {a: {namespace: Bad_NS}}"),
        "kubevirt.locations.a.namespace"
    );
    assert_eq!(
        bad("locations: {a: {namespace: ok, size: lots}}"),
        "kubevirt.locations.a.size"
    );
    assert_eq!(
        bad("locations: {a: {namespace: ok, accessModes: [RWX]}}"),
        "kubevirt.locations.a.accessModes"
    );
    assert_eq!(bad("timeoutSeconds: 0"), "kubevirt.timeoutSeconds");
    assert!(yaml::from_str::<KubevirtConfig>("locations: {a: {namespace: ok, node: x}}").is_err());
    let p = KubevirtProvider::new(&config(), DiskImportsSlot::default()).unwrap();
    assert_eq!(p.locations(), ["small", "vms"]);
    assert_eq!((p.id(), p.format()), ("capk", SourceFormat::Qcow2));
}

#[tokio::test]
async fn create_makes_a_disk_import_and_waits_for_it() {
    let imports = Arc::new(MemImports::default());
    let p = provider(&imports);
    assert_eq!(p.exists("vms", IMAGE).await.unwrap(), None);
    *imports.then.lock().unwrap() = Some((DiskImportPhase::Succeeded, String::new()));
    let src = s3_object().await;
    let t = p.create("vms", IMAGE, &src, &Progress::default()).await.unwrap();
    assert_eq!(t.reference, format!("PersistentVolumeClaim:vm-images/{IMAGE}"));
    assert_eq!(t.path, format!("vm-images/{IMAGE}"));
    let di = imports.created.lock().unwrap()[0].clone();
    assert_eq!(di.metadata.namespace.as_deref(), Some("vm-images"));
    assert_eq!(di.metadata.name.as_deref(), Some(IMAGE));
    assert_eq!(di.metadata.labels.as_ref().unwrap()[MANAGED_BY_LABEL], MANAGED_BY);
    let http = di.spec.source.http.as_ref().unwrap();
    assert_eq!(http.url, src.download_url().to_string());
    assert!(http.url.ends_with(&format!("capk/{IMAGE}/f.qcow2")));
    assert_eq!(http.checksum.as_deref(), Some(&*format!("sha256:{DIGEST}")));
    assert_eq!(http.secret_ref, None);
    let s = &di.spec.storage;
    assert_eq!(
        (s.storage_class_name.as_deref(), s.size.as_deref(), s.volume_mode),
        (Some("fast"), Some("20Gi"), Some(ido_api::VolumeMode::Block))
    );
    assert_eq!(s.access_modes, ["ReadWriteMany"]);
    assert_eq!(p.exists("vms", IMAGE).await.unwrap(), Some(t));
    assert_eq!(p.exists("small", IMAGE).await.unwrap(), None, "per namespace");

    p.delete("vms", IMAGE).await.unwrap();
    assert_eq!(*imports.deleted.lock().unwrap(), [format!("vm-images/{IMAGE}")]);
    assert_eq!(p.exists("vms", IMAGE).await.unwrap(), None);
}

#[tokio::test]
async fn failed_imports_are_reported_removed_and_retried() {
    let imports = Arc::new(MemImports::default());
    let p = provider(&imports);
    let src = s3_object().await;
    *imports.then.lock().unwrap() = Some((DiskImportPhase::Failed, "checksum mismatch".into()));
    let e = p
        .create("small", IMAGE, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Api(_)), "{e:?}");
    assert!(e.to_string().contains("ImportFailed: checksum mismatch"), "{e}");
    assert!(
        imports.objects.lock().unwrap().is_empty(),
        "nothing half-made is left"
    );

    // A Failed one found at the start is replaced by a new one.
    let failed = with_phase(
        KubevirtProvider::disk_import(&p.locations["small"], IMAGE, "http://x".into(), None),
        DiskImportPhase::Failed,
        "old",
    );
    imports
        .objects
        .lock()
        .unwrap()
        .insert(("small".into(), IMAGE.into()), failed);
    *imports.then.lock().unwrap() = Some((DiskImportPhase::Succeeded, String::new()));
    p.create("small", IMAGE, &src, &Progress::default())
        .await
        .unwrap();
    assert_eq!(imports.created.lock().unwrap().len(), 2);
    assert_eq!(imports.deleted.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_slow_import_is_left_running_and_adopted() {
    let imports = Arc::new(MemImports::default());
    let p = provider(&imports);
    let src = s3_object().await;
    *imports.then.lock().unwrap() = Some((DiskImportPhase::ImportInProgress, String::new()));
    let e = p
        .create("small", IMAGE, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("still ImportInProgress"), "{e}");
    assert_eq!(imports.objects.lock().unwrap().len(), 1, "left running");
    // It succeeds meanwhile: the next create adopts it instead of creating another.
    let key = ("small".to_string(), IMAGE.to_string());
    let d = imports.objects.lock().unwrap()[&key].clone();
    imports
        .objects
        .lock()
        .unwrap()
        .insert(key, with_phase(d, DiskImportPhase::Succeeded, ""));
    p.create("small", IMAGE, &src, &Progress::default())
        .await
        .unwrap();
    assert_eq!(imports.created.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn unbound_store_and_bad_names_are_errors() {
    let p = KubevirtProvider::new(&config(), DiskImportsSlot::default()).unwrap();
    let e = p.exists("vms", IMAGE).await.unwrap_err();
    assert!(matches!(e, ProviderError::Config { .. }), "{e:?}");
    let imports = Arc::new(MemImports::default());
    let p = provider(&imports);
    assert!(matches!(
        p.exists("vms", "Not_A_Name").await,
        Err(ProviderError::InvalidImage(_))
    ));
    assert!(matches!(
        p.exists("nowhere", IMAGE).await,
        Err(ProviderError::Config { .. })
    ));
}

#[tokio::test]
async fn disk_imports_without_ido_label_are_name_clashes_never_deleted() {
    let imports = Arc::new(MemImports::default());
    let p = provider(&imports);
    let src = s3_object().await;
    let mut foreign = with_phase(
        KubevirtProvider::disk_import(&p.locations["small"], IMAGE, "http://x".into(), None),
        DiskImportPhase::Failed,
        "theirs",
    );
    foreign.metadata.labels = Some(BTreeMap::from([(MANAGED_BY_LABEL.into(), "someone".into())]));
    let key = ("small".to_string(), IMAGE.to_string());
    imports
        .objects
        .lock()
        .unwrap()
        .insert(key.clone(), foreign.clone());

    let e = p.exists("small", IMAGE).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "name clash in location small: small/{IMAGE} is a DiskImport (phase Failed) without the label \
             app.kubernetes.io/managed-by=ido; ido does not delete or replace it (rename or remove it, or adopt \
             it by marking it as ido's)"
        )
    );
    let e = p
        .create("small", IMAGE, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(e.is_name_clash(), "{e:?}");
    assert!(p.delete("small", IMAGE).await.unwrap_err().is_name_clash());
    assert!(imports.deleted.lock().unwrap().is_empty(), "nothing deleted");
    assert!(imports.created.lock().unwrap().is_empty(), "nothing created");
    let left = imports.objects.lock().unwrap()[&key].clone();
    assert_eq!(
        serde_json::to_value(&left).unwrap(),
        serde_json::to_value(&foreign).unwrap()
    );
}

/// The family DiskSource of `image`'s family in `vm-images`: (the claim, the image) it names.
fn family_points_at(imports: &MemImports, family: &str) -> Option<(String, String)> {
    imports
        .sources
        .lock()
        .unwrap()
        .get(&("vm-images".to_string(), family.to_string()))
        .map(|d| {
            (
                d.spec.source.pvc.name.clone(),
                d.metadata.annotations.as_ref().unwrap()[NODE_IMAGE_ANNOTATION].clone(),
            )
        })
}

#[tokio::test]
async fn the_family_disk_source_follows_the_newest_imported_image() {
    const FAMILY: &str = "kubevirt-flatcar-stable-kube-1.30";
    const NEWER: &str = "flatcar-stable-4081.2.0-kube-1.30.4-tooling-1.18.1-gs";
    let imports = Arc::new(MemImports::default());
    let p = provider(&imports);
    let src = s3_object().await;
    *imports.then.lock().unwrap() = Some((DiskImportPhase::Succeeded, String::new()));

    // The first image of the family: its DiskSource is created, marked as ido's.
    p.create("vms", IMAGE, &src, &Progress::default()).await.unwrap();
    assert_eq!(
        family_points_at(&imports, FAMILY),
        Some((IMAGE.to_string(), IMAGE.to_string()))
    );
    let ds = imports
        .get_disk_source("vm-images", FAMILY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ds.metadata.labels.unwrap()[MANAGED_BY_LABEL], MANAGED_BY);

    // A newer one moves it; the older one's recheck does not move it back.
    p.create("vms", NEWER, &src, &Progress::default()).await.unwrap();
    assert_eq!(
        family_points_at(&imports, FAMILY),
        Some((NEWER.to_string(), NEWER.to_string()))
    );
    assert!(p.exists("vms", IMAGE).await.unwrap().is_some());
    assert_eq!(family_points_at(&imports, FAMILY).unwrap().1, NEWER);

    // The newer image goes: the next recheck of the remaining one points the family at it.
    p.delete("vms", NEWER).await.unwrap();
    assert_eq!(
        family_points_at(&imports, FAMILY).unwrap().1,
        NEWER,
        "never deleted"
    );
    assert!(p.exists("vms", IMAGE).await.unwrap().is_some());
    assert_eq!(
        family_points_at(&imports, FAMILY),
        Some((IMAGE.to_string(), IMAGE.to_string()))
    );

    // A DiskSource of a family's name that ido did not make is left alone.
    let mut theirs = DiskSource::new(
        "kubevirt-flatcar-stable-kube-1.31",
        DiskSourceSpec {
            source: DiskSourceSource {
                pvc: ClaimReference {
                    name: "their-claim".into(),
                },
            },
        },
    );
    theirs.metadata.namespace = Some("vm-images".into());
    imports.put_disk_source(&theirs).await.unwrap();
    let other = "flatcar-stable-4081.2.0-kube-1.31.0-tooling-1.18.1-gs";
    p.create("vms", other, &src, &Progress::default()).await.unwrap();
    let ds = imports
        .get_disk_source("vm-images", "kubevirt-flatcar-stable-kube-1.31")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ds.spec.source.pvc.name, "their-claim");
    assert!(ds.metadata.annotations.is_none());
}
