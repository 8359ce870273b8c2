//! The query API: `GET /api/query?type=…&filter=…` with paging. The query string is split
//! on `&` only, so `;` (AND) stays inside the filter, as VCD does.

use std::sync::Arc;

use axum::{
    extract::{RawQuery, State as AxState},
    http::HeaderMap,
    response::Response,
};

use super::{
    Shared,
    render::{self, error, esc, forbidden, xml},
    server::api_caller,
};

/// `%XX` decoding (other bytes as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn query(
    AxState(sh): AxState<Arc<Shared>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let (caller, version) = match api_caller(&mut st, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let raw = raw.unwrap_or_default();
    // Split on '&' only: ';' belongs to the filter (AND).
    let param = |k: &str| {
        raw.split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    let kind = param("type").map(percent_decode).unwrap_or_default();
    let encoded = param("filterEncoded") == Some("true");
    let mut terms = Vec::new();
    for term in param("filter")
        .unwrap_or_default()
        .split(';')
        .filter(|t| !t.is_empty())
    {
        let Some((field, value)) = term.split_once("==") else {
            return error(
                400,
                "BAD_REQUEST",
                &format!("Unsupported filter term {term:?} (the fake knows f==v;g==w)"),
            );
        };
        let value = if encoded {
            percent_decode(value)
        } else {
            value.to_string()
        };
        terms.push((percent_decode(field), value));
    }
    let page: usize = param("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let page_size: usize = param("pageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(25)
        .clamp(1, 128);
    if let Some(f) = param("format").filter(|f| *f != "records") {
        return error(
            400,
            "BAD_REQUEST",
            &format!("format {f:?} is not supported by the fake"),
        );
    }
    let admin = kind.starts_with("admin");
    if admin && !caller.sysadmin {
        return forbidden();
    }
    let allowed: &[&str] = match kind.as_str() {
        "catalog" | "adminCatalog" => &["name"],
        "vAppTemplate" | "adminVAppTemplate" => &["name", "catalogName"],
        "task" => &[],
        other => return error(400, "BAD_REQUEST", &format!("Unknown query type {other:?}")),
    };
    if let Some((f, _)) = terms.iter().find(|(f, _)| !allowed.contains(&f.as_str())) {
        return error(
            400,
            "BAD_REQUEST",
            &format!("The fake cannot filter {kind} on {f:?}"),
        );
    }
    let matches = |field: &str, v: &str| terms.iter().all(|(f, want)| f != field || want == v);
    // Admin queries see every org; others only the caller's (a sysadmin's is System).
    let visible = |org: &str| if admin { true } else { caller.org == org };
    let mut records: Vec<(String, String)> = Vec::new();
    match kind.as_str() {
        "catalog" | "adminCatalog" => {
            let tag = if admin {
                "AdminCatalogRecord"
            } else {
                "CatalogRecord"
            };
            for o in st.orgs.iter().filter(|o| visible(&o.name)) {
                for (cid, name) in o.catalogs.iter().filter(|(_, n)| matches("name", n)) {
                    let href = if admin {
                        format!("{}/api/admin/catalog/{cid}", st.base)
                    } else {
                        format!("{}/api/catalog/{cid}", st.base)
                    };
                    let items = st.templates.values().filter(|t| &t.catalog_id == cid).count();
                    records.push((
                        name.clone(),
                        format!(
                            r#"<{tag} href="{href}" id="urn:vcloud:catalog:{cid}" name="{}" orgName="{}" ownerName="{}" isShared="false" isPublished="false" isLocal="true" numberOfVAppTemplates="{items}" numberOfMedia="0" description=""/>"#,
                            esc(name),
                            esc(&o.name),
                            esc(&st.opts.username)
                        ),
                    ));
                }
            }
        }
        "vAppTemplate" | "adminVAppTemplate" => {
            let with_catalog = numeric_version(&version) >= (37, 1);
            for t in st.templates.values().filter(|t| visible(&t.org)) {
                if matches("name", &t.name) && matches("catalogName", &t.catalog) {
                    records.push((
                        t.name.clone(),
                        render::template_record(&st, t, admin, with_catalog),
                    ));
                }
            }
        }
        _ => {}
    }
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let total = records.len();
    let shown: Vec<&str> = records
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(_, r)| r.as_str())
        .collect();
    let href = format!("{}/api/query?{}", st.base, esc(&raw));
    let mut s = format!(
        r#"<QueryResultRecords xmlns="{}" name="{kind}" page="{page}" pageSize="{page_size}" total="{total}" href="{href}" type="application/vnd.vmware.vcloud.query.records+xml">"#,
        render::NS
    );
    if page * page_size < total {
        let mut next: Vec<String> = raw
            .split('&')
            .filter(|kv| !kv.starts_with("page="))
            .map(str::to_string)
            .collect();
        next.push(format!("page={}", page + 1));
        s.push_str(&format!(
            r#"<Link rel="nextPage" type="application/vnd.vmware.vcloud.query.records+xml" href="{}/api/query?{}"/>"#,
            st.base,
            esc(&next.join("&"))
        ));
    }
    for r in shown {
        s.push_str(r);
    }
    s.push_str("</QueryResultRecords>");
    xml(200, "application/vnd.vmware.vcloud.query.records+xml", s)
}

fn numeric_version(v: &str) -> (u32, u32) {
    let mut p = v.split('.').map(|x| x.parse().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0))
}
