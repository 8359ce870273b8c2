//! Configuration tests (no server needed).

use super::*;

const SECRET: &str = "xxxxxxxx-1111-2222-3333-secretsecret";

fn config() -> ProxmoxConfig {
    let text = format!(
        r#"
enabled: true
credentials:
  url: "proxmox.example.com:8006"
  user: "my-user"
  realm: "pve"
  tokenId: "my-token"
  secret: "{SECRET}"
  insecure: false
locations:
  location1:
    node: "pve-node-1"
    storagePool: "local-lvm"
    importStorage: "local"
    bridge: "vmbr0"
  location2:
    node: "pve-node-2"
    storagePool: "ceph-pool"
    bridge: "vmbr1"
    memory: 4096
    cores: 4
    bios: ovmf
    netModel: virtio
"#
    );
    yaml::from_str(&text).unwrap()
}

fn key_of(e: ProviderError) -> String {
    let text = e.to_string();
    assert!(!text.contains(SECRET), "{text}");
    match e {
        ProviderError::Config { key, .. } => key,
        other => panic!("not a config error: {other:?}"),
    }
}

#[test]
fn the_originals_values_parse_with_defaults() {
    let c = config();
    c.validate().unwrap();
    assert!(c.enabled);
    assert_eq!(c.credentials.token_name(), "my-user@pve!my-token");
    assert_eq!(
        c.credentials.api_url().unwrap().as_str(),
        "https://proxmox.example.com:8006/api2/json"
    );
    let l1 = &c.locations["location1"];
    assert_eq!(
        (
            l1.memory,
            l1.cores,
            l1.scsihw.as_str(),
            l1.bios.as_str(),
            l1.net_model.as_str()
        ),
        (2048, 2, "virtio-scsi-pci", "seabios", "e1000")
    );
    let l2 = &c.locations["location2"];
    assert_eq!(l2.import_storage, "local");
    assert_eq!((l2.memory, l2.cores, l2.bios.as_str()), (4096, 4, "ovmf"));
    ido_testkit::install_crypto_provider();
    let p = ProxmoxProvider::new(&c).unwrap();
    assert_eq!(p.locations(), vec!["location1", "location2"]);
    assert_eq!(p.id(), "capmox");
    assert_eq!(p.format(), SourceFormat::Qcow2);
}

#[test]
fn unknown_fields_are_rejected() {
    let e = yaml::from_str::<ProxmoxLocation>("node: a\nstoragepool: x\n").unwrap_err();
    assert!(e.to_string().contains("storagepool"), "{e}");
}

#[test]
fn urls_and_token_names() {
    let mut c = ProxmoxCredentials {
        url: "pve.lan".into(),
        user: "ido".into(),
        ..Default::default()
    };
    let url = |c: &ProxmoxCredentials| c.api_url().map(|u| u.to_string());
    assert_eq!(url(&c).unwrap(), "https://pve.lan:8006/api2/json");
    c.url = "https://pve.lan/".into();
    assert_eq!(url(&c).unwrap(), "https://pve.lan/api2/json");
    c.url = "https://proxy.lan:443/pve/api2/json".into();
    assert_eq!(url(&c).unwrap(), "https://proxy.lan/pve/api2/json");
    for bad in [
        "http://pve.lan:8006",
        "https://u:p@pve.lan",
        "https://pve.lan/?x=1",
        "",
        "ftp://x",
    ] {
        c.url = bad.into();
        assert_eq!(
            key_of(c.api_url().unwrap_err()),
            "proxmox.credentials.url",
            "{bad}"
        );
    }
    c.token_id = "t".into();
    assert_eq!(c.token_name(), "ido@pam!t");
    c.user = "ido@pve".into();
    assert_eq!(c.token_name(), "ido@pve!t");
}

/// A change to a valid value.
type Edit<T> = Box<dyn Fn(&mut T)>;

#[test]
fn every_bad_value_names_its_key() {
    let cases: Vec<(&str, Edit<ProxmoxConfig>)> = vec![
        (
            "proxmox.credentials.url",
            Box::new(|c| c.credentials.url = "http://x".into()),
        ),
        (
            "proxmox.credentials.user",
            Box::new(|c| c.credentials.user = "".into()),
        ),
        (
            "proxmox.credentials.user",
            Box::new(|c| c.credentials.user = "a b".into()),
        ),
        (
            "proxmox.credentials.realm",
            Box::new(|c| c.credentials.realm = Some("1x".into())),
        ),
        (
            "proxmox.credentials.realm",
            Box::new(|c| c.credentials.user = "my-user@pam".into()),
        ),
        (
            "proxmox.credentials.tokenId",
            Box::new(|c| c.credentials.token_id = "".into()),
        ),
        (
            "proxmox.credentials.tokenId",
            Box::new(|c| c.credentials.token_id = "a!b".into()),
        ),
        (
            "proxmox.credentials.secret",
            Box::new(|c| c.credentials.secret = "".into()),
        ),
        (
            "proxmox.credentials.secret",
            Box::new(|c| c.credentials.secret = format!("{SECRET} x")),
        ),
        ("proxmox.locations", Box::new(|c| c.locations.clear())),
        (
            "proxmox.taskTimeoutSeconds",
            Box::new(|c| c.task_timeout_seconds = Some(0)),
        ),
    ];
    let loc_cases: Vec<(&str, Edit<ProxmoxLocation>)> = vec![
        ("node", Box::new(|l| l.node = "".into())),
        ("node", Box::new(|l| l.node = "pve_1".into())),
        ("storagePool", Box::new(|l| l.storage_pool = "".into())),
        ("importStorage", Box::new(|l| l.import_storage = "local/x".into())),
        ("bridge", Box::new(|l| l.bridge = "".into())),
        (
            "bridge",
            Box::new(|l| l.bridge = "averyveryverylongbridge".into()),
        ),
        ("memory", Box::new(|l| l.memory = 8)),
        ("cores", Box::new(|l| l.cores = 0)),
        ("scsihw", Box::new(|l| l.scsihw = "nvme".into())),
        ("bios", Box::new(|l| l.bios = "uefi".into())),
        ("netModel", Box::new(|l| l.net_model = "e1001".into())),
    ];
    for (key, f) in cases {
        let mut c = config();
        f(&mut c);
        assert_eq!(key_of(c.validate().unwrap_err()), key);
        assert_eq!(key_of(ProxmoxProvider::new(&c).unwrap_err()), key);
    }
    for (field, f) in loc_cases {
        let mut c = config();
        f(c.locations.get_mut("location1").unwrap());
        let e = c.validate().unwrap_err();
        let text = e.to_string();
        assert_eq!(
            key_of(e),
            format!("proxmox.locations.location1.{field}"),
            "{text}"
        );
    }
    // The value at fault is named.
    let mut c = config();
    c.locations.get_mut("location1").unwrap().bridge = "br!0".into();
    assert!(c.validate().unwrap_err().to_string().contains("\"br!0\""));
    // Two locations on one node would share templates.
    let mut c = config();
    c.locations.get_mut("location2").unwrap().node = "pve-node-1".into();
    let e = c.validate().unwrap_err();
    assert!(e.to_string().contains("location1"), "{e}");
    assert_eq!(key_of(e), "proxmox.locations.location2.node");
}

#[test]
fn secrets_never_show() {
    ido_testkit::install_crypto_provider();
    let c = config();
    assert!(!format!("{c:?}").contains(SECRET));
    let p = ProxmoxProvider::new(&c).unwrap();
    assert!(!format!("{p:?}").contains(SECRET), "{p:?}");
    assert!(format!("{p:?}").contains("my-user@pve!my-token"));
}

#[test]
fn image_names_must_be_vm_names() {
    check_image("flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs").unwrap();
    for bad in ["", "a_b", "a/b", "-a", "a..b", "a b"] {
        assert!(
            matches!(check_image(bad), Err(ProviderError::InvalidImage(_))),
            "{bad}"
        );
    }
}
