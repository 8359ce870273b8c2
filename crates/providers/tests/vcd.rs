//! The VCD provider against the fake VCD of the test kit (HTTPS, faithful upload flow) and
//! SeaweedFS as the S3 source (shared by the tests of this binary).

use std::{path::Path, time::Duration};

use ido_io::{
    http::TlsOptions,
    s3::{S3Location, S3Object, S3Source, node_image_key},
};
use ido_providers::{
    Progress, Provider, ProviderError,
    vcd::{VcdConfig, VcdCredentials, VcdLocation, VcdProvider},
};
use ido_testkit::{
    OvaFixture, SeaweedFs,
    fakes::vcd::{FailStep, FakeVcd, FakeVcdOptions, Seed},
    invalid_ova,
    seaweed::{PUBLIC_BUCKET, REGION},
    tar_bytes,
};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// A fake VCD, the shared S3 store and a scratch directory for fixtures.
struct World {
    vcd: FakeVcd,
    s3: &'static SeaweedFs,
    source: S3Source,
    dir: TempDir,
}

impl World {
    async fn new(opts: FakeVcdOptions) -> Self {
        let vcd = FakeVcd::start(opts).await.expect("fake vcd");
        let s3 = SeaweedFs::shared().await.expect("seaweedfs");
        let http = ido_io::http::client(&TlsOptions::default(), "s3.caBundle").unwrap();
        let loc = S3Location {
            bucket: PUBLIC_BUCKET.into(),
            region: REGION.into(),
            endpoint: Some(s3.endpoint()),
            http: false,
            credentials: None,
        };
        let source = S3Source::new(&loc, http).unwrap();
        Self {
            vcd,
            s3,
            source,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, locations: &[(&str, VcdLocation)]) -> VcdConfig {
        VcdConfig {
            enabled: true,
            ca_bundle: Some(self.vcd.ca_pem()),
            credentials: VcdCredentials {
                url: self.vcd.url().into(),
                username: self.vcd.username(),
                password: self.vcd.password(),
                org: "org1".into(),
                insecure: false,
            },
            locations: locations
                .iter()
                .map(|(n, l)| (n.to_string(), l.clone()))
                .collect(),
            upload_piece_size_mib: Some(1),
            ..Default::default()
        }
    }

    fn provider(&self, locations: &[(&str, VcdLocation)]) -> VcdProvider {
        VcdProvider::new(&self.config(locations)).unwrap()
    }

    /// Writes an OVA fixture and uploads it under `node_image_key("capvcd", image, "ova")`.
    async fn ova(&self, image: &str, disks: &[(&str, u64)]) -> (OvaFixture, S3Object) {
        let path = self.dir.path().join(format!("{image}.ova"));
        let ova = OvaFixture::write(&path, image, disks, "nic0").await.unwrap();
        (ova, self.put(image, path).await)
    }

    async fn put(&self, image: &str, body: impl Into<ido_testkit::ObjectBody>) -> S3Object {
        let key = node_image_key("capvcd", image, "ova");
        self.s3.put_object(PUBLIC_BUCKET, &key, body).await.unwrap();
        self.source.object(&key)
    }
}

fn location(catalog: &str, hardware_version: u32) -> VcdLocation {
    VcdLocation {
        vdc: Some("vdc1".into()),
        catalog: catalog.into(),
        hardware_version,
        ..Default::default()
    }
}

/// Checks that what the fake stored is byte-exact: every disk complete with the fixture's hash.
async fn assert_stored(vcd: &FakeVcd, org: &str, catalog: &str, ova: &OvaFixture) {
    let t = vcd
        .template(org, catalog, &ova.name)
        .expect("template in the fake");
    assert!(t.is_resolved(), "{t:?}");
    assert_eq!(t.description, format!("Node image {}", ova.name));
    for d in &ova.disks {
        let f = t
            .file(&d.name)
            .unwrap_or_else(|| panic!("{} not uploaded: {t:?}", d.name));
        assert_eq!((f.complete, f.received), (true, d.size), "{f:?}");
        assert_eq!(f.sha256.clone().unwrap(), d.sha256().await.unwrap(), "{}", d.name);
    }
}

/// Waits until `cond` holds (or fails after 10 s).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn import_is_a_resolved_template_once_and_delete_removes_it() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = w.provider(&[("main", location("cat1", 19)), ("keep", location("cat2", 0))]);
    let image = "flatcar-stable-1.0.0-kube-1.30.4-tooling-1.0.0-vcd-import";
    let (ova, src) = w
        .ova(image, &[("disk-0.vmdk", 3 * MIB + 17), ("disk-1.vmdk", 1000)])
        .await;
    assert_eq!(p.exists("main", image).await.unwrap(), None);

    let progress = Progress::default();
    let t = p.create("main", image, &src, &progress).await.unwrap();
    assert_eq!(t.path, format!("org1/cat1/{image}"));
    assert!(t.reference.starts_with("urn:vcloud:vapptemplate:"), "{t:?}");
    assert_eq!(progress.get(), ova.total_disk_bytes());
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    // The hardware version went into the OVF in memory; every other byte is the fixture's.
    let seen = w.vcd.template("org1", "cat1", image).unwrap();
    assert_eq!(seen.virtual_system_types(), vec!["vmx-19".to_string()]);
    // ido's mark, on the catalog item (from the start of the upload) and on the template.
    let mark = [("ido.managed-by".to_string(), "ido".to_string())].into();
    assert_eq!((&seen.item_metadata, &seen.metadata), (&mark, &mark));
    assert_eq!(seen.ovf.unwrap(), ova.ovf.replace(">vmx-09<", ">vmx-19<"));

    // hardwareVersion 0 keeps the OVF byte for byte.
    p.create("keep", image, &src, &Progress::default()).await.unwrap();
    assert_eq!(
        w.vcd.template("org1", "cat2", image).unwrap().ovf.unwrap(),
        ova.ovf
    );

    // Idempotent: exists finds it, create does not upload again.
    assert_eq!(p.exists("main", image).await.unwrap(), Some(t.clone()));
    let again = Progress::default();
    assert_eq!(p.create("main", image, &src, &again).await.unwrap(), t);
    assert_eq!(again.get(), 0);
    assert_eq!(w.vcd.templates("cat1").len(), 1);
    assert_eq!(w.vcd.logins(), 1, "one session for everything");

    p.delete("main", image).await.unwrap();
    assert!(w.vcd.templates("cat1").is_empty());
    assert_eq!(p.exists("main", image).await.unwrap(), None);
    p.delete("main", image).await.unwrap(); // absent is success
    assert!(
        w.vcd.template("org1", "cat2", image).is_some(),
        "the other location keeps its copy"
    );
}

#[tokio::test]
async fn missing_source_is_source_missing() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = w.provider(&[("main", location("cat1", 19))]);
    let src = w
        .source
        .object(&node_image_key("capvcd", "img-vcd-never-uploaded", "ova"));
    let e = p
        .create("main", "img-vcd-never-uploaded", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::SourceMissing(_)), "{e:?}");
    assert!(w.vcd.templates("cat1").is_empty());
}

#[tokio::test]
async fn unusable_images_are_invalid_and_leave_nothing() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = w.provider(&[("main", location("cat1", 19))]);
    let invalid = |e: &ProviderError| matches!(e, ProviderError::InvalidImage(_));

    // Not a tar at all.
    let garbage = w.dir.path().join("garbage.ova");
    invalid_ova(&garbage).await.unwrap();
    let src = w.put("img-vcd-garbage", garbage).await;
    let e = p
        .create("main", "img-vcd-garbage", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(invalid(&e), "{e:?}");

    // An OVF that is not XML, and one with a compressed file.
    let src = w
        .put(
            "img-vcd-xml",
            tar_bytes::files(&[("x.ovf", b"<Envelope><oops></Envelope>")]),
        )
        .await;
    let e = p
        .create("main", "img-vcd-xml", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(invalid(&e), "{e:?}");
    let fx = OvaFixture::write(w.dir.path().join("gz.ova"), "gz", &[("disk-0.vmdk", 10)], "nic0")
        .await
        .unwrap();
    let gz = fx
        .ovf
        .replace("ovf:id=\"file1\"", "ovf:compression=\"gzip\" ovf:id=\"file1\"");
    let src = w
        .put(
            "img-vcd-gz",
            tar_bytes::files(&[("gz.ovf", gz.as_bytes()), ("disk-0.vmdk", &[0; 10])]),
        )
        .await;
    let e = p
        .create("main", "img-vcd-gz", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains("compressed")),
        "{e:?}"
    );

    // The OVF names a disk the archive lacks: fails after the catalog item exists.
    let tar = tar_bytes::files(&[("nodisk.ovf", fx.ovf.as_bytes()), ("README", b"hi")]);
    let src = w.put("img-vcd-nodisk", tar).await;
    let e = p
        .create("main", "img-vcd-nodisk", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains("disk-0.vmdk")),
        "{e:?}"
    );

    // A member of another size than the OVF says.
    let tar = tar_bytes::files(&[("size.ovf", fx.ovf.as_bytes()), ("disk-0.vmdk", &[0; 11])]);
    let src = w.put("img-vcd-size", tar).await;
    let e = p
        .create("main", "img-vcd-size", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(invalid(&e), "{e:?}");

    // A truncated OVA: the upload breaks mid-disk.
    w.ova("img-vcd-cut", &[("disk-0.vmdk", 3 * MIB)]).await;
    let bytes = tokio::fs::read(w.dir.path().join("img-vcd-cut.ova"))
        .await
        .unwrap();
    let src = w.put("img-vcd-cut", bytes[..bytes.len() / 2].to_vec()).await;
    let progress = Progress::default();
    let e = p
        .create("main", "img-vcd-cut", &src, &progress)
        .await
        .unwrap_err();
    assert!(invalid(&e), "{e:?}");
    assert!(progress.get() > 0, "some pieces went out before the cut");

    assert!(
        w.vcd.templates("cat1").is_empty(),
        "{:?}",
        w.vcd.templates("cat1")
    );
}

#[tokio::test]
async fn a_failure_at_each_step_leaves_no_catalog_item() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = w.provider(&[("main", location("cat1", 19))]);
    let image = "img-vcd-failures";
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 2 * MIB + 5)]).await;
    for step in [
        FailStep::UploadInit,
        FailStep::Metadata,
        FailStep::Descriptor,
        FailStep::Disk,
        FailStep::Task,
    ] {
        w.vcd.fail(step);
        let e = p
            .create("main", image, &src, &Progress::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, ProviderError::Api(_) | ProviderError::Transport(_)),
            "{step:?}: {e:?}"
        );
        assert!(
            w.vcd.templates("cat1").is_empty(),
            "{step:?} left {:?}",
            w.vcd.templates("cat1")
        );
        w.vcd.heal(step);
    }

    // A login failure: nothing is made either.
    w.vcd.fail(FailStep::Login);
    let fresh = w.provider(&[("main", location("cat1", 19))]);
    let e = fresh
        .create("main", image, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Transport(_)), "{e:?}");
    w.vcd.heal(FailStep::Login);

    // A failed delete is reported, and the next one works.
    p.create("main", image, &src, &Progress::default()).await.unwrap();
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    w.vcd.fail(FailStep::Delete);
    assert!(p.delete("main", image).await.is_err());
    w.vcd.heal(FailStep::Delete);
    p.delete("main", image).await.unwrap();
    assert!(w.vcd.templates("cat1").is_empty());
}

#[tokio::test]
async fn two_locations_upload_concurrently() {
    let w = World::new(FakeVcdOptions::default()).await;
    w.vcd.set_task_delay(Duration::from_millis(300));
    let p = w.provider(&[("a", location("cat1", 19)), ("b", location("cat2", 17))]);
    let image = "img-vcd-two";
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 2 * MIB + 3)]).await;
    let (pa, pb) = (Progress::default(), Progress::default());
    let (a, b) = tokio::join!(p.create("a", image, &src, &pa), p.create("b", image, &src, &pb));
    assert_eq!(a.unwrap().path, format!("org1/cat1/{image}"));
    assert_eq!(b.unwrap().path, format!("org1/cat2/{image}"));
    assert_eq!(
        (pa.get(), pb.get()),
        (ova.total_disk_bytes(), ova.total_disk_bytes())
    );
    assert_eq!(
        w.vcd.max_concurrent_uploads(),
        2,
        "both uploads ran at the same time"
    );
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    assert_stored(&w.vcd, "org1", "cat2", &ova).await;
    let hw = |c: &str| w.vcd.template("org1", c, image).unwrap().virtual_system_types();
    assert_eq!(
        (hw("cat1"), hw("cat2")),
        (vec!["vmx-19".to_string()], vec!["vmx-17".to_string()])
    );
    assert_eq!(w.vcd.logins(), 1);
}

#[tokio::test]
async fn expired_sessions_mid_upload_log_in_again() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = std::sync::Arc::new(w.provider(&[("main", location("cat1", 19))]));

    // Expired between two disk pieces: the refused piece is sent again after a re-login.
    w.vcd.set_transfer_delay(Duration::from_millis(100));
    let (ova, src) = w
        .ova("img-vcd-expire-piece", &[("disk-0.vmdk", 4 * MIB + 1)])
        .await;
    let task = {
        let (p, src) = (p.clone(), src.clone());
        tokio::spawn(async move {
            p.create("main", "img-vcd-expire-piece", &src, &Progress::default())
                .await
        })
    };
    until("the first piece", || {
        w.vcd
            .template("org1", "cat1", "img-vcd-expire-piece")
            .and_then(|t| t.file("disk-0.vmdk").map(|f| f.received > 0))
            .unwrap_or(false)
    })
    .await;
    w.vcd.expire_sessions_now();
    task.await.unwrap().unwrap();
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    assert_eq!(w.vcd.logins(), 2);
    w.vcd.set_transfer_delay(Duration::ZERO);

    // Expired while the upload task runs: the task poll logs in again.
    w.vcd.set_task_delay(Duration::from_millis(500));
    let (ova, src) = w.ova("img-vcd-expire-task", &[("disk-0.vmdk", 1000)]).await;
    let task = {
        let (p, src) = (p.clone(), src.clone());
        tokio::spawn(async move {
            p.create("main", "img-vcd-expire-task", &src, &Progress::default())
                .await
        })
    };
    until("all files in", || {
        w.vcd
            .template("org1", "cat1", "img-vcd-expire-task")
            .is_some_and(|t| t.files.iter().all(|f| f.complete) && t.files.len() == 2)
    })
    .await;
    w.vcd.expire_sessions_now();
    task.await.unwrap().unwrap();
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    assert_eq!(w.vcd.logins(), 3);

    // Short-lived sessions all along.
    w.vcd.set_task_delay(Duration::from_millis(100));
    w.vcd.set_transfer_delay(Duration::from_millis(60));
    w.vcd.expire_sessions_after(Some(Duration::from_millis(150)));
    let (ova, src) = w.ova("img-vcd-short", &[("disk-0.vmdk", 3 * MIB)]).await;
    p.create("main", "img-vcd-short", &src, &Progress::default())
        .await
        .unwrap();
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    assert!(w.vcd.logins() > 4, "{} logins", w.vcd.logins());
}

#[tokio::test]
async fn system_admins_reach_same_named_catalogs_of_other_orgs() {
    let w = World::new(FakeVcdOptions::default()).await;
    let mut cfg = w.config(&[]);
    cfg.credentials.org = "System".into();
    let in_org = |org: &str| VcdLocation {
        org: Some(org.into()),
        ..location("cat1", 0)
    };
    cfg.locations = [
        ("one".to_string(), in_org("org1")),
        ("two".to_string(), in_org("org2")),
    ]
    .into();
    let p = VcdProvider::new(&cfg).unwrap();
    let image = "img-vcd-sysadmin";
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 1234)]).await;
    p.create("one", image, &src, &Progress::default()).await.unwrap();
    assert_eq!(
        p.exists("two", image).await.unwrap(),
        None,
        "org2's cat1 is another catalog"
    );
    let t = p.create("two", image, &src, &Progress::default()).await.unwrap();
    assert_eq!(t.path, format!("org2/cat1/{image}"));
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    assert_stored(&w.vcd, "org2", "cat1", &ova).await;
    p.delete("one", image).await.unwrap();
    assert!(w.vcd.template("org1", "cat1", image).is_none());
    assert_eq!(p.exists("two", image).await.unwrap(), Some(t));
}

#[tokio::test]
async fn leftovers_are_removed_and_existing_templates_kept() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = std::sync::Arc::new(w.provider(&[("main", location("cat1", 19))]));
    // ido's leftovers: their catalog items carry ido's mark.
    let ours = |name: &str, seed: Seed| {
        let id = w.vcd.seed_template("org1", "cat1", name, seed).unwrap();
        w.vcd.set_metadata(&id, true, "ido.managed-by", "ido").unwrap();
        id
    };
    for (name, seed) in [
        ("img-vcd-failed", Seed::Failed),
        ("img-vcd-unfinished", Seed::Unfinished),
    ] {
        ours(name, seed);
        assert_eq!(p.exists("main", name).await.unwrap(), None, "{name}");
        assert!(
            w.vcd.template("org1", "cat1", name).is_none(),
            "{name} was removed"
        );
    }
    // A failed leftover is replaced by a fresh upload.
    ours("img-vcd-redo", Seed::Failed);
    let (ova, src) = w.ova("img-vcd-redo", &[("disk-0.vmdk", 4096)]).await;
    p.create("main", "img-vcd-redo", &src, &Progress::default())
        .await
        .unwrap();
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    // A resolved template of ido's of that name (marked on the template) counts: nothing is
    // uploaded.
    let id = w
        .vcd
        .seed_template("org1", "cat1", "img-vcd-there", Seed::Resolved)
        .unwrap();
    w.vcd.set_metadata(&id, false, "ido.managed-by", "ido").unwrap();
    let progress = Progress::default();
    let t = p.create("main", "img-vcd-there", &src, &progress).await.unwrap();
    assert_eq!(
        (t.reference, progress.get()),
        (format!("urn:vcloud:vapptemplate:{id}"), 0)
    );

    // A delete cut short: exists waits for it and reports the template gone.
    w.vcd.set_task_delay(Duration::from_millis(300));
    let del = {
        let p = p.clone();
        tokio::spawn(async move { p.delete("main", "img-vcd-there").await })
    };
    until("the delete to start", || {
        w.vcd
            .template("org1", "cat1", "img-vcd-there")
            .is_some_and(|t| t.deleting)
    })
    .await;
    del.abort();
    assert_eq!(p.exists("main", "img-vcd-there").await.unwrap(), None);
    assert!(w.vcd.template("org1", "cat1", "img-vcd-there").is_none());
}

fn clash_owner(e: &ProviderError) -> &str {
    match e {
        ProviderError::NameClash { owner, .. } => owner,
        other => panic!("not a name clash: {other:?}"),
    }
}

#[tokio::test]
async fn templates_without_ido_metadata_are_name_clashes_never_removed() {
    let w = World::new(FakeVcdOptions::default()).await;
    let p = w.provider(&[("main", location("cat1", 19))]);
    let (_, src) = w.ova("img-vcd-foreign", &[("disk-0.vmdk", 4096)]).await;

    // Someone else's templates of the name, in any state: reported, never removed, and
    // nothing is uploaded beside them.
    for (seed, status) in [
        (Seed::Resolved, "RESOLVED"),
        (Seed::Failed, "FAILED_CREATION"),
        (Seed::Unfinished, "UNRESOLVED"),
    ] {
        let name = "img-vcd-foreign";
        let id = w.vcd.seed_template("org1", "cat1", name, seed).unwrap();
        w.vcd.set_owner(&id, "alice").unwrap();
        w.vcd.set_metadata(&id, true, "team", "a").unwrap();
        let e = p.exists("main", name).await.unwrap_err();
        assert!(e.is_name_clash(), "{seed:?}: {e:?}");
        assert!(
            e.to_string()
                .starts_with("name clash in location main: org1/cat1/img-vcd-foreign is "),
            "{e}"
        );
        assert_eq!(
            clash_owner(&e),
            format!("a vApp template ({status}, owned by alice) without ido's metadata ido.managed-by=ido")
        );
        let progress = Progress::default();
        let e = p.create("main", name, &src, &progress).await.unwrap_err();
        assert!(e.is_name_clash(), "{seed:?}: {e:?}");
        assert_eq!(progress.get(), 0);
        assert!(p.delete("main", name).await.unwrap_err().is_name_clash());
        let left = w.vcd.templates("cat1");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!((left[0].id.as_str(), left[0].deleting), (id.as_str(), false));
        // A mark of another value is no mark.
        w.vcd
            .set_metadata(&id, false, "ido.managed-by", "someone")
            .unwrap();
        assert!(p.exists("main", name).await.unwrap_err().is_name_clash());
        // Its owner removes it (the fake's inspection API stands in for them).
        w.vcd.set_metadata(&id, true, "ido.managed-by", "ido").unwrap();
        if seed == Seed::Resolved {
            p.delete("main", name).await.unwrap();
        } else {
            assert_eq!(
                p.exists("main", name).await.unwrap(),
                None,
                "adopted, then removed as a leftover"
            );
        }
        assert!(w.vcd.templates("cat1").is_empty());
    }

    // A template made before ido marked its uploads is adopted by setting the metadata on it.
    let id = w
        .vcd
        .seed_template("org1", "cat1", "img-vcd-old", Seed::Resolved)
        .unwrap();
    assert!(p.exists("main", "img-vcd-old").await.unwrap_err().is_name_clash());
    w.vcd.set_metadata(&id, false, "ido.managed-by", "ido").unwrap();
    let t = p.exists("main", "img-vcd-old").await.unwrap().expect("adopted");
    assert_eq!(t.reference, format!("urn:vcloud:vapptemplate:{id}"));
}

#[tokio::test]
async fn an_abandoned_upload_is_removed() {
    let w = World::new(FakeVcdOptions::default()).await;
    w.vcd.set_transfer_delay(Duration::from_millis(100));
    let p = std::sync::Arc::new(w.provider(&[("main", location("cat1", 19))]));
    let image = "img-vcd-abandoned";
    let (_, src) = w.ova(image, &[("disk-0.vmdk", 5 * MIB)]).await;
    let task = {
        let p = p.clone();
        tokio::spawn(async move { p.create("main", image, &src, &Progress::default()).await })
    };
    until("the upload to start", || {
        w.vcd
            .template("org1", "cat1", image)
            .and_then(|t| t.file("disk-0.vmdk").map(|f| f.received > 0))
            .unwrap_or(false)
    })
    .await;
    task.abort();
    until("the template to go", || w.vcd.templates("cat1").is_empty()).await;
}

#[tokio::test]
async fn bad_credentials_and_locations_are_clear_errors() {
    let w = World::new(FakeVcdOptions::default()).await;
    let secret = w.vcd.password();
    let no_secret = |e: &ProviderError| {
        let s = format!("{e} {e:?}");
        assert!(!s.contains(&secret), "password in {s}");
        s
    };
    let config_key = |e: &ProviderError| match e {
        ProviderError::Config { key, .. } => key.clone(),
        other => panic!("expected a config error, got {other:?}"),
    };

    let mut cfg = w.config(&[("main", location("cat1", 19))]);
    cfg.credentials.password = "not-the-password".into();
    let p = VcdProvider::new(&cfg).unwrap();
    assert!(!format!("{p:?} {cfg:?}").contains("not-the-password"));
    let e = p.exists("main", "img").await.unwrap_err();
    assert_eq!(config_key(&e), "vcd.credentials");
    assert!(!no_secret(&e).contains("not-the-password"));

    let mut cfg = w.config(&[("main", location("cat1", 19))]);
    cfg.credentials.org = "no-such-org".into();
    let e = VcdProvider::new(&cfg)
        .unwrap()
        .exists("main", "img")
        .await
        .unwrap_err();
    assert_eq!(config_key(&e), "vcd.credentials");
    assert!(no_secret(&e).contains("no-such-org"));
    assert!(w.vcd.failed_logins() >= 2);

    let p = w.provider(&[
        ("nocat", location("no-such-catalog", 19)),
        (
            "otherorg",
            VcdLocation {
                org: Some("org2".into()),
                ..location("cat1", 19)
            },
        ),
    ]);
    let e = p.exists("nocat", "img").await.unwrap_err();
    assert_eq!(config_key(&e), "vcd.locations.nocat.catalog");
    assert!(no_secret(&e).contains("no-such-catalog"));
    let e = p.delete("otherorg", "img").await.unwrap_err();
    assert_eq!(config_key(&e), "vcd.locations.otherorg.catalog");
    assert!(no_secret(&e).contains("org2"));
    let e = p.exists("nope", "img").await.unwrap_err();
    assert_eq!(config_key(&e), "vcd.locations.nope");

    let mut cfg = w.config(&[("main", location("cat1", 19))]);
    cfg.credentials.password.clear();
    assert_eq!(
        config_key(&VcdProvider::new(&cfg).unwrap_err()),
        "vcd.credentials.password"
    );
    cfg.credentials.password = secret.clone();
    cfg.ca_bundle = Some("not a PEM".into());
    let e = VcdProvider::new(&cfg).unwrap_err();
    assert!(
        matches!(&e, ProviderError::Config { key, .. } if key == "vcd.caBundle"),
        "{e:?}"
    );
    cfg.ca_bundle = None; // the fake's CA is not trusted then
    let e = VcdProvider::new(&cfg)
        .unwrap()
        .exists("main", "img")
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Transport(_)), "{e:?}");
    no_secret(&e);

    let old = World::new(FakeVcdOptions {
        versions: vec!["33.0".into(), "36.0".into()],
        ..Default::default()
    })
    .await;
    let e = old
        .provider(&[("main", location("cat1", 0))])
        .exists("main", "img")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Api(m) if m.to_string().contains("37.0")),
        "{e:?}"
    );
}

/// What the child process of [`no_local_files_are_written_during_an_import`] needs.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildJob {
    vcd_url: String,
    ca_pem: String,
    username: String,
    password: String,
    s3_endpoint: String,
    key: String,
    image: String,
}

const CHILD_ENV: &str = "IDO_VCD_CHILD_JOB";

/// Runs one import in a child process whose TMPDIR and working directory are empty
/// directories, and checks they stay empty: the OVA goes from S3 to VCD without a file.
#[tokio::test]
async fn no_local_files_are_written_during_an_import() {
    let w = World::new(FakeVcdOptions::default()).await;
    let image = "img-vcd-no-disk";
    let (ova, src) = w
        .ova(image, &[("disk-0.vmdk", 3 * MIB + 1), ("disk-1.vmdk", 512)])
        .await;
    let job = ChildJob {
        vcd_url: w.vcd.url().into(),
        ca_pem: w.vcd.ca_pem(),
        username: w.vcd.username(),
        password: w.vcd.password(),
        s3_endpoint: w.s3.endpoint(),
        key: src.key().into(),
        image: image.into(),
    };
    let job_file = w.dir.path().join("job.json");
    std::fs::write(&job_file, serde_json::to_vec(&job).unwrap()).unwrap();
    let (tmp, cwd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_imports_without_local_files",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env("TMPDIR", tmp.path())
        .env(CHILD_ENV, &job_file)
        .current_dir(cwd.path())
        .output()
        .await
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{log}");
    assert!(log.contains("1 passed"), "the child test did not run:\n{log}");
    assert_stored(&w.vcd, "org1", "cat1", &ova).await;
    for dir in [tmp.path(), cwd.path()] {
        assert_eq!(
            entries(dir),
            Vec::<String>::new(),
            "files written under {}",
            dir.display()
        );
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect()
}

/// The child half of [`no_local_files_are_written_during_an_import`] (does nothing alone).
#[tokio::test]
#[ignore = "run by no_local_files_are_written_during_an_import in a child process"]
async fn child_imports_without_local_files() {
    ido_testkit::install_crypto_provider();
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let job: ChildJob = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cfg = VcdConfig {
        enabled: true,
        ca_bundle: Some(job.ca_pem),
        credentials: VcdCredentials {
            url: job.vcd_url,
            username: job.username,
            password: job.password,
            org: "org1".into(),
            insecure: false,
        },
        locations: [("main".to_string(), location("cat1", 19))].into(),
        upload_piece_size_mib: Some(1),
        ..Default::default()
    };
    let http = ido_io::http::client(&TlsOptions::default(), "s3.caBundle").unwrap();
    let source = S3Source::new(
        &S3Location {
            bucket: PUBLIC_BUCKET.into(),
            region: REGION.into(),
            endpoint: Some(job.s3_endpoint),
            http: false,
            credentials: None,
        },
        http,
    )
    .unwrap();
    let p = VcdProvider::new(&cfg).unwrap();
    let progress = Progress::default();
    p.create("main", &job.image, &source.object(&job.key), &progress)
        .await
        .unwrap();
    assert!(progress.get() > 3 * MIB);
}
