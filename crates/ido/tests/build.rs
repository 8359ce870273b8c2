//! `ido build`: buildah (the distribution's package) really builds small images, `FROM
//! scratch` with a COPY from the context and a multi-stage one with a build argument, for
//! amd64 and (a cross build, no emulation) arm64; a failing build reports buildah's error.

use std::path::Path;

fn ido(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("build")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("IDO_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn context(d: &Path) -> std::path::PathBuf {
    let ctx = d.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello from the context\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Multi.Dockerfile"),
        "FROM scratch AS files\nARG GREETING=hi\nCOPY hello.txt /a/${GREETING}.txt\nFROM scratch\nCOPY --from=files /a/ /greetings/\n",
    )
    .unwrap();
    ctx
}

/// The `dir:` layout's config (architecture, os) and the files of its one layer.
fn inspect(dir: &Path) -> (serde_json::Value, Vec<String>) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let blob = |d: &serde_json::Value| {
        let hex = d["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        dir.join(hex)
    };
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest["config"])).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let out = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(blob(&layers[0]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = text(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    (config, files)
}

fn buildah_installed() {
    let ok = std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "buildah is not installed (scripts/setup.sh installs it)");
}

#[test]
fn scratch_and_multi_stage_images_build_for_two_architectures() {
    buildah_installed();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctx = context(d);
    let work = d.join("work");
    let o = ido(&[
        ctx.to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--work-dir",
        work.to_str().unwrap(),
    ]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    for arch in ["amd64", "arm64"] {
        let layout = work.join(format!("out-linux-{arch}"));
        let manifest = std::fs::read(layout.join("manifest.json")).unwrap();
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        assert!(
            out.contains(&format!("linux/{arch} {digest} in {}", layout.display())),
            "{out}"
        );
        let (config, files) = inspect(&layout);
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("linux"), Some(arch))
        );
        assert_eq!(files, ["hello.txt"], "{arch}");
    }

    // Multi-stage, with a build argument.
    let o = ido(&[
        ctx.to_str().unwrap(),
        "-f",
        ctx.join("Multi.Dockerfile").to_str().unwrap(),
        "--build-arg",
        "GREETING=hallo",
        "--platform",
        "linux/amd64",
        "--work-dir",
        work.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (_, files) = inspect(&work.join("out-linux-amd64"));
    assert!(files.iter().any(|f| f == "greetings/hallo.txt"), "{files:?}");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn a_failing_build_reports_buildahs_error_and_bad_flags_are_named() {
    buildah_installed();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctx = context(d);
    std::fs::write(
        ctx.join("Broken.Dockerfile"),
        "FROM scratch\nCOPY missing.txt /x\n",
    )
    .unwrap();
    let o = ido(&[
        ctx.to_str().unwrap(),
        "-f",
        ctx.join("Broken.Dockerfile").to_str().unwrap(),
        "--platform",
        "linux/amd64",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("error: the build failed: linux/amd64: ") && err.contains("missing.txt"),
        "{err}"
    );

    let o = ido(&[ctx.to_str().unwrap(), "--build-arg", "1X=y"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("invalid --build-arg name \"1X\""),
        "{}",
        text(&o.stderr)
    );
    let o = ido(&[ctx.to_str().unwrap(), "--platform", "amd64"]);
    assert!(
        text(&o.stderr).contains("invalid --platform \"amd64\""),
        "{}",
        text(&o.stderr)
    );
    let o = ido(&[d.join("nowhere").to_str().unwrap()]);
    assert!(text(&o.stderr).contains("not a directory"), "{}", text(&o.stderr));
}

/// `--tag`: each platform's image pushed by digest, then the index under the tag, to a real
/// docker-registry with basic auth; skopeo reads back the same bytes and the arm64 image.
#[tokio::test]
async fn a_two_architecture_build_is_pushed_as_an_index() {
    use ido_testkit::registry::{DockerRegistry, RegistryOptions, skopeo, skopeo_raw};
    buildah_installed();
    let reg = DockerRegistry::start(RegistryOptions {
        auth: Some(("builder".into(), "s3cr3t-build".into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctx = context(d);
    // skopeo's flags for this registry, as ido build's (the same authfile).
    let flags: Vec<String> = reg
        .skopeo_flags("", d)
        .unwrap()
        .into_iter()
        .map(|f| {
            f.replace("--tls-verify=", "--dest-tls-verify=")
                .replace("--cert-dir=", "--dest-cert-dir=")
        })
        .collect();
    let tag = format!("docker://{}/team/hello:1.0", reg.host());
    let digest_file = d.join("digest");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("build")
        .arg(&ctx)
        .args([
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/arm64",
            "--tag",
            &tag,
        ])
        .args(&flags)
        .arg("--digest-file")
        .arg(&digest_file)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"));
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    assert!(
        out.contains(&format!("{}/team/hello:1.0@{digest}", reg.host())),
        "{out}"
    );
    let (raw, seen) = skopeo_raw(&reg, "team/hello:1.0", d).await.unwrap();
    assert_eq!(seen, digest);
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");
    let mut args = vec!["inspect".to_string(), "--override-arch".into(), "arm64".into()];
    args.extend(reg.skopeo_flags("", d).unwrap());
    args.push(format!("docker://{}/team/hello:1.0", reg.host()));
    let inspected: serde_json::Value = serde_json::from_slice(&skopeo(&args).await.unwrap()).unwrap();
    assert_eq!(inspected["Architecture"], "arm64");

    // Without credentials (an authfile naming none) the registry refuses the push (401), and
    // the error names it.
    let none = d.join("none.json");
    std::fs::write(&none, r#"{"auths": {}}"#).unwrap();
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .arg("build")
        .arg(&ctx)
        .args([
            "--platform",
            "linux/amd64",
            "--tag",
            &format!("docker://{}/team/other:1", reg.host()),
        ])
        .args(["--dest-tls-verify=false", "--authfile"])
        .arg(&none)
        .output()
        .await
        .unwrap();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(reg.host()), "{err}");
}
