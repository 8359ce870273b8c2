//! vSphere pull mode (`vsphere.pullFromURL`) against the project's simulator, which serves
//! `HttpNfcLeasePullFromUrls_Task` itself and reports what it downloaded (`/pull-stats`),
//! with SeaweedFS (plain http) or the simulator's own `/files/` (https) as the S3 source, and
//! pyVmomi as the oracle of what exists.

use std::{path::Path, process::Command};

use ido_io::{
    http::TlsOptions,
    s3::{S3Credentials, S3Location, S3Object, S3Source},
};
use ido_providers::{
    Progress, Provider, ProviderError,
    vsphere::{
        Client, VsphereConfig, VsphereCredentials, VsphereLocation, VsphereProvider,
        lease::{ImportParams, SourceFile},
        pull::{HTTP_THUMBPRINT, ssl_thumbprint},
        soap::SoapError,
        xml::MoRef,
    },
};
use ido_testkit::{
    OvaFixture, SeaweedFs, Vcsim, VcsimOptions,
    oracle::{oracle_find, oracle_list_vms},
    seaweed::{ACCESS_KEY, PRIVATE_BUCKET, PUBLIC_BUCKET, REGION, SECRET_KEY},
    tar_bytes,
    vcsim::{CLUSTER, DATACENTER, DATASTORE, DATASTORE_PATH, NETWORK_PATH, RESOURCE_POOL_PATH, VM_FOLDER},
};
use serde_json::Value;
use tempfile::TempDir;
use url::Url;

/// A simulator, the shared S3 store and a scratch directory for fixtures.
struct World {
    vcsim: Vcsim,
    s3: &'static SeaweedFs,
    dir: TempDir,
    /// Key prefix of this test in the shared buckets.
    prefix: String,
}

impl World {
    async fn new(test: &str, opts: VcsimOptions) -> Self {
        Self {
            vcsim: Vcsim::start(opts).await.expect("vcsim"),
            s3: SeaweedFs::shared().await.expect("seaweedfs"),
            dir: tempfile::tempdir().unwrap(),
            prefix: format!("capv-pull-tests/{test}"),
        }
    }

    /// The bucket `bucket` of SeaweedFS, with the test keys for the private one.
    fn source(&self, bucket: &str) -> S3Source {
        let http = ido_io::http::client(&TlsOptions::default(), "s3.caBundle").unwrap();
        let credentials = (bucket == PRIVATE_BUCKET).then(|| S3Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
        });
        let loc = S3Location {
            bucket: bucket.into(),
            region: REGION.into(),
            endpoint: Some(self.s3.endpoint()),
            http: false,
            credentials,
        };
        S3Source::new(&loc, http).unwrap()
    }

    fn config(&self, pull: bool) -> VsphereConfig {
        VsphereConfig {
            enabled: true,
            pull_from_url: pull,
            ca_bundle: self.vcsim.ca_pem(),
            credentials: VsphereCredentials {
                vcenter: self.vcsim.url().into(),
                username: self.vcsim.username().into(),
                password: self.vcsim.password().into(),
            },
            locations: [("loc1".to_string(), location())].into(),
            ..Default::default()
        }
    }

    /// A provider in pull mode.
    fn provider(&self) -> VsphereProvider {
        VsphereProvider::new(&self.config(true)).unwrap()
    }

    /// Writes an OVA fixture with `disks` to the scratch directory.
    async fn fixture(&self, image: &str, disks: &[(&str, u64)]) -> OvaFixture {
        let path = self.dir.path().join(format!("{image}.ova"));
        OvaFixture::write(&path, image, disks, "nic0").await.unwrap()
    }

    /// Uploads `body` as `<prefix>/<image>.ova` to `bucket`.
    async fn put(&self, bucket: &str, image: &str, body: impl Into<ido_testkit::ObjectBody>) -> S3Object {
        let key = format!("{}/{image}.ova", self.prefix);
        self.s3.put_object(bucket, &key, body).await.unwrap();
        self.source(bucket).object(&key)
    }

    async fn find(&self, path: &str) -> Option<Value> {
        oracle_find(&self.vcsim, path).await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.vcsim.log_path()).unwrap_or_default()
    }
}

fn location() -> VsphereLocation {
    VsphereLocation {
        datacenter: DATACENTER.into(),
        datastore: DATASTORE.into(),
        cluster: CLUSTER.into(),
        folder: "vm".into(),
        ..Default::default()
    }
}

/// Checks that the simulator pulled each disk of `ova` once, whole, from `url`.
async fn assert_pulled(stats: &[Value], ova: &OvaFixture, url: &str, thumbprint: &str) {
    assert_eq!(stats.len(), ova.disks.len(), "{stats:#?}");
    for (i, disk) in ova.disks.iter().enumerate() {
        let s = stats
            .iter()
            .find(|s| s["memberName"] == disk.name.as_str())
            .unwrap_or_else(|| panic!("{} not pulled: {stats:#?}", disk.name));
        assert_eq!(s["error"], "", "{s}");
        assert_eq!(s["targetDeviceId"], format!("/{}/disk:{i}", ova.name), "{s}");
        assert_eq!(s["url"], url, "{s}");
        assert_eq!(s["create"], false, "{s}");
        assert_eq!(s["size"], disk.size, "declared size: {s}");
        assert_eq!(s["bytes"], disk.size, "bytes read: {s}");
        assert_eq!(s["sha256"], disk.sha256().await.unwrap().as_str(), "{s}");
        assert_eq!(s["sslThumbprint"], thumbprint, "{s}");
    }
}

/// `openssl x509 -fingerprint -sha1` of a PEM certificate (or of PEM on stdin).
fn openssl_fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // "SHA1 Fingerprint=AB:CD:…"
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().split_once('=').unwrap().1.to_string()
}

#[tokio::test]
async fn pull_import_is_a_template_with_every_disk_pulled() {
    let w = World::new("import", VcsimOptions::default()).await;
    let p = w.provider();
    let image = "img-pull";
    let ova = w
        .fixture(
            image,
            &[("disk-0.vmdk", 3 * 1024 * 1024 + 17), ("disk-1.vmdk", 1000)],
        )
        .await;
    let src = w.put(PUBLIC_BUCKET, image, ova.path.clone()).await;

    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    assert_eq!(t.path, format!("{VM_FOLDER}/{image}"));
    // Reported once done: the declared sizes (vSphere moved the bytes).
    assert_eq!(progress.get(), ova.total_disk_bytes());
    let seen = w.find(&t.path).await.expect("oracle sees the template");
    assert_eq!(seen["template"], Value::Bool(true), "{seen}");
    assert_eq!(
        format!("VirtualMachine:{}", seen["moref"].as_str().unwrap()),
        t.reference
    );

    // The simulator read each disk from the OVA in S3 (http: thumbprint "0000"); nothing was
    // pushed to the NFC lease.
    let stats = w.vcsim.pull_stats().await.unwrap();
    assert_pulled(&stats, &ova, src.download_url().as_str(), HTTP_THUMBPRINT).await;
    assert!(!w.log().contains("nfc POST"), "{}", w.vcsim.log_tail());

    // Idempotent, and deletable, like a pushed template.
    assert_eq!(p.exists("loc1", image).await.unwrap(), Some(t.clone()));
    assert_eq!(
        p.create("loc1", image, &src, &Progress::default()).await.unwrap(),
        t
    );
    assert_eq!(w.vcsim.pull_stats().await.unwrap().len(), stats.len());
    p.delete("loc1", image).await.unwrap();
    assert_eq!(w.find(&t.path).await, None);
}

#[tokio::test]
async fn pull_from_a_private_bucket_uses_a_presigned_url() {
    let w = World::new("private", VcsimOptions::plain()).await;
    let p = w.provider();
    let image = "img-private";
    let ova = w.fixture(image, &[("disk-0.vmdk", 70_000)]).await;
    let src = w.put(PRIVATE_BUCKET, image, ova.path.clone()).await;
    // Anonymous reads are refused: only the signature lets the simulator in.
    let anonymous = reqwest::get(src.display_url()).await.unwrap().status();
    assert_eq!(anonymous.as_u16(), 403);

    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    assert_eq!(progress.get(), ova.total_disk_bytes());
    assert_eq!(w.find(&t.path).await.unwrap()["template"], Value::Bool(true));
    let stats = w.vcsim.pull_stats().await.unwrap();
    assert_eq!(stats.len(), 1, "{stats:#?}");
    let url = stats[0]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&src.display_url()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert_pulled(&stats, &ova, &url, HTTP_THUMBPRINT).await;
}

#[tokio::test]
async fn failed_pulls_are_errors_and_leave_nothing() {
    let w = World::new("fail", VcsimOptions::default()).await;
    let p = w.provider();
    let vms_before = oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap().len();

    // The OVF names a disk the archive lacks: only the simulator (reading the archive) sees it.
    let fixture = w.fixture("img-nodisk", &[("disk-0.vmdk", 10)]).await;
    let tar = tar_bytes::files(&[("img-nodisk.ovf", fixture.ovf.as_bytes()), ("README", b"hi")]);
    let src = w.put(PUBLIC_BUCKET, "img-nodisk", tar).await;
    let progress = Progress::default();
    let e = p.create("loc1", "img-nodisk", &src, &progress).await.unwrap_err();
    match &e {
        ProviderError::Api(m) => {
            let m = m.to_string();
            assert!(m.contains("disk-0.vmdk") && m.contains("FileNotFound"), "{m}");
            assert!(m.contains(&src.display_url()), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(progress.get(), 0);

    // A truncated OVA: the descriptor reads fine, the disk breaks off mid-way.
    let cut = w.fixture("img-cut", &[("disk-0.vmdk", 1 << 20)]).await;
    let bytes = tokio::fs::read(&cut.path).await.unwrap();
    let src = w
        .put(PUBLIC_BUCKET, "img-cut", bytes[..bytes.len() / 2].to_vec())
        .await;
    let e = p
        .create("loc1", "img-cut", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Api(m) if m.to_string().contains("disk-0.vmdk")),
        "{e:?}"
    );

    let stats = w.vcsim.pull_stats().await.unwrap();
    assert_eq!(stats.len(), 2, "{stats:#?}");
    assert!(stats.iter().all(|s| s["error"] != ""), "{stats:#?}");
    for image in ["img-nodisk", "img-cut"] {
        assert_eq!(
            w.find(&format!("{VM_FOLDER}/{image}")).await,
            None,
            "{image} left behind"
        );
    }
    assert_eq!(
        oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap().len(),
        vms_before
    );
}

#[tokio::test]
async fn without_pull_mode_the_import_falls_back_to_push() {
    let opts = VcsimOptions {
        no_pull: true,
        ..Default::default()
    };
    let w = World::new("fallback", opts).await;
    let p = w.provider();
    let vms_before = oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap().len();
    let image = "img-fallback";
    let ova = w
        .fixture(image, &[("disk-0.vmdk", 200_000), ("disk-1.vmdk", 3000)])
        .await;
    let src = w.put(PUBLIC_BUCKET, image, ova.path.clone()).await;

    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    // Pushed: every byte went through this process, once.
    assert_eq!(progress.get(), ova.total_disk_bytes());
    assert_eq!(w.find(&t.path).await.unwrap()["template"], Value::Bool(true));
    assert!(w.vcsim.pull_stats().await.unwrap().is_empty());
    let log = w.log();
    assert!(
        log.contains("does not implement: HttpNfcLeasePullFromUrls_Task"),
        "{log}"
    );
    assert_eq!(log.matches("nfc POST").count(), 2, "{log}");
    // The VM of the refused pull attempt was removed: one new VM only.
    let vms = oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap();
    assert_eq!(vms.len(), vms_before + 1, "{vms:#?}");
}

#[tokio::test]
async fn pull_over_https_pins_the_source_certificate() {
    let opts = VcsimOptions {
        files: true,
        ..Default::default()
    };
    let w = World::new("https", opts).await;
    let ca = w.vcsim.ca().unwrap();
    let fingerprint = openssl_fingerprint(&ca.server_cert);

    // The source: the simulator's own https /files/ (bucket "files"), trusted through the CA.
    let key = "capv/img-https/img-https.ova";
    let file = w.vcsim.files_dir().join(key);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let ova = OvaFixture::write(&file, "img-https", &[("disk-0.vmdk", 100_000)], "nic0")
        .await
        .unwrap();
    let http = ido_io::http::client(
        &TlsOptions {
            insecure: false,
            ca_bundle: w.vcsim.ca_pem(),
        },
        "s3.caBundle",
    )
    .unwrap();
    let base = w.vcsim.files_url();
    let loc = S3Location {
        bucket: "files".into(),
        region: REGION.into(),
        endpoint: Some(base.trim_end_matches("/files").to_string()),
        http: false,
        credentials: None,
    };
    let src = S3Source::new(&loc, http).unwrap().object(key);
    assert_eq!(src.download_url().as_str(), format!("{base}/{key}"));

    let p = w.provider();
    let progress = Progress::default();
    let t = p.create("loc1", "img-https", &src, &progress).await.unwrap();
    assert_eq!(progress.get(), ova.total_disk_bytes());
    assert_eq!(w.find(&t.path).await.unwrap()["template"], Value::Bool(true));
    let stats = w.vcsim.pull_stats().await.unwrap();
    assert_pulled(&stats, &ova, &format!("{base}/{key}"), &fingerprint).await;

    // The simulator enforces the pin (and the rest of the call's contract).
    let c = p.client();
    let url = format!("{base}/{key}");
    let file = |thumbprint: Option<&str>, url: &str, member: &str| SourceFile {
        target_device_id: "/img-raw/disk:0".into(),
        url: url.into(),
        member_name: Some(member.into()),
        create: false,
        ssl_thumbprint: thumbprint.map(Into::into),
        http_headers: vec![],
        size: Some(100_000),
    };
    let lease = raw_lease(c, &ova, "img-raw").await;
    let caps = c.properties(&lease, &["capabilities"]).await.unwrap();
    let caps = caps.get("capabilities").unwrap();
    assert_eq!(
        caps.child("pullModeSupported").and_then(|n| n.as_bool()),
        Some(true)
    );
    let wrong = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33";
    let cases: [(SourceFile, &str); 4] = [
        (file(Some(wrong), &url, "disk-0.vmdk"), "SSLVerifyFault"),
        (file(None, &url, "disk-0.vmdk"), "InvalidArgument"),
        (
            file(Some(&fingerprint), &format!("{base}/nope.ova"), "disk-0.vmdk"),
            "FileNotFound",
        ),
        (file(Some(&fingerprint), &url, "disk-9.vmdk"), "FileNotFound"),
    ];
    for (f, kind) in cases {
        let task = c
            .lease_pull_from_urls(&lease, std::slice::from_ref(&f))
            .await
            .unwrap();
        match c.wait_task("HttpNfcLeasePullFromUrls_Task", &task).await {
            Err(SoapError::Fault { fault, .. }) => assert_eq!(fault.kind, kind, "{f:?}: {fault}"),
            other => panic!("{f:?}: {other:?}"),
        }
    }
    // Unknown device: the call itself faults.
    let mut bad = file(Some(&fingerprint), &url, "disk-0.vmdk");
    bad.target_device_id = "/nope/disk:0".into();
    let e = c.lease_pull_from_urls(&lease, &[bad]).await.unwrap_err();
    assert!(e.is_fault("InvalidArgument"), "{e:?}");
    // The thumbprint without colons is accepted too.
    let task = c
        .lease_pull_from_urls(
            &lease,
            &[file(Some(&fingerprint.replace(':', "")), &url, "disk-0.vmdk")],
        )
        .await
        .unwrap();
    c.wait_task("HttpNfcLeasePullFromUrls_Task", &task).await.unwrap();
    c.lease_abort(&lease).await.unwrap();
}

/// An import of `ova` as `name` up to a ready lease, by hand (leases belong to `c`'s session).
async fn raw_lease(c: &Client, ova: &OvaFixture, name: &str) -> MoRef {
    let find = |path: &'static str| async move { c.find_by_inventory_path(path).await.unwrap().unwrap() };
    let (pool, ds, net) = (
        find(RESOURCE_POOL_PATH).await,
        find(DATASTORE_PATH).await,
        find(NETWORK_PATH).await,
    );
    let params = ImportParams {
        entity_name: name.into(),
        network_mapping: vec![("nic0".into(), net)],
        ..Default::default()
    };
    let spec = c.create_import_spec(&ova.ovf, &pool, &ds, &params).await.unwrap();
    let lease = c.import_vapp(&pool, &spec, None, None).await.unwrap();
    c.lease_wait_ready(&lease).await.unwrap();
    lease
}

#[tokio::test]
async fn thumbprints_match_openssl() {
    ido_testkit::install_crypto_provider();
    // A server certificate of the test CA: compare with the PEM file.
    let w = Vcsim::start(VcsimOptions::default()).await.unwrap();
    let url = Url::parse(w.url()).unwrap();
    let want = openssl_fingerprint(&w.ca().unwrap().server_cert);
    assert_eq!(ssl_thumbprint(&url).await.unwrap(), want);

    // The simulator's built-in self-signed certificate: compare with what openssl's own client
    // receives (no trust needed in either case).
    let w = Vcsim::start(VcsimOptions::builtin_cert()).await.unwrap();
    let url = Url::parse(w.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("peer.pem");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &w.host_port(), "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----").expect("a certificate");
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    std::fs::write(&pem, &text[start..end]).unwrap();
    assert_eq!(ssl_thumbprint(&url).await.unwrap(), openssl_fingerprint(&pem));

    // Nothing listening: a transport error.
    let port = ido_testkit::free_port().unwrap();
    let e = ssl_thumbprint(&Url::parse(&format!("https://127.0.0.1:{port}/b/k.ova")).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Transport(_)), "{e:?}");
}
