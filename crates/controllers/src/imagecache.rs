//! The workload image cache's core: which images workloads use ([`collect`]), which of them
//! a policy caches ([`filter`]), and where their copies live ([`naming`]).
//!
//! Every piece is a plain function over Kubernetes objects and references, so the
//! controller, the admission webhook and `ido cache` decide the same way.

pub mod admission;
pub mod cached;
pub mod collect;
pub mod filter;
pub mod naming;
pub mod policy;
pub mod reconcile;
pub mod rewrite;
pub mod scan;

pub use cached::CopySlots;
pub use collect::{ContainerKind, UsedImage, Workload, pull_secret_names};
pub use filter::{ImageFilter, PatternError};
pub use naming::{CacheTarget, NamingError, cached_image_name};
pub use scan::{ALWAYS_SKIPPED, InUse, Scan, Scope, scan};
