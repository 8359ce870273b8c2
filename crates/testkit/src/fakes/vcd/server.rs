//! HTTPS serving, routing, authentication, and the read-only calls: versions, logins, orgs,
//! catalogs and the query API.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{Path, State as AxState},
    http::{HeaderMap, Method, Uri, header},
    response::Response,
    routing::{get, post, put},
};
use tokio::task::JoinHandle;

use super::{
    FailStep, Shared, metadata, query,
    render::{self, error, esc, forbidden, reply, xml},
    state::{Caller, Session, State},
    templates, transfer,
};
use crate::TestCa;

/// Starts the HTTPS server; returns its address and the tasks to abort on drop.
pub async fn serve(ca: &TestCa, shared: Arc<Shared>) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    crate::fakes::tls::serve(ca, router(shared)).await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/versions", get(versions))
        .route("/cloudapi/1.0.0/sessions", post(login))
        .route("/cloudapi/1.0.0/sessions/provider", post(login_provider))
        .route("/api/org", get(org_list))
        .route("/api/org/{id}", get(org))
        .route("/api/query", get(query::query))
        .route("/api/catalog/{id}", get(catalog))
        .route("/api/catalog/{id}/action/upload", post(templates::upload_init))
        .route(
            "/api/catalogItem/{id}",
            get(templates::catalog_item).delete(templates::delete_item),
        )
        .route(
            "/api/vAppTemplate/{id}",
            get(templates::get_template).delete(templates::delete_template),
        )
        .route("/api/vAppTemplate/{id}/metadata", get(metadata::template_list))
        .route(
            "/api/vAppTemplate/{id}/metadata/{key}",
            get(metadata::template_get)
                .put(metadata::template_put)
                .delete(metadata::template_delete),
        )
        .route("/api/catalogItem/{id}/metadata", get(metadata::item_list))
        .route(
            "/api/catalogItem/{id}/metadata/{key}",
            get(metadata::item_get)
                .put(metadata::item_put)
                .delete(metadata::item_delete),
        )
        .route("/api/task/{id}", get(templates::get_task))
        .route("/api/task/{id}/action/cancel", post(templates::cancel_task))
        .route("/transfer/{session}/{*file}", put(transfer::put_file))
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        404,
        "RESOURCE_NOT_FOUND",
        &format!("No resource for {method} {}", uri.path()),
    )
}

/// The bearer token of a request (`Authorization: Bearer` or the access-token header).
fn token_of(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(t) = auth.and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer "))) {
        return Some(t.trim().to_string());
    }
    headers
        .get("x-vmware-vcloud-access-token")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim().to_string())
}

/// The `version=` of the Accept header, if it is one the fake offers.
fn accept_version(headers: &HeaderMap, offered: &[String]) -> Option<String> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    let v = accept
        .split(';')
        .find_map(|p| p.trim().strip_prefix("version="))?
        .trim();
    offered.iter().any(|o| o == v).then(|| v.to_string())
}

/// Authenticates an `/api` call (token, idle timer, Accept version) and applies due
/// task transitions. `Err` is the reply to send.
pub fn api_caller(st: &mut State, headers: &HeaderMap) -> Result<(Caller, String), Box<Response>> {
    let caller = token_of(headers)
        .and_then(|t| st.session(&t, true))
        .ok_or_else(|| Box::new(render::empty(401)))?;
    let version = accept_version(headers, &st.opts.versions).ok_or_else(|| {
        Box::new(error(
            406,
            "NOT_ACCEPTABLE",
            "The request has invalid accept header: an offered API version is required",
        ))
    })?;
    st.tick();
    Ok((caller, version))
}

/// Authenticates a transfer PUT (which does not refresh the idle timer).
pub fn transfer_caller(st: &mut State, headers: &HeaderMap) -> Result<Caller, Box<Response>> {
    let caller = token_of(headers)
        .and_then(|t| st.session(&t, false))
        .ok_or_else(|| Box::new(render::empty(401)))?;
    st.tick();
    Ok(caller)
}

async fn versions(AxState(sh): AxState<Arc<Shared>>) -> Response {
    let st = sh.lock();
    let mut s = String::from(r#"<SupportedVersions xmlns="http://www.vmware.com/vcloud/versions">"#);
    for v in &st.opts.versions {
        let deprecated = v.split('.').next().and_then(|m| m.parse::<u32>().ok()) < Some(37);
        s.push_str(&format!(
            r#"<VersionInfo deprecated="{deprecated}"><Version>{}</Version><LoginUrl>{}/cloudapi/1.0.0/sessions</LoginUrl></VersionInfo>"#,
            esc(v),
            st.base
        ));
    }
    s.push_str("</SupportedVersions>");
    xml(200, "application/vnd.vmware.vcloud.versions+xml", s)
}

fn json_error(status: u16, minor: &str, message: &str) -> Response {
    let body = serde_json::json!({"minorErrorCode": minor, "message": message, "stackTrace": null});
    reply(status, "application/json;version=37.0", body.to_string())
}

async fn login(AxState(sh): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    do_login(&sh, &headers, false)
}

async fn login_provider(AxState(sh): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    do_login(&sh, &headers, true)
}

fn do_login(sh: &Shared, headers: &HeaderMap, provider: bool) -> Response {
    let mut st = sh.lock();
    if st.fails(FailStep::Login) {
        return json_error(500, "INTERNAL_SERVER_ERROR", "injected login failure");
    }
    if accept_version(headers, &st.opts.versions).is_none() {
        return json_error(406, "NOT_ACCEPTABLE", "an offered API version is required");
    }
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64_decode(b.trim()))
        .and_then(|b| String::from_utf8(b).ok());
    let parsed = creds.as_deref().and_then(|c| {
        let (who, password) = c.split_once(':')?;
        let (user, org) = who.rsplit_once('@')?;
        Some((user.to_string(), org.to_string(), password.to_string()))
    });
    let org = parsed.as_ref().and_then(|(user, org, password)| {
        if *user != st.opts.username || *password != st.opts.password {
            return None;
        }
        if provider {
            (org.eq_ignore_ascii_case("system") && st.opts.system_admin).then(|| "System".to_string())
        } else {
            st.orgs
                .iter()
                .find(|o| o.name.eq_ignore_ascii_case(org))
                .map(|o| o.name.clone())
        }
    });
    let Some(org) = org else {
        st.failed_logins += 1;
        return json_error(
            401,
            "UNAUTHORIZED",
            "Unable to log in: bad username, password or organization",
        );
    };
    let token = st.token();
    let now = std::time::Instant::now();
    st.sessions.insert(
        token.clone(),
        Session {
            org: org.clone(),
            sysadmin: provider,
            created: now,
            last_used: now,
        },
    );
    st.logins += 1;
    let idle_min = st.opts.idle_timeout.as_secs().div_ceil(60).max(1);
    let (sid, uid, oid) = (st.uuid(), st.uuid(), st.uuid());
    let body = serde_json::json!({
        "id": format!("urn:vcloud:session:{sid}"),
        "user": {"name": st.opts.username, "id": format!("urn:vcloud:user:{uid}")},
        "org": {"name": org, "id": format!("urn:vcloud:org:{oid}")},
        "location": "urn:vcloud:site:fake",
        "roles": [if provider { "System Administrator" } else { "Catalog Author" }],
        "sessionIdleTimeoutMinutes": idle_min,
    });
    let mut r = reply(200, "application/json;version=37.0", body.to_string());
    if let Ok(v) = header::HeaderValue::from_str(&token) {
        r.headers_mut().insert("x-vmware-vcloud-access-token", v);
        r.headers_mut().insert(
            "x-vmware-vcloud-token-type",
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn org_list(AxState(sh): AxState<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut st = sh.lock();
    let (caller, _) = match api_caller(&mut st, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut s = format!(
        r#"<OrgList xmlns="{}" href="{}/api/org" type="application/vnd.vmware.vcloud.orgList+xml">"#,
        render::NS,
        st.base
    );
    for o in st.orgs.iter().filter(|o| caller.sees(&o.name)) {
        s.push_str(&format!(
            r#"<Org type="application/vnd.vmware.vcloud.org+xml" name="{}" href="{}/api/org/{}"/>"#,
            esc(&o.name),
            st.base,
            o.id
        ));
    }
    s.push_str("</OrgList>");
    xml(200, "application/vnd.vmware.vcloud.orgList+xml", s)
}

async fn org(AxState(sh): AxState<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut st = sh.lock();
    let (caller, _) = match api_caller(&mut st, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some(o) = st.orgs.iter().find(|o| o.id == id && caller.sees(&o.name)) else {
        return forbidden();
    };
    let base = &st.base;
    let mut s = format!(
        r#"<Org xmlns="{}" name="{}" id="urn:vcloud:org:{id}" href="{base}/api/org/{id}" type="application/vnd.vmware.vcloud.org+xml">"#,
        render::NS,
        esc(&o.name)
    );
    for (vid, name) in &o.vdcs {
        s.push_str(&format!(
            r#"<Link rel="down" type="application/vnd.vmware.vcloud.vdc+xml" name="{}" href="{base}/api/vdc/{vid}"/>"#,
            esc(name)
        ));
    }
    for (cid, name) in &o.catalogs {
        s.push_str(&format!(
            r#"<Link rel="down" type="application/vnd.vmware.vcloud.catalog+xml" name="{}" href="{base}/api/catalog/{cid}"/>"#,
            esc(name)
        ));
    }
    s.push_str(&format!(
        "<Description/><FullName>{}</FullName></Org>",
        esc(&o.name)
    ));
    xml(200, "application/vnd.vmware.vcloud.org+xml", s)
}

async fn catalog(AxState(sh): AxState<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut st = sh.lock();
    let (caller, _) = match api_caller(&mut st, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let Some((org, name)) = st.catalog(&id).filter(|(o, _)| caller.sees(o)) else {
        return forbidden();
    };
    let org_id = st.org(&org).map(|o| o.id.clone()).unwrap_or_default();
    xml(
        200,
        "application/vnd.vmware.vcloud.catalog+xml",
        render::catalog(&st, &org_id, &id, &name),
    )
}

/// Standard base64 with padding (the Basic auth header).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}
