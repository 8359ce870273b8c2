//! The checks on a member's path and on a link's target.

use super::MAX_PATH;

/// Why a member's name or link target is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum PathRefusal {
    #[error("its {0} holds a NUL byte")]
    Nul(&'static str),
    #[error("its {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("its {what} is {len} bytes long; at most {MAX_PATH} are accepted")]
    TooLong { what: &'static str, len: usize },
    #[error("its path is absolute")]
    Absolute,
    #[error("its path has a `..` component")]
    DotDot,
    #[error("its link target is empty")]
    EmptyTarget,
    #[error("it links to the absolute path {0:?}, outside the target directory")]
    AbsoluteTarget(String),
    #[error(
        "its link target {0:?} has `..` after a name (only leading `..` are accepted: where `name/..` leads \
         depends on what `name` is)"
    )]
    DotDotAfterName(String),
    #[error("it links to {target:?}, outside the target directory ({ups} levels up from {depth} deep)")]
    Outside {
        target: String,
        ups: usize,
        depth: usize,
    },
}

/// The components of a member's path below the target directory (empty and `.`
/// components dropped); `Err` says why the path is refused.
pub(super) fn components(path: &str) -> Result<Vec<&str>, PathRefusal> {
    check_text(path, "name")?;
    if path.starts_with('/') {
        return Err(PathRefusal::Absolute);
    }
    let mut v = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PathRefusal::DotDot),
            c => v.push(c),
        }
    }
    Ok(v)
}

/// What every name and link target must be.
pub(super) fn check_text(s: &str, what: &'static str) -> Result<(), PathRefusal> {
    if s.contains('\0') {
        return Err(PathRefusal::Nul(what));
    }
    // The tar reader turns bytes that are not UTF-8 into U+FFFD: unpacking them under
    // another name would be wrong.
    if s.contains('\u{fffd}') {
        return Err(PathRefusal::NotUtf8(what));
    }
    if s.len() > MAX_PATH {
        return Err(PathRefusal::TooLong { what, len: s.len() });
    }
    Ok(())
}

/// Checks the target of a symbolic link made `depth` directories below the target
/// directory: relative, and inside (only leading `..`, at most `depth` of them).
pub(super) fn check_link_target(target: &str, depth: usize) -> Result<(), PathRefusal> {
    check_text(target, "link target")?;
    if target.is_empty() {
        return Err(PathRefusal::EmptyTarget);
    }
    if target.starts_with('/') {
        return Err(PathRefusal::AbsoluteTarget(target.to_string()));
    }
    let (mut ups, mut named) = (0usize, false);
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return Err(PathRefusal::DotDotAfterName(target.to_string())),
            ".." => ups += 1,
            _ => named = true,
        }
    }
    if ups > depth {
        return Err(PathRefusal::Outside {
            target: target.to_string(),
            ups,
            depth,
        });
    }
    Ok(())
}
