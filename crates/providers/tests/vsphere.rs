//! The vSphere provider against real peers: the project's vCenter simulator (one per test),
//! SeaweedFS as the S3 source (shared), and pyVmomi as an independent oracle of what exists.

use std::time::Duration;

use ido_io::{
    http::TlsOptions,
    s3::{S3Location, S3Object, S3Source},
};
use ido_providers::{
    Progress, Provider, ProviderError,
    vsphere::{
        VsphereConfig, VsphereCredentials, VsphereLocation, VsphereProvider,
        lease::ImportParams,
        mark,
        xml::{MoRef, NodeExt as _},
    },
};
use ido_testkit::{
    OvaFixture, SeaweedFs, Vcsim, VcsimOptions,
    fault_proxy::{Fault, FaultProxy, Rule, When},
    invalid_ova,
    oracle::{oracle_find, oracle_list_vms},
    seaweed::{PUBLIC_BUCKET, REGION},
    tar_bytes,
    vcsim::{CLUSTER, DATACENTER, DATASTORE, DATASTORE_PATH, NETWORK_PATH, RESOURCE_POOL_PATH, VM_FOLDER},
};
use serde_json::Value;
use tempfile::TempDir;

/// A simulator, the shared S3 store and a scratch directory for fixtures.
struct World {
    vcsim: Vcsim,
    s3: &'static SeaweedFs,
    source: S3Source,
    dir: TempDir,
    /// Key prefix of this test in the shared bucket.
    prefix: String,
}

impl World {
    async fn new(test: &str, opts: VcsimOptions) -> Self {
        let vcsim = Vcsim::start(opts).await.expect("vcsim");
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
        let dir = tempfile::tempdir().unwrap();
        Self {
            vcsim,
            s3,
            source,
            dir,
            prefix: format!("capv-tests/{test}"),
        }
    }

    fn config(&self, loc: VsphereLocation) -> VsphereConfig {
        VsphereConfig {
            enabled: true,
            ca_bundle: self.vcsim.ca_pem(),
            credentials: VsphereCredentials {
                vcenter: self.vcsim.url().into(),
                username: self.vcsim.username().into(),
                password: self.vcsim.password().into(),
            },
            locations: [("loc1".to_string(), loc)].into(),
            ..Default::default()
        }
    }

    fn provider(&self, loc: VsphereLocation) -> VsphereProvider {
        VsphereProvider::new(&self.config(loc)).unwrap()
    }

    /// Writes an OVA fixture with `disks` and uploads it as `<prefix>/<image>.ova`.
    async fn ova(&self, image: &str, disks: &[(&str, u64)]) -> (OvaFixture, S3Object) {
        let path = self.dir.path().join(format!("{image}.ova"));
        let ova = OvaFixture::write(&path, image, disks, "nic0").await.unwrap();
        (ova, self.put(image, path).await)
    }

    async fn put(&self, image: &str, body: impl Into<ido_testkit::ObjectBody>) -> S3Object {
        let key = format!("{}/{image}.ova", self.prefix);
        self.s3.put_object(PUBLIC_BUCKET, &key, body).await.unwrap();
        self.source.object(&key)
    }

    async fn find(&self, path: &str) -> Option<Value> {
        oracle_find(&self.vcsim, path).await.unwrap()
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

/// The VM of a template reference `VirtualMachine:vm-N`.
fn vm_of(t: &ido_providers::Template) -> MoRef {
    let (kind, id) = t.reference.split_once(':').unwrap();
    MoRef::new(kind, id)
}

#[tokio::test]
async fn import_is_a_template_once_and_delete_removes_it() {
    let w = World::new("import", VcsimOptions::default()).await;
    let p = w.provider(location());
    let image = "flatcar-stable-1-kube-1.30.4";
    let (ova, src) = w
        .ova(
            image,
            &[("disk-0.vmdk", 3 * 1024 * 1024 + 17), ("disk-1.vmdk", 1000)],
        )
        .await;
    assert_eq!(p.exists("loc1", image).await.unwrap(), None);

    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    assert_eq!(t.path, format!("{VM_FOLDER}/{image}"));
    assert!(t.reference.starts_with("VirtualMachine:vm-"), "{t:?}");
    // vcsim discards disk bytes: count them on the wire.
    assert_eq!(progress.get(), ova.total_disk_bytes());

    let seen = w.find(&t.path).await.expect("oracle sees the template");
    assert_eq!(seen["template"], Value::Bool(true), "{seen}");
    assert_eq!(
        format!("VirtualMachine:{}", seen["moref"].as_str().unwrap()),
        t.reference
    );

    // Defaults: the datacenter's first network, the cluster's first usable host.
    let vm = vm_of(&t);
    let props = p
        .client()
        .properties(&vm, &["network", "runtime.host"])
        .await
        .unwrap();
    let nets: Vec<_> = props
        .get("network")
        .unwrap()
        .children
        .iter()
        .filter_map(|n| n.moref())
        .collect();
    let vm_network = p
        .client()
        .find_by_inventory_path(NETWORK_PATH)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nets, vec![vm_network]);
    let h0 = p
        .client()
        .find_by_inventory_path("/DC0/host/DC0_C0/DC0_C0_H0")
        .await
        .unwrap();
    assert_eq!(props.get("runtime.host").and_then(|n| n.moref()), h0);

    // Idempotent: exists finds it, create does not import again.
    assert_eq!(p.exists("loc1", image).await.unwrap(), Some(t.clone()));
    let again = Progress::default();
    assert_eq!(p.create("loc1", image, &src, &again).await.unwrap(), t);
    assert_eq!(again.get(), 0);
    let vms = oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap();
    assert_eq!(vms.iter().filter(|v| v["name"] == image).count(), 1, "{vms:?}");

    p.delete("loc1", image).await.unwrap();
    assert_eq!(w.find(&t.path).await, None);
    assert_eq!(p.exists("loc1", image).await.unwrap(), None);
    p.delete("loc1", image).await.unwrap(); // absent is success
    p.logout().await.unwrap();
}

#[tokio::test]
async fn a_push_continues_where_the_s3_transfer_was_cut() {
    let mut w = World::new("cut", VcsimOptions::default()).await;
    // The OVA is read through a proxy that resets its first GET midway through the disk.
    let proxy = FaultProxy::start(&w.s3.endpoint()).await.unwrap();
    let http = ido_io::http::client(&TlsOptions::default(), "s3.caBundle").unwrap();
    w.source = S3Source::new(
        &S3Location {
            bucket: PUBLIC_BUCKET.into(),
            region: REGION.into(),
            endpoint: Some(proxy.url()),
            http: false,
            credentials: None,
        },
        http,
    )
    .unwrap();
    let p = w.provider(location());
    let image = "flatcar-stable-2-kube-1.30.4";
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 5 * 1024 * 1024 + 3)]).await;
    proxy.set_rules(vec![
        Rule::new(Fault::ResetResponse {
            after_bytes: 2 * 1024 * 1024,
        })
        .method("GET")
        .when(When::First(1)),
    ]);

    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    assert_eq!(proxy.counts().resets_response, 1, "the transfer was cut once");
    // Every disk byte went to vCenter once: the second request took up at the cut.
    assert_eq!(progress.get(), ova.total_disk_bytes());
    let gets = proxy.events().iter().filter(|e| e.method == "GET").count();
    assert!(
        gets >= 2,
        "another request continued the transfer: {:?}",
        proxy.events()
    );
    let seen = w.find(&t.path).await.expect("oracle sees the template");
    assert_eq!(seen["template"], Value::Bool(true), "{seen}");
    p.delete("loc1", image).await.unwrap();
    p.logout().await.unwrap();
}

#[tokio::test]
async fn imagesuffix_network_and_host_over_plain_http() {
    // Plain HTTP also checks the NFC URL fix-up (vcsim always writes https://*/nfc/…).
    let w = World::new("suffix", VcsimOptions::plain()).await;
    let loc = VsphereLocation {
        folder: format!("{VM_FOLDER}/"),
        imagesuffix: Some("gs".into()),
        network: Some("DC0_DVPG0".into()),
        host: Some("DC0_C0_H1".into()),
        resourcepool: Some("Resources".into()),
        ..location()
    };
    let p = w.provider(loc);
    let image = "img-suffix";
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 4096)]).await;
    let progress = Progress::default();
    let t = p.create("loc1", image, &src, &progress).await.unwrap();
    assert_eq!(t.path, "/DC0/vm/img-suffix-gs");
    assert_eq!(progress.get(), ova.total_disk_bytes());
    assert_eq!(
        w.find("/DC0/vm/img-suffix-gs").await.unwrap()["template"],
        Value::Bool(true)
    );
    assert_eq!(w.find("/DC0/vm/img-suffix").await, None);
    assert_eq!(p.exists("loc1", image).await.unwrap(), Some(t.clone()));

    // The OVF network "nic0" went onto the configured portgroup, on the configured host.
    let vm = vm_of(&t);
    let props = p
        .client()
        .properties(&vm, &["network", "runtime.host"])
        .await
        .unwrap();
    let nets: Vec<_> = props
        .get("network")
        .unwrap()
        .children
        .iter()
        .filter_map(|n| n.moref())
        .collect();
    assert!(
        nets.iter().all(|n| n.kind == "DistributedVirtualPortgroup"),
        "{nets:?}"
    );
    assert!(!nets.is_empty());
    let host = p
        .client()
        .find_by_inventory_path("/DC0/host/DC0_C0/DC0_C0_H1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(props.get("runtime.host").and_then(|n| n.moref()), Some(host));

    p.delete("loc1", image).await.unwrap();
    assert_eq!(w.find("/DC0/vm/img-suffix-gs").await, None);
}

/// Imports `ova` as a VM named `name` by hand: ImportVApp and lease complete, never marked
/// as template, the way a crashed import leaves it. With `ido_mark`, the import spec carries
/// ido's mark (as ido's own imports do); without, it is anyone else's VM.
async fn raw_import(p: &VsphereProvider, ova: &OvaFixture, name: &str, ido_mark: bool) -> MoRef {
    let c = p.client();
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
    let mut spec = c.create_import_spec(&ova.ovf, &pool, &ds, &params).await.unwrap();
    assert!(spec.errors.is_empty(), "{:?}", spec.errors);
    if ido_mark {
        spec.spec_xml = mark::mark_import_spec(&spec.spec_xml, name).unwrap();
    }
    let lease = c.import_vapp(&pool, &spec, None, None).await.unwrap();
    let info = c.lease_wait_ready(&lease).await.unwrap();
    c.lease_complete(&lease).await.unwrap();
    info.entity.unwrap()
}

/// `ReconfigVM_Task` of `vm` with `spec` (a VirtualMachineConfigSpec's content).
async fn reconfigure(p: &VsphereProvider, vm: &MoRef, spec: &str) {
    p.client()
        .run_task("ReconfigVM_Task", vm, &format!("<spec>{spec}</spec>"))
        .await
        .unwrap();
}

/// The extraConfig entry ido marks its VMs with, as a ReconfigVM spec fragment.
const ADOPT: &str =
    r#"<extraConfig><key>ido.managed-by</key><value xsi:type="xsd:string">ido</value></extraConfig>"#;

/// `config.extraConfig` of the VM at `path` as pyVmomi (not the project's client) reads it.
async fn oracle_extra_config(vcsim: &Vcsim, path: &str) -> Value {
    const SCRIPT: &str = r#"
import json, ssl, sys, urllib.parse
from pyVim.connect import Disconnect, SmartConnect
creds = json.loads(sys.stdin.readline())
url = urllib.parse.urlparse(sys.argv[1])
ctx = ssl.create_default_context(cafile=sys.argv[2])
si = SmartConnect(protocol=url.scheme, host=url.hostname, port=url.port, path=url.path,
                  user=creds["user"], pwd=creds["password"], sslContext=ctx)
vm = si.RetrieveContent().searchIndex.FindByInventoryPath(sys.argv[3])
print(json.dumps({o.key: o.value for o in vm.config.extraConfig}))
Disconnect(si)
"#;
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, vcsim.url()])
        .arg(&vcsim.ca().expect("the test CA").ca_cert)
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let creds = serde_json::json!({"user": vcsim.username(), "password": vcsim.password()});
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{creds}\n").as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "pyVmomi failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn clash_owner(e: &ProviderError) -> &str {
    match e {
        ProviderError::NameClash { owner, .. } => owner,
        other => panic!("not a name clash: {other:?}"),
    }
}

#[tokio::test]
async fn imports_carry_ido_mark_in_extra_config() {
    let w = World::new("mark", VcsimOptions::default()).await;
    let mut loc = location();
    loc.imagesuffix = Some("gs".into());
    let p = w.provider(loc);
    let image = "img-marked";
    let (_, src) = w.ova(image, &[("disk-0.vmdk", 2048)]).await;
    let t = p.create("loc1", image, &src, &Progress::default()).await.unwrap();
    let extra = oracle_extra_config(&w.vcsim, &t.path).await;
    assert_eq!(extra["ido.managed-by"], "ido", "{extra}");
    assert_eq!(
        extra["ido.image"], image,
        "the image, without the suffix: {extra}"
    );
}

#[tokio::test]
async fn foreign_vms_and_templates_of_the_name_are_never_touched() {
    let w = World::new("clash", VcsimOptions::default()).await;
    let p = w.provider(location());
    let image = "img-clash";
    let path = format!("{VM_FOLDER}/{image}");
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 2048)]).await;

    // Someone else's powered-on VM with the template's name.
    let vm = raw_import(&p, &ova, image, false).await;
    reconfigure(&p, &vm, "<annotation>made by hand</annotation>").await;
    p.client().run_task("PowerOnVM_Task", &vm, "").await.unwrap();
    let before = w.find(&path).await.unwrap();
    assert_eq!(before["powerState"], "poweredOn");

    let e = p.exists("loc1", image).await.unwrap_err();
    assert!(e.is_name_clash(), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with("name clash in location loc1: /DC0/vm/img-clash"),
        "{text}"
    );
    assert!(
        clash_owner(&e).contains("a powered-on VM without ido's mark")
            && clash_owner(&e).contains("made by hand"),
        "{e}"
    );
    let e = p
        .create("loc1", image, &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(e.is_name_clash(), "{e:?}");
    let e = p.delete("loc1", image).await.unwrap_err();
    assert!(e.is_name_clash(), "{e:?}");
    assert_eq!(
        w.find(&path).await.unwrap(),
        before,
        "neither deleted nor replaced"
    );
    let vms = oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap();
    assert_eq!(vms.iter().filter(|v| v["name"] == image).count(), 1, "{vms:?}");

    // Powered off and made a template: still not ido's.
    p.client().power_off(&vm).await.unwrap();
    p.client().mark_as_template(&vm).await.unwrap();
    let e = p.exists("loc1", image).await.unwrap_err();
    assert!(
        clash_owner(&e).starts_with("a template without ido's mark"),
        "{e}"
    );
    assert!(p.delete("loc1", image).await.unwrap_err().is_name_clash());
    assert_eq!(w.find(&path).await.unwrap()["template"], Value::Bool(true));

    // Something else than a VM at the path: a folder.
    p.client()
        .invoke(
            "CreateFolder",
            &p.client()
                .find_by_inventory_path(VM_FOLDER)
                .await
                .unwrap()
                .unwrap(),
            "<name>img-folder</name>",
        )
        .await
        .unwrap();
    let e = p.exists("loc1", "img-folder").await.unwrap_err();
    assert_eq!(clash_owner(&e), "a Folder (not a VM)");
    assert!(p.delete("loc1", "img-folder").await.unwrap_err().is_name_clash());
    assert!(w.find(&format!("{VM_FOLDER}/img-folder")).await.is_some());

    // Adopted: the user sets ido's mark (on a VM: templates are reconfigured as VMs), and ido
    // takes it as its template and deletes it with the image.
    p.client()
        .invoke(
            "MarkAsVirtualMachine",
            &vm,
            &format!(
                "<pool type=\"ResourcePool\">{}</pool>",
                p.client()
                    .find_by_inventory_path(RESOURCE_POOL_PATH)
                    .await
                    .unwrap()
                    .unwrap()
                    .value
            ),
        )
        .await
        .unwrap();
    reconfigure(&p, &vm, ADOPT).await;
    p.client().mark_as_template(&vm).await.unwrap();
    let t = p.exists("loc1", image).await.unwrap().expect("adopted");
    assert_eq!(t.reference, vm.to_string());
    p.delete("loc1", image).await.unwrap();
    assert_eq!(w.find(&path).await, None);
}

#[tokio::test]
async fn ido_half_made_vm_is_removed_by_exists_then_reimported() {
    let w = World::new("leftover", VcsimOptions::default()).await;
    let p = w.provider(location());
    let image = "img-leftover";
    let path = format!("{VM_FOLDER}/{image}");
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 2048)]).await;
    let vm = raw_import(&p, &ova, image, true).await;
    let seen = w.find(&path).await.unwrap();
    assert_eq!(seen["template"], Value::Bool(false));

    // Powered on (someone uses it): ido's mark or not, it stays.
    p.client().run_task("PowerOnVM_Task", &vm, "").await.unwrap();
    let e = p.exists("loc1", image).await.unwrap_err();
    assert!(
        clash_owner(&e).contains("carrying ido's mark") && clash_owner(&e).contains("running"),
        "{e}"
    );
    assert!(p.delete("loc1", image).await.unwrap_err().is_name_clash());
    assert!(w.find(&path).await.is_some());

    // Powered off: the leftover of a failed import of ido's, removed and imported afresh.
    p.client().power_off(&vm).await.unwrap();
    assert_eq!(p.exists("loc1", image).await.unwrap(), None);
    assert_eq!(w.find(&path).await, None, "exists removed the leftover");
    let t = p.create("loc1", image, &src, &Progress::default()).await.unwrap();
    assert_eq!(w.find(&path).await.unwrap()["template"], Value::Bool(true));
    assert_ne!(t.reference, vm.to_string());
    assert_eq!(p.exists("loc1", image).await.unwrap(), Some(t));
}

#[tokio::test]
async fn unusable_images_are_invalid_and_leave_nothing() {
    let w = World::new("invalid", VcsimOptions::default()).await;
    let p = w.provider(location());
    let vms_before = oracle_list_vms(&w.vcsim, VM_FOLDER).await.unwrap().len();

    // Not a tar at all.
    let garbage = w.dir.path().join("garbage.ova");
    invalid_ova(&garbage).await.unwrap();
    let src = w.put("img-garbage", garbage).await;
    let e = p
        .create("loc1", "img-garbage", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::InvalidImage(_)), "{e:?}");

    // A descriptor vCenter refuses (unsupported hardware → CreateImportSpec error).
    let ovf = OvaFixture::write(
        w.dir.path().join("x.ova"),
        "img-hw",
        &[("disk-0.vmdk", 10)],
        "nic0",
    )
    .await
    .unwrap()
    .ovf
    .replace(
        "<rasd:ResourceType>10</rasd:ResourceType>",
        "<rasd:ResourceType>99</rasd:ResourceType>",
    );
    assert!(ovf.contains(">99<"));
    let src = w
        .put(
            "img-hw",
            tar_bytes::files(&[("img-hw.ovf", ovf.as_bytes()), ("disk-0.vmdk", &[0; 10])]),
        )
        .await;
    let e = p
        .create("loc1", "img-hw", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains("99")),
        "{e:?}"
    );

    // An OVF that is not XML.
    let src = w
        .put(
            "img-xml",
            tar_bytes::files(&[("img-xml.ovf", b"<Envelope><oops></Envelope>")]),
        )
        .await;
    let e = p
        .create("loc1", "img-xml", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::InvalidImage(_)), "{e:?}");

    // The OVF names a disk the archive lacks: fails after ImportVApp, so the VM is removed.
    let fixture = OvaFixture::write(
        w.dir.path().join("y.ova"),
        "img-nodisk",
        &[("disk-0.vmdk", 10)],
        "nic0",
    )
    .await
    .unwrap();
    let tar = tar_bytes::files(&[("img-nodisk.ovf", fixture.ovf.as_bytes()), ("README", b"hi")]);
    let src = w.put("img-nodisk", tar).await;
    let e = p
        .create("loc1", "img-nodisk", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::InvalidImage(m) if m.contains("disk-0.vmdk")),
        "{e:?}"
    );

    // A truncated OVA: the upload breaks mid-disk; the VM is removed.
    w.ova("img-cut", &[("disk-0.vmdk", 1 << 20)]).await;
    let bytes = tokio::fs::read(w.dir.path().join("img-cut.ova")).await.unwrap();
    let src = w.put("img-cut", bytes[..bytes.len() / 2].to_vec()).await;
    let progress = Progress::default();
    let e = p.create("loc1", "img-cut", &src, &progress).await.unwrap_err();
    assert!(progress.get() > 0, "some bytes went out before the cut: {e:?}");

    for image in ["img-garbage", "img-hw", "img-xml", "img-nodisk", "img-cut"] {
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
async fn missing_source_is_source_missing() {
    let w = World::new("missing", VcsimOptions::default()).await;
    let p = w.provider(location());
    let src = w.source.object(&format!("{}/nope.ova", w.prefix));
    let e = p
        .create("loc1", "img-missing", &src, &Progress::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::SourceMissing(_)), "{e:?}");
    assert_eq!(w.find(&format!("{VM_FOLDER}/img-missing")).await, None);
}

#[tokio::test]
async fn expired_session_is_reestablished() {
    // vcsim looks at an idle session once per timeout, so a session dies between one and two
    // timeouts after its last call; every wait below is two timeouts and a second.
    let idle = Duration::from_millis(1000);
    let wait = idle * 2 + Duration::from_millis(1000);
    let opts = VcsimOptions {
        idle_timeout: Some(idle),
        ..Default::default()
    };
    let w = World::new("expiry", opts).await;
    let p = w.provider(location());
    assert_eq!(p.exists("loc1", "img").await.unwrap(), None);
    assert_eq!(p.client().logins(), 1);
    let first = p.client().session_cookie();

    tokio::time::sleep(wait).await;
    // RetrievePropertiesEx does not fault without a session (missingSet instead): still
    // recognised as expiry.
    let root = p.client().service_content().await.unwrap().root_folder.clone();
    let o = p.client().properties(&root, &["name"]).await.unwrap();
    assert_eq!(o.text("name"), Some("Datacenters"));
    assert_eq!(p.client().logins(), 2);
    assert_ne!(p.client().session_cookie(), first);

    tokio::time::sleep(wait).await;
    let (_, src) = w.ova("img", &[("disk-0.vmdk", 100)]).await;
    p.create("loc1", "img", &src, &Progress::default()).await.unwrap();
    assert!(p.client().logins() >= 3);
}

#[tokio::test]
async fn keepalive_keeps_an_idle_session() {
    let opts = VcsimOptions {
        idle_timeout: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    let w = World::new("keepalive", opts).await;
    let p = VsphereProvider::with_keepalive(&w.config(location()), Duration::from_millis(300)).unwrap();
    assert_eq!(p.exists("loc1", "img").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(p.exists("loc1", "img").await.unwrap(), None);
    assert_eq!(p.client().logins(), 1);
}

#[tokio::test]
async fn bad_credentials_are_a_clear_error_without_the_password() {
    let w = World::new(
        "creds",
        VcsimOptions::default().with_credentials("admin", "right-password"),
    )
    .await;
    let mut cfg = w.config(location());
    cfg.credentials.password = "wrong-Pa55word".into();
    let p = VsphereProvider::new(&cfg).unwrap();
    let e = p.exists("loc1", "img").await.unwrap_err();
    match &e {
        ProviderError::Config { key, message } => {
            assert_eq!(key, "vsphere.credentials");
            assert!(message.contains("InvalidLogin"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    for text in [e.to_string(), format!("{e:?}"), format!("{p:?}")] {
        assert!(!text.contains("wrong-Pa55word"), "{text}");
    }
    cfg.credentials.password = "right-password".into();
    let p = VsphereProvider::new(&cfg).unwrap();
    assert_eq!(p.exists("loc1", "img").await.unwrap(), None);
}

#[tokio::test]
async fn tls_is_verified_unless_insecure() {
    let w = World::new("tls", VcsimOptions::default()).await;
    // Trusting the test CA.
    assert_eq!(w.provider(location()).exists("loc1", "img").await.unwrap(), None);
    // Without it: a TLS error, worth retrying (transport).
    let mut cfg = w.config(location());
    cfg.ca_bundle = None;
    let e = VsphereProvider::new(&cfg)
        .unwrap()
        .exists("loc1", "img")
        .await
        .unwrap_err();
    match &e {
        ProviderError::Transport(m) => assert!(m.to_lowercase().contains("certificate"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Insecure skips verification.
    cfg.insecure = true;
    assert_eq!(
        VsphereProvider::new(&cfg)
            .unwrap()
            .exists("loc1", "img")
            .await
            .unwrap(),
        None
    );

    // The simulator's own self-signed certificate, insecure, with an import (NFC upload over
    // the same TLS settings).
    let w = World::new("tls-builtin", VcsimOptions::builtin_cert()).await;
    let mut cfg = w.config(location());
    cfg.insecure = true;
    let p = VsphereProvider::new(&cfg).unwrap();
    let (ova, src) = w.ova("img-tls", &[("disk-0.vmdk", 5000)]).await;
    let progress = Progress::default();
    p.create("loc1", "img-tls", &src, &progress).await.unwrap();
    assert_eq!(progress.get(), ova.total_disk_bytes());
}

#[tokio::test]
async fn misconfigured_locations_name_key_and_value() {
    let w = World::new("config", VcsimOptions::default()).await;
    let (_, src) = w.ova("img", &[("disk-0.vmdk", 100)]).await;
    let cases = [
        (
            "datastore",
            VsphereLocation {
                datastore: "NoSuchDS".into(),
                ..location()
            },
            "NoSuchDS",
        ),
        (
            "cluster",
            VsphereLocation {
                cluster: "NoCluster".into(),
                ..location()
            },
            "NoCluster",
        ),
        (
            "resourcepool",
            VsphereLocation {
                resourcepool: Some("rp9".into()),
                ..location()
            },
            "rp9",
        ),
        (
            "network",
            VsphereLocation {
                network: Some("nonet".into()),
                ..location()
            },
            "nonet",
        ),
        (
            "host",
            VsphereLocation {
                host: Some("DC0_H0".into()),
                ..location()
            },
            "DC0_H0",
        ),
        (
            "datastore",
            VsphereLocation {
                datastore: NETWORK_PATH.into(),
                ..location()
            },
            "Network",
        ),
    ];
    for (field, loc, value) in cases {
        let p = w.provider(loc);
        match p.create("loc1", "img", &src, &Progress::default()).await {
            Err(ProviderError::Config { key, message }) => {
                assert_eq!(key, format!("vsphere.locations.loc1.{field}"));
                assert!(message.contains(value), "{message}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    let e = w.provider(location()).exists("nowhere", "img").await.unwrap_err();
    assert!(
        matches!(e, ProviderError::Config { ref key, .. } if key == "vsphere.locations.nowhere"),
        "{e:?}"
    );
    assert_eq!(w.find(&format!("{VM_FOLDER}/img")).await, None);
}

#[tokio::test]
async fn cancelled_import_leaves_nothing() {
    let w = World::new("cancel", VcsimOptions::default()).await;
    let p = std::sync::Arc::new(w.provider(location()));
    let image = "img-cancel";
    let (ova, src) = w.ova(image, &[("disk-0.vmdk", 64 << 20)]).await;
    let progress = Progress::default();
    let task = tokio::spawn({
        let (p, progress) = (p.clone(), progress.clone());
        async move { p.create("loc1", image, &src, &progress).await }
    });
    // Drop the import future mid-upload (as a shutdown or a reconcile timeout would).
    while progress.get() == 0 && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    let outcome = task.await;
    assert!(
        outcome.as_ref().is_err_and(|e| e.is_cancelled()),
        "finished before the abort: {outcome:?}"
    );
    assert!(progress.get() < ova.total_disk_bytes());
    // The clean-up runs in the background: wait for it.
    let path = format!("{VM_FOLDER}/{image}");
    let mut left = w.find(&path).await;
    for _ in 0..50 {
        if left.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = w.find(&path).await;
    }
    assert_eq!(left, None, "the half-made VM was removed");
}

#[tokio::test]
async fn host_selection_skips_hosts_in_maintenance() {
    let opts = VcsimOptions {
        cluster_hosts: Some(2),
        ..Default::default()
    };
    let w = World::new("hosts", opts).await;
    let p = w.provider(location());
    let c = p.client();
    let h0 = c
        .find_by_inventory_path("/DC0/host/DC0_C0/DC0_C0_H0")
        .await
        .unwrap()
        .unwrap();
    let h1 = c
        .find_by_inventory_path("/DC0/host/DC0_C0/DC0_C0_H1")
        .await
        .unwrap()
        .unwrap();
    c.run_task("EnterMaintenanceMode_Task", &h0, "<timeout>0</timeout>")
        .await
        .unwrap();

    let (_, src) = w.ova("img-h", &[("disk-0.vmdk", 100)]).await;
    let t = p
        .create("loc1", "img-h", &src, &Progress::default())
        .await
        .unwrap();
    let props = c.properties(&vm_of(&t), &["runtime.host"]).await.unwrap();
    assert_eq!(
        props.get("runtime.host").and_then(|n| n.moref()),
        Some(h1.clone())
    );

    // No usable host left in the cluster (the standalone DC0_H0 does not count).
    c.run_task("EnterMaintenanceMode_Task", &h1, "<timeout>0</timeout>")
        .await
        .unwrap();
    let (_, src) = w.ova("img-h2", &[("disk-0.vmdk", 100)]).await;
    match p.create("loc1", "img-h2", &src, &Progress::default()).await {
        Err(ProviderError::Api(m)) => assert!(m.to_string().contains("DC0_C0"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.find(&format!("{VM_FOLDER}/img-h2")).await, None);
}
