//! `contentType: archive` (`ido_disk::unpack`): archives made by GNU tar (plain, `-z`, `-J`,
//! `--zstd`; GNU and pax formats, long names and link names, symbolic links inside the
//! tree, hard links, `--sparse` members) unpacked by ido must equal what `tar -xp` unpacks
//! (names, types, contents, modes without setuid/setgid, link targets, hard-link groups,
//! modification times), from a file, from stdin and over HTTP (with a cut that is resumed).
//! Malicious archives made with Python's `tarfile` (absolute paths, `..`, links out of the
//! tree and writes through them, hard links out or to nothing, device nodes, members
//! through a symbolic link, a name the target holds) and truncated or corrupt archives are
//! refused, naming the member, and leave the target directory exactly as it was: no staging
//! directory, `lost+found` and the files there untouched.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::http_server::{Behaviour, FileServer};
use common::*;
use ido_disk::{ArchiveOptions, Checksum, Report, SourceSpec, SpecialFiles, UnpackReport, unpack};

/// Environment of the stdin child: where it unpacks, and where it writes its outcome.
const CHILD_TARGET: &str = "IDO_ARCHIVE_STDIN_TARGET";
const CHILD_RESULT: &str = "IDO_ARCHIVE_STDIN_RESULT";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a path in a tree is, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        size: u64,
        sha: String,
        /// The first path (in order) of the same inode, when it has other names.
        same_as: Option<String>,
    },
    Symlink {
        target: PathBuf,
        mtime: i64,
    },
    Other(String),
}

/// Every path below `root` (not `root` itself), with what it is. File modes are compared
/// without setuid and setgid, which ido never sets.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Node, u64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let node = if t.is_dir() {
                walk(root, &p, out);
                Node::Dir {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                }
            } else if t.is_file() {
                Node::File {
                    mode: m.mode() & 0o1777,
                    mtime: m.mtime(),
                    size: m.len(),
                    sha: sha256(&p),
                    same_as: None,
                }
            } else if t.is_symlink() {
                Node::Symlink {
                    target: std::fs::read_link(&p).unwrap(),
                    mtime: m.mtime(),
                }
            } else {
                Node::Other(format!("{t:?}"))
            };
            out.insert(
                rel,
                (node, if m.nlink() > 1 && t.is_file() { m.ino() } else { 0 }),
            );
        }
    }
    let mut raw = BTreeMap::new();
    walk(root, root, &mut raw);
    let mut first: HashMap<u64, String> = HashMap::new();
    raw.into_iter()
        .map(|(path, (mut node, ino))| {
            if ino != 0 {
                let f = first.entry(ino).or_insert_with(|| path.clone()).clone();
                if let Node::File { same_as, .. } = &mut node {
                    *same_as = (f != path).then_some(f);
                }
            }
            (path, node)
        })
        .collect()
}

/// Names in `dir` (top level).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A target directory as a fresh file system's root looks: `lost+found` (0700) in it.
fn fresh_target(dir: &Path, name: &str) -> PathBuf {
    let t = dir.join(name);
    std::fs::create_dir(&t).unwrap();
    std::fs::create_dir(t.join("lost+found")).unwrap();
    std::fs::set_permissions(t.join("lost+found"), std::fs::Permissions::from_mode(0o700)).unwrap();
    sh(&format!("touch -d @1400000000 {}", s(&t.join("lost+found"))));
    t
}

/// Sparse file regions: data off block boundaries, more than four regions (GNU tar then
/// writes extended sparse headers), a hole at the end.
fn sparse_regions() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, random_bytes(21, 4096)),
        (1 << 20, random_bytes(22, 10_000)),
        ((3 << 20) + 512, text_bytes(70_000)),
        (9 << 20, random_bytes(23, 300_001)),
        (17 << 20, random_bytes(24, 8192)),
        (30 << 20, random_bytes(25, 1000)),
    ]
}
const SPARSE_SIZE: u64 = 40 << 20;

/// The tree every archive holds (under `src`): `top/` with files of several modes (a
/// read-only directory, a sticky one, a setuid file), long names, links inside the tree
/// (relative, up, to a directory, dangling, with a long target), hard links, a sparse
/// file, a non-ASCII name, an empty file; and a second top-level entry `other.txt`.
fn make_tree(src: &Path) {
    let top = src.join("top");
    let long_dir = top.join("d".repeat(120));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::create_dir_all(top.join("bin")).unwrap();
    std::fs::create_dir_all(top.join("ro")).unwrap();
    std::fs::create_dir_all(top.join("private")).unwrap();
    std::fs::create_dir_all(top.join("sticky")).unwrap();
    std::fs::write(top.join("readme.txt"), text_bytes(5000)).unwrap();
    std::fs::write(top.join("bin/tool"), random_bytes(1, 100_000)).unwrap();
    std::fs::write(top.join("ro/file"), b"read only\n").unwrap();
    std::fs::write(top.join("private/key"), b"secret\n").unwrap();
    std::fs::write(top.join("sticky/tmp"), b"t\n").unwrap();
    std::fs::write(top.join("suid"), b"#!/bin/sh\n").unwrap();
    std::fs::write(top.join("empty"), b"").unwrap();
    std::fs::write(top.join("caf\u{e9}-\u{fc}.txt"), b"unicode\n").unwrap();
    std::fs::write(long_dir.join("f".repeat(150)), random_bytes(2, 777)).unwrap();
    write_sparse(&top.join("sparse.img"), SPARSE_SIZE, &sparse_regions());
    std::fs::write(src.join("other.txt"), b"second top-level entry\n").unwrap();
    let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, top.join(at)).unwrap();
    link("readme.txt", "link-to-readme");
    link("../readme.txt", "bin/up");
    link("bin", "dirlink");
    link("nothing-here", "dangling");
    link(&format!("{}/{}", "d".repeat(120), "f".repeat(150)), "longlink");
    std::fs::hard_link(top.join("readme.txt"), top.join("hard")).unwrap();
    std::fs::hard_link(top.join("bin/tool"), top.join("bin/tool2")).unwrap();
    let mode =
        |p: &str, m: u32| std::fs::set_permissions(top.join(p), std::fs::Permissions::from_mode(m)).unwrap();
    mode("bin/tool", 0o755);
    mode("ro/file", 0o444);
    mode("private", 0o700);
    mode("private/key", 0o600);
    mode("sticky", 0o1777);
    mode("suid", 0o4755);
    mode("ro", 0o555);
    // Distinct times, whole seconds in the past (the tar headers keep seconds).
    sh(&format!(
        "cd {} && find . -mindepth 1 -exec touch -h -d @1600000000 {{}} + && touch -d @1500000000 top/readme.txt",
        s(src)
    ));
}

/// Archives of the tree made by GNU tar: (name, tar arguments).
fn gnu_archives() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("gnu.tar", vec!["--format=gnu", "-cf"]),
        ("gnu.tar.gz", vec!["--format=gnu", "-czf"]),
        ("pax.tar.xz", vec!["--format=pax", "-cJf"]),
        (
            "gnu-sparse.tar.zst",
            vec!["--format=gnu", "--sparse", "--zstd", "-cf"],
        ),
        ("pax-sparse.tar", vec!["--format=pax", "--sparse", "-cf"]),
        // `tar -C src .`: every name starts with `./`, and `./` itself is a member (its
        // mode is not applied: the target directory is left as it is).
        ("dot.tar.gz", vec!["--format=gnu", "-czf"]),
    ]
}

fn make_archive(src: &Path, out: &Path, args: &[&str]) {
    let mut a: Vec<&str> = args.to_vec();
    a.push(s(out));
    a.extend(["-C", s(src)]);
    if out.to_string_lossy().ends_with("dot.tar.gz") {
        a.push(".");
    } else {
        a.extend(["top", "other.txt"]);
    }
    run("tar", &a);
}

/// What `tar -xp` (as this user) unpacks.
fn oracle(archive: &Path, dir: &Path) -> BTreeMap<String, Node> {
    let t = fresh_target(dir, "oracle");
    run("tar", &["-xpf", s(archive), "-C", s(&t)]);
    let snap = snapshot(&t);
    // Read-only directories would keep the temporary directory.
    sh(&format!("chmod -R u+rwx {}", s(&t)));
    std::fs::remove_dir_all(&t).unwrap();
    snap
}

fn options(source: SourceSpec, target: &Path) -> ArchiveOptions {
    ArchiveOptions::new(source, target.to_path_buf())
}

async fn unpack_file(archive: &Path, target: &Path) -> ido_disk::Result<UnpackReport> {
    unpack(options(SourceSpec::File(archive.to_path_buf()), target)).await
}

/// Checks an unpacked tree against the oracle's, and what ido must add on top: no setuid
/// bit, no staging directory, `lost+found` kept, a sparse member's holes kept (a file that
/// the archive stores whole is written whole, as `tar -x` does: a swap file must have no
/// holes).
fn check_tree(got: &Path, want: &BTreeMap<String, Node>, what: &str) {
    let snap = snapshot(got);
    for (path, node) in want {
        assert_eq!(snap.get(path), Some(node), "{what}: {path}");
    }
    assert_eq!(
        snap.len(),
        want.len(),
        "{what}: {:?}",
        snap.keys().collect::<Vec<_>>()
    );
    assert_eq!(names(got), ["lost+found", "other.txt", "top"], "{what}");
    let suid = std::fs::metadata(got.join("top/suid")).unwrap().mode();
    assert_eq!(suid & 0o7777, 0o755, "{what}: setuid dropped");
    if what.contains("sparse") {
        assert_sparse_regions(&got.join("top/sparse.img"), SPARSE_SIZE, &sparse_regions());
    }
}

fn remove(t: &Path) {
    sh(&format!("chmod -R u+rwx {}", s(t)));
    std::fs::remove_dir_all(t).unwrap();
}

#[tokio::test]
async fn gnu_tar_archives_unpack_as_tar_does() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    for (name, args) in gnu_archives() {
        let archive = dir.path().join(name);
        make_archive(&src, &archive, &args);
        let want = oracle(&archive, dir.path());
        assert!(want.contains_key(&format!("top/{}/{}", "d".repeat(120), "f".repeat(150))));
        assert!(
            matches!(&want["top/readme.txt"], Node::File { same_as: Some(p), .. } if p == "top/hard"),
            "{name}: {:?}",
            want["top/readme.txt"]
        );
        let target = fresh_target(dir.path(), "ours");
        let seen = Arc::new(Mutex::new(Vec::<Report>::new()));
        let mut opts = options(SourceSpec::File(archive.clone()), &target);
        opts.checksum = Some(sha256(&archive).parse::<Checksum>().unwrap());
        let s2 = seen.clone();
        opts.progress = Some(Arc::new(move |p: &Report| s2.lock().unwrap().push(p.clone())));
        let r = unpack(opts).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        check_tree(&target, &want, name);
        let layers: &[&str] = match name {
            n if n.ends_with(".gz") => &["gzip"],
            n if n.ends_with(".xz") => &["xz"],
            n if n.ends_with(".zst") => &["zstd"],
            _ => &[],
        };
        assert_eq!(r.layers, layers, "{name}");
        assert_eq!(r.entries, ["other.txt", "top"], "{name}");
        assert_eq!((r.symlinks, r.hard_links), (5, 2), "{name}");
        assert_eq!(r.files, 11, "{name}");
        assert_eq!(
            r.source_bytes,
            std::fs::metadata(&archive).unwrap().len(),
            "{name}"
        );
        assert!(r.checksum.is_some());
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert!(
            last.done && last.written == r.bytes && r.bytes > 500_000,
            "{name}: {last:?}"
        );
        remove(&target);
    }
}

/// Python's `tarfile` builds what GNU tar will not: `script` adds members to `t`, an open
/// `tarfile` (helpers `f(name, data)`, `d(name)`, `sym(name, target)`, `hard(name, target)`
/// add a file, directory, symbolic or hard link).
fn python_tar(out: &Path, script: &str) {
    let prog = format!(
        r#"
import io, tarfile
t = tarfile.open({out:?}, "w", format=tarfile.GNU_FORMAT)
def add(i, data=None):
    i.mtime = 1600000000
    t.addfile(i, io.BytesIO(data) if data is not None else None)
def f(name, data=b"x\n"):
    i = tarfile.TarInfo(name); i.size = len(data); i.mode = 0o644; add(i, data)
def d(name):
    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; add(i)
def sym(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; add(i)
def hard(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; add(i)
def dev(name, kind):
    i = tarfile.TarInfo(name); i.type = kind; i.devmajor = 1; i.devminor = 3; i.mode = 0o666; add(i)
{script}
t.close()
"#,
        out = s(out)
    );
    let o = Command::new("python3").args(["-c", &prog]).output().unwrap();
    assert!(
        o.status.success(),
        "python: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A target directory that already holds things: `lost+found`, a file, a directory.
fn lived_in(dir: &Path, name: &str) -> PathBuf {
    let t = fresh_target(dir, name);
    std::fs::write(t.join("keep.txt"), b"mine\n").unwrap();
    std::fs::create_dir(t.join("data")).unwrap();
    std::fs::write(t.join("data/db"), b"records\n").unwrap();
    t
}

#[tokio::test]
async fn malicious_archives_are_refused_and_leave_the_target_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"untouched\n").unwrap();
    // Each case starts with members that unpack fine, so a staging directory exists when
    // the bad one comes.
    let ok = r#"d("ok"); f("ok/a", b"fine\n"); d("ok/sub"); f("ok/sub/b")"#;
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "absolute",
            r#"f("/tmp/ido-evil-absolute")"#,
            "/tmp/ido-evil-absolute",
            "absolute",
        ),
        ("dotdot", r#"f("../x")"#, "../x", "`..`"),
        ("dotdot-inside", r#"f("ok/../../x")"#, "ok/../../x", "`..`"),
        (
            "symlink-escape",
            r#"sym("esc", "../outside"); f("esc/victim", b"pwned\n")"#,
            "esc",
            "outside the target directory",
        ),
        (
            "symlink-absolute",
            r#"sym("etc", "/etc")"#,
            "etc",
            "absolute path \"/etc\"",
        ),
        (
            "symlink-deep-escape",
            r#"sym("ok/sub/up", "../../../outside")"#,
            "ok/sub/up",
            "3 levels up from 2 deep",
        ),
        (
            "symlink-dotdot-after-name",
            r#"sym("ok/up", ".."); sym("ok/b", "up/../..")"#,
            "ok/b",
            "after a name",
        ),
        (
            "through-symlink-dir",
            r#"sym("in", "ok/sub"); f("in/planted", b"via link\n")"#,
            "in/planted",
            "symbolic link \"in\"",
        ),
        ("through-file", r#"f("ok/a/b")"#, "ok/a/b", "not a directory"),
        (
            "hardlink-outside",
            r#"hard("h", "../outside/victim")"#,
            "h",
            "`..`",
        ),
        (
            "hardlink-absolute",
            r#"hard("h", "/etc/passwd")"#,
            "h",
            "absolute",
        ),
        (
            "hardlink-missing",
            r#"hard("h", "ok/nothing")"#,
            "h",
            "not a member unpacked before it",
        ),
        (
            "hardlink-not-in-archive",
            r#"hard("h", "keep.txt")"#,
            "h",
            "not a member unpacked before it",
        ),
        ("hardlink-to-dir", r#"hard("h", "ok/sub")"#, "h", "a directory"),
        (
            "hardlink-to-escaping-link",
            r#"sym("ok/sub/s", "../../x"); hard("s2", "ok/sub/s")"#,
            "s2",
            "from here",
        ),
        (
            "char-device",
            r#"dev("null", tarfile.CHRTYPE)"#,
            "null",
            "a character device",
        ),
        (
            "block-device",
            r#"dev("ok/sda", tarfile.BLKTYPE)"#,
            "ok/sda",
            "a block device",
        ),
        ("fifo", r#"dev("ok/pipe", tarfile.FIFOTYPE)"#, "ok/pipe", "a FIFO"),
        (
            "exists",
            r#"f("keep.txt", b"overwritten\n")"#,
            "keep.txt",
            "exists already",
        ),
        (
            "exists-dir",
            r#"f("data/db", b"overwritten\n")"#,
            "data/db",
            "exists already",
        ),
        (
            "lost+found",
            r#"d("lost+found")"#,
            "lost+found/",
            "exists already",
        ),
        (
            "staging-name",
            r#"d(".ido-unpack-0123456789abcdef")"#,
            ".ido-unpack-0123456789abcdef/",
            "ido's own",
        ),
        (
            "dir-replaced",
            r#"f("ok/sub", b"file now\n")"#,
            "ok/sub",
            "made this path a directory",
        ),
        (
            "multi-volume",
            r#"i = tarfile.TarInfo("ok/part"); i.type = b"M"; add(i)"#,
            "ok/part",
            "tar type 'M'",
        ),
    ];
    for (name, script, member, why) in cases {
        let archive = dir.path().join(format!("{name}.tar"));
        python_tar(&archive, &format!("{ok}\n{script}"));
        let target = lived_in(dir.path(), &format!("t-{name}"));
        let before = snapshot(&target);
        let e = unpack_file(&archive, &target)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: unpacked"));
        let msg = e.to_string();
        assert_eq!(e.label(), "refused", "{name}: {msg}");
        assert!(
            msg.contains(&format!("member {member:?}")) && msg.contains(why) && msg.contains(s(&archive)),
            "{name}: {msg}"
        );
        assert!(
            matches!(e, ido_disk::Error::ArchiveMember { .. }),
            "{name}: {e:?}"
        );
        assert_eq!(snapshot(&target), before, "{name}: the target changed");
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"untouched\n",
            "{name}"
        );
        assert!(!Path::new("/tmp/ido-evil-absolute").exists());
    }

    // Skipped instead of refused, on request: the rest unpacks.
    let archive = dir.path().join("devices.tar");
    python_tar(
        &archive,
        &format!("{ok}\ndev(\"ok/null\", tarfile.CHRTYPE); dev(\"ok/fifo\", tarfile.FIFOTYPE)"),
    );
    let target = lived_in(dir.path(), "t-skip");
    let mut opts = options(SourceSpec::File(archive), &target);
    opts.special_files = SpecialFiles::Skip;
    let r = unpack(opts).await.unwrap();
    assert_eq!((r.skipped, r.files), (2, 2));
    assert_eq!(names(&target.join("ok")), ["a", "sub"]);
}

#[tokio::test]
async fn later_members_replace_earlier_files_and_links_but_never_write_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("replace.tar");
    // A link to a file inside, then a file of the same name: the file replaces the link
    // (the link's target keeps its content). A hard link, then a file of its name: the
    // first file keeps its content.
    python_tar(
        &archive,
        r#"d("r"); f("r/target", b"target\n"); sym("r/l", "target"); f("r/l", b"replaced link\n")
f("r/one", b"one\n"); hard("r/two", "r/one"); f("r/two", b"two\n")
f("r/dup", b"first\n"); f("r/dup", b"second\n"); sym("r/s", "one"); sym("r/s", "target")"#,
    );
    let target = fresh_target(dir.path(), "t");
    unpack_file(&archive, &target).await.unwrap();
    let read = |p: &str| String::from_utf8(std::fs::read(target.join(p)).unwrap()).unwrap();
    assert_eq!(read("r/target"), "target\n");
    assert_eq!(read("r/l"), "replaced link\n");
    assert!(std::fs::symlink_metadata(target.join("r/l")).unwrap().is_file());
    assert_eq!((read("r/one"), read("r/two")), ("one\n".into(), "two\n".into()));
    assert_eq!(read("r/dup"), "second\n");
    assert_eq!(
        std::fs::read_link(target.join("r/s")).unwrap(),
        PathBuf::from("target")
    );
}

#[tokio::test]
async fn truncated_corrupt_and_mismatched_archives_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let tar = dir.path().join("full.tar");
    make_archive(&src, &tar, &["--format=gnu", "-cf"]);
    let tgz = dir.path().join("full.tar.gz");
    make_archive(&src, &tgz, &["--format=gnu", "-czf"]);
    let bytes = std::fs::read(&tar).unwrap();
    let gz = std::fs::read(&tgz).unwrap();
    // A member boundary: the end of the first member's header and data (a 5000-byte or
    // smaller file's blocks), found by walking the headers.
    let boundary = {
        let mut at = 0usize;
        let mut found = None;
        while at + 512 <= bytes.len() && bytes[at] != 0 {
            let size = u64::from_str_radix(
                std::str::from_utf8(&bytes[at + 124..at + 135])
                    .unwrap()
                    .trim_matches(char::from(0))
                    .trim(),
                8,
            )
            .unwrap_or(0) as usize;
            at += 512 + size.div_ceil(512) * 512;
            if at > bytes.len() / 2 {
                found = Some(at);
                break;
            }
        }
        found.unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut-in-data",
            bytes[..bytes.len() / 2 + 100].to_vec(),
            "truncated",
        ),
        (
            "cut-at-a-member",
            bytes[..boundary].to_vec(),
            "end-of-archive marker",
        ),
        ("cut-in-header", bytes[..boundary + 100].to_vec(), "truncated"),
        ("gzip-cut", gz[..gz.len() - 20].to_vec(), ""),
        (
            "bad-header-checksum",
            {
                let mut b = bytes.clone();
                b[boundary + 10] ^= 0xff;
                b
            },
            "checksum",
        ),
    ];
    for (name, data, why) in cases {
        let archive = dir.path().join(format!("{name}.tar"));
        std::fs::write(&archive, &data).unwrap();
        let target = lived_in(dir.path(), &format!("t-{name}"));
        let before = snapshot(&target);
        let e = unpack_file(&archive, &target)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: unpacked"));
        assert!(e.to_string().contains(why), "{name}: {e}");
        assert!(
            e.to_string().contains(s(&archive)) || e.label() == "io",
            "{name}: {e}"
        );
        assert_eq!(snapshot(&target), before, "{name}: the target changed");
    }

    // A checksum mismatch is found after the last byte: still nothing is left.
    let target = lived_in(dir.path(), "t-sum");
    let before = snapshot(&target);
    let mut opts = options(SourceSpec::File(tgz.clone()), &target);
    opts.checksum = Some(format!("sha256:{}", "00".repeat(32)).parse().unwrap());
    let e = unpack(opts).await.unwrap_err();
    assert_eq!(e.label(), "checksum_mismatch", "{e}");
    assert_eq!(snapshot(&target), before);

    // Not an archive: refused before anything is made; a missing target is refused first.
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, random_bytes(7, 1 << 20)).unwrap();
    let e = unpack_file(&raw, &target).await.unwrap_err();
    assert!(e.to_string().contains("is not a tar archive"), "{e}");
    let e = unpack_file(&tgz, &dir.path().join("nowhere")).await.unwrap_err();
    assert_eq!(e.label(), "invalid_argument", "{e}");
    assert_eq!(snapshot(&target), before);
}

#[tokio::test]
async fn a_killed_runs_staging_directory_is_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar.gz");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/bin"), b"bin\n").unwrap();
    run("tar", &["-czf", s(&archive), "-C", s(&src), "app"]);
    let target = fresh_target(dir.path(), "t");
    // What a killed run leaves: its staging directory, with a read-only directory in it.
    let left = target.join(".ido-unpack-00000000deadbeef");
    std::fs::create_dir_all(left.join("half/ro")).unwrap();
    std::fs::write(left.join("half/ro/f"), b"partial").unwrap();
    std::fs::set_permissions(left.join("half/ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    // Not a directory: not ido's, kept.
    std::fs::write(target.join(".ido-unpack-note"), b"a user's file\n").unwrap();
    let r = unpack_file(&archive, &target).await.unwrap();
    assert_eq!(r.entries, ["app"]);
    assert_eq!(names(&target), [".ido-unpack-note", "app", "lost+found"]);
}

/// Environment of the unprivileged child: the archive, where it unpacks, its outcome.
const UNPRIV_ARCHIVE: &str = "IDO_ARCHIVE_UNPRIV_ARCHIVE";
const UNPRIV_TARGET: &str = "IDO_ARCHIVE_UNPRIV_TARGET";
const UNPRIV_RESULT: &str = "IDO_ARCHIVE_UNPRIV_RESULT";
/// The user the importer's stand-in runs as (`nobody`; the importer Job runs as 65532).
const NOBODY: &str = "65534";

/// Not a test by itself: [`unprivileged_as_the_importer_runs`] runs this binary again, as
/// `nobody`, with only this test; without the environment it does nothing.
#[tokio::test]
async fn unprivileged_child() {
    let (Some(archive), Some(target), Some(result)) = (
        std::env::var_os(UNPRIV_ARCHIVE),
        std::env::var_os(UNPRIV_TARGET),
        std::env::var_os(UNPRIV_RESULT),
    ) else {
        return;
    };
    let outcome = match unpack_file(Path::new(&archive), Path::new(&target)).await {
        Ok(r) => format!("ok {}", r.files),
        Err(e) => format!("error {}: {e}", e.label()),
    };
    std::fs::write(result, outcome).unwrap();
}

/// Runs `cmd` as `nobody` (setpriv), asserting success.
fn as_nobody(cmd: &[&str]) -> std::process::Output {
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} as nobody: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Unpacks `archive` into `target` in a child running as `nobody`; its outcome line.
fn unpack_as_nobody(archive: &Path, target: &Path, work: &Path) -> String {
    let result = work.join("unpriv.outcome");
    let _ = std::fs::remove_file(&result);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(exe)
        .args([
            "unprivileged_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(UNPRIV_ARCHIVE, archive)
        .env(UNPRIV_TARGET, target)
        .env(UNPRIV_RESULT, &result)
        .output()
        .unwrap();
    std::fs::read_to_string(&result).unwrap_or_else(|_| {
        panic!(
            "no outcome ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// As the importer runs, not as root (whose rights hide mistakes): read-only and
/// unreadable directories (a top-level one among them) unpack equal to `tar -xp` run as
/// the same user; a staging directory a killed run left, with an unreadable directory in
/// it, is removed; a refused archive leaves the target as it was.
#[tokio::test]
async fn unprivileged_as_the_importer_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let top = src.join("top");
    std::fs::set_permissions(top.join("private"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o555)).unwrap();
    sh(&format!("touch -h -d @1600000000 {0} {0}/private", s(&top)));
    let archive = dir.path().join("tree.tar.gz");
    make_archive(&src, &archive, &["--format=gnu", "-czf"]);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    sh(&format!("chown {NOBODY}:{NOBODY} {}", s(&work)));

    let oracle = fresh_target(&work, "oracle");
    sh(&format!("chown {NOBODY}:{NOBODY} {}", s(&oracle)));
    as_nobody(&["tar", "-xpf", s(&archive), "-C", s(&oracle)]);
    let want = snapshot(&oracle);
    assert!(
        matches!(want["top"], Node::Dir { mode: 0o555, .. }),
        "{:?}",
        want["top"]
    );

    let target = fresh_target(&work, "ours");
    sh(&format!("chown {NOBODY}:{NOBODY} {}", s(&target)));
    let left = target.join(".ido-unpack-00000000deadbeef");
    as_nobody(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p {0}/x/y && touch {0}/x/y/f && chmod 000 {0}/x/y && chmod 500 {0}/x",
            s(&left)
        ),
    ]);
    assert_eq!(unpack_as_nobody(&archive, &target, &work), "ok 11");
    check_tree(&target, &want, "as nobody");
    let owner = std::fs::metadata(target.join("top/readme.txt")).unwrap().uid();
    assert_eq!(owner.to_string(), NOBODY);

    // Refused after read-only directories were made: nothing is left.
    let bad = work.join("bad.tar");
    python_tar(
        &bad,
        r#"i = tarfile.TarInfo("ro"); i.type = tarfile.DIRTYPE; i.mode = 0o555; add(i)
f("ro/f"); i = tarfile.TarInfo("locked"); i.type = tarfile.DIRTYPE; i.mode = 0; add(i)
f("locked/g"); f("../escape")"#,
    );
    let target = fresh_target(&work, "refused");
    sh(&format!("chown {NOBODY}:{NOBODY} {}", s(&target)));
    let before = snapshot(&target);
    let outcome = unpack_as_nobody(&bad, &target, &work);
    assert!(
        outcome.starts_with("error refused") && outcome.contains("\"../escape\""),
        "{outcome}"
    );
    assert_eq!(snapshot(&target), before);
}

/// Not a test by itself: [`from_stdin_and_over_http_with_a_cut`] runs this binary again with only this test and an
/// archive piped to its stdin; without the environment it does nothing.
#[tokio::test]
async fn stdin_child() {
    let (Some(target), Some(result)) = (std::env::var_os(CHILD_TARGET), std::env::var_os(CHILD_RESULT))
    else {
        return;
    };
    let outcome = match unpack(options(SourceSpec::Stdin, Path::new(&target))).await {
        Ok(r) => format!("ok {} {}", r.files, r.layers.join(",")),
        Err(e) => format!("error {}: {e}", e.label()),
    };
    std::fs::write(result, outcome).unwrap();
}

#[tokio::test]
async fn from_stdin_and_over_http_with_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let archive = dir.path().join("tree.tar.xz");
    make_archive(&src, &archive, &["--format=pax", "--sparse", "-cJf"]);
    let want = oracle(&archive, dir.path());

    // stdin: a pipe from `cat`.
    let target = fresh_target(dir.path(), "stdin");
    let result = dir.path().join("stdin.outcome");
    let mut cat = Command::new("cat")
        .arg(&archive)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["stdin_child", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD_TARGET, &target)
        .env(CHILD_RESULT, &result)
        .stdin(cat.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(cat.wait().unwrap().success());
    let outcome = std::fs::read_to_string(&result).unwrap_or_else(|_| {
        panic!(
            "no outcome ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(outcome, "ok 11 xz");
    check_tree(&target, &want, "stdin (sparse)");
    remove(&target);

    // HTTP: the connection is cut half-way and resumed with a Range request.
    ido_testkit::install_crypto_provider();
    let data = std::fs::read(&archive).unwrap();
    let half = data.len() as u64 / 2;
    let server = FileServer::start(
        data,
        Behaviour {
            ranges: true,
            cut_at: Some(half),
            etag: Some("\"v1\"".into()),
            ..Behaviour::default()
        },
    )
    .await;
    let target = fresh_target(dir.path(), "http");
    let mut opts = options(SourceSpec::parse(&server.url()).unwrap(), &target);
    opts.checksum = Some(sha256(&archive).parse().unwrap());
    let r = unpack(opts).await.unwrap();
    assert_eq!(r.layers, ["xz"]);
    check_tree(&target, &want, "http (sparse)");
    let seen = server.seen();
    assert!(seen.iter().any(|q| q.range_start() == Some(half)), "{seen:?}");

    // A 404 fails before anything is made.
    let target = lived_in(dir.path(), "http-404");
    let before = snapshot(&target);
    let e = unpack(options(
        SourceSpec::parse(&server.missing_url()).unwrap(),
        &target,
    ))
    .await
    .unwrap_err();
    assert_eq!(e.label(), "not_found", "{e}");
    assert_eq!(snapshot(&target), before);
}
