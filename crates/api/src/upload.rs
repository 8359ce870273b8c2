//! `UploadTokenRequest` (`ido.dev/v1alpha1`): how a client gets a token to upload a disk
//! into a DiskImport whose source is `upload` (CDI's `upload.cdi.kubevirt.io`
//! UploadTokenRequest).
//!
//! It is never stored. The client creates it with `dryRun=All` (`kubectl create
//! --dry-run=server -o yaml`, or `ido upload`); the API server authenticates the client and
//! hands the request, with the client's identity, to ido's admission webhook, which asks the
//! API server (a SubjectAccessReview) whether that identity may `create` `diskimports/upload`
//! for that DiskImport, and if so writes a token into the object the API server returns.
//! A request that is not a dry run is refused, so no token is ever kept in etcd.
//!
//! ```yaml
//! apiVersion: ido.dev/v1alpha1
//! kind: UploadTokenRequest
//! metadata: {name: fedora, namespace: vms}
//! spec: {diskImport: fedora}
//! # returned:
//! status: {token: eyJ…, expirationTime: "2026-12-07T20:05:00Z"}
//! ```
//!
//! The token is good for 5 minutes, for that DiskImport only (its name and UID): the
//! operator's upload endpoint and the upload pod both check it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request for an upload token (returned in `status`, never stored).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ido.dev",
    version = "v1alpha1",
    kind = "UploadTokenRequest",
    plural = "uploadtokenrequests",
    namespaced,
    status = "UploadTokenRequestStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestSpec {
    /// The DiskImport (in the request's namespace) to upload into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_import: Option<String>,
    /// CDI's name for it (the claim has the DiskImport's name); `diskImport` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name: Option<String>,
}

impl UploadTokenRequestSpec {
    /// The DiskImport asked for (`diskImport`, else `pvcName`), if any.
    pub fn target(&self) -> Option<&str> {
        self.disk_import
            .as_deref()
            .or(self.pvc_name.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// The token, set by ido's admission webhook in a dry run's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestStatus {
    /// `Authorization: Bearer <token>` for the upload endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// When the token stops being accepted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
}

/// The CRD of [`UploadTokenRequest`], without the status subresource: the API server
/// drops a created object's `status` when the subresource is on, and the token travels in
/// `status` of the dry run's answer.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = <UploadTokenRequest as kube::CustomResourceExt>::crd();
    for v in &mut crd.spec.versions {
        v.subresources = None;
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdis_field_name_is_accepted_and_the_crd_has_no_status_subresource() {
        let r: UploadTokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "ido.dev/v1alpha1", "kind": "UploadTokenRequest",
            "metadata": {"name": "x", "namespace": "vms"},
            "spec": {"pvcName": "fedora"},
        }))
        .unwrap();
        assert_eq!(r.spec.target(), Some("fedora"));
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("uploadtokenrequests.ido.dev"));
        assert!(crd.spec.versions[0].subresources.is_none());
        let props = &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap()
            .properties;
        assert!(props.as_ref().unwrap().contains_key("status"));
    }
}
