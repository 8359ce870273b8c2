//! `ido import` (in progress).
