//! The in-cluster driver (in progress).
