//! Unit tests of the `vcd:` configuration.

use std::time::Duration;

use super::{
    config::{parse_duration, parse_locations},
    *,
};

fn parse(text: &str) -> VcdConfig {
    yaml::from_str(text).unwrap()
}

const BASE: &str = "enabled: true
credentials: {url: 'https://vcd.example.com/api', username: ido, password: s3cr3t-pw, org: org1}
";

fn key_of(cfg: &VcdConfig) -> String {
    match cfg.validate() {
        Err(ProviderError::Config { key, message }) => {
            assert!(!message.contains("s3cr3t-pw"), "{message}");
            key
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn the_originals_single_location_and_maps_parse() {
    let c = parse(&format!(
        "{BASE}locations: {{name: loc1, vdc: vdc1, catalog: cat1, hardwareVersion: 19}}\ndownloadDir: /tmp/images\nsessionRefreshThreshold: 20h\n"
    ));
    c.validate().unwrap();
    let l = &c.locations["loc1"];
    assert_eq!(
        (l.catalog.as_str(), l.vdc.as_deref(), l.hardware_version),
        ("cat1", Some("vdc1"), 19)
    );
    assert_eq!(l.org(&c.credentials), "org1");
    assert_eq!(c.session_refresh().unwrap(), Duration::from_secs(20 * 3600));

    let c = parse(&format!(
        "{BASE}locations:\n  a: {{catalog: cat1}}\n  b: {{org: org2, catalog: cat1, hardwareVersion: 0}}\nuploadPieceSizeMiB: 4\n"
    ));
    c.validate().unwrap();
    assert_eq!(c.locations.len(), 2);
    assert_eq!(c.locations["b"].org(&c.credentials), "org2");
    assert_eq!(c.piece_size(), 4 << 20);

    let list = serde_json::json!([{"name": "x", "catalog": "c"}, {"name": "y", "catalog": "d"}]);
    assert_eq!(parse_locations(Some(list)).unwrap().len(), 2);
    let e = parse_locations(Some(serde_json::json!({"a": {"catalog": "c", "bogus": 1}})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("vcd.locations.a") && e.contains("bogus"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let with = |extra: &str| parse(&format!("{BASE}{extra}"));
    assert_eq!(key_of(&with("")), "vcd.locations");
    assert_eq!(
        key_of(&with("locations: {a: {catalog: ''}}")),
        "vcd.locations.a.catalog"
    );
    assert_eq!(
        key_of(&with("locations: {a: {catalog: c, hardwareVersion: 3}}")),
        "vcd.locations.a.hardwareVersion"
    );
    assert_eq!(
        key_of(&with("locations: {a: {catalog: c, org: ' '}}")),
        "vcd.locations.a.org"
    );
    assert_eq!(
        key_of(&with("locations: {a: {catalog: c}, b: {catalog: C, org: ORG1}}")),
        "vcd.locations.b.catalog"
    );
    assert_eq!(
        key_of(&with("locations: {a: {catalog: c}}\nuploadPieceSizeMiB: 0")),
        "vcd.uploadPieceSizeMiB"
    );
    assert_eq!(
        key_of(&with(
            "locations: {a: {catalog: c}}\nsessionRefreshThreshold: soon"
        )),
        "vcd.sessionRefreshThreshold"
    );
    let mut c = with("locations: {a: {catalog: c}}");
    c.credentials.url = "ftp://vcd".into();
    assert_eq!(key_of(&c), "vcd.credentials.url");
    c.credentials.url = "https://user:s3cr3t-pw@vcd".into();
    assert_eq!(key_of(&c), "vcd.credentials.url");
    c.credentials.url = "vcd.example.com:8443".into();
    c.credentials.org = String::new();
    assert_eq!(key_of(&c), "vcd.credentials.org");
    c.credentials.org = "org1".into();
    c.credentials.password = String::new();
    assert_eq!(key_of(&c), "vcd.credentials.password");
    c.credentials.password = "s3cr3t-pw".into();
    c.credentials.username = "a:b".into();
    assert_eq!(key_of(&c), "vcd.credentials.username");
}

#[test]
fn endpoint_urls_are_normalized() {
    let url = |u: &str| {
        VcdCredentials {
            url: u.into(),
            ..Default::default()
        }
        .base_url()
        .map(|u| u.to_string())
    };
    assert_eq!(
        url("https://vcd.example.com").unwrap(),
        "https://vcd.example.com/"
    );
    assert_eq!(
        url("https://vcd.example.com/api/").unwrap(),
        "https://vcd.example.com/"
    );
    assert_eq!(
        url("vcd.example.com:8443").unwrap(),
        "https://vcd.example.com:8443/"
    );
    assert_eq!(url("https://proxy/vcd/api").unwrap(), "https://proxy/vcd/");
    assert!(url("").is_err());
    assert!(url("https://vcd/?x=1").is_err());
}

#[test]
fn secrets_stay_out_of_debug() {
    ido_testkit::install_crypto_provider();
    let c = parse(&format!("{BASE}locations: {{a: {{catalog: c}}}}"));
    assert!(!format!("{c:?}").contains("s3cr3t-pw"));
    let p = VcdProvider::new(&c).unwrap();
    assert!(!format!("{p:?}").contains("s3cr3t-pw"));
    assert_eq!(p.locations(), vec!["a".to_string()]);
    assert_eq!((p.id(), p.format()), ("capvcd", SourceFormat::Ova));
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("20h"), Some(Duration::from_secs(72_000)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
    assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
    assert_eq!(parse_duration("10x"), None);
    assert_eq!(parse_duration("5h3"), None);
    assert_eq!(parse_duration(""), None);
}

#[test]
fn image_names_are_checked() {
    assert!(check_image("flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs").is_ok());
    assert!(check_image("").is_err());
    assert!(check_image("a\nb").is_err());
    assert!(check_image(&"x".repeat(129)).is_err());
    assert_eq!(description("img"), "Node image img");
}
