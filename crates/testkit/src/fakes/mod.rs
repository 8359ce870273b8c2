//! Faithful fakes of peers that cannot run here (in progress).
