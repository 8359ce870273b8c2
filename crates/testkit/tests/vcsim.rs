//! vCenter simulator peer: TLS from a test CA, the pyVmomi oracle, and the OVA fixture's
//! descriptor checked with a raw SOAP `CreateImportSpec`.

use anyhow::{Context, bail};
use ido_testkit::oracle::{oracle_find, oracle_list_vms};
use ido_testkit::vcsim::{DATASTORE_PATH, DEFAULT_VMS, NETWORK_PATH, RESOURCE_POOL_PATH, VM_FOLDER};
use ido_testkit::{OvaFixture, Vcsim, VcsimOptions};

#[tokio::test]
async fn tls_verifies_with_only_the_test_ca() -> anyhow::Result<()> {
    let vc = Vcsim::start(VcsimOptions::default()).await?;
    assert!(vc.url().starts_with("https://127.0.0.1:") && vc.url().ends_with("/sdk"));
    ido_testkit::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(vc.ca_pem().context("no CA")?.as_bytes())?;
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .build()?;
    let versions = format!("https://{}/sdk/vimServiceVersions.xml", vc.host_port());
    let resp = http.get(&versions).send().await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await?.contains("urn:vim25"));

    let untrusting = reqwest::Client::builder().no_proxy().build()?;
    assert!(
        untrusting.get(&versions).send().await.is_err(),
        "a client without the CA must fail"
    );
    Ok(())
}

#[tokio::test]
async fn oracle_lists_the_default_vms() -> anyhow::Result<()> {
    let vc = Vcsim::start(VcsimOptions::default()).await?;
    let vms = oracle_list_vms(&vc, VM_FOLDER).await?;
    let mut names: Vec<&str> = vms.iter().filter_map(|v| v["name"].as_str()).collect();
    names.sort_unstable();
    let mut want = DEFAULT_VMS.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    for vm in &vms {
        assert_eq!(vm["template"], false, "{vm}");
        assert_eq!(vm["powerState"], "poweredOn", "{vm}");
        assert!(vm["moref"].as_str().is_some_and(|m| m.starts_with("vm-")), "{vm}");
    }
    let found = oracle_find(&vc, "/DC0/vm/DC0_H0_VM0")
        .await?
        .context("DC0_H0_VM0 not found")?;
    assert_eq!(found["type"], "VirtualMachine");
    assert!(oracle_find(&vc, "/DC0/vm/nope").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn oracle_works_over_plain_http_with_fixed_credentials() -> anyhow::Result<()> {
    let vc = Vcsim::start(VcsimOptions::plain().with_credentials("alice", "s3cret")).await?;
    assert!(vc.url().starts_with("http://"));
    let pool = oracle_find(&vc, RESOURCE_POOL_PATH)
        .await?
        .context("pool not found")?;
    assert_eq!(pool["type"], "ResourcePool");
    let builtin = Vcsim::start(VcsimOptions::builtin_cert()).await?;
    assert!(builtin.ca_pem().is_none());
    assert_eq!(
        oracle_list_vms(&builtin, VM_FOLDER).await?.len(),
        DEFAULT_VMS.len()
    );
    Ok(())
}

/// A minimal SOAP session: POSTs bodies to `/sdk` and keeps the session cookie.
struct Soap {
    http: reqwest::Client,
    url: String,
    cookie: Option<String>,
}

impl Soap {
    async fn call(&mut self, body: &str) -> anyhow::Result<String> {
        let envelope = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
        );
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=\"utf-8\"")
            .header("SOAPAction", "\"urn:vim25/6.5\"")
            .body(envelope);
        if let Some(cookie) = &self.cookie {
            req = req.header("Cookie", cookie);
        }
        let resp = req.send().await?;
        if let Some(set) = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("SOAP HTTP {status}: {text}");
        }
        Ok(text)
    }

    /// The MoRef id returned by FindByInventoryPath.
    async fn find(&mut self, path: &str) -> anyhow::Result<String> {
        let body = format!(
            r#"<FindByInventoryPath xmlns="urn:vim25"><_this type="SearchIndex">SearchIndex</_this><inventoryPath>{}</inventoryPath></FindByInventoryPath>"#,
            escape(path)
        );
        let xml = self.call(&body).await?;
        tag_text(&xml, "returnval").with_context(|| format!("{path} not found: {xml}"))
    }
}

/// The text of the first `<tag ...>text<` element.
fn tag_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}"))?;
    let rest = &xml[start..];
    let rest = &rest[rest.find('>')? + 1..];
    Some(rest[..rest.find('<')?].to_owned())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test]
async fn ova_descriptor_is_accepted_by_create_import_spec() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disks = [("disk-0.vmdk", 1024 * 1024 + 3), ("disk-1.vmdk", 4096)];
    let ova = OvaFixture::write(dir.path().join("fixture.ova"), "fixture", &disks, "nic0").await?;
    let vc = Vcsim::start(VcsimOptions::default()).await?;
    let mut soap = Soap {
        http: vc.http_client()?,
        url: vc.url().to_owned(),
        cookie: None,
    };

    let content = soap
        .call(r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#)
        .await?;
    let ovf_manager = tag_text(&content, "ovfManager").context("no ovfManager")?;
    let login = format!(
        r#"<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>{}</userName><password>{}</password></Login>"#,
        escape(vc.username()),
        escape(vc.password())
    );
    soap.call(&login).await?;
    assert!(soap.cookie.is_some(), "no session cookie");
    let pool = soap.find(RESOURCE_POOL_PATH).await?;
    let datastore = soap.find(DATASTORE_PATH).await?;
    let network = soap.find(NETWORK_PATH).await?;

    let spec = format!(
        r#"<CreateImportSpec xmlns="urn:vim25"><_this type="OvfManager">{ovf_manager}</_this><ovfDescriptor>{}</ovfDescriptor><resourcePool type="ResourcePool">{pool}</resourcePool><datastore type="Datastore">{}</datastore><cisp><locale>US</locale><deploymentOption></deploymentOption><entityName>fixture</entityName><networkMapping><name>nic0</name><network type="Network">{network}</network></networkMapping><diskProvisioning>thin</diskProvisioning></cisp></CreateImportSpec>"#,
        escape(&ova.ovf),
        escape(&datastore)
    );
    let result = soap.call(&spec).await?;
    assert!(
        !result.contains("<error>"),
        "CreateImportSpec reported errors: {result}"
    );
    assert!(result.contains("VirtualMachineImportSpec"), "{result}");
    assert_eq!(result.matches("<fileItem>").count(), ova.disks.len(), "{result}");
    for disk in &ova.disks {
        assert!(
            result.contains(&format!("<path>{}</path>", disk.name)),
            "{result}"
        );
        assert!(
            result.contains(&format!("<size>{}</size>", disk.size)),
            "{result}"
        );
    }
    Ok(())
}
