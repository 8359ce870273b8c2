//! `ido import` end to end: the binary against a local HTTP server with a cut, stdin, and
//! a refused image; qemu-img is the oracle. (Fixtures and the server are shared with the
//! `ido-disk` tests.)

#[path = "../../disk/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Stdio;

use common::http_server::{Behaviour, FileServer};
use common::*;

async fn ido(args: &[&str], stdin: Option<&Path>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"));
    cmd.arg("import")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("IDO_LOG");
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    cmd.output().await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn qcow2_xz_over_http_with_a_cut_equals_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = write_raw(d);
    let q = d.join("image.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    let oracle = qemu_raw(&q, d);
    sh(&format!("xz -T2 --block-size=2MiB -1 -k {}", q.display()));
    let xz = d.join("image.qcow2.xz");
    let sum = sha256(&xz);
    let data = std::fs::read(&xz).unwrap();
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            cut_at: Some(data.len() as u64 / 2),
            ..Default::default()
        },
    )
    .await;
    let out = d.join("out.raw");
    let o = ido(&[&server.url(), out.to_str().unwrap(), "--checksum", &sum], None).await;
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("imported qcow2 (xz)"), "{err}");
    assert!(err.contains("verified"), "{err}");
    assert_same(
        &std::fs::read(&out).unwrap(),
        &oracle,
        "ido import vs qemu-img convert",
    );
    assert_sparse(&out);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].range_start().unwrap() > 0);
}

#[tokio::test]
async fn stdin_zstd_raw() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = write_raw(d);
    sh(&format!(
        "zstd -q -3 -c {} > {}/d.zst",
        raw.display(),
        d.display()
    ));
    let out = d.join("out.img");
    let o = ido(
        &["-", out.to_str().unwrap(), "--size", "1Gi"],
        Some(&d.join("d.zst")),
    )
    .await;
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("imported raw (zstd)"), "{err}");
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "stdin import");
    assert_sparse(&out);
}

/// A disk whose bytes happen to be a compressed stream (or a tar, or a qcow2) is copied as
/// it is with `--verbatim`, as a clone's must be (detection would decompress it).
#[tokio::test]
async fn verbatim_copies_a_compressed_looking_disk_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = write_raw(d);
    sh(&format!(
        "zstd -q -3 -c {} > {}/d.zst && truncate -s 64M {}/d.zst",
        raw.display(),
        d.display(),
        d.display()
    ));
    let disk = d.join("d.zst");
    let out = d.join("out.img");
    let o = ido(
        &[disk.to_str().unwrap(), out.to_str().unwrap(), "--verbatim"],
        None,
    )
    .await;
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_same(
        &std::fs::read(&out).unwrap(),
        &std::fs::read(&disk).unwrap(),
        "verbatim",
    );
    assert_sparse(&out);
    let peeled = d.join("peeled.img");
    let o = ido(
        &[
            disk.to_str().unwrap(),
            peeled.to_str().unwrap(),
            "--verbatim",
            "--format",
            "raw",
        ],
        None,
    )
    .await;
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--format"), "{}", text(&o.stderr));
}

#[tokio::test]
async fn a_long_window_zstd_needs_the_flag_and_leaves_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = write_raw(d);
    // Through a pipe the zstd CLI does not know the size, so the frame keeps its 256 MiB
    // window.
    sh(&format!(
        "cat {} | zstd -q -1 --long=28 -c > {}/long.raw.zst",
        raw.display(),
        d.display()
    ));
    let src = d.join("long.raw.zst");
    let out = d.join("out.img");
    let o = ido(&[src.to_str().unwrap(), out.to_str().unwrap()], None).await;
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--zstd-window-log"), "{err}");
    assert!(!out.exists(), "a refused import leaves no target");
    let o = ido(
        &[
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--zstd-window-log",
            "28",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_same(&std::fs::read(&out).unwrap(), &raw_image(), "--long=28 import");
}

#[tokio::test]
async fn a_backing_file_fails_with_a_clear_message_and_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, child) = (d.join("base.qcow2"), d.join("child.qcow2"));
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            child.to_str().unwrap(),
        ],
    );
    let out = d.join("out.img");
    let o = ido(&[child.to_str().unwrap(), out.to_str().unwrap()], None).await;
    let err = text(&o.stderr);
    // A permanent failure: exit 2, so an importer Job fails at once instead of retrying.
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing qcow2 image: it has a backing file"),
        "{err}"
    );
    assert!(!out.exists());
}

/// The flags a DiskImport's importer Job passes: credentials from mounted Secret files,
/// an extra header, the claim's size, plain progress, preallocation.
#[tokio::test]
async fn importer_job_flags_secret_files_and_preallocation() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = std::fs::read(write_raw(d)).unwrap();
    let creds = d.join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("accessKeyId"), "importer\n").unwrap();
    std::fs::write(creds.join("secretKey"), "s3cr3t-pw\n").unwrap();
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            // base64("importer:s3cr3t-pw")
            authorization: Some("Basic aW1wb3J0ZXI6czNjcjN0LXB3".into()),
            required_header: Some(("x-team".into(), "disks".into())),
            ..Default::default()
        },
    )
    .await;
    let out = d.join("disk.img");
    let (user, pw) = (creds.join("accessKeyId"), creds.join("secretKey"));
    let o = ido(
        &[
            &server.url(),
            out.to_str().unwrap(),
            "--username-file",
            user.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
            "--header",
            "X-Team: disks",
            "--size",
            "1073741824",
            "--progress",
            "plain",
            "--preallocate",
        ],
        None,
    )
    .await;
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    assert_same(&std::fs::read(&out).unwrap(), &data, "preallocated import");
    let m = std::fs::metadata(&out).unwrap();
    assert!(
        m.blocks() * 512 >= m.len(),
        "preallocated: {} bytes used for {}",
        m.blocks() * 512,
        m.len()
    );

    // The same without the password: 401, a permanent failure, no target left.
    let out2 = d.join("denied.img");
    let o = ido(
        &[
            &server.url(),
            out2.to_str().unwrap(),
            "--username-file",
            user.to_str().unwrap(),
            "--header",
            "X-Team: disks",
        ],
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(!out2.exists());

    // A CA directory without certificates is refused, naming the flag.
    let o = ido(
        &[
            &server.url(),
            out2.to_str().unwrap(),
            "--ca-dir",
            creds.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--ca-dir") && err.contains("no PEM certificate"),
        "{err}"
    );
}

/// A restarted importer: the first `ido import --resume` is SIGKILLed mid-way (as a pod
/// on a failed node); the second run with the same arguments continues from the last
/// periodic checkpoint and the checksum still covers every byte.
#[tokio::test]
async fn a_killed_import_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = write_raw(d);
    let sum = sha256(&raw);
    let data = std::fs::read(&raw).unwrap();
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            etag: Some("\"disk-v1\"".into()),
            rate: Some(24 << 20),
            ..Default::default()
        },
    )
    .await;
    let out = d.join("disk.img");
    let record = d.join("disk.img.ido-resume");
    let checksum = format!("--checksum={sum}");
    let args = [
        server.url(),
        out.display().to_string(),
        "--resume".into(),
        "--checkpoint-every".into(),
        "2Mi".into(),
        "--connections".into(),
        "1".into(),
        checksum,
        "--progress".into(),
        "none".into(),
    ];
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("import")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let offset_of = || -> u64 {
        std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["offset"].as_u64())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while offset_of() < 8 << 20 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint past 8 MiB");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let at = offset_of();
    assert!(at < data.len() as u64, "killed before the end");

    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = ido(&argv, None).await;
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resumed at"), "{err}");
    assert!(err.contains("verified"), "{err}");
    assert_same(&std::fs::read(&out).unwrap(), &data, "resumed after a kill");
    assert!(!record.exists());
    let seen = server.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        last.range_start(),
        Some(at),
        "the second run continues at the checkpoint: {seen:?}"
    );
    assert_eq!(last.header("if-range"), Some("\"disk-v1\""));
}

/// Bad input gets a clear error and no target: an empty source, content that contradicts
/// its name (unless `--format` says so), and credentials in a source are never echoed.
#[tokio::test]
async fn empty_misnamed_and_credentialed_sources_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let target = d.join("disk.img");
    let target_s = target.display().to_string();

    let empty = d.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = ido(&["-", &target_s], Some(&empty)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the source is empty (0 bytes)"),
        "{}",
        text(&out.stderr)
    );
    assert!(!target.exists(), "an empty source left a target");

    let garbage = d.join("node.ova");
    std::fs::write(&garbage, vec![0x5au8; 70_000]).unwrap();
    let out = ido(&[&garbage.display().to_string(), &target_s], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("node.ova is named like ova but its content is raw") && err.contains("--format raw"),
        "{err}"
    );
    assert!(!target.exists());
    let out = ido(
        &["--format", "raw", &garbage.display().to_string(), &target_s],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&garbage).unwrap());
    std::fs::remove_file(&target).unwrap();

    // An existing target is never overwritten without --force, and a failed import
    // leaves it as it was (the import did not create it).
    std::fs::write(&target, b"precious").unwrap();
    let out = ido(
        &[&garbage.display().to_string(), &target_s, "--format", "raw"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exists; pass --force to replace it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    let out = ido(&["-", &target_s, "--force"], Some(&empty)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"precious",
        "a refused source touched the target"
    );
    let out = ido(
        &[
            &garbage.display().to_string(),
            &target_s,
            "--format",
            "raw",
            "--force",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&garbage).unwrap());
    std::fs::remove_file(&target).unwrap();

    for source in [
        "https://user:hunter2-pw@bad host/disk.qcow2?X-Amz-Signature=hunter2-sig",
        "s3://AKIAHUNTER2:hunter2-pw@bucket_x/k?sig=hunter2-sig",
    ] {
        let out = ido(&[source, &target_s], None).await;
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("invalid source"), "{all}");
        assert!(!all.contains("hunter2"), "a credential was echoed: {all}");
        assert!(!target.exists());
    }
}

/// What another try cannot change fails at once as permanent (exit 2) with its cause:
/// nothing listening on the port, TLS spoken to a plain-HTTP server, a target name too long.
#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let target_s = target.display().to_string();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap();
    // A plain-HTTP answer to whatever comes (a TLS client hello, here).
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in plain.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    for (source, cause) in [
        (format!("http://{closed}/d.raw"), "connection refused"),
        (format!("https://{plain_addr}/d.raw"), "TLS failed"),
    ] {
        let started = std::time::Instant::now();
        let out = ido(&[&source, &target_s], None).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{source}: {err}");
        assert!(err.contains(cause), "{source}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{source} was retried: {err}"
        );
        assert!(!target.exists());
    }
    let long = dir.path().join("x".repeat(300));
    let src = dir.path().join("d.raw");
    std::fs::write(&src, vec![1u8; 4096]).unwrap();
    let out = ido(&[&src.display().to_string(), &long.display().to_string()], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// SIGTERM in the middle of an import: the partial target is removed (it is kept, with its
/// checkpoint, under --resume, and a later run finishes it), and the exit status is 143.
/// SIGINT is 130.
#[tokio::test]
async fn a_signal_stops_an_import_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = write_raw(d);
    let data = std::fs::read(&raw).unwrap();
    let server = FileServer::start(
        data.clone(),
        Behaviour {
            ranges: true,
            etag: Some("\"v1\"".into()),
            rate: Some(8 << 20),
            ..Default::default()
        },
    )
    .await;
    let out = d.join("disk.img");
    let record = d.join("disk.img.ido-resume");
    for (sig, code, resume) in [("TERM", 143, false), ("INT", 130, false), ("TERM", 143, true)] {
        let url = server.url();
        let mut args = vec![
            url.as_str(),
            out.to_str().unwrap(),
            "--connections",
            "1",
            "--progress",
            "none",
        ];
        if resume {
            args.extend(["--resume", "--checkpoint-every", "1Mi"]);
        }
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
            .arg("import")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(&out).map_or(0, |m| m.len()) < 2 << 20 && !record.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the import never started writing"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Mid-way (the server sends 8 MiB/s of a larger image).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        signal(child.id().unwrap(), sig);
        let o = child.wait_with_output().await.unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "SIG{sig}: {err}");
        assert!(err.contains(&format!("SIG{sig}: stopping")), "{err}");
        if resume {
            assert!(
                out.exists() && record.exists(),
                "--resume keeps the target and checkpoint: {err}"
            );
        } else {
            assert!(!out.exists(), "SIG{sig} left the partial target: {err}");
        }
    }
    // The kept target is finished by the same command.
    let url = server.url();
    let o = ido(
        &[&url, out.to_str().unwrap(), "--connections", "1", "--resume"],
        None,
    )
    .await;
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resumed at"), "{err}");
    assert_same(&std::fs::read(&out).unwrap(), &data, "resumed after SIGTERM");
}

/// A second signal exits at once, even when the clean-up would wait (here for a read from a
/// stdin that never ends).
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.img");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(["import", "-", out.to_str().unwrap(), "--progress", "none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let pid = child.id().unwrap();
    signal(pid, "INT");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still cleaning up after one signal"
    );
    let t = std::time::Instant::now();
    signal(pid, "INT");
    let o = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("exited within 5 s of the second signal")
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("exiting at once"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

/// `ido import blank:`: a sparse disk of --size, allocated with --preallocate; without
/// --size it is refused naming the flag, and an existing file is kept unless --force.
#[tokio::test]
async fn blank_disks_are_sparse_or_preallocated() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sparse = d.join("sparse.img");
    let o = ido(&["blank:", sparse.to_str().unwrap(), "--size", "16Mi"], None).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = std::fs::metadata(&sparse).unwrap();
    assert_eq!(m.len(), 16 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "sparse: {} bytes used",
        m.blocks() * 512
    );
    let full = d.join("full.img");
    let o = ido(
        &[
            "blank:",
            full.to_str().unwrap(),
            "--size",
            "16Mi",
            "--preallocate",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::metadata(&full).unwrap().blocks() * 512 >= 16 << 20);
    assert!(std::fs::read(&full).unwrap().iter().all(|b| *b == 0));

    let o = ido(&["blank:", d.join("none.img").to_str().unwrap()], None).await;
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--size"), "{}", text(&o.stderr));
    assert!(!d.join("none.img").exists());
    let o = ido(&["blank:", sparse.to_str().unwrap(), "--size", "1Mi"], None).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 16 << 20, "kept");
}
