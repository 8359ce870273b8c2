//! Unit tests of the configuration and naming rules.

use super::*;

const VALUES: &str = r#"
enabled: true
pullFromURL: false
insecure: false
caBundle: null
credentials:
  vcenter: vc.example:8443
  username: administrator@vsphere.local
  password: "s3cr3t!"
locations:
  loc1:
    datacenter: DC0
    datastore: LocalDS_0
    cluster: DC0_C0
    folder: templates
    resourcepool: rp1
    network: VM Network
    imagesuffix: gs
  loc2:
    datacenter: DC0
    datastore: LocalDS_0
    cluster: DC0_C0
    folder: /DC0/vm/abs
"#;

fn cfg() -> VsphereConfig {
    yaml::from_str(VALUES).unwrap()
}

fn config_err(c: &VsphereConfig) -> (String, String) {
    match c.validate() {
        Err(ProviderError::Config { key, message }) => (key, message),
        other => panic!("{other:?}"),
    }
}

#[test]
fn helm_values_deserialize_and_validate() {
    let c = cfg();
    c.validate().unwrap();
    assert!(c.enabled && !c.pull_from_url && !c.insecure);
    assert_eq!(
        c.credentials.sdk_url().unwrap().as_str(),
        "https://vc.example:8443/sdk"
    );
    let l1 = &c.locations["loc1"];
    assert_eq!(l1.resourcepool.as_deref(), Some("rp1"));
    assert_eq!(l1.template_name("flatcar-1"), "flatcar-1-gs");
    assert_eq!(l1.template_path("flatcar-1"), "/DC0/vm/templates/flatcar-1-gs");
    let l2 = &c.locations["loc2"];
    assert_eq!(l2.template_path("flatcar-1"), "/DC0/vm/abs/flatcar-1");
}

#[test]
fn folder_forms() {
    let mut l = VsphereLocation {
        datacenter: "DC0".into(),
        ..Default::default()
    };
    for (folder, path) in [
        ("", "/DC0/vm"),
        ("vm", "/DC0/vm"),
        ("vm/", "/DC0/vm"),
        ("tmpl", "/DC0/vm/tmpl"),
        ("vm/a/b", "/DC0/vm/a/b"),
        ("a/b/", "/DC0/vm/a/b"),
        ("/DC0/vm/x", "/DC0/vm/x"),
    ] {
        l.folder = folder.into();
        assert_eq!(l.folder_path(), path, "folder {folder:?}");
    }
}

#[test]
fn vcenter_forms() {
    let url = |v: &str| {
        VsphereCredentials {
            vcenter: v.into(),
            ..Default::default()
        }
        .sdk_url()
    };
    assert_eq!(url("10.0.0.1").unwrap().as_str(), "https://10.0.0.1/sdk");
    assert_eq!(
        url("https://127.0.0.1:8989/sdk").unwrap().as_str(),
        "https://127.0.0.1:8989/sdk"
    );
    assert_eq!(
        url("http://127.0.0.1:8989").unwrap().as_str(),
        "http://127.0.0.1:8989/sdk"
    );
    assert!(url("").is_err());
    assert!(url("ftp://x").is_err());
    assert!(url("https://").is_err());
    let e = url("https://admin:hunter2@vc.example/sdk")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vsphere.credentials.vcenter") && !e.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn errors_name_key_and_value() {
    let mut c = cfg();
    c.locations.get_mut("loc1").unwrap().datastore = String::new();
    let (key, msg) = config_err(&c);
    assert_eq!(key, "vsphere.locations.loc1.datastore");
    assert!(msg.contains("\"\""), "{msg}");

    let mut c = cfg();
    c.locations.get_mut("loc2").unwrap().imagesuffix = Some("a/b".into());
    let (key, msg) = config_err(&c);
    assert_eq!(key, "vsphere.locations.loc2.imagesuffix");
    assert!(msg.contains("a/b"), "{msg}");

    let mut c = cfg();
    c.pull_from_url = true;
    c.validate().expect("pull mode is supported");

    let mut c = cfg();
    c.credentials.password = String::new();
    assert_eq!(config_err(&c).0, "vsphere.credentials.password");

    let mut c = cfg();
    c.credentials.username = " ".into();
    assert_eq!(config_err(&c).0, "vsphere.credentials.username");

    let mut c = cfg();
    c.credentials.vcenter = "bad host name".into();
    let (key, msg) = config_err(&c);
    assert_eq!(key, "vsphere.credentials.vcenter");
    assert!(msg.contains("bad host name"), "{msg}");

    let mut c = cfg();
    c.locations.clear();
    assert_eq!(config_err(&c).0, "vsphere.locations");

    let e = yaml::from_str::<VsphereConfig>("locations: {l: {datacenter: a, datastor: b}}").unwrap_err();
    assert!(e.to_string().contains("datastor"), "{e}");
}

#[test]
fn password_never_shows() {
    ido_testkit::install_crypto_provider();
    let c = cfg();
    assert!(!format!("{c:?}").contains("s3cr3t"));
    let p = VsphereProvider::new(&c).unwrap();
    assert!(!format!("{p:?}").contains("s3cr3t"));
    let login = Login {
        username: "u".into(),
        password: "s3cr3t!".into(),
    };
    assert!(!format!("{login:?}").contains("s3cr3t"));
}

#[test]
fn provider_basics() {
    ido_testkit::install_crypto_provider();
    let p = VsphereProvider::new(&cfg()).unwrap();
    assert_eq!(p.id(), "capv");
    assert_eq!(p.format(), SourceFormat::Ova);
    assert_eq!(p.locations(), vec!["loc1".to_string(), "loc2".to_string()]);
    assert!(
        matches!(p.location("nope"), Err(ProviderError::Config { key, .. }) if key == "vsphere.locations.nope")
    );
    let mut c = cfg();
    c.ca_bundle = Some("not a pem".into());
    match VsphereProvider::new(&c) {
        Err(ProviderError::Config { key, .. }) => assert_eq!(key, "vsphere.caBundle"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn userinfo_is_redacted() {
    assert_eq!(redact_userinfo("https://a:b@h/sdk"), "https://<redacted>@h/sdk");
    assert_eq!(redact_userinfo("a:b@h"), "<redacted>@h");
    assert_eq!(redact_userinfo("https://h/sdk"), "https://h/sdk");
}
