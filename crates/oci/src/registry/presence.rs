//! Whether a manifest is there (one HEAD), and deleting one: what a cache needs of the
//! registry it fills besides copies.

use oci_client::{Reference, errors::OciDistributionError};
use reqwest::header::{ACCEPT, AUTHORIZATION};

use super::Registry;
use crate::{Error, Result, media::ACCEPTED};

impl Registry {
    /// The digest of the manifest `r` names, from one `HEAD` (its `Docker-Content-Digest`;
    /// a registry that sends none is asked for the manifest itself). `None` when the
    /// registry has no such manifest.
    pub async fn manifest_digest(&self, r: &Reference) -> Result<Option<String>> {
        let what = format!("looking up {}", r.whole());
        let fail = |error| Error::Registry {
            what: what.clone(),
            error,
        };
        let url = self.url(&format!("/v2/{}/manifests/{}", r.repository(), target(r)));
        let mut req = self.http.head(&url).header(ACCEPT, ACCEPTED.join(", "));
        if let Some(a) = self.pull_authorization(r).await.map_err(fail)? {
            req = req.header(AUTHORIZATION, a);
        }
        let res = req.send().await.map_err(|e| fail(e.into()))?;
        let status = res.status();
        tracing::debug!(%url, %status, "HEAD manifest");
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(fail(OciDistributionError::ServerError {
                code: status.as_u16(),
                url,
                message: status.canonical_reason().unwrap_or_default().into(),
            }));
        }
        match res
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:"))
        {
            Some(d) => Ok(Some(d.to_string())),
            None => {
                let (bytes, _) = self.pull_manifest_raw(r).await.map_err(|a| fail(a.error))?;
                Ok(Some(crate::media::sha256(&bytes)))
            }
        }
    }

    /// Deletes the manifest `r` names (by its digest: registries delete manifests, not
    /// tags, and every tag on it goes with it). `false` when it was not there.
    pub async fn delete_manifest(&self, r: &Reference) -> Result<bool> {
        let what = format!("deleting {}", r.whole());
        let fail = |error| Error::Registry {
            what: what.clone(),
            error,
        };
        let Some(digest) = r.digest() else {
            return Err(Error::Invalid {
                field: "reference",
                value: r.whole(),
                reason: "a manifest is deleted by its digest".into(),
            });
        };
        let url = self.url(&format!("/v2/{}/manifests/{digest}", r.repository()));
        let mut req = self.http.delete(&url);
        if let Some(a) = self.authorization(r, "delete,pull,push").await.map_err(fail)? {
            req = req.header(AUTHORIZATION, a);
        }
        let res = req.send().await.map_err(|e| fail(e.into()))?;
        let status = res.status();
        tracing::debug!(%url, %status, "DELETE manifest");
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if status.is_success() {
            return Ok(true);
        }
        let body = res.bytes().await.unwrap_or_default();
        Err(fail(OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
        }))
    }
}

/// What `r` names at its repository: its digest, else its tag.
fn target(r: &Reference) -> &str {
    r.digest().or(r.tag()).unwrap_or("latest")
}
