//! The virtual size of an image from its first bytes, for a DiskImport without
//! `storage.size`: one ranged GET of the first 64 KiB, before anything is created.
//!
//! - qcow2: the header's size field (bytes 24..32);
//! - raw or ISO (no known magic): the object's length (`Content-Range` total, else
//!   `Content-Length`);
//! - compressed (gzip, xz, zstd, bzip2), tar, or another disk format: unknown here (the
//!   size is inside the stream), so the DiskImport asks for `storage.size`.

use std::time::Duration;

use ido_disk::detect::{Detected, DiskFormat, detect};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};

/// Bytes read from the start of the image.
const HEAD: usize = 64 << 10;

/// What the first bytes tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// The virtual size in bytes.
    Size(u64),
    /// Not knowable from the head; says why.
    Unknown(String),
}

/// What the head of an image says about its size; `total` is the object's length. The
/// classification is the importer's own (`ido_disk::detect`).
pub fn from_head(head: &[u8], total: Option<u64>) -> Probed {
    let unknown = |what: String| {
        Probed::Unknown(format!(
            "the image is {what}: its virtual size is known only while importing"
        ))
    };
    match detect(head) {
        Detected::Compressed(c) => unknown(format!("{}-compressed", c.name())),
        Detected::Tar => unknown("a tar archive".into()),
        Detected::Disk(DiskFormat::Qcow2) => match head.get(24..32) {
            Some(b) => Probed::Size(u64::from_be_bytes(b.try_into().expect("8 bytes"))),
            None => Probed::Unknown("truncated qcow2 header".into()),
        },
        Detected::Disk(DiskFormat::Raw | DiskFormat::Iso) => match total {
            Some(t) => Probed::Size(t),
            None => Probed::Unknown("the server does not tell the image's length".into()),
        },
        Detected::Disk(f) => unknown(format!("a {f} image")),
    }
}

/// Why the head of an image could not be read (worth retrying).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("reading the head of {url}: {source}")]
    Transport {
        /// The URL without credentials or query.
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading the head of {url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

/// Reads the first bytes of `url` and works out the virtual size. `Err` is a transport or
/// HTTP failure (worth retrying).
pub async fn probe(client: &reqwest::Client, url: &str) -> Result<Probed, ProbeError> {
    let transport = |e: reqwest::Error| ProbeError::Transport {
        url: redact(url),
        source: e.without_url(),
    };
    let resp = client
        .get(url)
        .header(RANGE, format!("bytes=0-{}", HEAD - 1))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(ProbeError::Status {
            url: redact(url),
            status,
        });
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let total = if status == reqwest::StatusCode::PARTIAL_CONTENT {
        header(CONTENT_RANGE).and_then(|r| r.rsplit('/').next().and_then(|t| t.parse().ok()))
    } else {
        header(CONTENT_LENGTH).and_then(|l| l.parse().ok())
    };
    let mut head = Vec::with_capacity(HEAD);
    let mut resp = resp;
    while head.len() < HEAD {
        match resp.chunk().await.map_err(transport)? {
            Some(c) => head.extend_from_slice(&c[..c.len().min(HEAD - head.len())]),
            None => break,
        }
    }
    Ok(from_head(&head, total))
}

/// `url` without user info or query, for messages (a token in a query never shows), even
/// when it does not parse.
pub fn redact(url: &str) -> String {
    ido_io::redact::text(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_heads() {
        let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
        q.resize(512, 0);
        q[24..32].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(from_head(&q, Some(1 << 20)), Probed::Size(10 << 30));
        assert_eq!(from_head(&[0u8; 4096], Some(1 << 30)), Probed::Size(1 << 30));
        assert!(matches!(from_head(&[0u8; 16], None), Probed::Unknown(_)));
        for head in [&b"\xfd7zXZ\0"[..], b"\x1f\x8b\x08", b"\x28\xb5\x2f\xfd", b"BZh9"] {
            let Probed::Unknown(why) = from_head(head, Some(100)) else {
                panic!("{head:?}")
            };
            assert!(why.contains("compressed"), "{why}");
        }
        assert!(matches!(from_head(b"QFI\xfb", Some(9)), Probed::Unknown(_)));
        assert_eq!(
            redact("https://u:p@s3.example/b/k?X-Amz-Signature=s"),
            "https://s3.example/b/k?<redacted>"
        );
    }
}
