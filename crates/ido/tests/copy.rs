//! `ido copy` with skopeo's flags, against real registries; skopeo is the oracle.

use ido_testkit::{
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};

fn ido(args: &[String]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn copy_all_of_a_multi_arch_image_preserves_digests() {
    let a = DockerRegistry::start(Default::default()).await.unwrap();
    let opts = RegistryOptions {
        tls: true,
        auth: Some(("u1".into(), "copy-test-pw".into())),
    };
    let b = DockerRegistry::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        &dir.path().join("l"),
        "1.0",
        &["linux/amd64", "linux/arm64"],
        2,
        80_000,
        7,
    )
    .await
    .unwrap();
    push_layout(&layout, &a, "base:1.0").await.unwrap();
    let auth = dir.path().join("auth.json");
    b.write_authfile(&auth).unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&b.ca().unwrap().ca_cert, certs.join("ca.crt")).unwrap();

    let args: Vec<String> = [
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-cert-dir",
        certs.to_str().unwrap(),
        "--authfile",
        auth.to_str().unwrap(),
        &format!("docker://{}/base:1.0", a.host()),
        &format!("docker://{}/mirror/base:1.0", b.host()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = ido(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, src) = skopeo_raw(&a, "base:1.0", dir.path()).await.unwrap();
    let (_, dst) = skopeo_raw(&b, "mirror/base:1.0", dir.path()).await.unwrap();
    assert_eq!(src, dst);
    assert!(stdout.contains(&src), "{stdout}");
    assert!(!stdout.contains("copy-test-pw"));

    // Again: nothing to copy.
    let out = ido(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to copy"));

    // Without the CA the destination's certificate is refused (verification is on by default).
    let mut no_ca = args.clone();
    no_ca.drain(3..5);
    let out = ido(&no_ca);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");

    // Other transports are refused clearly.
    let out = ido(&["copy".into(), "oci:/tmp/x".into(), format!("{}/x:1", b.host())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SRC"));
}
