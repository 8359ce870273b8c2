//! qcow2 and VHDX layouts the real tools make that a plain front-to-back reading gets
//! wrong, checked against `qemu-img convert -O raw`, byte for byte and in length:
//!
//! - `qemu-img convert -c` output whose compressed clusters share a sector with the one
//!   before them and come before their L2 table (every image over 512 MiB with 64 KiB
//!   clusters, small ones with 4 KiB clusters), zlib and zstd, from a file and from stdin;
//! - a qcow2 whose data lies ahead of its L2 tables (tables moved by a snapshot's
//!   copy-on-write): from a stream it needs the reorder buffer (and a failure says how to
//!   raise it), from a file or an HTTP server with ranges it is read again by position;
//! - a VHDX whose log holds entries.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::http_server::{Behaviour, FileServer};
use common::*;
use ido_disk::{DiskFormat, HttpOptions, ImportOptions, SourceSpec, TargetSpec, import};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn options(source: SourceSpec, out: &Path) -> ImportOptions {
    ImportOptions::new(
        source,
        TargetSpec {
            path: out.to_path_buf(),
            capacity: None,
        },
    )
}

/// Environment of the child that imports its stdin (see [`import_stdin`]).
const CHILD_OUT: &str = "IDO_TEST_STDIN_TARGET";
const CHILD_BUDGET: &str = "IDO_TEST_STDIN_BUDGET";

/// Not a test of its own: the child process of [`import_stdin`], importing its stdin.
#[tokio::test]
async fn stdin_child() {
    let Ok(out) = std::env::var(CHILD_OUT) else {
        return;
    };
    let mut o = options(SourceSpec::Stdin, Path::new(&out));
    if let Ok(b) = std::env::var(CHILD_BUDGET) {
        o.reorder_budget = b.parse().unwrap();
    }
    match import(o).await {
        Ok(r) => println!("IMPORTED {} {}", r.format, r.virtual_size),
        Err(e) => {
            println!("IMPORT-ERROR {}: {e}", e.label());
            std::process::exit(3);
        }
    }
}

/// Imports `image` from stdin, a pipe fed by `cat`, in a child process (this test binary
/// running [`stdin_child`]). Err: the import's error, as `label: message`.
fn import_stdin(image: &Path, out: &Path, budget: Option<u64>) -> Result<(), String> {
    let mut cat = Command::new("cat")
        .arg(image)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args(["stdin_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_OUT, out)
        .stdin(cat.stdout.take().unwrap());
    if let Some(b) = budget {
        child.env(CHILD_BUDGET, b.to_string());
    }
    let done = child.output().unwrap();
    // The pipe's read end goes with the command; a failed import leaves `cat` blocked.
    drop(child);
    let _ = cat.kill();
    cat.wait().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    if let Some(line) = stdout
        .lines()
        .find_map(|l| Some(&l[l.find("IMPORT-ERROR ")? + 13..]))
    {
        return Err(line.to_string());
    }
    assert!(
        done.status.success() && stdout.contains("IMPORTED "),
        "child: {stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    Ok(())
}

/// Imports `image` from its file (with `budget` as the reorder buffer).
async fn import_file(
    image: &Path,
    out: &Path,
    budget: Option<u64>,
) -> ido_disk::Result<ido_disk::ImportReport> {
    let mut o = options(SourceSpec::File(image.to_path_buf()), out);
    if let Some(b) = budget {
        o.reorder_budget = b;
    }
    import(o).await
}

/// `qemu-img convert -c -O qcow2 -o <options>` of a sparse raw image holding `runs`.
fn compressed_qcow2(dir: &Path, size: u64, runs: &[(u64, Vec<u8>)], options: &str) -> PathBuf {
    let raw = dir.join("sparse.raw");
    write_sparse(&raw, size, runs);
    let q = dir.join("c.qcow2");
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "-o", options, s(&raw), s(&q)],
    );
    std::fs::remove_file(raw).unwrap();
    q
}

/// A run crossing `boundary`: compressible random bytes, a highly compressible cluster
/// starting at the boundary (it fits in the host cluster being filled when its L2 table
/// is allocated, so it is stored before that table), then more random bytes.
fn across(boundary: u64, before: u64, after: u64, seed: u64) -> (u64, Vec<u8>) {
    let mut v = compressible_bytes(seed, before as usize);
    v.extend(text_bytes(64 << 10));
    v.extend(compressible_bytes(seed + 1, after as usize));
    (boundary - before, v)
}

/// Imports a compressed qcow2 from its file and from stdin; both must equal qemu-img's raw.
async fn check_compressed(dir: &Path, q: &Path) {
    let layout = qcow2_layout(q);
    assert!(
        layout.compressed_before_l2_sharing > 0,
        "{}: the layout under test is missing: {layout:?}",
        q.display()
    );
    let want = dir.join("want.raw");
    qemu_raw_file(q, None, &want);
    let out = dir.join("file.raw");
    let r = import_file(q, &out, None)
        .await
        .unwrap_or_else(|e| panic!("{} from its file: {e}", q.display()));
    assert_eq!(r.format, DiskFormat::Qcow2);
    assert_same_file(&out, &want, "from its file");
    std::fs::remove_file(&out).unwrap();
    let out = dir.join("stdin.raw");
    import_stdin(q, &out, None).unwrap_or_else(|e| panic!("{} from stdin: {e}", q.display()));
    assert_same_file(&out, &want, "from stdin");
}

/// Over 1 GiB with 64 KiB clusters: three L2 tables; runs cross both table boundaries.
async fn large_64k(compression: &str) {
    let dir = tempfile::tempdir().unwrap();
    let size = (1 << 30) + 3 * 64 * KIB + 1536;
    let runs = vec![
        (0, compressible_bytes(1, MIB as usize)),
        across(512 * MIB, MIB, MIB, 2),
        across(1 << 30, 512 * KIB, 3 * 64 * KIB + 1536 - 64 * KIB, 4),
    ];
    let q = compressed_qcow2(
        dir.path(),
        size,
        &runs,
        &format!("compression_type={compression}"),
    );
    check_compressed(dir.path(), &q).await;
}

/// 9 MiB with 4 KiB clusters (an L2 table maps 2 MiB): runs cross every table boundary.
async fn small_4k(compression: &str) {
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * MIB + 1536;
    let mut runs = vec![(0, compressible_bytes(1, 300 * KIB as usize))];
    for k in 1..=4 {
        runs.push(across(2 * k * MIB, 200 * KIB, 200 * KIB, 10 + k));
    }
    let q = compressed_qcow2(
        dir.path(),
        size,
        &runs,
        &format!("cluster_size=4096,compression_type={compression}"),
    );
    check_compressed(dir.path(), &q).await;
}

#[tokio::test]
async fn compressed_over_512_mib_zlib() {
    large_64k("zlib").await;
}

#[tokio::test]
async fn compressed_over_512_mib_zstd() {
    large_64k("zstd").await;
}

#[tokio::test]
async fn compressed_4k_clusters_zlib() {
    small_4k("zlib").await;
}

#[tokio::test]
async fn compressed_4k_clusters_zstd() {
    small_4k("zstd").await;
}

/// A qcow2 of 1100 MiB whose `data` MiB of data (two runs, in both L2 tables' ranges) lie
/// before both L2 tables: written, snapshotted, then written again (the write copies the
/// L2 tables to the end of the file), and the snapshot deleted.
fn data_before_tables(dir: &Path, data: u64) -> PathBuf {
    let q = dir.join("moved.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&q), "1100M"]);
    let first = format!("write -P 0xab 1M {}M", data - 4);
    run("qemu-io", &["-c", &first, "-c", "write -P 0xcd 600M 4M", s(&q)]);
    run("qemu-img", &["snapshot", "-c", "s1", s(&q)]);
    run(
        "qemu-io",
        &["-c", "write -P 0x11 0 4k", "-c", "write -P 0x12 520M 4k", s(&q)],
    );
    run("qemu-img", &["snapshot", "-d", "s1", s(&q)]);
    let layout = qcow2_layout(&q);
    assert!(layout.data_before_l2 >= data * MIB, "{layout:?}");
    q
}

/// Over the default reorder buffer (64 MiB): a stream is refused, with the flag that
/// raises the buffer named and no target left; raised, it converts; a local file needs no
/// buffer at all.
#[tokio::test]
async fn data_before_tables_beyond_the_default_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let q = data_before_tables(dir.path(), 72);
    let want = dir.path().join("want.raw");
    qemu_raw_file(&q, None, &want);

    let out = dir.path().join("stdin.raw");
    let e = import_stdin(&q, &out, None).unwrap_err();
    assert!(e.starts_with("unsupported:"), "{e}");
    assert!(e.contains("--reorder-buffer") && e.contains("64 MiB"), "{e}");
    assert!(!out.exists(), "a failed import leaves no target");
    import_stdin(&q, &out, Some(128 * MIB)).unwrap();
    assert_same_file(&out, &want, "from stdin, 128 MiB buffer");

    let out = dir.path().join("file.raw");
    let r = import_file(&q, &out, None).await.unwrap();
    assert_same_file(&out, &want, "from its file");
    assert_eq!(r.source_bytes, std::fs::metadata(&q).unwrap().len());
}

/// The same with a small buffer: a file and an HTTP object with ranges read the data again
/// by position (the file with no buffer, HTTP past it), with a checksum over the stream.
#[tokio::test]
async fn data_before_tables_read_again_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let q = data_before_tables(dir.path(), 12);
    let want = dir.path().join("want.raw");
    qemu_raw_file(&q, None, &want);
    let budget = MIB;

    let out = dir.path().join("file.raw");
    let mut o = options(SourceSpec::File(q.clone()), &out);
    o.reorder_budget = budget;
    o.checksum = Some(sha256(&q).parse().unwrap());
    import(o).await.unwrap();
    assert_same_file(&out, &want, "from its file, 1 MiB buffer");

    let server = FileServer::start(
        std::fs::read(&q).unwrap(),
        Behaviour {
            ranges: true,
            etag: Some("\"v1\"".into()),
            ..Default::default()
        },
    )
    .await;
    let out = dir.path().join("http.raw");
    let mut http = HttpOptions::new(server.url().parse().unwrap());
    http.connections = 1;
    let mut o = options(SourceSpec::Http(Box::new(http)), &out);
    o.reorder_budget = budget;
    o.checksum = Some(sha256(&q).parse().unwrap());
    import(o).await.unwrap();
    assert_same_file(&out, &want, "from HTTP with ranges, 1 MiB buffer");
    let ranged = server.seen().iter().filter(|r| r.range_start().is_some()).count();
    assert!(ranged > 0, "no ranged request");

    let out = dir.path().join("stdin.raw");
    let e = import_stdin(&q, &out, Some(budget)).unwrap_err();
    assert!(e.contains("--reorder-buffer") && e.contains("1 MiB"), "{e}");
    assert!(!out.exists());
    import_stdin(&q, &out, Some(16 * MIB)).unwrap();
    assert_same_file(&out, &want, "from stdin, 16 MiB buffer");
}

/// The 64 MiB VHDX with 1 MiB of data made in `dir`, and the same after a write whose log
/// entry reached the log but was never replayed (the VHDX header names the log's GUID):
/// qemu-io through blkdebug, the n-th flush failing. qemu flushes after writing the log
/// entry and before replaying it; the flushes before that one differ between versions, so
/// n counts up until `qemu-img convert` refuses the image for its log.
fn dirty_vhdx(dir: &Path) -> (PathBuf, PathBuf) {
    let clean = dir.join("clean.vhdx");
    run("qemu-img", &["create", "-q", "-f", "vhdx", s(&clean), "64M"]);
    run("qemu-io", &["-c", "write -P 0x5a 0 1M", s(&clean)]);
    let dirty = dir.join("dirty.vhdx");
    for n in 1..=8u32 {
        std::fs::copy(&clean, &dirty).unwrap();
        let set_state: Vec<String> = (1..n)
            .map(|i| format!(r#"{{"event":"flush_to_os","state":{i},"new_state":{}}}"#, i + 1))
            .collect();
        let spec = format!(
            r#"json:{{"driver":"vhdx","file":{{"driver":"blkdebug","inject-error":[{{"event":"flush_to_os","state":{n},"errno":5}}],"set-state":[{}],"image":{{"driver":"file","filename":"{}"}}}}}}"#,
            set_state.join(","),
            s(&dirty)
        );
        // The write fails or not, depending on n.
        let _ = Command::new("qemu-io")
            .args(["-c", "write -P 0x77 8M 1M", &spec])
            .output()
            .unwrap();
        let out = Command::new("qemu-img")
            .args(["convert", "-O", "raw", s(&dirty), s(&dir.join("refused.raw"))])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stderr).contains("contains a log that needs to be replayed") {
            return (clean, dirty);
        }
    }
    panic!("qemu-io left no VHDX with a log to replay");
}

/// The log entry carrying the header's log GUID: (its file offset, its length).
fn log_entry(image: &[u8]) -> (usize, usize) {
    let le32 = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
    let le64 = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    // The current header: the one with the higher sequence number (both are valid here).
    let h = if le64(64 * 1024 + 8) > le64(128 * 1024 + 8) {
        64 * 1024
    } else {
        128 * 1024
    };
    let guid = &image[h + 48..h + 64];
    assert_ne!(guid, &[0; 16], "the header names no log GUID");
    let (log, len) = (le64(h + 72) as usize, le32(h + 68) as usize);
    let at = (log..log + len)
        .step_by(4096)
        .find(|&o| &image[o..o + 4] == b"loge" && &image[o + 32..o + 48] == guid)
        .expect("a log entry with the header's GUID");
    (at, le32(at + 8) as usize)
}

/// Sets a log entry's CRC-32C (over the whole entry, its checksum field taken as zero).
fn seal_log_entry(image: &mut [u8], at: usize, len: usize) {
    image[at + 4..at + 8].fill(0);
    let crc = crc32c(&image[at..at + len]);
    image[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A VHDX with a log to replay is refused, as `qemu-img convert` refuses it, from a file
/// and from stdin, and no target is left; once replayed (`qemu-img check -r all`) it
/// imports as qemu-img converts it.
#[tokio::test]
async fn vhdx_with_a_log_to_replay_is_refused_as_qemu_img_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, dirty) = dirty_vhdx(dir.path());
    let out = dir.path().join("out.raw");
    let e = import_file(&dirty, &out, None).await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
    let msg = e.to_string();
    for word in [
        "log (GUID ",
        "to replay",
        "sequence number",
        "qemu-img check -r all",
    ] {
        assert!(msg.contains(word), "{word:?} not in: {msg}");
    }
    assert!(!out.exists(), "a failed import leaves no target");
    let e = import_stdin(&dirty, &out, None).unwrap_err();
    assert!(e.starts_with("refused:") && e.contains("to replay"), "{e}");
    assert!(!out.exists(), "a failed import leaves no target");

    run("qemu-img", &["check", "-q", "-r", "all", s(&dirty)]);
    let want = dir.path().join("want.raw");
    qemu_raw_file(&dirty, None, &want);
    import_file(&dirty, &out, None).await.unwrap();
    assert_same_file(&out, &want, "replayed by qemu-img check");
}

/// Log entries that carry the header's GUID but fail qemu's checks (here: a torn data
/// sector, its CRC-32C wrong) are ignored, as qemu ignores them: the image converts.
#[tokio::test]
async fn vhdx_log_entries_that_fail_their_crc_are_ignored_as_qemu_ignores_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, dirty) = dirty_vhdx(dir.path());
    let mut image = std::fs::read(&dirty).unwrap();
    let (at, len) = log_entry(&image);
    image[at + len - 100] ^= 0xff;
    let torn = dir.path().join("torn.vhdx");
    std::fs::write(&torn, &image).unwrap();
    let want = dir.path().join("want.raw");
    qemu_raw_file(&torn, None, &want);
    let out = dir.path().join("out.raw");
    import_file(&torn, &out, None)
        .await
        .unwrap_or_else(|e| panic!("qemu-img converts it: {e}"));
    assert_same_file(&out, &want, "a torn log entry");
}

/// A log entry that passes its CRC but holds a descriptor of no known kind makes qemu
/// fail to open the image; the import fails too, naming the entry and the descriptor.
#[tokio::test]
async fn vhdx_log_entry_with_an_unknown_descriptor_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let (_, dirty) = dirty_vhdx(dir.path());
    let mut image = std::fs::read(&dirty).unwrap();
    let (at, len) = log_entry(&image);
    image[at + 64..at + 68].copy_from_slice(b"xxxx");
    seal_log_entry(&mut image, at, len);
    let bad = dir.path().join("bad.vhdx");
    std::fs::write(&bad, &image).unwrap();
    let q = Command::new("qemu-img")
        .args(["convert", "-O", "raw", s(&bad), s(&dir.path().join("q.raw"))])
        .output()
        .unwrap();
    assert!(!q.status.success(), "qemu-img opens it");
    let out = dir.path().join("out.raw");
    let e = import_file(&bad, &out, None).await.unwrap_err();
    assert_eq!(e.label(), "invalid_image", "{e}");
    assert!(e.to_string().contains("descriptor 0 is invalid"), "{e}");
    assert!(!out.exists());

    // The same entry with its descriptor intact and sealed again is a log to replay.
    image[at + 64..at + 68].copy_from_slice(b"desc");
    seal_log_entry(&mut image, at, len);
    std::fs::write(&bad, &image).unwrap();
    let e = import_file(&bad, &out, None).await.unwrap_err();
    assert_eq!(e.label(), "refused", "{e}");
}
