use super::paths::{check_link_target, components};
use super::staging::remove_tree;
use super::*;

#[test]
fn member_paths() {
    assert_eq!(components("a/b/c").unwrap(), ["a", "b", "c"]);
    assert_eq!(components("./a//b/./").unwrap(), ["a", "b"]);
    assert!(components("./").unwrap().is_empty());
    assert!(components(".").unwrap().is_empty());
    for (bad, why) in [
        ("/etc/passwd", "absolute"),
        ("../x", "`..`"),
        ("a/../../x", "`..`"),
        ("a/..", "`..`"),
        ("a\0b", "NUL"),
        ("caf\u{fffd}", "UTF-8"),
    ] {
        let e = components(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
    assert!(
        components(&"a/".repeat(2049))
            .unwrap_err()
            .to_string()
            .contains("4096")
    );
    // Names that only look odd are names.
    assert_eq!(components("..a/b..").unwrap(), ["..a", "b.."]);
    assert_eq!(components("a\\..\\b").unwrap(), ["a\\..\\b"]);
}

#[test]
fn link_targets() {
    // A link at depth 2 (`x/y/link`) may go up twice.
    for ok in [
        "f",
        "./f",
        "sub/f",
        "../f",
        "../../f",
        "../../x/y/f",
        ".",
        "../..",
        "a/./b",
    ] {
        check_link_target(ok, 2).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
    for (bad, depth, why) in [
        ("../../../etc", 2, "outside"),
        ("..", 0, "outside"),
        ("/etc/passwd", 5, "absolute"),
        ("a/../..", 3, "after a name"),
        ("up/../../x", 3, "after a name"),
        ("", 1, "empty"),
        ("a\0b", 1, "NUL"),
    ] {
        let e = check_link_target(bad, depth).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?} at {depth}: {e}");
    }
}

#[test]
fn removes_trees_with_read_only_directories_and_links_out() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    let t = dir.path().join("t");
    let deep = t.join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), b"data").unwrap();
    std::os::unix::fs::symlink(&outside, t.join("a/out")).unwrap();
    std::os::unix::fs::symlink(&outside, t.join("a/b/out")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in ["a/b/c", "a/b", "a"] {
        std::fs::set_permissions(t.join(d), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let root = open_root(dir.path()).unwrap();
    remove_tree(root.as_fd(), "t").unwrap();
    assert!(!t.exists());
    assert!(outside.join("keep").exists(), "links are removed, not followed");
    remove_tree(root.as_fd(), "missing").unwrap();
}

#[test]
fn the_target_must_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"").unwrap();
    for p in [f, dir.path().join("missing")] {
        let e = open_root(&p).unwrap_err();
        assert_eq!(e.label(), "invalid_argument", "{e}");
        assert!(e.to_string().contains("existing directory"), "{e}");
    }
}
