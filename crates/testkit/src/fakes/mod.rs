//! Faithful fakes of peers that cannot run here (no simulator of them exists anywhere),
//! written from their public API references, with switches to inject failures.

pub mod proxmox;
pub mod tls;
pub mod vcd;
