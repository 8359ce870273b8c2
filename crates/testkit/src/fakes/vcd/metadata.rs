//! Metadata of vApp templates and catalog items: `GET <entity>/metadata` (a `Metadata` with
//! one `MetadataEntry` per key), `GET|PUT|DELETE <entity>/metadata/{key}` (`MetadataValue`).
//!
//! As in VCD, writes answer 202 with a task (`metadataUpdate`, `metadataDelete`) and take
//! effect when it ends (after the task delay). Values are typed (`MetadataStringValue`,
//! `…NumberValue`, `…BooleanValue`, `…DateTimeValue`); every entry is in the `GENERAL`
//! domain. A template busy with an upload or a delete refuses writes with `BUSY_ENTITY`
//! [inferred, as for its delete]; its catalog item takes them. A key that is not set answers
//! 403, like any missing object of the fake [inferred].

use std::sync::Arc;

use axum::{
    extract::{Path, State as AxState},
    http::{HeaderMap, header},
    response::Response,
};
use quick_xml::events::Event;

use super::{
    FailStep, Shared,
    render::{self, error, esc, forbidden, xml},
    server::api_caller,
    state::{Caller, Finish, ITEM_TYPE, MetaOn, MetaValue, State, TEMPLATE_TYPE, Task},
};

/// Media type of a whole `Metadata`.
const METADATA_TYPE: &str = "application/vnd.vmware.vcloud.metadata+xml";
/// Media type of one `MetadataValue`.
const VALUE_TYPE: &str = "application/vnd.vmware.vcloud.metadata.value+xml";
/// The typed values VCD knows.
const VALUE_TYPES: &[&str] = &[
    "MetadataStringValue",
    "MetadataNumberValue",
    "MetadataBooleanValue",
    "MetadataDateTimeValue",
];

/// `GET /api/vAppTemplate/{id}/metadata`.
pub async fn template_list(sh: AxState<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    list(&sh, MetaOn::Template, &id, &headers)
}

/// `GET /api/catalogItem/{id}/metadata`.
pub async fn item_list(sh: AxState<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    list(&sh, MetaOn::Item, &id, &headers)
}

/// `GET /api/vAppTemplate/{id}/metadata/{key}`.
pub async fn template_get(
    sh: AxState<Arc<Shared>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_value(&sh, MetaOn::Template, &id, &key, &headers)
}

/// `GET /api/catalogItem/{id}/metadata/{key}`.
pub async fn item_get(
    sh: AxState<Arc<Shared>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_value(&sh, MetaOn::Item, &id, &key, &headers)
}

/// `PUT /api/vAppTemplate/{id}/metadata/{key}`.
pub async fn template_put(
    sh: AxState<Arc<Shared>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    write(&sh, MetaOn::Template, &id, &key, &headers, Some(&body))
}

/// `PUT /api/catalogItem/{id}/metadata/{key}`.
pub async fn item_put(
    sh: AxState<Arc<Shared>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    write(&sh, MetaOn::Item, &id, &key, &headers, Some(&body))
}

/// `DELETE /api/vAppTemplate/{id}/metadata/{key}`.
pub async fn template_delete(
    sh: AxState<Arc<Shared>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    write(&sh, MetaOn::Template, &id, &key, &headers, None)
}

/// `DELETE /api/catalogItem/{id}/metadata/{key}`.
pub async fn item_delete(
    sh: AxState<Arc<Shared>>,
    Path((id, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    write(&sh, MetaOn::Item, &id, &key, &headers, None)
}

/// The uuid of the template an entity id stands for, if the caller sees it.
fn resolve(st: &State, caller: &Caller, on: MetaOn, id: &str) -> Option<String> {
    let t = match on {
        MetaOn::Template => st.templates.get(id.strip_prefix("vappTemplate-")?),
        MetaOn::Item => st.templates.values().find(|t| t.item_id == id),
    }?;
    caller.sees(&t.org).then(|| t.uuid.clone())
}

/// The entity's href and media type.
fn entity(st: &State, on: MetaOn, uuid: &str) -> (String, &'static str) {
    let t = &st.templates[uuid];
    match on {
        MetaOn::Template => (render::template_href(&st.base, uuid), TEMPLATE_TYPE),
        MetaOn::Item => (format!("{}/api/catalogItem/{}", st.base, t.item_id), ITEM_TYPE),
    }
}

fn entries<'a>(st: &'a State, on: MetaOn, uuid: &str) -> &'a std::collections::BTreeMap<String, MetaValue> {
    let t = &st.templates[uuid];
    match on {
        MetaOn::Template => &t.metadata,
        MetaOn::Item => &t.item_metadata,
    }
}

/// Authenticates and resolves; `Err` is the reply.
fn start(st: &mut State, headers: &HeaderMap, on: MetaOn, id: &str) -> Result<String, Box<Response>> {
    let (caller, _) = api_caller(st, headers)?;
    resolve(st, &caller, on, id).ok_or_else(|| Box::new(forbidden()))
}

fn list(sh: &Shared, on: MetaOn, id: &str, headers: &HeaderMap) -> Response {
    let mut st = sh.lock();
    let uuid = match start(&mut st, headers, on, id) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let (href, ty) = entity(&st, on, &uuid);
    let mut s = format!(
        concat!(
            r#"<Metadata xmlns="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" href="{href}/metadata" type="{mt}">"#,
            r#"<Link rel="up" type="{ty}" href="{href}"/>"#,
            r#"<Link rel="add" type="{mt}" href="{href}/metadata"/>"#
        ),
        ns = render::NS,
        href = href,
        mt = METADATA_TYPE,
        ty = ty
    );
    for (key, (vt, value)) in entries(&st, on, &uuid) {
        let entry = format!("{href}/metadata/{}", esc(key));
        s.push_str(&format!(
            concat!(
                r#"<MetadataEntry href="{entry}" type="{vty}">"#,
                r#"<Link rel="up" type="{mt}" href="{href}/metadata"/>"#,
                r#"<Link rel="edit" type="{vty}" href="{entry}"/>"#,
                r#"<Link rel="remove" href="{entry}"/>"#,
                r#"<Domain visibility="READWRITE">GENERAL</Domain>"#,
                "<Key>{key}</Key>",
                r#"<TypedValue xsi:type="{vt}"><Value>{value}</Value></TypedValue></MetadataEntry>"#
            ),
            entry = entry,
            vty = VALUE_TYPE,
            mt = METADATA_TYPE,
            href = href,
            key = esc(key),
            vt = vt,
            value = esc(value)
        ));
    }
    s.push_str("</Metadata>");
    xml(200, METADATA_TYPE, s)
}

fn get_value(sh: &Shared, on: MetaOn, id: &str, key: &str, headers: &HeaderMap) -> Response {
    let mut st = sh.lock();
    let uuid = match start(&mut st, headers, on, id) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let (href, _) = entity(&st, on, &uuid);
    let Some((vt, value)) = entries(&st, on, &uuid).get(key) else {
        return forbidden();
    };
    let entry = format!("{href}/metadata/{}", esc(key));
    xml(
        200,
        VALUE_TYPE,
        format!(
            concat!(
                r#"<MetadataValue xmlns="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" href="{entry}" type="{vty}">"#,
                r#"<Link rel="up" type="{mt}" href="{href}/metadata"/>"#,
                r#"<Domain visibility="READWRITE">GENERAL</Domain>"#,
                r#"<TypedValue xsi:type="{vt}"><Value>{value}</Value></TypedValue></MetadataValue>"#
            ),
            ns = render::NS,
            entry = entry,
            vty = VALUE_TYPE,
            mt = METADATA_TYPE,
            href = href,
            vt = vt,
            value = esc(value)
        ),
    )
}

/// PUT (`body` = `Some`) or DELETE of one key: a task that applies it when it ends.
fn write(sh: &Shared, on: MetaOn, id: &str, key: &str, headers: &HeaderMap, body: Option<&str>) -> Response {
    let mut st = sh.lock();
    let uuid = match start(&mut st, headers, on, id) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if st.fails(FailStep::Metadata) {
        return error(500, "INTERNAL_SERVER_ERROR", "injected metadata failure");
    }
    if key.is_empty() || key.chars().count() > 256 {
        return error(
            400,
            "BAD_REQUEST",
            "A metadata key must have 1 to 256 characters.",
        );
    }
    let value = match body {
        Some(body) => {
            let ty = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ty.starts_with(VALUE_TYPE) {
                return error(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    &format!("Content-Type {ty:?} is not accepted here"),
                );
            }
            match parse_value(body) {
                Ok(v) => Some(v),
                Err(m) => return error(400, "BAD_REQUEST", &m),
            }
        }
        None if !entries(&st, on, &uuid).contains_key(key) => return forbidden(),
        None => None,
    };
    let t = &st.templates[&uuid];
    if on == MetaOn::Template && (st.uploading(t) || t.delete_task.is_some()) {
        return error(
            400,
            "BUSY_ENTITY",
            &format!(
                "The entity vappTemplate {} is busy completing an operation.",
                t.name
            ),
        );
    }
    let (name, org) = (t.name.clone(), t.org.clone());
    let (href, owner_type) = entity(&st, on, &uuid);
    let (operation_name, verb) = match value {
        Some(_) => ("metadataUpdate", "Updating"),
        None => ("metadataDelete", "Deleting"),
    };
    let task = st.uuid();
    let at = std::time::Instant::now() + st.task_delay;
    st.tasks.insert(
        task.clone(),
        Task {
            uuid: task.clone(),
            operation_name: operation_name.into(),
            operation: format!("{verb} metadata {key} of {name}({uuid})"),
            owner_type,
            owner_href: href,
            owner_name: name,
            org,
            status: "running".into(),
            error: None,
            started: std::time::SystemTime::now(),
            finish: Some((
                at,
                Finish::Metadata {
                    template: uuid,
                    on,
                    key: key.to_string(),
                    value,
                },
            )),
        },
    );
    st.tick();
    xml(
        202,
        "application/vnd.vmware.vcloud.task+xml",
        render::task(&st, &st.tasks[&task], true),
    )
}

/// `(xsi:type, Value)` of a `MetadataValue` body (namespace prefixes ignored).
pub fn parse_value(body: &str) -> Result<MetaValue, String> {
    let mut r = quick_xml::Reader::from_str(body.trim_start_matches('\u{feff}'));
    let (mut stack, mut ty, mut value) = (Vec::<String>::new(), None, None::<String>);
    loop {
        let ev = r.read_event().map_err(|e| format!("malformed XML: {e}"))?;
        let (e, open) = match ev {
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Text(t) if stack.last().map(String::as_str) == Some("Value") => {
                value.get_or_insert_default().push_str(&t.xml10_content());
                continue;
            }
            Event::GeneralRef(g) if stack.last().map(String::as_str) == Some("Value") => {
                let n = g.xml10_content();
                let c = quick_xml::escape::resolve_predefined_entity(&n).unwrap_or("");
                value.get_or_insert_default().push_str(c);
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = e.local_name().as_ref().to_string();
        if stack.is_empty() && name != "MetadataValue" {
            return Err(format!("the body is a <{name}>, not a MetadataValue"));
        }
        if name == "TypedValue" {
            ty = e
                .attributes()
                .flatten()
                .find(|a| a.key.local_name().as_ref() == "type")
                .map(|a| {
                    let v = a.value.to_string();
                    v.rsplit(':').next().unwrap_or(&v).to_string()
                });
        }
        if name == "Value" {
            value.get_or_insert_default();
        }
        if open {
            stack.push(name);
        }
    }
    let ty = ty.ok_or("TypedValue with an xsi:type is required")?;
    if !VALUE_TYPES.contains(&ty.as_str()) {
        return Err(format!("unknown metadata value type {ty:?}"));
    }
    let value = value.ok_or("TypedValue/Value is required")?;
    Ok((ty, value))
}
