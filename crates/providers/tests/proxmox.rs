//! The Proxmox provider against the fake Proxmox VE API (HTTPS, one per test) and SeaweedFS
//! as the S3 source (shared). The fake really downloads the presigned/public URL and checks
//! the file with `qemu-img`, so the qcow2 fixtures are real (`qemu-img create`).

use std::time::Duration;

use ido_io::{
    http::TlsOptions,
    s3::{S3Credentials, S3Location, S3Object, S3Source, node_image_key},
};
use ido_providers::{
    MANAGED_TAG, Progress, Provider, ProviderError,
    proxmox::{
        ProxmoxConfig, ProxmoxCredentials, ProxmoxLocation, ProxmoxProvider, all_tags, task::TaskPolicy,
    },
};
use ido_testkit::{
    SeaweedFs,
    fakes::proxmox::{FailHow, FakeProxmox, FakeProxmoxOptions, Step},
    seaweed::{ACCESS_KEY, PRIVATE_BUCKET, PUBLIC_BUCKET, REGION, SECRET_KEY},
};
use tempfile::TempDir;

/// Task polling fast enough for a fake whose tasks take 30 ms.
const FAST: TaskPolicy = TaskPolicy {
    first_poll: Duration::from_millis(10),
    max_poll: Duration::from_millis(100),
    timeout: Duration::from_secs(30),
};

/// A fake PVE, the shared S3 store and a scratch directory.
struct World {
    pve: FakeProxmox,
    s3: &'static SeaweedFs,
    dir: TempDir,
}

impl World {
    async fn new() -> Self {
        Self::with(FakeProxmoxOptions::default()).await
    }

    async fn with(opts: FakeProxmoxOptions) -> Self {
        let pve = FakeProxmox::with_options(opts).await.expect("fake proxmox");
        let s3 = SeaweedFs::shared().await.expect("seaweedfs");
        Self {
            pve,
            s3,
            dir: tempfile::tempdir().unwrap(),
        }
    }

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

    /// `loc1 → pve1` plus `extra` locations, with the fake's token and CA.
    fn config(&self, extra: &[(&str, ProxmoxLocation)]) -> ProxmoxConfig {
        let o = self.pve.options();
        let mut locations: std::collections::BTreeMap<_, _> = [("loc1".to_string(), location("pve1"))].into();
        locations.extend(extra.iter().map(|(n, l)| (n.to_string(), l.clone())));
        ProxmoxConfig {
            enabled: true,
            credentials: ProxmoxCredentials {
                url: self.pve.host_port(),
                user: o.userid.clone(),
                realm: None,
                token_id: o.token_id.clone(),
                secret: o.secret.clone(),
                insecure: false,
            },
            ca_bundle: Some(self.pve.ca_pem()),
            task_timeout_seconds: None,
            locations,
        }
    }

    fn provider(&self) -> ProxmoxProvider {
        ProxmoxProvider::with_task_policy(&self.config(&[]), FAST).unwrap()
    }

    /// Uploads a real 64 MiB (virtual) qcow2 under the capmox key of `image`.
    async fn qcow2(&self, bucket: &str, image: &str) -> (S3Object, u64) {
        let path = self.dir.path().join(format!("{image}.qcow2"));
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("64M")
            .output()
            .await
            .expect("qemu-img");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let size = std::fs::metadata(&path).unwrap().len();
        (self.put(bucket, image, path).await, size)
    }

    async fn put(&self, bucket: &str, image: &str, body: impl Into<ido_testkit::ObjectBody>) -> S3Object {
        let key = node_image_key("capmox", image, "qcow2");
        self.s3.put_object(bucket, &key, body).await.unwrap();
        self.source(bucket).object(&key)
    }

    /// Nothing of ours on `node`: no VM (foreign `racer-*` VMs aside), no import file (listed
    /// or partial), no disk volume.
    fn assert_clean(&self, node: &str, what: &str) {
        let vms: Vec<_> = self
            .pve
            .vms_on(node)
            .into_iter()
            .filter(|v| !v.name.starts_with("racer-"))
            .collect();
        assert!(vms.is_empty(), "{what}: VMs left on {node}: {vms:?}");
        assert_eq!(
            self.pve.import_files(node, "local"),
            Vec::<String>::new(),
            "{what}: import files left"
        );
        assert_eq!(
            self.pve.volumes(node, "local-lvm"),
            Vec::<String>::new(),
            "{what}: disks left"
        );
        assert_eq!(self.pve.running_tasks(), 0, "{what}: tasks still running");
    }

    fn downloads(&self) -> usize {
        self.pve.requests_to("POST", "/download-url").len()
    }
}

fn location(node: &str) -> ProxmoxLocation {
    ProxmoxLocation {
        node: node.into(),
        storage_pool: "local-lvm".into(),
        bridge: "vmbr0".into(),
        ..Default::default()
    }
}

/// A distinct image name per test (the shared bucket is keyed by it).
fn image(n: u32) -> String {
    format!("flatcar-stable-4{n:03}.2.0-kube-1.31.{n}-tooling-1.20.{n}-gs")
}

fn config_key(e: &ProviderError) -> &str {
    match e {
        ProviderError::Config { key, .. } => key,
        other => panic!("not a config error: {other:?}"),
    }
}

#[tokio::test]
async fn import_is_a_tagged_template_once_and_delete_removes_it() {
    let w = World::new().await;
    let p = w.provider();
    let image = "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";
    let (src, size) = w.qcow2(PUBLIC_BUCKET, image).await;
    assert_eq!(p.exists("loc1", image).await.unwrap(), None);

    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    assert_eq!(
        progress.get(),
        size,
        "the source size is reported once Proxmox has it"
    );
    let vms = w.pve.vms_on("pve1");
    assert_eq!(vms.len(), 1, "{vms:?}");
    let vm = &vms[0];
    assert_eq!(t.reference, format!("pve1/qemu/{}", vm.vmid));
    assert_eq!(t.path, format!("pve1/{image}"));
    assert!(vm.template && vm.lock.is_none(), "{vm:?}");
    assert_eq!(
        vm.tags.as_deref(),
        Some("ido-managed;flatcar_3975.2.0;kubernetes_1.30.4;os-tooling_1.18.1;release-channel_stable"),
        "ido's mark and the version tags"
    );
    assert_eq!(vm.tags.as_deref(), Some(all_tags(image).as_str()));
    let create = &w.pve.requests_to("POST", "/nodes/pve1/qemu")[0];
    assert_eq!(create.params["tags"], MANAGED_TAG, "marked from its creation on");
    let c = &vm.config;
    assert_eq!(c["scsi0"], format!("local-lvm:base-{}-disk-0,size=64M", vm.vmid));
    assert_eq!(c["boot"], "order=scsi0");
    assert_eq!(
        (&c["memory"], &c["cores"], &c["agent"]),
        (&"2048".into(), &2.into(), &"1".into())
    );
    assert_eq!(
        (&c["scsihw"], &c["bios"]),
        (&"virtio-scsi-pci".into(), &"seabios".into())
    );
    let net0 = c["net0"].as_str().unwrap();
    assert!(
        net0.starts_with("e1000=BC:24:11:") && net0.ends_with(",bridge=vmbr0"),
        "{net0}"
    );
    assert_eq!(
        w.pve.import_files("pve1", "local"),
        Vec::<String>::new(),
        "import file removed"
    );
    let dl = &w
        .pve
        .requests_to("POST", "/nodes/pve1/storage/local/download-url")[0];
    assert_eq!(dl.params["content"], "import");
    assert_eq!(dl.params["filename"], format!("ido-{image}.qcow2"));
    assert_eq!(dl.params["url"], src.download_url().as_str());
    assert!(!dl.params.contains_key("checksum"), "no sidecar, no checksum");

    // Idempotent: exists finds it; create does not download again.
    assert_eq!(p.exists("loc1", image).await.unwrap(), Some(t.clone()));
    let again = Progress::default();
    assert_eq!(p.create("loc1", image, &src, &again).await.unwrap(), t);
    assert_eq!((again.get(), w.downloads(), w.pve.vms().len()), (0, 1, 1));

    p.delete("loc1", image).await.unwrap();
    w.assert_clean("pve1", "after delete");
    assert_eq!(p.exists("loc1", image).await.unwrap(), None);
    p.delete("loc1", image).await.unwrap(); // absent is success
}

#[tokio::test]
async fn missing_source_is_source_missing() {
    let w = World::new().await;
    let p = w.provider();
    let src = w
        .source(PUBLIC_BUCKET)
        .object(&node_image_key("capmox", &image(1), "qcow2"));
    let e = p
        .create("loc1", &image(1), &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::SourceMissing(m) if m.contains(src.key())),
        "{e:?}"
    );
    assert_eq!(w.downloads(), 0);
    w.assert_clean("pve1", "missing source");
}

#[tokio::test]
async fn invalid_image_is_invalid_and_leaves_nothing() {
    let w = World::new().await;
    let p = w.provider();
    let src = w
        .put(
            PUBLIC_BUCKET,
            &image(2),
            b"not a qcow2 image, just bytes".to_vec(),
        )
        .await;
    let e = p
        .create("loc1", &image(2), &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains("failed to verify")),
        "{e:?}"
    );
    w.assert_clean("pve1", "invalid image");
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    let w = World::new().await;
    let p = w.provider();
    let name = image(3);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    let cases = [
        (Step::Download, FailHow::Http),
        (Step::Download, FailHow::Task),
        (Step::NextId, FailHow::Http),
        (Step::Create, FailHow::Http),
        (Step::Create, FailHow::Task),
        (Step::Import, FailHow::Http),
        (Step::Import, FailHow::Task),
        (Step::Boot, FailHow::Http),
        (Step::Template, FailHow::Http),
        (Step::Template, FailHow::Task),
        (Step::DeleteImport, FailHow::Http),
        (Step::DeleteImport, FailHow::Task),
    ];
    for (step, how) in cases {
        let what = format!("{step:?}/{how:?}");
        w.pve.fail(step, how, 1);
        let e = p
            .create("loc1", &name, &src, &Progress::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Api(_)), "{what}: {e:?}");
        w.assert_clean("pve1", &what);
        assert_eq!(p.exists("loc1", &name).await.unwrap(), None, "{what}");
    }

    // The version tags are cosmetic: their failure is only logged (ido's mark came with the
    // VM's creation).
    w.pve.fail(Step::Tag, FailHow::Http, 1);
    p.create("loc1", &name, &src, &Progress::default()).await.unwrap();
    let vms = w.pve.vms_on("pve1");
    assert_eq!(vms.len(), 1);
    assert!(
        vms[0].template && vms[0].tags.as_deref() == Some(MANAGED_TAG),
        "{vms:?}"
    );
    assert_eq!(w.pve.import_files("pve1", "local"), Vec::<String>::new());
}

#[tokio::test]
async fn a_taken_vmid_is_retried() {
    let w = World::new().await;
    let p = w.provider();
    let name = image(4);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    w.pve.race_next_ids(2);
    let t = p.create("loc1", &name, &src, &Progress::default()).await.unwrap();
    assert_eq!(t.reference, "pve1/qemu/102", "100 and 101 went to another client");
    let vms = w.pve.vms_on("pve1");
    let names: Vec<_> = vms
        .iter()
        .map(|v| (v.vmid, v.name.as_str(), v.template))
        .collect();
    assert_eq!(
        names,
        vec![
            (100, "racer-100", false),
            (101, "racer-101", false),
            (102, name.as_str(), true)
        ]
    );
    assert_eq!(w.pve.requests_to("POST", "/nodes/pve1/qemu").len(), 3);
}

#[tokio::test]
async fn warnings_count_as_success() {
    let w = World::new().await;
    let p = w.provider();
    let name = image(5);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    for step in [
        Step::Download,
        Step::Create,
        Step::Import,
        Step::Template,
        Step::DeleteImport,
    ] {
        w.pve.warn(step);
    }
    p.create("loc1", &name, &src, &Progress::default()).await.unwrap();
    assert!(w.pve.vms_on("pve1")[0].template);
    assert_eq!(w.pve.import_files("pve1", "local"), Vec::<String>::new());
}

#[tokio::test]
async fn a_sha256_sidecar_is_passed_and_enforced() {
    let w = World::new().await;
    let p = w.provider();
    let name = image(6);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    let bytes = w.s3.get_object(PUBLIC_BUCKET, src.key()).await.unwrap();
    let sum = sha256_hex(&bytes).await;
    let file = src.key().rsplit('/').next().unwrap().to_string();
    let sidecar = format!("{}.sha256", src.key());
    w.s3.put_object(
        PUBLIC_BUCKET,
        &sidecar,
        format!("{}  {file}\n", sum.to_uppercase()).into_bytes(),
    )
    .await
    .unwrap();
    p.create("loc1", &name, &src, &Progress::default()).await.unwrap();
    let dl = &w.pve.requests_to("POST", "/download-url")[0];
    assert_eq!(
        (
            dl.params["checksum"].as_str(),
            dl.params["checksum-algorithm"].as_str()
        ),
        (sum.as_str(), "sha256")
    );
    p.delete("loc1", &name).await.unwrap();

    // A sidecar that does not match: Proxmox refuses the file; nothing stays.
    let wrong = "0".repeat(64);
    w.s3.put_object(PUBLIC_BUCKET, &sidecar, wrong.clone().into_bytes())
        .await
        .unwrap();
    let e = p
        .create("loc1", &name, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains("checksum mismatch")),
        "{e:?}"
    );
    w.assert_clean("pve1", "wrong checksum");

    // A sidecar that is not a digest: rejected before anything happens.
    w.s3.put_object(PUBLIC_BUCKET, &sidecar, b"<html>oops</html>".to_vec())
        .await
        .unwrap();
    let downloads = w.downloads();
    let e = p
        .create("loc1", &name, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains(".sha256")),
        "{e:?}"
    );
    assert_eq!(w.downloads(), downloads);
}

async fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = tokio::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(bytes).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[tokio::test]
async fn private_buckets_work_through_presigned_urls() {
    let w = World::new().await;
    let p = w.provider();
    let name = image(7);
    let (src, size) = w.qcow2(PRIVATE_BUCKET, &name).await;
    let progress = Progress::default();
    p.create("loc1", &name, &src, &progress).await.unwrap();
    assert_eq!(progress.get(), size);
    let url = &w.pve.requests_to("POST", "/download-url")[0].params["url"];
    assert!(url.contains("X-Amz-Signature="), "presigned: {url}");
}

#[tokio::test]
async fn two_nodes_work_concurrently_and_existence_is_per_node() {
    let w = World::with(FakeProxmoxOptions {
        nodes: vec!["pve1".into(), "pve2".into()],
        ..Default::default()
    })
    .await;
    let p = ProxmoxProvider::with_task_policy(&w.config(&[("loc2", location("pve2"))]), FAST).unwrap();
    let name = image(8);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    let (pa, pb) = (Progress::default(), Progress::default());
    let (a, b) = tokio::join!(
        p.create("loc1", &name, &src, &pa),
        p.create("loc2", &name, &src, &pb),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.path.starts_with("pve1/") && b.path.starts_with("pve2/"),
        "{a:?} {b:?}"
    );
    assert_ne!(a.reference, b.reference);
    for node in ["pve1", "pve2"] {
        let vms = w.pve.vms_on(node);
        assert!(vms.len() == 1 && vms[0].template, "{node}: {vms:?}");
    }
    assert_eq!(w.downloads(), 2, "one download per node");

    p.delete("loc1", &name).await.unwrap();
    assert_eq!(p.exists("loc1", &name).await.unwrap(), None);
    assert_eq!(p.exists("loc2", &name).await.unwrap(), Some(b));
    w.assert_clean("pve1", "after deleting loc1");
}

#[tokio::test]
async fn existence_needs_the_template_flag_and_mark_on_the_locations_node() {
    let w = World::with(FakeProxmoxOptions {
        nodes: vec!["pve1".into(), "pve2".into()],
        ..Default::default()
    })
    .await;
    let p = w.provider();
    let name = image(9);
    let elsewhere = w.pve.add_vm_tagged("pve2", &name, true, MANAGED_TAG);
    assert_eq!(
        p.exists("loc1", &name).await.unwrap(),
        None,
        "a template on another node"
    );

    let leftover = w.pve.add_vm_tagged("pve1", &name, false, MANAGED_TAG);
    assert_eq!(p.exists("loc1", &name).await.unwrap(), None, "not a template");
    assert!(
        w.pve.vms().iter().all(|v| v.vmid != leftover),
        "ido's leftover was purged"
    );

    let ours = w
        .pve
        .add_vm_tagged("pve1", &name, true, &format!("a;{MANAGED_TAG};b"));
    let t = p.exists("loc1", &name).await.unwrap().unwrap();
    assert_eq!(t.reference, format!("pve1/qemu/{ours}"));
    p.delete("loc1", &name).await.unwrap();
    let left: Vec<_> = w.pve.vms().iter().map(|v| v.vmid).collect();
    assert_eq!(left, vec![elsewhere], "delete touches only the location's node");
}

fn clash_owner(e: &ProviderError) -> &str {
    match e {
        ProviderError::NameClash { owner, .. } => owner,
        other => panic!("not a name clash: {other:?}"),
    }
}

#[tokio::test]
async fn vms_without_ido_tag_are_name_clashes_never_purged() {
    let w = World::new().await;
    let p = w.provider();
    let name = image(11);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;

    // Someone else's VM (and then template) of the template's name: reported, left alone,
    // and nothing is built beside it.
    for template in [false, true] {
        let foreign = w.pve.add_vm_tagged("pve1", &name, template, "team-a");
        let destroys = || w.pve.requests_to("DELETE", &format!("/qemu/{foreign}")).len();
        let destroyed_before = destroys();
        let e = p.exists("loc1", &name).await.unwrap_err();
        assert!(e.is_name_clash(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("name clash in location loc1: pve1/{name} is ")),
            "{e}"
        );
        let what = if template { "a template" } else { "a VM" };
        assert_eq!(
            clash_owner(&e),
            format!("{what} (VMID {foreign}, tags \"team-a\") without ido's tag ido-managed")
        );
        let e = p
            .create("loc1", &name, &src, &Progress::default())
            .await
            .unwrap_err();
        assert!(e.is_name_clash(), "{e:?}");
        assert!(p.delete("loc1", &name).await.unwrap_err().is_name_clash());
        let vms = w.pve.vms_on("pve1");
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert_eq!((vms[0].vmid, vms[0].template), (foreign, template));
        assert_eq!(destroys(), destroyed_before, "no destroy was even tried");
        assert_eq!(w.downloads(), 0, "nothing built beside it");
        // Its owner removes it before the next round.
        remove(&w, foreign).await;
    }

    // ido's own VM, running: not purged either.
    let running = w.pve.add_vm_tagged("pve1", &name, false, MANAGED_TAG);
    w.pve.set_running(running, true);
    let e = p.exists("loc1", &name).await.unwrap_err();
    assert!(clash_owner(&e).starts_with("a running VM"), "{e}");
    assert!(p.delete("loc1", &name).await.unwrap_err().is_name_clash());
    assert!(w.pve.vms().iter().any(|v| v.vmid == running));
    w.pve.set_running(running, false);

    // Stopped, it is ido's half-made VM: purged, and the template built afresh.
    let purges = || w.pve.requests_to("DELETE", &format!("/qemu/{running}")).len();
    let purged_before = purges();
    let t = p.create("loc1", &name, &src, &Progress::default()).await.unwrap();
    let vms = w.pve.vms_on("pve1");
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert!(vms[0].template, "{vms:?}");
    assert_eq!(purges(), purged_before + 1, "the half-made VM was purged");
    assert_eq!(w.downloads(), 1, "and the template built afresh");
    assert_eq!(t.reference, format!("pve1/qemu/{}", vms[0].vmid));

    // ido's template and someone else's VM of the same name: the template counts, delete
    // removes only ido's and reports the other.
    let foreign = w.pve.add_vm("pve1", &name, false);
    assert_eq!(p.exists("loc1", &name).await.unwrap(), Some(t));
    let e = p.delete("loc1", &name).await.unwrap_err();
    assert!(e.is_name_clash(), "{e:?}");
    let left: Vec<_> = w.pve.vms().iter().map(|v| v.vmid).collect();
    assert_eq!(left, vec![foreign]);
    // A template made before ido tagged its VMs is adopted by adding the tag.
    remove(&w, foreign).await;
    let old = w.pve.add_vm_tagged("pve1", &name, true, "flatcar_4011.2.0");
    assert!(p.exists("loc1", &name).await.unwrap_err().is_name_clash());
    tag(&w, old, &format!("flatcar_4011.2.0;{MANAGED_TAG}")).await;
    assert_eq!(
        p.exists("loc1", &name).await.unwrap().map(|t| t.reference),
        Some(format!("pve1/qemu/{old}"))
    );
    p.delete("loc1", &name).await.unwrap();
    w.assert_clean("pve1", "after adopting and deleting");
}

/// Removes VM `vmid` on `pve1` the way an operator would (straight through the API).
async fn remove(w: &World, vmid: u32) {
    let (status, _) = raw(
        w,
        reqwest::Method::DELETE,
        &format!("nodes/pve1/qemu/{vmid}"),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..100 {
        if w.pve.vms().iter().all(|v| v.vmid != vmid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("VM {vmid} was not removed");
}

/// Sets the tags of VM `vmid` on `pve1` the way an operator would.
async fn tag(w: &World, vmid: u32, tags: &str) {
    let (status, body) = raw(
        w,
        reqwest::Method::PUT,
        &format!("nodes/pve1/qemu/{vmid}/config"),
        &[("tags", tags)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// One call to the fake's API with its token.
async fn raw(w: &World, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let o = w.pve.options();
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(w.pve.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut req = http
        .request(method, format!("{}/api2/json/{path}", w.pve.url()))
        .header(
            "Authorization",
            format!("PVEAPIToken={}!{}={}", o.userid, o.token_id, o.secret),
        );
    if !form.is_empty() {
        req = req.form(form);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn bad_credentials_and_locations_name_the_key() {
    let w = World::new().await;
    let name = image(10);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    let secret = w.pve.options().secret.clone();
    let no_secret = |e: &ProviderError| {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&secret), "{text}");
        text
    };

    // Wrong secret: 401 on the first call of each operation.
    let mut cfg = w.config(&[]);
    cfg.credentials.secret = "00000000-0000-0000-0000-000000000000".into();
    let p = ProxmoxProvider::with_task_policy(&cfg, FAST).unwrap();
    for e in [
        p.exists("loc1", &name).await.unwrap_err(),
        p.create("loc1", &name, &src, &Progress::default())
            .await
            .unwrap_err(),
        p.delete("loc1", &name).await.unwrap_err(),
    ] {
        let text = no_secret(&e);
        assert_eq!(config_key(&e), "proxmox.credentials", "{text}");
        assert!(text.contains("ido@pve!capmox") && text.contains("401"), "{text}");
    }

    // A revoked token, then a token lacking a privilege.
    let p = w.provider();
    w.pve.revoke_token(true);
    let e = p.exists("loc1", &name).await.unwrap_err();
    assert_eq!(config_key(&e), "proxmox.credentials", "{}", no_secret(&e));
    w.pve.revoke_token(false);
    w.pve.fail(Step::Create, FailHow::Forbidden, 1);
    let e = p
        .create("loc1", &name, &src, &Progress::default())
        .await
        .unwrap_err();
    let text = no_secret(&e);
    assert_eq!(config_key(&e), "proxmox.credentials.tokenId", "{text}");
    assert!(text.contains("VM.Allocate"), "{text}");
    w.assert_clean("pve1", "forbidden create");

    // Locations that do not fit the cluster: refused before any download.
    let downloads = w.downloads();
    let cases = [
        (
            "node",
            ProxmoxLocation {
                node: "pve9".into(),
                ..location("pve1")
            },
        ),
        (
            "importStorage",
            ProxmoxLocation {
                import_storage: "isos".into(),
                ..location("pve1")
            },
        ),
        (
            "importStorage",
            ProxmoxLocation {
                import_storage: "nfs".into(),
                ..location("pve1")
            },
        ),
        (
            "storagePool",
            ProxmoxLocation {
                storage_pool: "local".into(),
                ..location("pve1")
            },
        ),
        (
            "bridge",
            ProxmoxLocation {
                bridge: "vmbr7".into(),
                ..location("pve1")
            },
        ),
    ];
    for (field, loc) in cases {
        let mut cfg = w.config(&[]);
        cfg.locations.insert("loc1".into(), loc);
        let p = ProxmoxProvider::with_task_policy(&cfg, FAST).unwrap();
        let e = p
            .create("loc1", &name, &src, &Progress::default())
            .await
            .unwrap_err();
        let text = no_secret(&e);
        assert_eq!(
            config_key(&e),
            format!("proxmox.locations.loc1.{field}"),
            "{text}"
        );
        if field == "node" {
            let e = p.exists("loc1", &name).await.unwrap_err();
            assert_eq!(config_key(&e), "proxmox.locations.loc1.node", "{e}");
            assert!(e.to_string().contains("pve9"), "{e}");
        }
    }
    assert_eq!(w.downloads(), downloads);
    let e = w.provider().exists("nowhere", &name).await.unwrap_err();
    assert_eq!(config_key(&e), "proxmox.locations.nowhere");
}

#[tokio::test]
async fn a_task_that_runs_too_long_is_stopped_and_cleaned_up() {
    let w = World::new().await;
    let policy = TaskPolicy {
        timeout: Duration::from_millis(500),
        ..FAST
    };
    let p = ProxmoxProvider::with_task_policy(&w.config(&[]), policy).unwrap();
    let name = image(11);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    w.pve.set_task_delay(Duration::from_secs(5));
    let e = p
        .create("loc1", &name, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Api(m) if m.to_string().contains("still running")),
        "{e:?}"
    );
    w.pve.set_task_delay(Duration::from_millis(30));
    w.assert_clean("pve1", "timeout");
    p.create("loc1", &name, &src, &Progress::default()).await.unwrap();
}

#[tokio::test]
async fn servers_older_than_8_4_are_refused() {
    let w = World::with(FakeProxmoxOptions {
        version: "8.3.2".into(),
        ..Default::default()
    })
    .await;
    let name = image(12);
    let (src, _) = w.qcow2(PUBLIC_BUCKET, &name).await;
    let e = w
        .provider()
        .create("loc1", &name, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Api(m) if m.to_string().contains("8.3.2") && m.to_string().contains("8.4")),
        "{e:?}"
    );
    assert_eq!(w.downloads(), 0);
}
