//! S3 (and S3-compatible) source: `s3://BUCKET/KEY`, with an endpoint (path-style URLs,
//! e.g. SeaweedFS, MinIO, Ceph RGW) or AWS (virtual-host URLs in `region`), read
//! anonymously or with access keys.
//!
//! The object becomes an HTTP(S) URL (presigned with SigV4 when there are credentials,
//! through `ido_io::s3`) and is fetched by the HTTP source, so Range resume, parallel
//! ranged GETs, retries and validators all apply. The signature lives in the URL's query,
//! which every message redacts (`http::redacted`); the secret key itself never leaves
//! the signer.

use std::fmt;
use std::path::Path;

use ido_io::s3::{S3Credentials, S3Location, S3Source};
use url::Url;

use super::{HttpOptions, Opened, ResumeFrom, http};
use crate::{Error, Result};

/// Environment variable of the access key id (as the AWS tools).
pub const ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
/// Environment variable of the secret access key (as the AWS tools).
pub const SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";

/// An object in a bucket, and how to reach it.
#[derive(Clone)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// S3-compatible endpoint (`http(s)://host:port`, path-style); `None`: AWS.
    pub endpoint: Option<String>,
    /// Region (signing, and the AWS host name). Default `us-east-1`.
    pub region: String,
    /// Access keys; `None`: anonymous (public buckets).
    pub credentials: Option<S3Credentials>,
    /// Transfer settings: TLS, retries, connections, chunk size, extra headers. Its `url`
    /// is replaced by the object's.
    pub http: HttpOptions,
}

impl S3Options {
    /// Parses `s3://BUCKET/KEY` (defaults: AWS, `us-east-1`, anonymous).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidArgument {
            field: "source",
            value: s.to_string(),
            reason: reason.into(),
        };
        let rest = s
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("s3://"))
            .map(|_| &s[5..])
            .ok_or_else(|| bad("expected s3://BUCKET/KEY"))?;
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| bad("expected s3://BUCKET/KEY"))?;
        if !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(bad("a bucket name is a-z, 0-9, '-' and '.'"));
        }
        let url = Url::parse(&format!("s3://{bucket}/")).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
            endpoint: None,
            region: "us-east-1".into(),
            credentials: None,
            http: HttpOptions::new(url),
        })
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("http", &self.http)
            .finish()
    }
}

impl fmt::Display for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Access keys from `$AWS_ACCESS_KEY_ID` and `$AWS_SECRET_ACCESS_KEY` (`None` when neither
/// is set; an error when only one is).
pub fn credentials_from_env() -> Result<Option<S3Credentials>> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (get(ACCESS_KEY_ENV), get(SECRET_KEY_ENV)) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
            access_key_id,
            secret_access_key,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::InvalidArgument {
            field: SECRET_KEY_ENV,
            value: "<unset>".into(),
            reason: format!("{ACCESS_KEY_ENV} is set, so the secret must be too"),
        }),
        (None, Some(_)) => Err(Error::InvalidArgument {
            field: ACCESS_KEY_ENV,
            value: "<unset>".into(),
            reason: format!("{SECRET_KEY_ENV} is set, so the access key id must be too"),
        }),
    }
}

/// Access keys from a file in the AWS shared-credentials format
/// (`aws_access_key_id = …` and `aws_secret_access_key = …`, in the `[default]` section,
/// or in the section `profile` names, or outside any section).
pub fn credentials_from_file(path: &Path, profile: Option<&str>) -> Result<S3Credentials> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {shown}"), e))?;
    let want = profile.unwrap_or("default");
    let (mut section, mut id, mut secret) = (None::<String>, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().trim_start_matches("profile ").to_string());
            continue;
        }
        if section.as_deref().is_some_and(|s| s != want) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key))
            if !access_key_id.is_empty() && !secret_access_key.is_empty() =>
        {
            Ok(S3Credentials {
                access_key_id,
                secret_access_key,
            })
        }
        _ => Err(Error::InvalidArgument {
            field: "s3 credentials file",
            value: shown,
            reason: format!(
                "no aws_access_key_id and aws_secret_access_key in profile [{want}] (or outside any section)"
            ),
        }),
    }
}

/// Opens the object through the HTTP source.
pub(super) async fn open(opts: &S3Options, from: Option<&ResumeFrom>) -> Result<Opened> {
    http::open(&presigned(opts)?, from).await
}

/// Ranged reads of the object (through a presigned URL).
pub(super) fn ranges(opts: &S3Options, from: &ResumeFrom) -> Result<http::Ranges> {
    http::Ranges::new(&presigned(opts)?, from)
}

/// The HTTP options of the object's (presigned, for keys) URL.
fn presigned(opts: &S3Options) -> Result<HttpOptions> {
    let client = ido_io::http::client(&opts.http.tls, "caBundle").map_err(|e| Error::InvalidArgument {
        field: "tls",
        value: "<tls settings>".into(),
        reason: e.to_string(),
    })?;
    let loc = S3Location {
        bucket: opts.bucket.clone(),
        region: opts.region.clone(),
        endpoint: opts.endpoint.clone(),
        http: false,
        credentials: opts.credentials.clone(),
    };
    let source = S3Source::new(&loc, client).map_err(|e| match e {
        ido_io::Error::Invalid { field, value, reason } => Error::InvalidArgument { field, value, reason },
        other => Error::InvalidArgument {
            field: "s3",
            value: opts.to_string(),
            reason: other.to_string(),
        },
    })?;
    let object = source.object(&opts.key);
    let mut http_opts = opts.http.clone();
    http_opts.url = object.download_url();
    tracing::debug!(object = %object.display_url(), signed = source.signed(), "S3 source");
    Ok(http_opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_urls() {
        let o = S3Options::parse("s3://my-bucket/a/b.qcow2").unwrap();
        assert_eq!((o.bucket.as_str(), o.key.as_str()), ("my-bucket", "a/b.qcow2"));
        assert_eq!(o.to_string(), "s3://my-bucket/a/b.qcow2");
        for bad in [
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://Bad_B/k",
        ] {
            let e = S3Options::parse(bad).unwrap_err().to_string();
            assert!(e.contains("source") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "[other]\naws_access_key_id = O\naws_secret_access_key = os\n\n[default]\naws_access_key_id=AK\naws_secret_access_key = hunter2\n",
        )
        .unwrap();
        let c = credentials_from_file(&p, None).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("AK", "hunter2")
        );
        let c = credentials_from_file(&p, Some("other")).unwrap();
        assert_eq!(c.access_key_id, "O");
        let e = credentials_from_file(&p, Some("none")).unwrap_err().to_string();
        assert!(e.contains("[none]") && !e.contains("hunter2"), "{e}");
    }
}
