use super::display::plain_line;
use super::*;
use clap::Parser;
use ido_disk::Report;

/// `ido import`'s arguments, parsed without the rest of the CLI.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ImportArgs,
}

fn parse(args: &[&str]) -> Result<ImportArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("ido-import").chain(args.iter().copied())).map(|c| c.args)
}

#[tokio::test]
async fn imports_a_gzipped_raw_and_checks_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(3u32 << 20))
        .map(|i| if i < (1 << 20) { (i % 253) as u8 } else { 0 })
        .collect();
    std::fs::write(dir.path().join("d.raw"), &data).unwrap();
    let st = std::process::Command::new("gzip")
        .arg(dir.path().join("d.raw"))
        .status()
        .unwrap();
    assert!(st.success());
    let src = dir.path().join("d.raw.gz");
    let out = dir.path().join("out.img");
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());

    let args = parse(&[s, o, "--format", "raw", "--size", "3Mi", "--progress", "none"]).unwrap();
    assert_eq!(import_cmd(args).await.unwrap(), ExitCode::SUCCESS);
    assert!(std::fs::read(&out).unwrap() == data);

    // Too large for the target: a permanent failure (exit 2), nothing left behind.
    std::fs::remove_file(&out).unwrap();
    let args = parse(&[s, o, "--size", "2Mi", "--progress", "none"]).unwrap();
    assert_eq!(import_cmd(args).await.unwrap(), ExitCode::from(EXIT_PERMANENT));
    assert!(!out.exists());

    let args = parse(&[s, o, "--header", "A: b"]).unwrap();
    let e = import_cmd(args).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("--header applies to http(s) and s3 sources only"),
        "{e}"
    );

    for (flag, value, kinds) in [
        ("--s3-endpoint", "http://x", "s3"),
        ("--platform", "linux/arm64", "docker"),
        ("--authfile", "/nonexistent", "docker"),
        ("--connections", "2", "http(s) and s3"),
    ] {
        let args = parse(&[s, o, flag, value]).unwrap();
        let e = import_cmd(args).await.unwrap_err().to_string();
        assert_eq!(e, format!("{flag} applies to {kinds} sources only"));
    }
    let args = parse(&["https://example.invalid/d.img", o, "--platform", "linux/amd64"]).unwrap();
    let e = import_cmd(args).await.unwrap_err().to_string();
    assert!(e.contains("--platform applies to docker"), "{e}");
    assert!(parse(&[s, o, "--connections", "0"]).is_err());
    assert!(
        parse(&[s, o, "--s3-profile", "p"]).is_err(),
        "needs --s3-credentials-file"
    );

    assert!(parse(&[s, o, "--checksum", "sha256:zz"]).is_err());
    assert!(parse(&[s, o, "--format", "qcow3"]).is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("10Gi").unwrap(), 10 << 30);
    assert_eq!(parse_size("4G").unwrap(), 4_000_000_000);
    assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
    assert!(parse_size("3X").is_err());
    assert!(parse_size("Gi").is_err());
}

#[test]
fn plain_lines() {
    let p = Report {
        source_done: 50 << 20,
        source_total: Some(100 << 20),
        written: 1 << 30,
        rate: (10 << 20) as f64,
        eta: Some(std::time::Duration::from_secs(5)),
        ..Report::default()
    };
    assert_eq!(
        plain_line(&p),
        "import: 50.0% 50.0 MiB of 100.0 MiB read, 10.0 MiB/s, 1.0 GiB written, ETA 5s"
    );
    // The DiskImport controller reads these lines back from the importer's log.
    let log = format!("starting\n{}\n", plain_line(&p));
    assert_eq!(
        ido_controllers::diskimport::progress_of(&log).as_deref(),
        Some("50.0%")
    );
}

/// Every importer Job the DiskImport controller builds passes arguments this CLI
/// accepts (the two sides are separate crates; this keeps them in step).
#[test]
fn importer_job_arguments_parse() {
    use ido_api::diskimport::*;
    use ido_controllers::diskimport::{ImporterSettings, importer_job};
    let sources: Vec<serde_json::Value> = vec![
        serde_json::json!({"http": {"url": "https://h.example/d.qcow2", "secretRef": "c", "certConfigMap": "ca",
                           "extraHeaders": ["X-A: b"], "checksum": "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}}),
        serde_json::json!({"s3": {"url": "https://minio.example:9000/images/d.qcow2", "secretRef": "c"}}),
        serde_json::json!({"s3": {"url": "s3://images/d.qcow2"}}),
        serde_json::json!({"registry": {"url": "docker://r.example/disks/fedora:41", "secretRef": "c", "platform": "linux/arm64"}}),
    ];
    for (i, source) in sources.into_iter().enumerate() {
        for (mode, prealloc) in [("Filesystem", true), ("Block", false)] {
            let di: DiskImport = serde_json::from_value(serde_json::json!({
                "apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
                "metadata": {"name": format!("d{i}"), "namespace": "vms"},
                "spec": {"source": source, "storage": {"size": "1Gi", "volumeMode": mode}, "preallocation": prealloc},
            }))
            .unwrap();
            let job = importer_job(&di, &ImporterSettings::default(), 1 << 30, false).expect("a job");
            let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
            let args = c.args.clone().or(c.command.clone()).unwrap();
            let at = args
                .iter()
                .position(|a| a == "import")
                .expect("import subcommand");
            let rest: Vec<&str> = args[at + 1..].iter().map(String::as_str).collect();
            if let Err(e) = parse(&rest) {
                panic!("source {i} ({mode}): {rest:?} does not parse: {e}");
            }
        }
    }
    // Archives: unpacked into the claim's root.
    let archives = [
        serde_json::json!({"http": {"url": "https://h.example/root.tar.xz", "secretRef": "c", "certConfigMap": "ca",
                           "extraHeaders": ["X-A: b"], "checksum": "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}}),
        serde_json::json!({"s3": {"url": "https://minio.example:9000/images/root.tar", "secretRef": "c"}}),
    ];
    for (i, source) in archives.into_iter().enumerate() {
        let di: DiskImport = serde_json::from_value(serde_json::json!({
            "apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
            "metadata": {"name": format!("a{i}"), "namespace": "vms"},
            "spec": {"source": source, "contentType": "archive", "storage": {"size": "1Gi"}, "preallocation": true},
        }))
        .unwrap();
        let job = importer_job(&di, &ImporterSettings::default(), 1 << 30, false).expect("a job");
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        let args = c.args.clone().unwrap();
        let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let parsed = parse(&rest).unwrap_or_else(|e| panic!("archive {i}: {rest:?} does not parse: {e}"));
        assert_eq!(parsed.content_type, super::ContentType::Archive);
        assert_eq!(parsed.target, PathBuf::from("/data"));
    }
}

/// The Jobs of clones and uploads (`ido import --verbatim`, `ido upload-server`, and the
/// sender's `ido clone-send`) pass arguments the CLI accepts, the upload server's own
/// translation to `ido import`'s flags included.
#[test]
fn clone_and_upload_job_arguments_parse() {
    use clap::Parser as _;
    use ido_api::diskimport::*;
    use ido_controllers::diskimport::{ImporterSettings, importer_job, sender_job};
    let settings = ImporterSettings::default();
    let parse_cli = |args: &[String]| {
        crate::cli::Cli::try_parse_from(std::iter::once("ido").chain(args.iter().map(String::as_str)))
            .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"))
    };
    let sources = [
        serde_json::json!({"upload": {"checksum": "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}}),
        serde_json::json!({"pvc": {"name": "fedora"}}),
        serde_json::json!({"pvc": {"namespace": "golden", "name": "fedora"}}),
    ];
    for (i, source) in sources.into_iter().enumerate() {
        for (mode, source_block) in [("Filesystem", false), ("Block", true)] {
            let di: DiskImport = serde_json::from_value(serde_json::json!({
                "apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
                "metadata": {"name": format!("c{i}"), "namespace": "vms", "uid": "u"},
                "spec": {"source": source, "storage": {"size": "1Gi", "volumeMode": mode}},
            }))
            .unwrap();
            let job = importer_job(&di, &settings, 1 << 30, source_block).expect("a job");
            let args = job.spec.unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap();
            match parse_cli(&args).command {
                crate::cli::Command::UploadServer(a) => {
                    let import = crate::upload::server::import_args(&a)
                        .unwrap_or_else(|e| panic!("source {i} ({mode}): {args:?}: {e}"));
                    assert_eq!(import.verbatim, i == 2, "{args:?}");
                }
                crate::cli::Command::Import(a) => assert!(a.verbatim, "{args:?}"),
                _ => panic!("{args:?}"),
            }
            if let Some(sender) = sender_job(
                &di,
                &settings,
                source_block,
                "http://10.0.0.1:8443/v1beta1/upload",
            ) {
                let args = sender.spec.unwrap().template.spec.unwrap().containers[0]
                    .args
                    .clone()
                    .unwrap();
                assert!(
                    matches!(parse_cli(&args).command, crate::cli::Command::CloneSend(_)),
                    "{args:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn unpacks_an_archive_and_checks_flags() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    std::fs::write(tree.join("etc/app/config"), b"key: value\n").unwrap();
    std::os::unix::fs::symlink("app/config", tree.join("etc/config")).unwrap();
    let src = dir.path().join("root.tar.gz");
    let st = std::process::Command::new("tar")
        .args(["-czf", src.to_str().unwrap(), "-C", tree.to_str().unwrap(), "etc"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());

    let args = parse(&[s, o, "--content-type", "archive", "--progress", "none"]).unwrap();
    assert_eq!(import_cmd(args).await.unwrap(), ExitCode::SUCCESS);
    assert_eq!(std::fs::read(out.join("etc/config")).unwrap(), b"key: value\n");
    assert_eq!(
        std::fs::read_link(out.join("etc/config")).unwrap(),
        PathBuf::from("app/config")
    );

    // Again: `etc` is there now, so the archive is refused for good (exit 2), and the
    // directory holds what it held.
    let args = parse(&[s, o, "--content-type", "archive", "--progress", "none"]).unwrap();
    assert_eq!(import_cmd(args).await.unwrap(), ExitCode::from(EXIT_PERMANENT));
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["etc"]);

    for (flag, value) in [
        ("--format", Some("raw")),
        ("--size", Some("1Gi")),
        ("--resume", None),
        ("--force", None),
    ] {
        let mut a = vec![s, o, "--content-type", "archive", flag];
        a.extend(value);
        let e = import_cmd(parse(&a).unwrap()).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{flag} applies to --content-type kubevirt (a disk image) only")
        );
    }
    let e = import_cmd(parse(&[s, o, "--skip-special-files"]).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--skip-special-files applies to --content-type archive only");
    assert!(parse(&[s, o, "--content-type", "zip"]).is_err());
}
