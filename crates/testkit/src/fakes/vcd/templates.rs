//! Catalog items, templates and tasks: the upload action, template reads (which list
//! the disk files once VCD "read" the descriptor), deletes and task cancels.

use std::sync::Arc;

use axum::{
    extract::{Path, State as AxState},
    http::{HeaderMap, header},
    response::Response,
};

use super::{
    FailStep, Shared, ovf,
    render::{self, empty, error, forbidden, xml},
    server::api_caller,
    state::{Caller, Finish, State, Task},
};

/// The caller of an `/api` request, or the error reply.
macro_rules! caller {
    ($st:expr, $headers:expr) => {
        match api_caller(&mut $st, &$headers) {
            Ok((c, _)) => c,
            Err(r) => return *r,
        }
    };
}

/// `POST /api/catalog/{id}/action/upload`.
pub async fn upload_init(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    let Some((org, cat)) = st.catalog(&id).filter(|(o, _)| caller.sees(o)) else {
        return forbidden();
    };
    if st.fails(FailStep::UploadInit) {
        return error(
            500,
            "INTERNAL_SERVER_ERROR",
            "injected failure creating the catalog item",
        );
    }
    let ty = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ty.starts_with("application/vnd.vmware.vcloud.uploadVAppTemplateParams+xml") {
        return error(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            &format!("Content-Type {ty:?} is not accepted here"),
        );
    }
    let (name, desc, manifest) = match ovf::upload_params(&body) {
        Ok(p) => p,
        Err(m) => return error(400, "BAD_REQUEST", &m),
    };
    if manifest {
        return error(
            400,
            "BAD_REQUEST",
            "manifestRequired is not supported by the fake",
        );
    }
    if st
        .templates
        .values()
        .any(|t| t.catalog_id == id && t.name == name)
    {
        return error(
            400,
            "DUPLICATE_NAME",
            &format!("The VCD entity {name} already exists."),
        );
    }
    let uuid = st.create_upload(&org, &id, &cat, &name, &desc);
    let body = render::catalog_item(&st, &st.templates[&uuid]);
    xml(201, "application/vnd.vmware.vcloud.catalogItem+xml", body)
}

fn template_uuid(id: &str) -> &str {
    id.strip_prefix("vappTemplate-").unwrap_or("")
}

/// `GET /api/vAppTemplate/{id}`; lists the disk files once their polls are done.
pub async fn get_template(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    let uuid = template_uuid(&id).to_string();
    let Some(t) = st.templates.get_mut(&uuid).filter(|t| caller.sees(&t.org)) else {
        return forbidden();
    };
    if t.descriptor_uploaded() && !t.pending_files.is_empty() {
        if t.polls_left > 0 {
            t.polls_left -= 1;
        } else {
            let pending = std::mem::take(&mut t.pending_files);
            t.files.extend(pending);
        }
    }
    let t = &st.templates[&uuid];
    xml(
        200,
        "application/vnd.vmware.vcloud.vAppTemplate+xml",
        render::template(&st, t),
    )
}

/// `GET /api/catalogItem/{id}`.
pub async fn catalog_item(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    match st
        .templates
        .values()
        .find(|t| t.item_id == id && caller.sees(&t.org))
    {
        Some(t) => xml(
            200,
            "application/vnd.vmware.vcloud.catalogItem+xml",
            render::catalog_item(&st, t),
        ),
        None => forbidden(),
    }
}

/// `DELETE /api/vAppTemplate/{id}`.
pub async fn delete_template(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    let uuid = template_uuid(&id).to_string();
    delete(&mut st, &caller, &uuid)
}

/// `DELETE /api/catalogItem/{id}` (removes the template too).
pub async fn delete_item(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    let uuid = st
        .templates
        .values()
        .find(|t| t.item_id == id)
        .map(|t| t.uuid.clone())
        .unwrap_or_default();
    delete(&mut st, &caller, &uuid)
}

fn delete(st: &mut State, caller: &Caller, uuid: &str) -> Response {
    let Some(t) = st.templates.get(uuid).filter(|t| caller.sees(&t.org)) else {
        return forbidden();
    };
    if st.fails(FailStep::Delete) {
        return error(500, "INTERNAL_SERVER_ERROR", "injected delete failure");
    }
    if st.uploading(t) || t.delete_task.is_some() {
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
    let task = st.uuid();
    let at = std::time::Instant::now() + st.task_delay;
    st.tasks.insert(
        task.clone(),
        Task {
            uuid: task.clone(),
            operation_name: "vdcDeleteTemplate".into(),
            operation: format!("Deleting Virtual Application Template {name}({uuid})"),
            owner_type: super::state::TEMPLATE_TYPE,
            owner_href: render::template_href(&st.base, uuid),
            owner_name: name,
            org,
            status: "running".into(),
            error: None,
            started: std::time::SystemTime::now(),
            finish: Some((
                at,
                Finish::Delete {
                    template: uuid.to_string(),
                },
            )),
        },
    );
    if let Some(t) = st.templates.get_mut(uuid) {
        t.delete_task = Some(task.clone());
    }
    xml(
        202,
        "application/vnd.vmware.vcloud.task+xml",
        render::task(st, &st.tasks[&task], true),
    )
}

/// `GET /api/task/{id}`.
pub async fn get_task(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    match st.tasks.get(&id).filter(|t| caller.sees(&t.org)) {
        Some(t) => xml(
            200,
            "application/vnd.vmware.vcloud.task+xml",
            render::task(&st, t, true),
        ),
        None => forbidden(),
    }
}

/// `POST /api/task/{id}/action/cancel`: cancelling an unfinished upload removes it.
pub async fn cancel_task(
    AxState(sh): AxState<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut st = sh.lock();
    let caller = caller!(st, headers);
    let Some(t) = st.tasks.get(&id).filter(|t| caller.sees(&t.org)) else {
        return forbidden();
    };
    if !t.running() {
        return error(
            400,
            "BAD_REQUEST",
            "The task is not running and cannot be cancelled.",
        );
    }
    st.end_task(&id, "aborted", None);
    st.templates
        .retain(|_, t| !(t.upload_task == id && t.status != 8));
    for t in st.templates.values_mut() {
        if t.delete_task.as_deref() == Some(id.as_str()) {
            t.delete_task = None;
        }
    }
    empty(204)
}
