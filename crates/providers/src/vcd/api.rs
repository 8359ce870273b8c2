//! The calls on VCD objects: the query API (catalogs, templates), template reads, metadata
//! (ido's mark), task waiting and template removal.

use std::time::{Duration, Instant};

pub use super::types::{Catalog, File, Task, TaskStatus, Template, TemplateRecord, encode, id_of};
use super::{client::Client, error::VcdError};
use ido_io::xml::Node;

/// Media type of the upload parameters (`POST <catalog>/action/upload`).
pub const UPLOAD_PARAMS_TYPE: &str = "application/vnd.vmware.vcloud.uploadVAppTemplateParams+xml";
/// Media type of one metadata value (`PUT <entity>/metadata/<key>`).
pub const METADATA_VALUE_TYPE: &str = "application/vnd.vmware.vcloud.metadata.value+xml";
/// Records per query page asked for.
const PAGE_SIZE: usize = 128;
/// Longest wait for one task (a disk import can take a while on slow storage).
pub const TASK_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// First and longest pause between polls.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(3);

/// All records of a typed query (`type=<kind>&filter=<filter>`), page by page.
pub async fn query(client: &Client, kind: &str, filter: &str) -> Result<Vec<Node>, VcdError> {
    let mut out = Vec::new();
    for page in 1.. {
        let url = client.api_url(&format!(
            "query?type={kind}&format=records&filter={filter}&filterEncoded=true&page={page}&pageSize={PAGE_SIZE}"
        ));
        let what = format!("query {kind} {filter}");
        let root = client.get(&what, &url).await?;
        let total: usize = root.attr("total").and_then(|t| t.parse().ok()).unwrap_or(0);
        let before = out.len();
        out.extend(root.children.into_iter().filter(|c| c.name != "Link"));
        if out.len() >= total || out.len() == before {
            break;
        }
    }
    Ok(out)
}

/// The catalog `name` of `org`, or `None` when the login cannot see one.
pub async fn find_catalog(client: &Client, org: &str, name: &str) -> Result<Option<Catalog>, VcdError> {
    let kind = if client.is_system() {
        "adminCatalog"
    } else {
        "catalog"
    };
    let records = query(client, kind, &format!("name=={}", encode(name))).await?;
    let pick = records
        .iter()
        .filter(|r| r.attr("name") == Some(name))
        .find(|r| r.attr("orgName") == Some(org))
        .or_else(|| {
            records.iter().find(|r| {
                r.attr("name") == Some(name) && r.attr("orgName").is_some_and(|o| o.eq_ignore_ascii_case(org))
            })
        });
    let Some(href) = pick.and_then(|r| r.attr("href")) else {
        return Ok(None);
    };
    // Admin records point at /api/admin/catalog/<id>; uploads go through /api/catalog/<id>.
    let href = href.replace("/api/admin/catalog/", "/api/catalog/");
    let what = format!("GET catalog {name:?}");
    let node = client.get(&what, &href).await?;
    let link = |rel: &str, ty: &str| {
        node.children_named("Link")
            .find(|l| l.attr("rel") == Some(rel) && l.attr("type").is_some_and(|t| t.starts_with(ty)))
            .and_then(|l| l.attr("href"))
            .map(str::to_string)
    };
    let upload_href = link("add", UPLOAD_PARAMS_TYPE).ok_or_else(|| {
        VcdError::protocol(&what, "no upload link: is the catalog writable (not subscribed)?")
    })?;
    Ok(Some(Catalog {
        href,
        name: name.to_string(),
        org: org.to_string(),
        upload_href,
        org_href: link("up", "application/vnd.vmware.vcloud.org+xml"),
    }))
}

/// The vApp templates named `name` in `catalog`.
pub async fn find_templates(
    client: &Client,
    catalog: &Catalog,
    name: &str,
) -> Result<Vec<TemplateRecord>, VcdError> {
    let kind = if client.is_system() {
        "adminVAppTemplate"
    } else {
        "vAppTemplate"
    };
    let filter = format!("catalogName=={};name=={}", encode(&catalog.name), encode(name));
    let records = query(client, kind, &filter).await?;
    Ok(records
        .iter()
        .filter(|r| r.attr("name") == Some(name))
        // Same-named catalogs of other orgs: keep this catalog's (37.1+ records name it)
        // or else this org's.
        .filter(|r| match (r.attr("catalog"), r.attr("org"), &catalog.org_href) {
            (Some(c), _, _) => id_of(c) == id_of(&catalog.href),
            (None, Some(o), Some(mine)) => id_of(o) == id_of(mine),
            _ => true,
        })
        .filter_map(|r| {
            Some(TemplateRecord {
                href: r.attr("href")?.to_string(),
                name: name.to_string(),
                status: r.attr("status").unwrap_or_default().to_string(),
            })
        })
        .collect())
}

/// The template at `href`; `None` once it is gone.
pub async fn get_template(client: &Client, href: &str) -> Result<Option<Template>, VcdError> {
    let what = format!("GET {href}");
    match client.get(&what, href).await {
        Ok(n) => Template::from_node(&n, &what).map(Some),
        Err(e) if e.is_gone() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The metadata of the entity at `href` (`GET <href>/metadata`) as `(key, value)` pairs of
/// every domain; `None` once the entity is gone.
pub async fn metadata(client: &Client, href: &str) -> Result<Option<Vec<(String, String)>>, VcdError> {
    let url = format!("{}/metadata", href.trim_end_matches('/'));
    let what = format!("GET {url}");
    let n = match client.get(&what, &url).await {
        Ok(n) => n,
        Err(e) if e.is_gone() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        n.children_named("MetadataEntry")
            .map(|e| {
                let key = e.text_at("Key").unwrap_or_default().trim().to_string();
                let value = e
                    .text_at("TypedValue/Value")
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                (key, value)
            })
            .collect(),
    ))
}

/// Sets the string metadata `key` = `value` (domain GENERAL) on the entity at `href` and
/// waits for VCD's task.
pub async fn set_metadata(client: &Client, href: &str, key: &str, value: &str) -> Result<(), VcdError> {
    let url = format!("{}/metadata/{}", href.trim_end_matches('/'), encode(key));
    let body = format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<MetadataValue xmlns="http://www.vmware.com/vcloud/v1.5" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<TypedValue xsi:type="MetadataStringValue"><Value>{}</Value></TypedValue></MetadataValue>"#
        ),
        ido_io::xml::escape(value)
    );
    let what = format!("PUT metadata {key:?} of {href}");
    let answer = client.put_xml(&what, &url, METADATA_VALUE_TYPE, &body).await?;
    if let Some(task) = Task::from_node(&answer) {
        wait_task(client, &task.href).await?;
    }
    Ok(())
}

/// Polls the task at `href` until it ends; `Err(Task)` unless it succeeded.
pub async fn wait_task(client: &Client, href: &str) -> Result<Task, VcdError> {
    let start = Instant::now();
    let mut pause = POLL_MIN;
    loop {
        let what = format!("GET task {href}");
        let n = client.get(&what, href).await?;
        let task = Task::from_node(&n).ok_or_else(|| VcdError::protocol(&what, "not a Task"))?;
        match &task.status {
            TaskStatus::Success => return Ok(task),
            s if s.is_failed() => {
                return Err(VcdError::Task {
                    operation: task.operation_name.clone(),
                    owner: task.owner.clone(),
                    status: s.as_str().to_string(),
                    message: task.error.clone().unwrap_or_default(),
                });
            }
            _ => {}
        }
        if start.elapsed() > TASK_TIMEOUT {
            return Err(VcdError::Timeout {
                what: format!("task {} ({href})", task.operation_name),
                secs: TASK_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Removes the template at `href`, whatever its state: cancels running tasks (which
/// drops an unfinished upload), then deletes it and waits for the delete task. An already
/// missing template is success.
pub async fn remove_template(client: &Client, href: &str) -> Result<(), VcdError> {
    let mut pause = POLL_MIN;
    for _ in 0..20 {
        let Some(t) = get_template(client, href).await? else {
            return Ok(());
        };
        for task in t
            .tasks
            .iter()
            .filter(|t| matches!(t.status, TaskStatus::Running(_)))
        {
            let cancel = task
                .cancel_href
                .clone()
                .unwrap_or_else(|| format!("{}/action/cancel", task.href));
            match client
                .post_empty(&format!("cancel task {}", task.operation_name), &cancel)
                .await
            {
                Ok(()) => tracing::debug!(template = %t.name, task = %task.href, "task cancelled"),
                Err(e) if e.is_gone() || e.status() == Some(400) => {}
                Err(e) => return Err(e),
            }
        }
        if t.tasks.iter().any(|t| matches!(t.status, TaskStatus::Running(_)))
            && get_template(client, href).await?.is_none()
        {
            return Ok(());
        }
        match client
            .delete(&format!("DELETE template {:?}", t.name), href)
            .await
        {
            Ok(Some(task)) => {
                if let Some(task) = Task::from_node(&task) {
                    wait_task(client, &task.href).await?;
                }
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_gone() => return Ok(()),
            Err(e) if e.is_busy() => {
                tracing::debug!(template = %t.name, "template busy; retrying the delete");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL_MAX);
            }
            Err(e) => return Err(e),
        }
    }
    Err(VcdError::Timeout {
        what: format!("removing {href} (busy)"),
        secs: 60,
    })
}
