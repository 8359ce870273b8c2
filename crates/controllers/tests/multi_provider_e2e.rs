//! One `ido run --once` distributes node images to a vSphere (simulator), a Proxmox VE (fake)
//! and a VMware Cloud Director (fake) location at once, each location's status visible, and
//! running again without the Releases removes them everywhere.

use std::{path::Path, sync::Arc, time::Duration};

use ido_api::{NodeImage, NodeImageState, Release};
use ido_controllers::{
    Store,
    config::Config,
    file_store::FileStore,
    run::{Manifest, RunOptions, apply_desired, run},
};
use ido_io::s3::node_image_key;
use ido_testkit::{
    fakes::{
        proxmox::FakeProxmox,
        vcd::{FakeVcd, FakeVcdOptions},
    },
    oracle::oracle_list_vms,
    ova::OvaFixture,
    seaweed::{PUBLIC_BUCKET, SeaweedFs},
    vcsim::{Vcsim, VcsimOptions},
};
use serde_json::json;

const IMAGE: &str = "flatcar-stable-4081.2.0-kube-1.32.3-tooling-1.24.0-gs";

fn release(name: &str) -> Release {
    Release::with_components(
        name,
        &[
            ("flatcar", "4081.2.0"),
            ("kubernetes", "v1.32.3"),
            ("os-tooling", "1.24.0"),
        ],
    )
}

async fn publish(s3: &SeaweedFs, dir: &Path) {
    let ova = dir.join("n.ova");
    OvaFixture::write(&ova, "flatcar", &[("disk-0.vmdk", 150_000)], "nic0")
        .await
        .unwrap();
    for p in ["capv", "capvcd"] {
        s3.put_object(PUBLIC_BUCKET, &node_image_key(p, IMAGE, "ova"), ova.as_path())
            .await
            .unwrap();
    }
    let qcow = dir.join("n.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    s3.put_object(
        PUBLIC_BUCKET,
        &node_image_key("capmox", IMAGE, "qcow2"),
        qcow.as_path(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn three_providers_at_once_then_removed_everywhere() {
    let s3 = SeaweedFs::shared().await.unwrap();
    let (vc, pve, vcd) = tokio::join!(
        Vcsim::start(VcsimOptions::default()),
        FakeProxmox::start(),
        FakeVcd::start(FakeVcdOptions::default())
    );
    let (vc, pve, vcd) = (vc.unwrap(), pve.unwrap(), vcd.unwrap());
    let dir = tempfile::tempdir().unwrap();
    publish(s3, dir.path()).await;
    let vcd_opts = FakeVcdOptions::default();
    let p = pve.options();
    let cfg = Config::from_value(json!({
        "s3": {"bucket": PUBLIC_BUCKET, "region": "us-east-1", "endpoint": s3.endpoint()},
        "vsphere": {
            "enabled": true, "caBundle": vc.ca_pem().unwrap(),
            "credentials": {"vcenter": vc.url(), "username": vc.username(), "password": vc.password()},
            "locations": {"dc0": {"datacenter": "DC0", "datastore": "LocalDS_0", "cluster": "DC0_C0", "folder": "vm"}},
        },
        "proxmox": {
            "enabled": true, "caBundle": pve.ca_pem(),
            "credentials": {"url": pve.url(), "user": p.userid.split('@').next().unwrap(),
                            "realm": p.userid.split('@').nth(1).unwrap(), "tokenId": p.token_id, "secret": p.secret},
            "locations": {"pve1": {"node": "pve1", "storagePool": "local-lvm", "bridge": "vmbr0"}},
        },
        "vcd": {
            "enabled": true, "caBundle": vcd.ca_pem(),
            "credentials": {"url": vcd.url(), "username": vcd_opts.username, "password": vcd_opts.password, "org": "org1"},
            "locations": {"cat1": {"catalog": "cat1", "hardwareVersion": 19}},
        },
    }))
    .unwrap();
    let store = FileStore::open(&dir.path().join("state")).unwrap();
    let ctx = Arc::new(cfg.context(store.clone()).unwrap());
    assert_eq!(ctx.providers.ids(), ["capmox", "capv", "capvcd"]);
    let opts = RunOptions {
        timeout: Duration::from_secs(180),
        ..RunOptions::default()
    };

    let releases = ["vsphere-32.0.0", "proxmox-32.0.0", "cloud-director-32.0.0"];
    let m: Vec<Manifest> = releases
        .iter()
        .map(|r| Manifest::Release(Box::new(release(r))))
        .collect();
    apply_desired(&store, &m).await.unwrap();
    let report = run(ctx.clone(), opts.clone()).await.unwrap();
    eprintln!("{}", report.table());
    assert!(report.ok(), "{}", report.table());
    let images = store.list::<NodeImage>().await.unwrap();
    assert_eq!(images.len(), 3);
    for ni in &images {
        let st = ni.status.as_ref().unwrap();
        assert_eq!(st.state, NodeImageState::Available, "{}", ni.spec.provider);
        assert_eq!(st.locations.len(), 1);
        assert!(st.locations[0].template.is_some());
    }
    assert!(
        oracle_list_vms(&vc, "/DC0/vm")
            .await
            .unwrap()
            .iter()
            .any(|v| v["name"] == IMAGE && v["template"] == true)
    );
    assert!(pve.vms_on("pve1").iter().any(|v| v.name == IMAGE && v.template));
    assert!(
        pve.import_files("pve1", "local").is_empty(),
        "import file removed"
    );
    assert!(vcd.templates("cat1").iter().any(|t| t.name == IMAGE));

    // Without the Releases: removed from every provider.
    apply_desired(&store, &[]).await.unwrap();
    let report = run(ctx.clone(), opts).await.unwrap();
    assert!(report.ok(), "{}", report.table());
    assert!(store.list::<NodeImage>().await.unwrap().is_empty());
    assert!(
        !oracle_list_vms(&vc, "/DC0/vm")
            .await
            .unwrap()
            .iter()
            .any(|v| v["name"] == IMAGE)
    );
    assert!(pve.vms().is_empty());
    assert!(vcd.templates("cat1").is_empty());
}
