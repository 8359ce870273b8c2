//! What the API server's schema cannot check about a DiskImport's spec.

use ido_api::{
    DiskImport, FieldError, HttpSource, SourceKind, VolumeMode,
    diskimport::{ContentType, quantity},
};

use super::probe;

/// Checks what the API server's schema cannot: the source's URL, checksum and size.
pub(crate) fn validate(di: &DiskImport) -> Result<(), FieldError> {
    let name = di.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() || di.metadata.namespace.is_none() {
        return Err(FieldError::new("metadata", "name and namespace are required"));
    }
    match di.spec.source.kind()? {
        SourceKind::Http(h) => validate_http(h)?,
        SourceKind::S3(s) => url_ok("spec.source.s3.url", &s.url, &["s3", "http", "https"])?,
        SourceKind::Registry(r) => url_ok("spec.source.registry.url", &r.url, &["docker", "oci-archive"])?,
        SourceKind::Blank => {
            if di.spec.storage.size.is_none() {
                return Err(FieldError::new("spec.storage.size", "required for a blank disk"));
            }
        }
        SourceKind::Pvc(p) => {
            if let Some(reason) = p.namespace.as_deref().and_then(ido_api::names::label_error) {
                return Err(FieldError::new(
                    "spec.source.pvc.namespace",
                    format!("{:?}: {reason}", p.namespace.as_deref().unwrap_or_default()),
                ));
            }
            if let Some(reason) = ido_api::names::subdomain_error(&p.name) {
                return Err(FieldError::new(
                    "spec.source.pvc.name",
                    format!("{:?}: {reason}", p.name),
                ));
            }
            // Without storage.size, the source disk's size (found when it is read).
        }
        SourceKind::Snapshot(s) => {
            if let Some(reason) = s.namespace.as_deref().and_then(ido_api::names::label_error) {
                return Err(FieldError::new(
                    "spec.source.snapshot.namespace",
                    format!("{:?}: {reason}", s.namespace.as_deref().unwrap_or_default()),
                ));
            }
            if let Some(reason) = ido_api::names::subdomain_error(&s.name) {
                return Err(FieldError::new(
                    "spec.source.snapshot.name",
                    format!("{:?}: {reason}", s.name),
                ));
            }
        }
        SourceKind::DiskSource(d) => {
            if let Some(reason) = ido_api::names::subdomain_error(&d.name) {
                return Err(FieldError::new(
                    "spec.source.diskSource.name",
                    format!("{:?}: {reason}", d.name),
                ));
            }
            if di.spec.storage.size.is_none() {
                return Err(FieldError::new(
                    "spec.storage.size",
                    "required for a clone of a DiskSource (at least the source disk's size)",
                ));
            }
        }
        SourceKind::Upload(u) => {
            if let Some(c) = &u.checksum {
                checksum_ok("spec.source.upload.checksum", c)?;
            }
            if di.spec.storage.size.is_none() {
                return Err(FieldError::new(
                    "spec.storage.size",
                    "required for an upload (the claim is made before the first byte arrives)",
                ));
            }
        }
    }
    if di.spec.content_type() == ContentType::Archive {
        validate_archive(di)?;
    }
    if let Some(s) = &di.spec.storage.size
        && quantity::parse(s).is_none_or(|b| b == 0)
    {
        return Err(FieldError::new(
            "spec.storage.size",
            format!("{s:?} is not a size such as 10Gi"),
        ));
    }
    Ok(())
}

/// `url` parses and has one of `schemes`; else an error on `field`.
fn url_ok(field: &'static str, url: &str, schemes: &[&str]) -> Result<(), FieldError> {
    match url::Url::parse(url) {
        Ok(u) if schemes.contains(&u.scheme()) => Ok(()),
        _ => Err(FieldError::new(
            field,
            format!("{:?} is not a {} URL", probe::redact(url), schemes.join(" or ")),
        )),
    }
}

/// An HTTP source: its URL, extra headers and checksum.
fn validate_http(h: &HttpSource) -> Result<(), FieldError> {
    url_ok("spec.source.http.url", &h.url, &["http", "https"])?;
    for hd in &h.extra_headers {
        if hd.split_once(':').is_none_or(|(n, _)| n.trim().is_empty()) {
            return Err(FieldError::new(
                "spec.source.http.extraHeaders",
                format!("{hd:?} is not `Name: value`"),
            ));
        }
    }
    if let Some(c) = &h.checksum {
        checksum_ok("spec.source.http.checksum", c)?;
    }
    Ok(())
}

/// `md5:`, `sha1:`, `sha256:` or `sha512:` with its hex digest.
fn checksum_ok(field: &'static str, c: &str) -> Result<(), FieldError> {
    let ok = c.split_once(':').is_some_and(|(alg, hex)| {
        let len = match alg {
            "md5" => 32,
            "sha1" => 40,
            "sha256" => 64,
            "sha512" => 128,
            _ => 0,
        };
        hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{c:?} is not md5:, sha1:, sha256: or sha512: with its hex digest"),
        ))
    }
}

/// An archive: an HTTP or S3 source, a Filesystem volume and a given size.
fn validate_archive(di: &DiskImport) -> Result<(), FieldError> {
    // The CEL rules say so too; `ido run` has no API server to check them.
    match di.spec.source.kind()? {
        SourceKind::Blank
        | SourceKind::Registry(_)
        | SourceKind::Pvc(_)
        | SourceKind::Snapshot(_)
        | SourceKind::DiskSource(_) => {
            return Err(FieldError::new(
                "spec.contentType",
                "archive is not allowed with blank, registry, pvc, snapshot or diskSource sources",
            ));
        }
        SourceKind::Http(_) | SourceKind::S3(_) | SourceKind::Upload(_) => {}
    }
    if di.spec.storage.volume_mode == Some(VolumeMode::Block) {
        return Err(FieldError::new(
            "spec.storage.volumeMode",
            "an archive is unpacked into a filesystem; Block is not allowed",
        ));
    }
    if di.spec.storage.size.is_none() {
        return Err(FieldError::new(
            "spec.storage.size",
            "required for an archive (its unpacked size is known only once unpacked)",
        ));
    }
    Ok(())
}
