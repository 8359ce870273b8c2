//! Images buildah wrote with the `dir:` transport, pushed by digest with `ido_oci::push` and
//! published under a tag, against a real docker-registry with basic auth; skopeo is the
//! oracle. Skipped (with a message) when buildah is not on PATH (apt: buildah; installed by
//! scripts/setup.sh).

mod common;

use common::{r, side};

use std::path::{Path, PathBuf};

use ido_oci::{
    media,
    push::{BuiltImage, publish, push_dir},
};
use ido_testkit::registry::{DockerRegistry, RegistryOptions, skopeo, skopeo_raw};

/// buildah is a test peer (scripts/setup.sh installs it): its absence fails the test.
fn buildah_installed() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("buildah").is_file()));
    assert!(
        on_path,
        "buildah is not on PATH (apt: buildah; scripts/setup.sh installs it)"
    );
}

async fn registry() -> DockerRegistry {
    DockerRegistry::start(RegistryOptions {
        auth: Some(("user".into(), "pass".into())),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `buildah build` of `FROM scratch` + `COPY hello.txt /hello.txt` for `linux/ARCH` in
/// `format` (oci, docker), written with the `dir:` transport; its directory. Storage,
/// HOME and XDG_RUNTIME_DIR are under `work`.
async fn build(work: &Path, arch: &str, format: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let ctx = work.join("ctx");
    for d in [&ctx, &work.join("home"), &work.join("xdg")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .unwrap();
    }
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    let out = work.join(format!("out-{format}-{arch}"));
    let p = |d: &str| work.join(d).display().to_string();
    let args = [
        "--root".into(),
        p("root"),
        "--runroot".into(),
        p("runroot"),
        "--storage-driver".into(),
        "vfs".into(),
        "build".into(),
        "--isolation".into(),
        "chroot".into(),
        "--disable-compression=false".into(),
        "--format".into(),
        format.into(),
        "--platform".into(),
        format!("linux/{arch}"),
        "-f".into(),
        ctx.join("Dockerfile").display().to_string(),
        "-t".into(),
        format!("dir:{}", out.display()),
        ctx.display().to_string(),
    ];
    let o = tokio::process::Command::new("buildah")
        .args(&args)
        .env("HOME", work.join("home"))
        .env("XDG_RUNTIME_DIR", work.join("xdg"))
        .output()
        .await
        .unwrap();
    assert!(
        o.status.success(),
        "buildah {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The tags of `repo` (none when the registry knows no tag of it).
async fn tags(reg: &DockerRegistry, repo: &str) -> Vec<String> {
    let (u, p) = reg.credentials().unwrap();
    let res = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/tags/list", reg.base_url()))
        .basic_auth(u, Some(p))
        .send()
        .await
        .unwrap();
    if res.status() == reqwest::StatusCode::NOT_FOUND {
        return vec![];
    }
    let v: serde_json::Value = res.error_for_status().unwrap().json().await.unwrap();
    serde_json::from_value(v["tags"].clone()).unwrap_or_default()
}

/// The registry's access log lines that put a manifest of `repo`.
fn manifest_puts(reg: &DockerRegistry, repo: &str) -> usize {
    let log = std::fs::read_to_string(reg.log_path()).unwrap_or_default();
    let needle = format!("\"PUT /v2/{repo}/manifests/");
    log.lines().filter(|l| l.contains(&needle)).count()
}

fn layers(dir: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn push_by_digest_then_publish_an_index() {
    buildah_installed();
    let reg = registry().await;
    let dst = side(&reg).await;
    let work = tempfile::tempdir().unwrap();
    let repo = r(reg.host(), "demo/app");

    let mut images: Vec<BuiltImage> = vec![];
    for arch in ["amd64", "arm64"] {
        let out = build(work.path(), arch, "oci").await;
        let manifest = std::fs::read(out.join("manifest.json")).unwrap();
        let image = push_dir(&out, &dst, &repo).await.unwrap();
        assert_eq!(image.digest, media::sha256(&manifest));
        assert_eq!(image.size, manifest.len() as u64);
        assert_eq!(image.media_type, media::OCI_MANIFEST);
        assert_eq!(image.platform.to_string(), format!("linux/{arch}"));
        let (raw, digest) = skopeo_raw(&reg, &format!("demo/app@{}", image.digest), work.path())
            .await
            .unwrap();
        assert_eq!((raw, digest), (manifest, image.digest.clone()));
        // Pushed again: the blobs are there, the manifest the same.
        assert_eq!(push_dir(&out, &dst, &repo).await.unwrap(), image);
        images.push(image);
    }
    assert_ne!(images[0].digest, images[1].digest);
    assert!(
        tags(&reg, "demo/app").await.is_empty(),
        "pushed by digest: no tag"
    );

    let tag = r(reg.host(), "demo/app:v1");
    let digest = publish(&dst, &tag, &images).await.unwrap();
    let (raw, seen) = skopeo_raw(&reg, "demo/app:v1", work.path()).await.unwrap();
    assert_eq!(seen, digest);
    assert_eq!(raw, ido_oci::push::index(&images).0);
    let mut args = vec!["inspect".to_string(), "--override-arch".into(), "arm64".into()];
    args.extend(reg.skopeo_flags("", work.path()).unwrap());
    args.push(format!("docker://{}/demo/app:v1", reg.host()));
    let inspected: serde_json::Value = serde_json::from_slice(&skopeo(&args).await.unwrap()).unwrap();
    assert_eq!(inspected["Architecture"], "arm64");
    // skopeo gives the digest of what the tag names (the index), and arm64's layer.
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(tags(&reg, "demo/app").await, ["v1"]);

    // Published again: the tag names the index already, nothing is put.
    let puts = manifest_puts(&reg, "demo/app");
    assert!(puts >= 5, "two images twice and the index: {puts}");
    assert_eq!(publish(&dst, &tag, &images).await.unwrap(), digest);
    assert_eq!(manifest_puts(&reg, "demo/app"), puts);
}

#[tokio::test]
async fn push_docker_format_and_publish_one_image() {
    buildah_installed();
    let reg = registry().await;
    let dst = side(&reg).await;
    let work = tempfile::tempdir().unwrap();
    let repo = r(reg.host(), "demo/docker");
    let mut images = vec![];
    for arch in ["amd64", "arm64"] {
        let out = build(work.path(), arch, "docker").await;
        images.push(push_dir(&out, &dst, &repo).await.unwrap());
    }
    assert!(images.iter().all(|i| i.media_type == media::DOCKER_MANIFEST));

    let digest = publish(&dst, &r(reg.host(), "demo/docker:both"), &images)
        .await
        .unwrap();
    let (raw, seen) = skopeo_raw(&reg, "demo/docker:both", work.path()).await.unwrap();
    assert_eq!(seen, digest);
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["mediaType"], media::DOCKER_LIST);

    // One image: the tag names its manifest, no index.
    let one = publish(&dst, &r(reg.host(), "demo/docker:one"), &images[1..])
        .await
        .unwrap();
    assert_eq!(one, images[1].digest);
    let (raw, seen) = skopeo_raw(&reg, "demo/docker:one", work.path()).await.unwrap();
    assert_eq!(seen, images[1].digest);
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["mediaType"], media::DOCKER_MANIFEST);
    let mut listed = tags(&reg, "demo/docker").await;
    listed.sort();
    assert_eq!(listed, ["both", "one"]);
}

#[tokio::test]
async fn push_refuses_bad_directories_by_name() {
    buildah_installed();
    let reg = registry().await;
    let dst = side(&reg).await;
    let work = tempfile::tempdir().unwrap();
    let good = build(work.path(), "amd64", "oci").await;
    let copy = |name: &str| {
        let to = work.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let layer = layers(&good)[0].clone();
    let hex = layer.strip_prefix("sha256:").unwrap();

    // A layer whose bytes do not match its name (same size): refused, and never committed.
    let bad = copy("corrupt");
    let mut bytes = std::fs::read(bad.join(hex)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(bad.join(hex), &bytes).unwrap();
    let e = push_dir(&bad, &dst, &r(reg.host(), "demo/bad"))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("refused: {e}");
    assert!(
        e.contains(&bad.join(hex).display().to_string())
            && e.contains(&layer)
            && e.contains("digest mismatch"),
        "{e}"
    );
    let (u, p) = reg.credentials().unwrap();
    let head = reqwest::Client::new()
        .head(format!("{}/v2/demo/bad/blobs/{layer}", reg.base_url()))
        .basic_auth(u, Some(p))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), reqwest::StatusCode::NOT_FOUND);

    // A manifest naming a missing blob.
    let missing = copy("missing-blob");
    std::fs::remove_file(missing.join(hex)).unwrap();
    let e = push_dir(&missing, &dst, &r(reg.host(), "demo/bad"))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("refused: {e}");
    assert!(
        e.contains(&layer) && e.contains("manifest.json") && e.contains("missing"),
        "{e}"
    );

    // No manifest.json.
    let empty = copy("no-manifest");
    std::fs::remove_file(empty.join("manifest.json")).unwrap();
    let e = push_dir(&empty, &dst, &r(reg.host(), "demo/bad"))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("refused: {e}");
    assert!(
        e.contains(&empty.join("manifest.json").display().to_string()) && e.contains("missing"),
        "{e}"
    );

    assert!(tags(&reg, "demo/bad").await.is_empty());
    assert_eq!(manifest_puts(&reg, "demo/bad"), 0);
}
