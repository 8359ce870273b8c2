//! The OVF import calls of the client: `CreateImportSpec`, `ImportVApp` and the
//! `HttpNfcLease` methods (push: Progress/Complete/Abort; pull: `HttpNfcLeasePullFromUrls_Task`).

use std::time::{Duration, Instant};

use super::{
    client::Client,
    soap::{Fault, Response, SoapError},
    xml::{MoRef, Node, NodeExt as _, Writer, XSI},
};

/// Longest wait for a lease to leave `initializing`.
const LEASE_READY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The `cisp` (OvfCreateImportSpecParams) of `CreateImportSpec`.
#[derive(Clone, Debug, Default)]
pub struct ImportParams {
    /// Name of the new VM.
    pub entity_name: String,
    /// Host to import to.
    pub host: Option<MoRef>,
    /// OVF network name → network.
    pub network_mapping: Vec<(String, MoRef)>,
    /// `thin`, `thick`, … (`None`: server default).
    pub disk_provisioning: Option<String>,
}

/// A file the import expects (`fileItem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileItem {
    /// Pairs with [`DeviceUrl::import_key`].
    pub device_id: String,
    /// The OVA member (`References/File@ovf:href`).
    pub path: String,
    /// Size declared in the OVF, if any.
    pub size: Option<u64>,
    /// `true` for files to create (PUT), `false` for disks (POST).
    pub create: bool,
}

/// What `CreateImportSpec` returns.
#[derive(Clone, Debug)]
pub struct ImportSpec {
    /// The `importSpec` as a `<spec xsi:type=…>` element, ready for `ImportVApp`.
    pub spec_xml: String,
    /// Files to upload.
    pub file_items: Vec<FileItem>,
    /// Warnings (import goes on).
    pub warnings: Vec<Fault>,
    /// Errors (the OVF cannot be imported).
    pub errors: Vec<Fault>,
}

/// An upload target of a lease (`deviceUrl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceUrl {
    /// Device key on the new VM, e.g. `/vm-69/disk:0`.
    pub key: String,
    /// Pairs with [`FileItem::device_id`].
    pub import_key: String,
    /// Upload URL; its host may be `*` (meaning: the vCenter host).
    pub url: String,
    /// SHA-1 thumbprint of the target host's certificate, if any.
    pub ssl_thumbprint: Option<String>,
}

/// `HttpNfcLease.info` once the lease is ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The VM being created.
    pub entity: Option<MoRef>,
    /// Where to upload.
    pub device_urls: Vec<DeviceUrl>,
}

/// A file vSphere downloads itself (`HttpNfcLeaseSourceFile` of `HttpNfcLeasePullFromUrls_Task`).
#[derive(Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The [`FileItem::device_id`] (= [`DeviceUrl::import_key`]) it is for.
    pub target_device_id: String,
    /// Where to GET it (an OVA when [`member_name`](Self::member_name) is set).
    pub url: String,
    /// The tar member of the file at `url` to use.
    pub member_name: Option<String>,
    /// As [`FileItem::create`].
    pub create: bool,
    /// SHA-1 thumbprint of the `url` server's certificate.
    pub ssl_thumbprint: Option<String>,
    /// Extra request headers.
    pub http_headers: Vec<(String, String)>,
    /// Size in bytes.
    pub size: Option<u64>,
}

impl std::fmt::Debug for SourceFile {
    /// Without the URL's query (a presigned URL's signature) or header values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.split_once('?').map_or(self.url.as_str(), |(u, _)| u);
        f.debug_struct("SourceFile")
            .field("target_device_id", &self.target_device_id)
            .field("url", &url)
            .field("member_name", &self.member_name)
            .field("create", &self.create)
            .field("ssl_thumbprint", &self.ssl_thumbprint)
            .field(
                "http_headers",
                &self.http_headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("size", &self.size)
            .finish()
    }
}

impl Client {
    /// `CreateImportSpec` for `descriptor` into `pool` on `datastore`.
    pub async fn create_import_spec(
        &self,
        descriptor: &str,
        pool: &MoRef,
        datastore: &MoRef,
        p: &ImportParams,
    ) -> Result<ImportSpec, SoapError> {
        const M: &str = "CreateImportSpec";
        let ovf_manager = self.service_content().await?.ovf_manager.clone();
        let mut w = Writer::default();
        w.text("ovfDescriptor", descriptor)
            .moref("resourcePool", pool)
            .moref("datastore", datastore);
        w.open("cisp", None)
            .text("locale", "US")
            .text("deploymentOption", "");
        w.text("entityName", &p.entity_name);
        if let Some(h) = &p.host {
            w.moref("hostSystem", h);
        }
        for (name, net) in &p.network_mapping {
            w.open("networkMapping", None)
                .text("name", name)
                .moref("network", net)
                .close("networkMapping");
        }
        if let Some(d) = &p.disk_provisioning {
            w.text("diskProvisioning", d);
        }
        w.close("cisp");
        let r = self.invoke(M, &ovf_manager, &w.into_string()).await?;
        parse_import_spec(&r)
    }

    /// `ImportVApp` of `spec` into `pool` (and `folder`, on `host`): returns the lease.
    pub async fn import_vapp(
        &self,
        pool: &MoRef,
        spec: &ImportSpec,
        folder: Option<&MoRef>,
        host: Option<&MoRef>,
    ) -> Result<MoRef, SoapError> {
        const M: &str = "ImportVApp";
        let mut w = Writer::default();
        w.raw(&spec.spec_xml);
        if let Some(f) = folder {
            w.moref("folder", f);
        }
        if let Some(h) = host {
            w.moref("host", h);
        }
        let r = self.invoke(M, pool, &w.into_string()).await?;
        r.returnval()
            .and_then(Node::moref)
            .ok_or_else(|| SoapError::response(M, "no lease in the answer"))
    }

    /// Polls the lease until it is `ready` (returns its info) or fails.
    pub async fn lease_wait_ready(&self, lease: &MoRef) -> Result<LeaseInfo, SoapError> {
        const M: &str = "HttpNfcLease";
        let start = Instant::now();
        loop {
            let o = self.properties(lease, &["state", "error", "info"]).await?;
            match o.text("state") {
                Some("ready") => {
                    let info = o
                        .get("info")
                        .ok_or_else(|| SoapError::response(M, "ready lease without info"))?;
                    return Ok(parse_lease_info(info));
                }
                Some("error") => {
                    let fault = o
                        .get("error")
                        .map(Fault::from_localized)
                        .unwrap_or_else(|| Fault {
                            kind: "HttpNfcLeaseError".into(),
                            message: "lease failed without a reason".into(),
                        });
                    return Err(SoapError::Fault { method: M, fault });
                }
                Some("initializing") | None if start.elapsed() < LEASE_READY_TIMEOUT => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                state => {
                    let m = format!(
                        "lease {} in state {:?}, not ready",
                        lease.value,
                        state.unwrap_or("unknown")
                    );
                    return Err(SoapError::response(M, m));
                }
            }
        }
    }

    /// `HttpNfcLeaseProgress` (also renews the lease).
    pub async fn lease_progress(&self, lease: &MoRef, percent: u8) -> Result<(), SoapError> {
        let mut w = Writer::default();
        w.text("percent", &percent.min(100).to_string());
        self.invoke("HttpNfcLeaseProgress", lease, &w.into_string())
            .await
            .map(drop)
    }

    /// `HttpNfcLeasePullFromUrls_Task` (API 6.7+): vSphere downloads `files` into the lease's
    /// devices itself. Returns the task (wait for it, then [`Client::lease_complete`]).
    pub async fn lease_pull_from_urls(
        &self,
        lease: &MoRef,
        files: &[SourceFile],
    ) -> Result<MoRef, SoapError> {
        const M: &str = "HttpNfcLeasePullFromUrls_Task";
        let r = self.invoke(M, lease, &pull_params(files)).await?;
        r.returnval()
            .and_then(Node::moref)
            .ok_or_else(|| SoapError::response(M, "no task in the answer"))
    }

    /// `HttpNfcLeaseComplete`.
    pub async fn lease_complete(&self, lease: &MoRef) -> Result<(), SoapError> {
        self.invoke("HttpNfcLeaseComplete", lease, "").await.map(drop)
    }

    /// `HttpNfcLeaseAbort` (without a fault).
    pub async fn lease_abort(&self, lease: &MoRef) -> Result<(), SoapError> {
        self.invoke("HttpNfcLeaseAbort", lease, "").await.map(drop)
    }
}

/// The `files` of `HttpNfcLeasePullFromUrls_Task`, fields in WSDL order.
fn pull_params(files: &[SourceFile]) -> String {
    let mut w = Writer::default();
    for f in files {
        w.open("files", None)
            .text("targetDeviceId", &f.target_device_id)
            .text("url", &f.url);
        if let Some(m) = &f.member_name {
            w.text("memberName", m);
        }
        w.text("create", if f.create { "true" } else { "false" });
        if let Some(t) = &f.ssl_thumbprint {
            w.text("sslThumbprint", t);
        }
        for (k, v) in &f.http_headers {
            w.open("httpHeaders", None)
                .text("key", k)
                .text("value", v)
                .close("httpHeaders");
        }
        if let Some(s) = f.size {
            w.text("size", &s.to_string());
        }
        w.close("files");
    }
    w.into_string()
}

fn parse_import_spec(r: &Response) -> Result<ImportSpec, SoapError> {
    const M: &str = "CreateImportSpec";
    let rv = r
        .returnval()
        .ok_or_else(|| SoapError::response(M, "no returnval"))?;
    let errors: Vec<Fault> = rv.children_named("error").map(Fault::from_localized).collect();
    let warnings = rv.children_named("warning").map(Fault::from_localized).collect();
    let file_items = rv
        .children_named("fileItem")
        .map(|f| FileItem {
            device_id: f.text_at("deviceId").unwrap_or_default().trim().to_string(),
            path: f.text_at("path").unwrap_or_default().trim().to_string(),
            size: f.text_at("size").and_then(|s| s.trim().parse().ok()),
            create: f.child("create").and_then(Node::as_bool).unwrap_or(false),
        })
        .collect();
    let spec_xml = match rv.child("importSpec") {
        Some(is) => splice_spec(r, rv, is)?,
        None if !errors.is_empty() => String::new(),
        None => return Err(SoapError::response(M, "no importSpec and no error")),
    };
    Ok(ImportSpec {
        spec_xml,
        file_items,
        warnings,
        errors,
    })
}

/// `<importSpec …>inner</importSpec>` → `<spec [ns decls in scope] xsi:type="…">inner</spec>`.
/// The inner XML is copied verbatim; every prefix it may use is declared again on `spec`.
fn splice_spec(r: &Response, rv: &Node, is: &Node) -> Result<String, SoapError> {
    let ty = is
        .xsi_type
        .as_deref()
        .ok_or_else(|| SoapError::response("CreateImportSpec", "importSpec without xsi:type"))?;
    let mut decls: Vec<(&str, &str)> = Vec::new();
    let scopes = r
        .outer_decls
        .iter()
        .chain(&r.node.ns_decls)
        .chain(&rv.ns_decls)
        .chain(&is.ns_decls);
    for (p, uri) in scopes {
        decls.retain(|(q, _)| q != p);
        decls.push((p, uri));
    }
    decls.retain(|(p, _)| *p != "xsi");
    decls.push(("xsi", XSI));
    let mut s = String::from("<spec");
    for (p, uri) in decls {
        s.push_str(&format!(" xmlns:{p}=\"{}\"", super::xml::escape(uri)));
    }
    s.push_str(&format!(" xsi:type=\"{}\">", super::xml::escape(ty)));
    s.push_str(r.raw_inner(is));
    s.push_str("</spec>");
    Ok(s)
}

fn parse_lease_info(info: &Node) -> LeaseInfo {
    let text = |n: &Node, p: &str| n.text_at(p).unwrap_or_default().trim().to_string();
    LeaseInfo {
        entity: info.child("entity").and_then(Node::moref),
        device_urls: info
            .children_named("deviceUrl")
            .map(|d| DeviceUrl {
                key: text(d, "key"),
                import_key: text(d, "importKey"),
                url: text(d, "url"),
                ssl_thumbprint: d
                    .text_at("sslThumbprint")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Into::into),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsphere::{soap::parse_response, xml::envelope};

    #[test]
    fn import_spec_is_spliced_with_its_namespaces() {
        let src = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema"><soapenv:Body><CreateImportSpecResponse xmlns="urn:vim25"><returnval><importSpec xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="VirtualMachineImportSpec"><configSpec><name>t&amp;1</name><deviceChange XMLSchema-instance:type="VirtualDeviceConfigSpec"><operation>add</operation></deviceChange></configSpec><resPoolEntity type="ResourcePool">resgroup-26</resPoolEntity></importSpec><fileItem><deviceId>/t/disk:0</deviceId><path>disk-0.vmdk</path><size>1024</size><cimType>17</cimType><create>false</create></fileItem><warning><fault XMLSchema-instance:type="OvfHardwareCheck" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"/><localizedMessage>w</localizedMessage></warning></returnval></CreateImportSpecResponse></soapenv:Body></soapenv:Envelope>"#;
        let r = parse_response("CreateImportSpec", 200, src.into()).unwrap();
        let spec = parse_import_spec(&r).unwrap();
        assert_eq!(
            spec.file_items,
            vec![FileItem {
                device_id: "/t/disk:0".into(),
                path: "disk-0.vmdk".into(),
                size: Some(1024),
                create: false
            }]
        );
        assert_eq!(spec.warnings.len(), 1);
        assert!(spec.errors.is_empty());
        assert!(
            spec.spec_xml.starts_with("<spec xmlns:soapenv="),
            "{}",
            spec.spec_xml
        );
        assert!(
            spec.spec_xml
                .contains(r#"xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance""#)
        );
        assert!(
            spec.spec_xml
                .contains(r#"xsi:type="VirtualMachineImportSpec"><configSpec><name>t&amp;1</name>"#)
        );
        // The spliced element parses inside a request and keeps the nested types.
        let body = format!("<ImportVApp xmlns=\"urn:vim25\">{}</ImportVApp>", spec.spec_xml);
        let n = Node::parse(&envelope(&body)).unwrap();
        let s = n.at("Body/ImportVApp/spec").unwrap();
        assert_eq!(s.type_name(), Some("VirtualMachineImportSpec"));
        assert_eq!(
            s.at("configSpec/deviceChange").unwrap().type_name(),
            Some("VirtualDeviceConfigSpec")
        );
        assert_eq!(s.text_at("configSpec/name"), Some("t&1"));
    }

    #[test]
    fn import_spec_errors_are_reported() {
        let src = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><CreateImportSpecResponse xmlns="urn:vim25"><returnval><error><fault xsi:type="OvfUnsupportedType"/><localizedMessage>bad hw</localizedMessage></error></returnval></CreateImportSpecResponse></soapenv:Body></soapenv:Envelope>"#;
        let r = parse_response("CreateImportSpec", 200, src.into()).unwrap();
        let spec = parse_import_spec(&r).unwrap();
        assert_eq!(
            spec.errors,
            vec![Fault {
                kind: "OvfUnsupportedType".into(),
                message: "bad hw".into()
            }]
        );
    }

    #[test]
    fn pull_files_are_written_in_wsdl_order() {
        let files = [
            SourceFile {
                target_device_id: "/t/disk:0".into(),
                url: "https://s3/b/t.ova?X-Amz-Signature=s&x=1".into(),
                member_name: Some("disk-0.vmdk".into()),
                create: false,
                ssl_thumbprint: Some("AB:CD".into()),
                http_headers: vec![("X-A".into(), "v".into())],
                size: Some(65536),
            },
            SourceFile {
                target_device_id: "/t/disk:1".into(),
                url: "http://s3/b/d.vmdk".into(),
                member_name: None,
                create: true,
                ssl_thumbprint: None,
                http_headers: vec![],
                size: None,
            },
        ];
        assert_eq!(
            pull_params(&files),
            concat!(
                "<files><targetDeviceId>/t/disk:0</targetDeviceId>",
                "<url>https://s3/b/t.ova?X-Amz-Signature=s&amp;x=1</url>",
                "<memberName>disk-0.vmdk</memberName><create>false</create>",
                "<sslThumbprint>AB:CD</sslThumbprint>",
                "<httpHeaders><key>X-A</key><value>v</value></httpHeaders><size>65536</size></files>",
                "<files><targetDeviceId>/t/disk:1</targetDeviceId><url>http://s3/b/d.vmdk</url>",
                "<create>true</create></files>",
            )
        );
        let shown = format!("{:?}", files[0]);
        assert!(
            !shown.contains("Signature") && !shown.contains("\"v\""),
            "{shown}"
        );
    }

    #[test]
    fn lease_info_pairs() {
        let src = r#"<val xmlns="urn:vim25"><lease type="HttpNfcLease">l</lease><entity type="VirtualMachine">vm-69</entity><deviceUrl><key>/vm-69/disk:0</key><importKey>/t/disk:0</importKey><url>https://*/nfc/session%5Bx%5Dy/disk-0.vmdk</url><sslThumbprint></sslThumbprint><disk>true</disk><targetId>disk-0.vmdk</targetId></deviceUrl><totalDiskCapacityInKB>0</totalDiskCapacityInKB></val>"#;
        let info = parse_lease_info(&Node::parse(src).unwrap());
        assert_eq!(info.entity, Some(MoRef::new("VirtualMachine", "vm-69")));
        assert_eq!(info.device_urls[0].import_key, "/t/disk:0");
        assert_eq!(
            info.device_urls[0].url,
            "https://*/nfc/session%5Bx%5Dy/disk-0.vmdk"
        );
        assert_eq!(info.device_urls[0].ssl_thumbprint, None);
    }
}
