//! Uploads into DiskImports (`source.upload`), the operator's two parts:
//!
//! - **tokens** ([`token_router`], on the admission webhook's HTTPS server): an
//!   `UploadTokenRequest` created as a dry run reaches `POST /mutate-upload-token` with the
//!   requester's identity; a SubjectAccessReview asks the API server whether that identity
//!   may `create` `diskimports/upload` for that DiskImport, and if so the answer's patch
//!   puts a token ([`ido_controllers::diskimport::upload`]) in the object's `status`.
//!   Requests that are not dry runs are refused: a token is never stored.
//! - **the endpoint** ([`proxy_router`], `--upload-bind-address`, HTTPS): CDI's upload
//!   paths; a request's token is checked, its DiskImport looked up, and the request
//!   streamed to that DiskImport's ready upload pod (`http://<pod IP>:8443`), which checks
//!   the token again and takes the bytes. 409 once the DiskImport succeeded, 503 while no
//!   upload pod is ready.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use ido_api::{DiskImport, DiskImportPhase};
use ido_controllers::diskimport::{DISK_IMPORT_LABEL, labels, upload::UploadKey};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::Pod,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use serde_json::json;

/// Where the API server posts UploadTokenRequests.
pub const TOKEN_PATH: &str = "/mutate-upload-token";
/// The headers passed to the upload pod and back.
const FORWARDED: [&str; 4] = ["upload-offset", "upload-length", "upload-id", "content-type"];

/// What the token webhook needs.
pub struct Tokens {
    client: Client,
    key: UploadKey,
}

/// The token webhook's route.
pub fn token_router(client: Client, key: UploadKey) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(review))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(Arc::new(Tokens { client, key }))
}

async fn review(State(t): State<Arc<Tokens>>, body: Bytes) -> Response {
    let req = match admission_request(&body) {
        Ok(r) => r,
        Err(bad) => return *bad,
    };
    let decided = t.decide(&req).await;
    admission_answer(&req, decided, "upload token")
}

/// The request of an AdmissionReview, or (a 400) why the body holds none.
pub(crate) fn admission_request(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, Box<Response>> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("not an AdmissionReview: {e}")))?;
    review
        .try_into()
        .map_err(|e| bad_request(format!("not an AdmissionReview request: {e}")))
}

fn bad_request(message: String) -> Box<Response> {
    Box::new((StatusCode::BAD_REQUEST, message).into_response())
}

/// The answer to `req`: the decision's patch, or a denial with its reason (`what` names
/// the decision in the log).
pub(crate) fn admission_answer(
    req: &AdmissionRequest<DynamicObject>,
    decided: Result<json_patch::Patch, String>,
    what: &str,
) -> Response {
    let answer = match decided {
        Ok(patch) => match AdmissionResponse::from(req).with_patch(patch) {
            Ok(r) => r,
            Err(e) => AdmissionResponse::from(req).deny(format!("making the patch: {e}")),
        },
        Err(why) => {
            tracing::info!(user = %req.user_info.username.as_deref().unwrap_or_default(), "{what} refused: {why}");
            AdmissionResponse::from(req).deny(why)
        }
    };
    match serde_json::to_vec(&answer.into_review()) {
        Ok(json) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Asks the API server whether the requester of `req` may do what `attributes` say: `Ok`
/// if allowed, else why not, as a parenthesised remark to append (the authorizer's reason,
/// if it gave one, or why it could not be asked).
pub(crate) async fn access_review(
    client: &Client,
    req: &AdmissionRequest<DynamicObject>,
    attributes: ResourceAttributes,
) -> Result<(), String> {
    let user = &req.user_info;
    let who = user.username.clone().unwrap_or_default();
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(attributes),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|e| format!(" (the API server could not be asked about {who}: {e})"))?;
    let status = answer.status.unwrap_or_default();
    if status.allowed {
        return Ok(());
    }
    Err(status
        .reason
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default())
}

impl Tokens {
    /// The patch that puts a token in the request's status, or why there is none.
    async fn decide(&self, req: &AdmissionRequest<DynamicObject>) -> Result<json_patch::Patch, String> {
        if req.operation != Operation::Create {
            return Err("UploadTokenRequests are only created".into());
        }
        if !req.dry_run {
            return Err(
                "UploadTokenRequests are answered to dry runs only (kubectl create --dry-run=server -o yaml; ido upload does): a token is never stored"
                    .into(),
            );
        }
        let ns = req.namespace.clone().unwrap_or_default();
        let obj = req.object.as_ref().ok_or("the request has no object")?;
        let spec: ido_api::upload::UploadTokenRequestSpec = obj
            .data
            .get("spec")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("spec: {e}"))?
            .unwrap_or_default();
        let name = spec
            .target()
            .ok_or("spec.diskImport: the DiskImport to upload into is required")?
            .to_string();
        let who = req.user_info.username.clone().unwrap_or_default();
        let attributes = ResourceAttributes {
            namespace: Some(ns.clone()),
            verb: Some("create".into()),
            group: Some("ido.dev".into()),
            resource: Some("diskimports".into()),
            subresource: Some("upload".into()),
            name: Some(name.clone()),
            ..Default::default()
        };
        access_review(&self.client, req, attributes).await.map_err(|why| {
            format!(
                "{who} may not upload into DiskImport {ns}/{name}: that needs create on diskimports/upload in {ns}{why}"
            )
        })?;
        let di = Api::<DiskImport>::namespaced(self.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading DiskImport {ns}/{name}: {e}"))?
            .ok_or_else(|| format!("DiskImport {ns}/{name} does not exist"))?;
        if di.spec.source.upload.is_none() {
            return Err(format!(
                "DiskImport {ns}/{name} has no spec.source.upload: it does not take uploads"
            ));
        }
        let (token, exp) = self.key.issue(&di, jiff::Timestamp::now());
        tracing::info!(user = %who, diskimport = %format!("{ns}/{name}"), expires = %exp, "upload token issued");
        serde_json::from_value(json!([{
            "op": "add",
            "path": "/status",
            "value": {"token": token, "expirationTime": exp.to_string()},
        }]))
        .map_err(|e| format!("making the patch: {e}"))
    }
}

/// What the upload endpoint needs.
pub struct Proxy {
    client: Client,
    key: UploadKey,
    http: reqwest::Client,
}

/// The upload endpoint's routes: CDI's paths (v1beta1, v1alpha1), POST and HEAD.
pub fn proxy_router(client: Client, key: UploadKey) -> anyhow::Result<Router> {
    // To pods, in the cluster: plain HTTP (the token is checked on both sides), no
    // overall timeout (a sync upload answers once its disk is in).
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let proxy = Arc::new(Proxy { client, key, http });
    let mut r = Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    for v in ["v1beta1", "v1alpha1"] {
        for p in [
            "upload",
            "upload-async",
            "upload-form",
            "upload-form-async",
            "upload-archive",
        ] {
            r = r.route(&format!("/{v}/{p}"), any(forward));
        }
    }
    Ok(r.layer(DefaultBodyLimit::disable()).with_state(proxy))
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, format!("{message}\n")).into_response()
}

async fn forward(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method != Method::POST && method != Method::HEAD {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not an upload (POST, HEAD)"),
        );
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "an upload token is required (Authorization: Bearer; from an UploadTokenRequest)".into(),
        );
    };
    let claims = match p.key.verify_issued(token, jiff::Timestamp::now()) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    let key = format!("{}/{}", claims.ns, claims.name);
    let di = match Api::<DiskImport>::namespaced(p.client.clone(), &claims.ns)
        .get_opt(&claims.name)
        .await
    {
        Ok(Some(di)) if di.metadata.uid.as_deref() == Some(claims.uid.as_str()) => di,
        Ok(_) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!("the upload token is for a DiskImport {key} that no longer exists"),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading DiskImport {key}: {e}"),
            );
        }
    };
    match di.status.as_ref().map(|s| s.phase).unwrap_or_default() {
        DiskImportPhase::Succeeded => {
            return refuse(StatusCode::CONFLICT, format!("the upload into {key} is complete"));
        }
        DiskImportPhase::Failed => {
            return refuse(StatusCode::BAD_REQUEST, format!("DiskImport {key} failed"));
        }
        _ => {}
    }
    let Some(target) = ready_pod(&p.client, &di).await else {
        let mut r = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the upload pod of {key} is not ready yet; try again shortly"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
        return r;
    };
    let url = format!("http://{target}{}", uri.path());
    let mut req = p.http.request(method.clone(), &url).bearer_auth(token);
    for name in FORWARDED.iter().copied().chain(["content-length"]) {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v);
        }
    }
    if method == Method::POST {
        req = req.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("the upload pod of {key}: {}", ido_io::error_chain(&e)),
            );
        }
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for name in FORWARDED {
        if let Some(v) = resp.headers().get(name) {
            out = out.header(HeaderName::from_static(name), v.as_bytes());
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `IP:port` of the DiskImport's newest running, ready upload pod.
async fn ready_pod(client: &Client, di: &DiskImport) -> Option<String> {
    let ns = di.metadata.namespace.as_deref()?;
    let selector = format!("{DISK_IMPORT_LABEL}={}", labels(di).get(DISK_IMPORT_LABEL)?);
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    pods.items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let st = pod.status.as_ref()?;
            let ready = st.phase.as_deref() == Some("Running")
                && st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = st.pod_ip.clone().filter(|_| ready)?;
            let port = pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("upload"))
                .map_or(ido_controllers::diskimport::upload::PORT as i32, |p| {
                    p.container_port
                });
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
            Some((pod.metadata.creation_timestamp.clone(), format!("{host}:{port}")))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t)
}
