//! VMware Cloud Director (capvcd): vApp templates in catalogs (in progress).
