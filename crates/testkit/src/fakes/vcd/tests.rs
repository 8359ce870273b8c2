//! The fake spoken to with raw HTTP, as the API reference describes the protocol.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use super::*;

const ACCEPT: &str = "application/*+xml;version=37.0";

struct Raw {
    vcd: FakeVcd,
    http: reqwest::Client,
    token: String,
}

impl Raw {
    async fn start(opts: FakeVcdOptions) -> Self {
        let vcd = FakeVcd::start(opts).await.unwrap();
        let http = vcd.ca.reqwest_client().unwrap();
        let mut raw = Self {
            vcd,
            http,
            token: String::new(),
        };
        raw.token = raw.login("ido@org1", "fake-vcd-password").await.unwrap();
        raw
    }

    async fn login(&self, who: &str, password: &str) -> Result<String, StatusCode> {
        let r = self
            .http
            .post(format!("{}/cloudapi/1.0.0/sessions", self.vcd.url()))
            .basic_auth(who, Some(password))
            .header("Accept", "application/json;version=37.0")
            .send()
            .await
            .unwrap();
        if !r.status().is_success() {
            return Err(r.status());
        }
        Ok(r.headers()["x-vmware-vcloud-access-token"]
            .to_str()
            .unwrap()
            .to_string())
    }

    fn url(&self, href_or_path: &str) -> String {
        if href_or_path.starts_with("https://") {
            href_or_path.to_string()
        } else {
            format!("{}{href_or_path}", self.vcd.url())
        }
    }

    async fn call(
        &self,
        method: Method,
        href: &str,
        body: Option<(&str, Vec<u8>)>,
        range: Option<String>,
    ) -> (StatusCode, String) {
        let mut req = self
            .http
            .request(method, self.url(href))
            .bearer_auth(&self.token)
            .header("Accept", ACCEPT);
        if let Some((ty, b)) = body {
            req = req.header("Content-Type", ty).body(b);
        }
        if let Some(r) = range {
            req = req.header("Content-Range", r);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn get(&self, href: &str) -> String {
        let (s, body) = self.call(Method::GET, href, None, None).await;
        assert_eq!(s, StatusCode::OK, "{href}: {body}");
        body
    }

    /// Creates an upload of `name` in org1/cat1; returns the template href.
    async fn upload_init(&self, name: &str) -> String {
        let cat = attr(
            &self.get("/api/query?type=catalog&filter=name==cat1").await,
            "CatalogRecord",
            "href",
        );
        let link = self.get(&cat).await;
        let up = link_href(&link, "add");
        let body = format!(
            r#"<UploadVAppTemplateParams xmlns="http://www.vmware.com/vcloud/v1.5" name="{name}"><Description>d &amp; e</Description></UploadVAppTemplateParams>"#
        );
        let (s, item) = self
            .call(Method::POST, &up, Some((api_type(), body.into_bytes())), None)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{item}");
        attr(&item, "Entity", "href")
    }
}

fn api_type() -> &'static str {
    "application/vnd.vmware.vcloud.uploadVAppTemplateParams+xml"
}

/// The value of `name` in the first `<tag …>` of `xml`.
fn attr(xml: &str, tag: &str, name: &str) -> String {
    let start = xml
        .find(&format!("<{tag} "))
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"));
    let rest = &xml[start..];
    let rest = &rest[..rest.find('>').unwrap()];
    let key = format!(" {name}=\"");
    let v = &rest[rest.find(&key).unwrap_or_else(|| panic!("no {name} in {rest}")) + key.len()..];
    v[..v.find('"').unwrap()].replace("&amp;", "&")
}

fn link_href(xml: &str, rel: &str) -> String {
    let key = format!("rel=\"{rel}\"");
    let at = xml.find(&key).unwrap_or_else(|| panic!("no {rel} link in {xml}"));
    let tag_start = xml[..at].rfind('<').unwrap();
    attr(&xml[tag_start..], "Link", "href")
}

/// The upload link of file `name` in a template.
fn file_link(xml: &str, name: &str) -> Option<String> {
    let at = xml.find(&format!("name=\"{name}\""))?;
    let rest = &xml[at..];
    Some(attr(&rest[rest.find("<Link ")?..], "Link", "href"))
}

fn ovf(files: &[(&str, u64)]) -> String {
    let refs: String = files
        .iter()
        .map(|(h, s)| format!(r#"<File ovf:href="{h}" ovf:id="f-{h}" ovf:size="{s}"/>"#))
        .collect();
    format!(
        r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"><References>{refs}</References><VirtualSystem ovf:id="vm"><VirtualHardwareSection><System><vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType></System></VirtualHardwareSection></VirtualSystem></Envelope>"#
    )
}

#[tokio::test]
async fn an_upload_goes_through_every_step_and_is_stored() {
    let raw = Raw::start(FakeVcdOptions::default()).await;
    let versions = reqwest::get(format!("{}/api/versions", raw.vcd.url())).await;
    assert!(versions.is_err(), "plain clients do not trust the test CA");
    let v = raw
        .http
        .get(format!("{}/api/versions", raw.vcd.url()))
        .send()
        .await
        .unwrap();
    let v = v.text().await.unwrap();
    assert!(
        v.contains("<Version>37.0</Version>") && v.contains("/cloudapi/1.0.0/sessions"),
        "{v}"
    );

    let href = raw.upload_init("img").await;
    let (s, body) = raw
        .call(
            Method::POST,
            &link_href(
                &raw.get(&attr(
                    &raw.get("/api/query?type=catalog&filter=name==cat1").await,
                    "CatalogRecord",
                    "href",
                ))
                .await,
                "add",
            ),
            Some((
                api_type(),
                br#"<UploadVAppTemplateParams xmlns="http://www.vmware.com/vcloud/v1.5" name="img"/>"#
                    .to_vec(),
            )),
            None,
        )
        .await;
    assert_eq!(
        (s, attr(&body, "Error", "minorErrorCode")),
        (StatusCode::BAD_REQUEST, "DUPLICATE_NAME".into())
    );

    let t = raw.get(&href).await;
    assert_eq!(attr(&t, "VAppTemplate", "status"), "0");
    assert!(t.contains(r#"operationName="vdcUploadOvfContents""#), "{t}");
    let desc_link = file_link(&t, "descriptor.ovf").unwrap();
    let disk_link = desc_link.replace("descriptor.ovf", "disk-0.vmdk");
    let (s, _) = raw
        .call(
            Method::PUT,
            &disk_link,
            Some(("application/octet-stream", vec![1; 10])),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "the descriptor goes first");

    let (s, _) = raw
        .call(
            Method::PUT,
            &desc_link,
            Some(("text/xml", ovf(&[("disk-0.vmdk", 10)]).into_bytes())),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        file_link(&raw.get(&href).await, "disk-0.vmdk"),
        None,
        "listed after one poll"
    );
    let t = raw.get(&href).await;
    assert_eq!(file_link(&t, "disk-0.vmdk").as_deref(), Some(disk_link.as_str()));
    assert_eq!(attr(&t, "VAppTemplate", "ovfDescriptorUploaded"), "true");

    let data: Vec<u8> = (0..10).collect();
    let put = |range: &str, bytes: &[u8]| {
        raw.call(
            Method::PUT,
            &disk_link,
            Some(("application/octet-stream", bytes.to_vec())),
            Some(range.to_string()),
        )
    };
    assert_eq!(
        put("bytes 4-9/10", &data[4..]).await.0,
        StatusCode::RANGE_NOT_SATISFIABLE
    );
    assert_eq!(put("bytes 0-3/10", &data[..4]).await.0, StatusCode::OK);
    assert_eq!(
        attr(&raw.get(&href).await, "VAppTemplate", "status"),
        "0",
        "not all bytes yet"
    );
    assert_eq!(put("bytes 4-9/10", &data[4..]).await.0, StatusCode::OK);
    let t = raw.get(&href).await;
    assert_eq!(attr(&t, "VAppTemplate", "status"), "8", "{t}");
    assert!(!t.contains("<Files>"));

    let seen = raw.vcd.template("org1", "cat1", "img").unwrap();
    assert!(seen.is_resolved());
    assert_eq!(seen.description, "d & e");
    assert_eq!(seen.virtual_system_types(), vec!["vmx-19".to_string()]);
    let disk = seen.file("disk-0.vmdk").unwrap();
    assert_eq!(disk.sha256.clone().unwrap(), hex::encode(Sha256::digest(&data)));
    assert_eq!(raw.vcd.file_bytes(&seen.id, "disk-0.vmdk").unwrap(), data);
    let q = raw
        .get("/api/query?type=vAppTemplate&filter=catalogName==cat1;name==img&filterEncoded=true")
        .await;
    assert_eq!(attr(&q, "VAppTemplateRecord", "status"), "RESOLVED");
    assert_eq!(attr(&q, "QueryResultRecords", "total"), "1");

    raw.vcd.set_task_delay(Duration::from_millis(200));
    let (s, task) = raw.call(Method::DELETE, &href, None, None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let task_href = attr(&task, "Task", "href");
    assert_eq!(attr(&raw.get(&task_href).await, "Task", "status"), "running");
    assert!(raw.vcd.template("org1", "cat1", "img").unwrap().deleting);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(attr(&raw.get(&task_href).await, "Task", "status"), "success");
    assert_eq!(
        raw.call(Method::GET, &href, None, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert!(raw.vcd.templates("cat1").is_empty());
}

#[tokio::test]
async fn wrong_sizes_bad_descriptors_and_failures_fail_the_upload() {
    let raw = Raw::start(FakeVcdOptions {
        files_after_polls: 0,
        ..Default::default()
    })
    .await;
    // A disk larger than the OVF says: the task fails, the template is status -1.
    let href = raw.upload_init("big").await;
    let link = file_link(&raw.get(&href).await, "descriptor.ovf").unwrap();
    raw.call(
        Method::PUT,
        &link,
        Some(("text/xml", ovf(&[("d.vmdk", 5)]).into_bytes())),
        None,
    )
    .await;
    let disk = link.replace("descriptor.ovf", "d.vmdk");
    let (s, _) = raw
        .call(
            Method::PUT,
            &disk,
            Some(("application/octet-stream", vec![0; 6])),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let t = raw.get(&href).await;
    assert_eq!(attr(&t, "VAppTemplate", "status"), "-1");
    assert!(
        t.contains(r#"status="error""#) && t.contains("declares 5 bytes"),
        "{t}"
    );

    // Not an OVF: accepted, then the upload fails.
    let href = raw.upload_init("notovf").await;
    let link = file_link(&raw.get(&href).await, "descriptor.ovf").unwrap();
    let (s, _) = raw
        .call(Method::PUT, &link, Some(("text/xml", b"<html/>".to_vec())), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(attr(&raw.get(&href).await, "VAppTemplate", "status"), "-1");

    // A running upload cannot be deleted; cancelling its task removes it.
    let href = raw.upload_init("busy").await;
    let (s, body) = raw.call(Method::DELETE, &href, None, None).await;
    assert_eq!(
        (s, attr(&body, "Error", "minorErrorCode")),
        (StatusCode::BAD_REQUEST, "BUSY_ENTITY".into())
    );
    let t = raw.get(&href).await;
    let cancel = link_href(&t, "task:cancel");
    assert_eq!(
        raw.call(Method::POST, &cancel, None, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        raw.call(Method::GET, &href, None, None).await.0,
        StatusCode::FORBIDDEN
    );

    // Injected: the task fails once every file arrived.
    raw.vcd.fail(FailStep::Task);
    let href = raw.upload_init("taskfail").await;
    let link = file_link(&raw.get(&href).await, "descriptor.ovf").unwrap();
    raw.call(
        Method::PUT,
        &link,
        Some(("text/xml", ovf(&[("d.vmdk", 3)]).into_bytes())),
        None,
    )
    .await;
    let disk = link.replace("descriptor.ovf", "d.vmdk");
    assert_eq!(
        raw.call(Method::PUT, &disk, Some(("x", vec![1, 2, 3])), None)
            .await
            .0,
        StatusCode::OK
    );
    let seen = raw.vcd.template("org1", "cat1", "taskfail").unwrap();
    assert_eq!((seen.status, seen.task_status.as_str()), (-1, "error"));
    assert!(seen.file("d.vmdk").unwrap().complete);
    raw.vcd.heal(FailStep::Task);
    raw.vcd.fail(FailStep::UploadInit);
    let cat = attr(
        &raw.get("/api/query?type=catalog&filter=name==cat2").await,
        "CatalogRecord",
        "href",
    );
    let up = link_href(&raw.get(&cat).await, "add");
    let (s, _) = raw
        .call(
            Method::POST,
            &up,
            Some((api_type(), br#"<UploadVAppTemplateParams name="x"/>"#.to_vec())),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(raw.vcd.templates("cat2").is_empty());
}

#[tokio::test]
async fn sessions_logins_and_visibility() {
    let raw = Raw::start(FakeVcdOptions::default()).await;
    assert_eq!(
        raw.login("ido@org1", "wrong").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        raw.login("ido@nope", "fake-vcd-password").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        raw.login("ido@System", "fake-vcd-password").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!((raw.vcd.logins(), raw.vcd.failed_logins()), (1, 3));

    // No token, a wrong version, an expired session.
    let r = raw
        .http
        .get(format!("{}/api/org", raw.vcd.url()))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().is_empty());
    let r = raw
        .http
        .get(format!("{}/api/org", raw.vcd.url()))
        .bearer_auth(&raw.token)
        .header("Accept", "application/*+xml;version=5.5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    let orgs = raw.get("/api/org").await;
    assert!(orgs.contains("name=\"org1\"") && !orgs.contains("org2"), "{orgs}");
    let q = raw.get("/api/query?type=catalog&filter=name==cat1").await;
    assert_eq!(
        attr(&q, "QueryResultRecords", "total"),
        "1",
        "only the caller's org"
    );
    assert_eq!(
        raw.call(Method::GET, "/api/query?type=adminCatalog", None, None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    raw.vcd.expire_sessions_now();
    assert_eq!(
        raw.call(Method::GET, "/api/org", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Lifetimes, and the provider login of a system administrator.
    let mut raw = raw;
    raw.token = raw.login("ido@org1", "fake-vcd-password").await.unwrap();
    raw.vcd.expire_sessions_after(Some(Duration::from_millis(100)));
    assert_eq!(
        raw.call(Method::GET, "/api/org", None, None).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        raw.call(Method::GET, "/api/org", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    raw.vcd.expire_sessions_after(None);
    let r = raw
        .http
        .post(format!("{}/cloudapi/1.0.0/sessions/provider", raw.vcd.url()))
        .basic_auth("ido@System", Some("fake-vcd-password"))
        .header("Accept", "application/json;version=37.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    raw.token = r.headers()["x-vmware-vcloud-access-token"]
        .to_str()
        .unwrap()
        .into();
    let q = raw
        .get("/api/query?type=adminCatalog&filter=name==cat1&pageSize=1")
        .await;
    assert_eq!(attr(&q, "QueryResultRecords", "total"), "2");
    assert!(q.contains("rel=\"nextPage\""), "{q}");

    let id = raw
        .vcd
        .seed_template("org2", "cat1", "seeded", Seed::Failed)
        .unwrap();
    let q = raw
        .get("/api/query?type=adminVAppTemplate&filter=name==seeded")
        .await;
    assert_eq!(attr(&q, "AdminVAppTemplateRecord", "status"), "FAILED_CREATION");
    assert!(q.contains(&id));
}

#[test]
fn ovfs_are_checked() {
    assert_eq!(
        ovf::parse_ovf(&ovf(&[("a.vmdk", 3), ("b.vmdk", 4)])).unwrap(),
        vec![("a.vmdk".to_string(), 3), ("b.vmdk".to_string(), 4)]
    );
    assert!(ovf::parse_ovf("<Envelope><References/></Envelope>").is_err());
    assert!(ovf::parse_ovf("<Envelope>").is_err());
    let gz = ovf(&[("a.vmdk", 3)]).replace("ovf:id", "ovf:compression=\"gzip\" ovf:x");
    assert!(ovf::parse_ovf(&gz).unwrap_err().contains("compressed"));
    assert_eq!(
        server::base64_decode("aWRvQG9yZzE6cHc="),
        Some(b"ido@org1:pw".to_vec())
    );
    assert_eq!(query::percent_decode("a%20b%3Bc%"), "a b;c%");
}

#[tokio::test]
async fn metadata_of_templates_and_catalog_items() {
    let raw = Raw::start(FakeVcdOptions::default()).await;
    let href = raw.upload_init("meta").await;
    let t = raw.get(&href).await;
    let item = link_href(&t, "catalogItem");
    assert_eq!(attr(&t, "User", "name"), "ido", "the owner: {t}");
    let value_type = "application/vnd.vmware.vcloud.metadata.value+xml";
    let value = |v: &str| {
        format!(
            r#"<MetadataValue xmlns="http://www.vmware.com/vcloud/v1.5" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><TypedValue xsi:type="MetadataStringValue"><Value>{v}</Value></TypedValue></MetadataValue>"#
        )
    };

    // The catalog item takes metadata while the upload runs; the template is busy.
    let (s, task) = raw
        .call(
            Method::PUT,
            &format!("{item}/metadata/ido.managed-by"),
            Some((value_type, value("ido").into_bytes())),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{task}");
    assert!(task.contains(r#"operationName="metadataUpdate""#), "{task}");
    assert!(
        task.contains(r#"<Owner type="application/vnd.vmware.vcloud.catalogItem+xml""#),
        "{task}"
    );
    let (s, busy) = raw
        .call(
            Method::PUT,
            &format!("{href}/metadata/k"),
            Some((value_type, value("v").into_bytes())),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(busy.contains("BUSY_ENTITY"), "{busy}");

    // Read back, as the whole set and as one value.
    let all = raw.get(&format!("{item}/metadata")).await;
    assert!(all.starts_with("<?xml") && all.contains("<Metadata "), "{all}");
    assert!(
        all.contains("<Key>ido.managed-by</Key>")
            && all.contains(r#"<TypedValue xsi:type="MetadataStringValue"><Value>ido</Value></TypedValue>"#),
        "{all}"
    );
    let one = raw.get(&format!("{item}/metadata/ido.managed-by")).await;
    assert!(
        one.contains("<MetadataValue ") && one.contains("<Value>ido</Value>"),
        "{one}"
    );
    let t = raw.vcd.templates("cat1").pop().unwrap();
    assert_eq!(t.item_metadata["ido.managed-by"], "ido");
    assert!(t.metadata.is_empty());
    assert!(
        !raw.get(&format!("{href}/metadata"))
            .await
            .contains("<MetadataEntry")
    );

    // Bad bodies, media types and unknown keys.
    for (ty, body, want) in [
        (value_type, "<Metadata/>".to_string(), StatusCode::BAD_REQUEST),
        (
            value_type,
            value("x").replace("MetadataStringValue", "MetadataBlobValue"),
            StatusCode::BAD_REQUEST,
        ),
        ("text/xml", value("x"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let (s, b) = raw
            .call(
                Method::PUT,
                &format!("{item}/metadata/k"),
                Some((ty, body.into_bytes())),
                None,
            )
            .await;
        assert_eq!(s, want, "{b}");
    }
    let (s, _) = raw
        .call(Method::GET, &format!("{item}/metadata/nope"), None, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Deleted through a task; an injected failure is a 500.
    raw.vcd.fail(FailStep::Metadata);
    let (s, _) = raw
        .call(
            Method::DELETE,
            &format!("{item}/metadata/ido.managed-by"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    raw.vcd.heal(FailStep::Metadata);
    raw.vcd.set_task_delay(Duration::from_millis(200));
    let (s, task) = raw
        .call(
            Method::DELETE,
            &format!("{item}/metadata/ido.managed-by"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{task}");
    assert!(
        task.contains(r#"status="running""#),
        "applied when the task ends: {task}"
    );
    assert_eq!(raw.vcd.templates("cat1")[0].item_metadata.len(), 1, "not yet");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(raw.vcd.templates("cat1")[0].item_metadata.is_empty());
}
