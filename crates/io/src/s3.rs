//! S3 and S3-compatible stores as an image source.
//!
//! Objects are read anonymously (public buckets, the original's only mode) or with SigV4
//! presigned URLs when credentials are configured. Reads are streams: nothing is buffered
//! beyond one network chunk.

use std::{fmt, time::Duration};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

use crate::{Error, Result};

/// How long a presigned URL stays valid (long enough for a slow pull-mode import).
const PRESIGN: Duration = Duration::from_secs(6 * 3600);

/// Access keys. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where the bucket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub region: String,
    /// S3-compatible endpoint (path-style URLs); `None` means AWS (virtual-host URLs).
    pub endpoint: Option<String>,
    /// Use `http://` for AWS URLs (the original's `s3.http`).
    pub http: bool,
    pub credentials: Option<S3Credentials>,
}

/// A bucket to read node images from.
#[derive(Clone)]
pub struct S3Source {
    bucket: Bucket,
    credentials: Option<Credentials>,
    client: reqwest::Client,
}

/// What a HEAD of an object says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: Option<String>,
}

impl S3Source {
    /// Validates the location and prepares the source. Errors name the `s3.*` key at fault.
    pub fn new(loc: &S3Location, client: reqwest::Client) -> Result<Self> {
        if loc.bucket.is_empty()
            || !loc
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(Error::Invalid {
                field: "s3.bucket",
                value: loc.bucket.clone(),
                reason: "must be a non-empty S3 bucket name (a-z, 0-9, '-', '.')".into(),
            });
        }
        let (endpoint, style) = match &loc.endpoint {
            Some(e) => {
                let u = Url::parse(e).map_err(|err| Error::Invalid {
                    field: "s3.endpoint",
                    value: e.clone(),
                    reason: err.to_string(),
                })?;
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    return Err(Error::Invalid {
                        field: "s3.endpoint",
                        value: e.clone(),
                        reason: "must be an http(s) URL with a host".into(),
                    });
                }
                (u, UrlStyle::Path)
            }
            None => {
                if loc.region.is_empty()
                    || !loc
                        .region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err(Error::Invalid {
                        field: "s3.region",
                        value: loc.region.clone(),
                        reason: "must be an AWS region such as eu-west-1 (or set s3.endpoint)".into(),
                    });
                }
                let scheme = if loc.http { "http" } else { "https" };
                let u = Url::parse(&format!("{scheme}://s3.{}.amazonaws.com", loc.region)).expect("valid");
                // Buckets with dots cannot use virtual-host TLS names: fall back to path style.
                let style = if loc.bucket.contains('.') {
                    UrlStyle::Path
                } else {
                    UrlStyle::VirtualHost
                };
                (u, style)
            }
        };
        let region = if loc.region.is_empty() {
            "us-east-1".to_string()
        } else {
            loc.region.clone()
        };
        let bucket =
            Bucket::new(endpoint, style, loc.bucket.clone(), region).map_err(|e| Error::Invalid {
                field: "s3.bucket",
                value: loc.bucket.clone(),
                reason: e.to_string(),
            })?;
        let credentials = loc
            .credentials
            .as_ref()
            .map(|c| Credentials::new(&c.access_key_id, &c.secret_access_key));
        Ok(Self {
            bucket,
            credentials,
            client,
        })
    }

    /// The object at `key`.
    pub fn object(&self, key: &str) -> S3Object {
        S3Object {
            source: self.clone(),
            key: key.to_string(),
        }
    }

    /// Whether reads are signed.
    pub fn signed(&self) -> bool {
        self.credentials.is_some()
    }
}

/// One object of an [`S3Source`].
#[derive(Clone)]
pub struct S3Object {
    source: S3Source,
    key: String,
}

impl fmt::Debug for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Object({})", self.display_url())
    }
}

impl S3Object {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Another object of the same bucket (same credentials), e.g. a `<key>.sha256` sidecar.
    pub fn sibling(&self, key: &str) -> S3Object {
        self.source.object(key)
    }

    /// The object's URL without any signature: for logs, status and errors.
    pub fn display_url(&self) -> String {
        self.source.bucket.object_url(&self.key).to_string()
    }

    /// A URL another party can GET (presigned when the bucket needs credentials).
    pub fn download_url(&self) -> Url {
        match &self.source.credentials {
            Some(c) => self.source.bucket.get_object(Some(c), &self.key).sign(PRESIGN),
            None => self.source.bucket.object_url(&self.key),
        }
    }

    fn head_url(&self) -> Url {
        match &self.source.credentials {
            Some(c) => self.source.bucket.head_object(Some(c), &self.key).sign(PRESIGN),
            None => self.source.bucket.object_url(&self.key),
        }
    }

    /// Sends `req`; a 2xx response, or the error its status means. Anonymous 403s mean
    /// "not found" (S3's answer for missing keys of public buckets without list rights).
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let url = self.display_url();
        let resp = req.send().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source: source.without_url(),
        })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(resp),
            404 => Err(Error::NotFound { url, status }),
            403 if !self.source.signed() => Err(Error::NotFound { url, status }),
            401 | 403 => Err(Error::Denied {
                url,
                status,
                hint: ": check the s3 credentials",
            }),
            _ => Err(Error::Http {
                url,
                status,
                message: format!("{what} failed"),
            }),
        }
    }

    /// HEAD: `Ok(None)` when the object does not exist.
    pub async fn head(&self) -> Result<Option<ObjectInfo>> {
        let req = self
            .source
            .client
            .head(self.head_url())
            .timeout(Duration::from_secs(60));
        let resp = match self.send(req, "HEAD").await {
            Ok(r) => r,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let header = |h| resp.headers().get(h).and_then(|v| v.to_str().ok());
        let size = header(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let etag = header(reqwest::header::ETAG).map(|s| s.trim_matches('"').to_string());
        Ok(Some(ObjectInfo { size, etag }))
    }

    /// Streams the object's bytes through ido-io's resumable reader ([`crate::fetch`]):
    /// a transfer cut midway continues where it stopped (`Range` with `If-Range`), a large
    /// object comes over parallel ranged GETs, and a changed object fails rather than mixing
    /// two versions. `Err(NotFound)` for a missing object.
    pub async fn get(&self) -> Result<crate::fetch::Body> {
        use crate::fetch::{self, FetchError, FetchOptions};
        let opts = FetchOptions::new(self.source.client.clone(), self.download_url());
        match fetch::open(&opts, None).await {
            Ok(f) => Ok(f.body),
            Err(FetchError::NotFound { status, .. }) => Err(Error::NotFound {
                url: self.display_url(),
                status,
            }),
            // Anonymous 403s mean "not found" (S3's answer for missing keys of public
            // buckets without list rights).
            Err(FetchError::Denied { status, .. }) if !self.source.signed() => Err(Error::NotFound {
                url: self.display_url(),
                status,
            }),
            Err(FetchError::Denied { status, .. }) => Err(Error::Denied {
                url: self.display_url(),
                status,
                hint: ": check the s3 credentials",
            }),
            Err(e) => Err(Error::Fetch(e)),
        }
    }
}

/// The original's key layout: `<dir>/<image>/<file>.<ext>`, where `<file>` is the image
/// name cut before `-tooling` with `kube-X` written `kube-vX`, and `<dir>` the provider,
/// except that Cloud Director reads vSphere's OVAs (`capvcd` → `capv/`, as the original's
/// `getOVAImageKey`). `image` must be a validated name (`ido_api::names`): the reconciler
/// checks it before calling this.
pub fn node_image_key(provider: &str, image: &str, ext: &str) -> String {
    let dir = match provider {
        "capvcd" => "capv",
        other => other,
    };
    let base = image.split("-tooling").next().unwrap_or(image);
    let file = match base.find("-kube-") {
        Some(i) if !base[i + 6..].starts_with('v') => format!("{}-kube-v{}", &base[..i], &base[i + 6..]),
        _ => base.to_string(),
    };
    format!("{dir}/{image}/{file}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default client; tests are their own binary, so they install the provider.
    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        crate::http::client(&Default::default(), "test").unwrap()
    }

    #[test]
    fn keys_follow_the_original_layout() {
        let n = "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs";
        assert_eq!(
            node_image_key("capv", n, "ova"),
            "capv/flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs/flatcar-stable-3975.2.0-kube-v1.30.4.ova"
        );
        assert_eq!(
            node_image_key("capmox", n, "qcow2"),
            "capmox/flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs/flatcar-stable-3975.2.0-kube-v1.30.4.qcow2"
        );
    }

    /// The original's `getOVAImageKey` table: capv and capvcd share `capv/`, capmox has its
    /// qcow2 under `capmox/`, any other provider its OVA under its own name.
    #[test]
    fn key_table_of_the_original() {
        let n = "flatcar-stable-4152.2.3-kube-1.31.4-tooling-1.22.0-gs";
        let file = "flatcar-stable-4152.2.3-kube-v1.31.4";
        for (provider, ext, dir) in [
            ("capv", "ova", "capv"),
            ("capvcd", "ova", "capv"),
            ("capmox", "qcow2", "capmox"),
            ("capa", "ova", "capa"),
        ] {
            assert_eq!(
                node_image_key(provider, n, ext),
                format!("{dir}/{n}/{file}.{ext}"),
                "{provider}"
            );
        }
        let with_v = "flatcar-stable-4152.2.3-kube-v1.31.4-tooling-1.22.0-gs";
        assert_eq!(
            node_image_key("capv", with_v, "ova"),
            format!("capv/{with_v}/{file}.ova")
        );
    }

    fn loc(bucket: &str, endpoint: Option<&str>) -> S3Location {
        S3Location {
            bucket: bucket.into(),
            region: "eu-west-1".into(),
            endpoint: endpoint.map(Into::into),
            http: false,
            credentials: None,
        }
    }

    /// A refused connection says so: the cause is kept (and the URL's query hidden).
    #[tokio::test]
    async fn transport_errors_keep_their_cause() {
        let c = client();
        let s = S3Source::new(&loc("b", Some("http://127.0.0.1:9")), c).unwrap();
        let e = s.object("k.ova").head().await.unwrap_err();
        let msg = crate::error_chain(&e);
        assert!(msg.to_lowercase().contains("connection refused"), "{msg}");
        assert!(msg.contains("127.0.0.1:9"), "{msg}");
    }

    #[test]
    fn urls_for_aws_and_custom_endpoints() {
        let c = client();
        let s = S3Source::new(&loc("my-bucket", None), c.clone()).unwrap();
        assert_eq!(
            s.object("a/b.ova").display_url(),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/a/b.ova"
        );
        let s = S3Source::new(&loc("my.bucket", None), c.clone()).unwrap();
        assert_eq!(
            s.object("k").display_url(),
            "https://s3.eu-west-1.amazonaws.com/my.bucket/k"
        );
        let s = S3Source::new(&loc("b", Some("http://127.0.0.1:8333")), c.clone()).unwrap();
        assert_eq!(s.object("k").download_url().as_str(), "http://127.0.0.1:8333/b/k");
    }

    #[test]
    fn bad_values_name_the_key() {
        let c = client();
        let e = S3Source::new(&loc("Bad_Bucket", None), c.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("s3.bucket") && e.contains("Bad_Bucket"), "{e}");
        let e = S3Source::new(&loc("b", Some("ftp://x")), c.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("s3.endpoint") && e.contains("ftp://x"), "{e}");
        let mut l = loc("b", None);
        l.region = "Nowhere 1".into();
        let e = S3Source::new(&l, c).err().unwrap().to_string();
        assert!(e.contains("s3.region"), "{e}");
    }

    #[test]
    fn credentials_debug_hides_secret() {
        let c = S3Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
