//! `ido sync` and `ido tags` (in progress).
