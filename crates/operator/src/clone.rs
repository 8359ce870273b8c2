//! Clones from another namespace: the admission webhook that lets them in.
//!
//! A DiskImport (or CDI DataVolume) created with `spec.source.pvc.namespace` (or
//! `spec.source.snapshot.namespace`) naming another namespace reaches `POST /mutate-clone`.
//! A SubjectAccessReview asks the API server whether the requester may `create`
//! `diskimports/source` (a DataVolume: CDI's `datavolumes/source`) for that claim (or
//! snapshot) in the source namespace. If so, the answer's patch
//! puts a clone token in the annotation `ido.dev/clone-token`, which the controller checks
//! before it reads the claim; if not, the create is refused with the reason.
//!
//! The token binds source and target and the time of creation
//! ([`UploadKey::check_clone`]): copied onto another object, or onto the same name later,
//! it opens nothing.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    response::Response,
    routing::post,
};
use ido_controllers::diskimport::upload::{CLONE_TOKEN, UploadKey};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use kube::{
    Client,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, Operation},
    },
};
use serde_json::json;

use crate::upload::{access_review, admission_answer, admission_request};

/// Where the API server posts DiskImports and DataVolumes.
pub const PATH: &str = "/mutate-clone";

/// What the clone webhook needs.
struct Clones {
    client: Client,
    key: UploadKey,
}

/// The clone webhook's route.
pub fn router(client: Client, key: UploadKey) -> Router {
    Router::new()
        .route(PATH, post(review))
        .layer(DefaultBodyLimit::max(6 << 20))
        .with_state(Arc::new(Clones { client, key }))
}

async fn review(State(c): State<Arc<Clones>>, body: Bytes) -> Response {
    let req = match admission_request(&body) {
        Ok(r) => r,
        Err(bad) => return *bad,
    };
    let decided = c.decide(&req).await;
    admission_answer(&req, decided, "clone")
}

impl Clones {
    /// No patch for anything but a clone from another namespace; for one, the token if the
    /// requester may clone from there.
    async fn decide(&self, req: &AdmissionRequest<DynamicObject>) -> Result<json_patch::Patch, String> {
        let none = || Ok(json_patch::Patch(vec![]));
        if req.operation != Operation::Create {
            return none();
        }
        let Some(obj) = req.object.as_ref() else {
            return none();
        };
        // A claim (`pvc`) or a VolumeSnapshot (`snapshot`) of another namespace.
        let source = &obj.data["spec"]["source"];
        let from = if source["pvc"].is_object() {
            &source["pvc"]
        } else {
            &source["snapshot"]
        };
        let ns = req.namespace.clone().unwrap_or_default();
        let Some(source_ns) = from["namespace"].as_str().filter(|s| *s != ns) else {
            return none();
        };
        let claim = from["name"].as_str().unwrap_or_default();
        let (group, resource, kind) = match req.kind.group.as_str() {
            "cdi.kubevirt.io" => ("cdi.kubevirt.io", "datavolumes", "DataVolume"),
            _ => ("ido.dev", "diskimports", "DiskImport"),
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(format!(
                "a {kind} that clones from another namespace needs metadata.name (generateName is not supported): the authorization names it"
            ));
        }
        let source = format!("{source_ns}/{claim}");
        let target = format!("{ns}/{name}");
        // Already authorized: the operator's own DiskImport of a DataVolume, which carries
        // the token the DataVolume was given.
        let carried = obj.metadata.annotations.as_ref().and_then(|a| a.get(CLONE_TOKEN));
        if carried.is_some_and(|t| {
            self.key
                .check_clone(t, &source, &target, jiff::Timestamp::now())
                .is_ok()
        }) {
            return none();
        }
        let who = req.user_info.username.clone().unwrap_or_default();
        let attributes = ResourceAttributes {
            namespace: Some(source_ns.into()),
            verb: Some("create".into()),
            group: Some(group.into()),
            resource: Some(resource.into()),
            subresource: Some("source".into()),
            name: Some(claim.into()),
            ..Default::default()
        };
        access_review(&self.client, req, attributes).await.map_err(|why| {
            format!(
                "{who} may not clone {source_ns}/{claim} into {kind} {ns}/{name}: that needs create on {resource}/source in {source_ns}{why}"
            )
        })?;
        let token = self.key.issue_clone(&source, &target, jiff::Timestamp::now());
        tracing::info!(user = %who, %source, %target, "clone from another namespace authorized");
        let op = if obj.metadata.annotations.is_some() {
            json!({"op": "add", "path": format!("/metadata/annotations/{}", CLONE_TOKEN.replace('/', "~1")), "value": token})
        } else {
            json!({"op": "add", "path": "/metadata/annotations", "value": {CLONE_TOKEN: token}})
        };
        serde_json::from_value(json!([op])).map_err(|e| format!("making the patch: {e}"))
    }
}
