//! Uploads of local disks into DiskImports: `ido upload` (the client, like `virtctl
//! image-upload`) and `ido upload-server` (the upload pod the DiskImport controller runs).
//! See `docs/disk-import.md`, "Uploads".

pub(crate) mod client;
pub(crate) mod server;
