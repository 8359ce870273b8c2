//! The OVF descriptor as Cloud Director takes it: ido-io's reader
//! ([`ido_io::ovf`]) and what VCD refuses on top of it.

use ido_io::ovf::{Descriptor, OvfError, OvfFile};

/// Why VCD cannot take a descriptor.
#[derive(Debug, thiserror::Error)]
pub enum VcdOvfError {
    #[error(transparent)]
    Ovf(#[from] OvfError),
    #[error("the OVF's file {0:?} is compressed (ovf:compression), which VCD rejects")]
    Compressed(String),
    #[error("the OVF's file {0:?} is chunked (ovf:chunkSize), which is not supported")]
    Chunked(String),
}

/// The files the descriptor references, refusing what VCD cannot take from a stream:
/// compressed or chunked files (and, from the reader, files outside the package).
pub fn references(descriptor: &str) -> Result<Vec<OvfFile>, VcdOvfError> {
    let files = Descriptor::parse(descriptor)?.files;
    if let Some(f) = files.iter().find(|f| f.compression.is_some()) {
        return Err(VcdOvfError::Compressed(f.href.clone()));
    }
    if let Some(f) = files.iter().find(|f| f.chunked) {
        return Err(VcdOvfError::Chunked(f.href.clone()));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &str = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="disk-0.vmdk" ovf:id="file1" ovf:size="3000"/></References>
</Envelope>"#;

    #[test]
    fn compressed_and_chunked_files_are_refused() {
        assert_eq!(references(OVF).unwrap().len(), 1);
        let bad = |from: &str, to: &str| references(&OVF.replace(from, to)).unwrap_err().to_string();
        assert!(bad("ovf:id=\"file1\"", "ovf:compression=\"gzip\"").contains("compressed"));
        assert!(bad("ovf:id=\"file1\"", "ovf:chunkSize=\"100\"").contains("chunked"));
        assert!(bad("disk-0.vmdk", "../etc/passwd").contains("outside the package"));
    }
}
