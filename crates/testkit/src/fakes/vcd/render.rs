//! XML of the fake's answers (namespace `http://www.vmware.com/vcloud/v1.5`, elements in
//! schema order) and the reply helpers.

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header::CONTENT_TYPE},
    response::Response,
};

use super::state::{State, Task, Tmpl, rfc3339};

/// The vCloud namespace.
pub const NS: &str = "http://www.vmware.com/vcloud/v1.5";
const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#;

/// Escapes text for content and attribute values.
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// A reply with `body` of media type `ty` (`;version=` appended for vCloud types).
pub fn xml(status: u16, ty: &str, body: String) -> Response {
    reply(status, &format!("{ty};version=37.0"), format!("{DECL}\n{body}"))
}

/// A reply of any content type.
pub fn reply(status: u16, ty: &str, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(ty) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// A reply without a body (401s, 204s, transfer 200s).
pub fn empty(status: u16) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// VCD's `<Error>`: `majorErrorCode` equals the status.
pub fn error(status: u16, minor: &str, message: &str) -> Response {
    xml(
        status,
        "application/vnd.vmware.vcloud.error+xml",
        format!(
            r#"<Error xmlns="{NS}" majorErrorCode="{status}" minorErrorCode="{}" message="{}" stackTrace="fake-vcd"/>"#,
            esc(minor),
            esc(message)
        ),
    )
}

/// The 403 VCD gives for ids that do not exist (or are not visible).
pub fn forbidden() -> Response {
    error(
        403,
        "ACCESS_TO_RESOURCE_IS_FORBIDDEN",
        "Either you need some or all of the following rights [General: View] to perform operations or the entity does not exist",
    )
}

pub fn template_href(base: &str, uuid: &str) -> String {
    format!("{base}/api/vAppTemplate/vappTemplate-{uuid}")
}

/// `<Task>`.
pub fn task(st: &State, t: &Task, root: bool) -> String {
    let base = &st.base;
    let ns = if root {
        format!(r#" xmlns="{NS}""#)
    } else {
        String::new()
    };
    let mut s = format!(
        r#"<Task{ns} cancelRequested="false" operation="{}" operationName="{}" serviceNamespace="com.vmware.vcloud" startTime="{}" status="{}" name="task" id="urn:vcloud:task:{id}" href="{base}/api/task/{id}" type="application/vnd.vmware.vcloud.task+xml">"#,
        esc(&t.operation),
        esc(&t.operation_name),
        rfc3339(t.started),
        t.status,
        id = t.uuid,
    );
    if t.running() {
        s.push_str(&format!(
            r#"<Link rel="task:cancel" href="{base}/api/task/{}/action/cancel"/>"#,
            t.uuid
        ));
    }
    s.push_str(&format!(
        r#"<Owner type="{}" name="{}" href="{}"/>"#,
        t.owner_type,
        esc(&t.owner_name),
        esc(&t.owner_href)
    ));
    if let Some((major, minor, message)) = &t.error {
        s.push_str(&format!(
            r#"<Error majorErrorCode="{major}" minorErrorCode="{}" message="{}"/>"#,
            esc(minor),
            esc(message)
        ));
    }
    if let Some(org) = st.org(&t.org) {
        s.push_str(&format!(
            r#"<Organization type="application/vnd.vmware.vcloud.org+xml" name="{}" href="{base}/api/org/{}"/>"#,
            esc(&org.name),
            org.id
        ));
    }
    let progress = if t.status == "success" { 100 } else { 0 };
    s.push_str(&format!("<Progress>{progress}</Progress></Task>"));
    s
}

/// `<VAppTemplate>`: tasks under way (or failed), and the files while uploading.
pub fn template(st: &State, t: &Tmpl) -> String {
    let base = &st.base;
    let href = template_href(base, &t.uuid);
    let mut s = format!(
        r#"<VAppTemplate xmlns="{NS}" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" goldMaster="false" ovfDescriptorUploaded="{}" status="{}" name="{}" id="urn:vcloud:vapptemplate:{}" href="{href}" type="application/vnd.vmware.vcloud.vAppTemplate+xml">"#,
        t.descriptor_uploaded(),
        t.status,
        esc(&t.name),
        t.uuid
    );
    s.push_str(&format!(
        r#"<Link rel="catalogItem" type="application/vnd.vmware.vcloud.catalogItem+xml" href="{base}/api/catalogItem/{}"/>"#,
        t.item_id
    ));
    s.push_str(&format!(r#"<Link rel="remove" href="{href}"/>"#));
    s.push_str(&format!("<Description>{}</Description>", esc(&t.description)));
    let tasks: Vec<&Task> = [Some(&t.upload_task), t.delete_task.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|id| st.tasks.get(id))
        .filter(|k| k.running() || k.status == "error")
        .collect();
    if !tasks.is_empty() {
        s.push_str("<Tasks>");
        for k in tasks {
            s.push_str(&task(st, k, false));
        }
        s.push_str("</Tasks>");
    }
    if st.uploading(t) {
        s.push_str("<Files>");
        for f in &t.files {
            s.push_str(&format!(
                r#"<File size="{}" bytesTransferred="{}" name="{}"><Link rel="upload:default" href="{base}/transfer/{}/{}"/></File>"#,
                f.size,
                f.data.len(),
                esc(&f.name),
                t.transfer,
                esc(&f.name)
            ));
        }
        s.push_str("</Files>");
    }
    s.push_str(&format!(
        r#"<Owner type="application/vnd.vmware.vcloud.owner+xml"><User type="application/vnd.vmware.admin.user+xml" name="{}" href="{base}/api/admin/user/{}"/></Owner>"#,
        esc(&t.owner),
        user_id(&t.owner)
    ));
    s.push_str(&format!(
        "<DateCreated>{}</DateCreated></VAppTemplate>",
        rfc3339(t.created)
    ));
    s
}

/// A stable uuid-shaped id for a user name (the fake keeps no user objects).
fn user_id(name: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `<CatalogItem>` of a template.
pub fn catalog_item(st: &State, t: &Tmpl) -> String {
    let base = &st.base;
    format!(
        concat!(
            r#"<CatalogItem xmlns="{ns}" size="0" name="{name}" id="urn:vcloud:catalogitem:{item}" href="{base}/api/catalogItem/{item}" type="application/vnd.vmware.vcloud.catalogItem+xml">"#,
            r#"<Link rel="up" type="application/vnd.vmware.vcloud.catalog+xml" href="{base}/api/catalog/{cat}"/>"#,
            r#"<Link rel="remove" href="{base}/api/catalogItem/{item}"/>"#,
            "<Description>{desc}</Description>",
            r#"<Entity type="application/vnd.vmware.vcloud.vAppTemplate+xml" name="{name}" href="{href}"/>"#,
            "<DateCreated>{date}</DateCreated><VersionNumber>1</VersionNumber></CatalogItem>"
        ),
        ns = NS,
        name = esc(&t.name),
        item = t.item_id,
        base = base,
        cat = t.catalog_id,
        desc = esc(&t.description),
        href = template_href(base, &t.uuid),
        date = rfc3339(t.created),
    )
}

/// `<Catalog>` with its `add` (upload) link and items.
pub fn catalog(st: &State, org_id: &str, id: &str, name: &str) -> String {
    let base = &st.base;
    let mut s = format!(
        r#"<Catalog xmlns="{NS}" name="{}" id="urn:vcloud:catalog:{id}" href="{base}/api/catalog/{id}" type="application/vnd.vmware.vcloud.catalog+xml">"#,
        esc(name)
    );
    s.push_str(&format!(
        r#"<Link rel="up" type="application/vnd.vmware.vcloud.org+xml" href="{base}/api/org/{org_id}"/>"#
    ));
    s.push_str(&format!(
        r#"<Link rel="add" type="application/vnd.vmware.vcloud.uploadVAppTemplateParams+xml" href="{base}/api/catalog/{id}/action/upload"/>"#
    ));
    s.push_str("<Description/><CatalogItems>");
    for t in st.templates.values().filter(|t| t.catalog_id == id) {
        s.push_str(&format!(
            r#"<CatalogItem type="application/vnd.vmware.vcloud.catalogItem+xml" name="{}" id="{}" href="{base}/api/catalogItem/{}"/>"#,
            esc(&t.name),
            t.item_id,
            t.item_id
        ));
    }
    s.push_str("</CatalogItems><IsPublished>false</IsPublished></Catalog>");
    s
}

/// The query status name of a template status.
pub fn status_name(status: i32) -> &'static str {
    match status {
        -1 => "FAILED_CREATION",
        0 => "UNRESOLVED",
        _ => "RESOLVED",
    }
}

/// One `VAppTemplateRecord` (or `AdminVAppTemplateRecord`).
pub fn template_record(st: &State, t: &Tmpl, admin: bool, with_catalog: bool) -> String {
    let base = &st.base;
    let org_id = st.org(&t.org).map(|o| o.id.as_str()).unwrap_or_default();
    let tag = if admin {
        "AdminVAppTemplateRecord"
    } else {
        "VAppTemplateRecord"
    };
    let catalog = if admin || with_catalog {
        format!(r#" catalog="{base}/api/catalog/{}""#, t.catalog_id)
    } else {
        String::new()
    };
    format!(
        r#"<{tag} href="{}" id="urn:vcloud:vapptemplate:{}" name="{}" description="{}" catalogName="{}"{catalog} org="{base}/api/org/{org_id}" ownerName="{}" status="{}" isBusy="{}" isEnabled="true" isGoldMaster="false" isPublished="false" isDeployed="false" isExpired="false" storageProfileName="*" creationDate="{}"/>"#,
        template_href(base, &t.uuid),
        t.uuid,
        esc(&t.name),
        esc(&t.description),
        esc(&t.catalog),
        esc(&st.opts.username),
        status_name(t.status),
        st.uploading(t) || t.delete_task.is_some(),
        rfc3339(t.created)
    )
}
