//! `ido tags` and `ido sync` against real registries (credentials, the test kit's CA from a
//! ConfigMap);
//! skopeo is the oracle for what lands at the destination.

use std::{collections::BTreeMap, path::Path, process::Output};

use ido_testkit::{
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};

const SRC_PW: &str = "cli-src-pw-31337";
const DST_PW: &str = "cli-dst-pw-27182";

fn ido(args: &[&str]) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
        .args(args)
        .env("IDO_LOG", "debug")
        .env("REGISTRY_AUTH_FILE", "/nonexistent")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(SRC_PW) && !all.contains(DST_PW),
        "a password leaked: {all}"
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn push_tags(reg: &DockerRegistry, repo: &str, tags: &[&str], dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, tag) in tags.iter().enumerate() {
        let layout = build_layout(
            &dir.join(format!("l-{tag}")),
            tag,
            &["linux/amd64"],
            1,
            3000,
            40 + i as u64,
        )
        .await
        .unwrap();
        push_layout(&layout, reg, &format!("{repo}:{tag}")).await.unwrap();
        out.insert(tag.to_string(), layout.digest);
    }
    out
}

/// `reg`'s CA in a skopeo-style cert dir.
fn cert_dir(reg: &DockerRegistry, dir: &Path) -> String {
    let d = dir.join("certs");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(&reg.ca().unwrap().ca_cert, d.join("ca.crt")).unwrap();
    d.display().to_string()
}

#[tokio::test]
async fn tags_lists_matching_tags_in_version_order() {
    let reg = DockerRegistry::start(RegistryOptions {
        tls: true,
        auth: Some(("reader".into(), SRC_PW.into())),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    push_tags(
        &reg,
        "org/app",
        &["2.9.0", "2.13.10", "2.13.2", "2.13.3-rc.1", "2.14.0", "latest"],
        dir.path(),
    )
    .await;
    let auth = dir.path().join("auth.json");
    reg.write_authfile(&auth).unwrap();
    let certs = cert_dir(&reg, dir.path());
    let repo = format!("docker://{}/org/app", reg.host());
    let base = ["tags", repo.as_str(), "--authfile", auth.to_str().unwrap()];

    let mut args = base.to_vec();
    args.extend(["--cert-dir", &certs, "--pattern", "2.13.x"]);
    let out = ido(&args);
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(stdout(&out), "2.13.2\n2.13.10\n", "numeric order, rc excluded");

    args.push("--rc");
    assert_eq!(stdout(&ido(&args)), "2.13.2\n2.13.3-rc.1\n2.13.10\n");

    // No pattern: every tag; without the docker:// prefix; unverified TLS allowed when asked.
    let bare = format!("{}/org/app", reg.host());
    let out = ido(&[
        "tags",
        &bare,
        "--authfile",
        auth.to_str().unwrap(),
        "--tls-verify=false",
    ]);
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(
        stdout(&out),
        "latest\n2.9.0\n2.13.2\n2.13.3-rc.1\n2.13.10\n2.14.0\n"
    );

    // Verification is on by default: without the CA the certificate is refused.
    let out = ido(&base);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        explain(&out)
    );
    // A tag in REPO or a bad pattern: clear errors.
    let out = ido(&["tags", &format!("{bare}:1.0")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--pattern"));
    let out = ido(&["tags", &bare, "--pattern", "regex:("]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("tag pattern"));
}

fn manifest(src: &DockerRegistry, dst: &DockerRegistry, src_secret: &str, dir: &Path) -> String {
    let cfg = |host: &str, user: &str, pw: &str| {
        serde_json::json!({"auths": {host: {"username": user, "password": pw}}}).to_string()
    };
    let ca = dst.ca().unwrap().ca_pem();
    let ca_indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    let text = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: src-creds}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{src_cfg}'
---
apiVersion: v1
kind: Secret
metadata: {{name: dst-creds}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{dst_cfg}'
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: dst-ca}}
data:
  ca.crt: |
{ca_indented}---
apiVersion: ido.dev/v1alpha1
kind: ImageSync
metadata: {{name: app}}
spec:
  mode: OnceByTag
  source:
    name: docker://{src}/org/app
    version: 1.4.x
    secretRef: {{name: {src_secret}}}
    tlsVerify: false
  destination:
    name: {dst}/mirror/app
    version: 1.4.x
    secretRef: {{name: dst-creds}}
    certConfigMap: dst-ca
"#,
        src_cfg = cfg(src.host(), "puller", SRC_PW),
        dst_cfg = cfg(dst.host(), "pusher", DST_PW),
        src = src.host(),
        dst = dst.host(),
    );
    let path = dir.join(format!("sync-{src_secret}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn sync_applies_manifests_once_and_reports_each_tag() {
    let (src, dst) = tokio::join!(
        DockerRegistry::start(RegistryOptions {
            tls: false,
            auth: Some(("puller".into(), SRC_PW.into())),
        }),
        DockerRegistry::start(RegistryOptions {
            tls: true,
            auth: Some(("pusher".into(), DST_PW.into())),
        })
    );
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let digests = push_tags(&src, "org/app", &["1.4.0", "1.4.1", "1.5.0"], dir.path()).await;
    let file = manifest(&src, &dst, "src-creds", dir.path());

    let out = ido(&["sync", "-f", &file]);
    assert!(out.status.success(), "{}", explain(&out));
    let text = stdout(&out);
    eprintln!("{text}");
    assert!(
        text.contains("default/app (OnceByTag") && text.contains("Ready Synced"),
        "{text}"
    );
    for tag in ["1.4.0", "1.4.1"] {
        let row = text.lines().find(|l| l.trim_start().starts_with(tag)).expect(tag);
        assert!(row.contains("Copied") && row.contains(&digests[tag]), "{row}");
        let (_, d) = skopeo_raw(&dst, &format!("mirror/app:{tag}"), dir.path())
            .await
            .unwrap();
        assert_eq!(d, digests[tag]);
    }
    assert!(!text.contains("1.5.0"));

    // Once more, without state: every tag is checked and found unchanged.
    let out = ido(&["sync", "-f", &file]);
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(stdout(&out).matches("Unchanged").count(), 2, "{}", stdout(&out));

    // With a state directory, OnceByTag remembers what it copied: the second run skips.
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    assert!(ido(&["sync", "-f", &file, "--state", st]).status.success());
    let out = ido(&["sync", "-f", &file, "--state", st]);
    assert!(out.status.success(), "{}", explain(&out));
    assert_eq!(stdout(&out).matches("Skipped").count(), 2, "{}", stdout(&out));

    // A missing Secret: a clear condition and exit 1.
    let bad = manifest(&src, &dst, "absent", dir.path());
    let out = ido(&["sync", "-f", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let text = stdout(&out);
    eprintln!("{text}");
    assert!(
        text.contains(
            "NotReady CredentialsUnavailable: spec.source.secretRef: Secret default/absent not found"
        ),
        "{text}"
    );
    // Other kinds are refused.
    let other = dir.path().join("release.yaml");
    std::fs::write(
        &other,
        "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {name: r}\nspec: {}\n",
    )
    .unwrap();
    let out = ido(&["sync", "-f", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ido run"),
        "{}",
        explain(&out)
    );
}

/// image-operator's `Image` with `useAwsIRSA` on its destination, as its users have it:
/// `ido sync` takes the ECR credentials from the web identity in its environment (as EKS's
/// pod identity webhook sets it) through the test kit's STS and ECR stand-ins, which check
/// the SigV4 signature; the destination registry accepts only that ECR password. Without
/// the environment, the condition names the field and the missing variable.
#[tokio::test]
async fn sync_takes_ecr_credentials_from_the_web_identity_for_use_aws_irsa() {
    use ido_testkit::aws::AwsStandIn;
    let role = "arn:aws:iam::123456789012:role/mirror";
    let aws = AwsStandIn::start(role, "web-identity-jwt").unwrap();
    let (src, dst) = tokio::join!(
        DockerRegistry::start(RegistryOptions::default()),
        DockerRegistry::start(RegistryOptions {
            tls: false,
            auth: Some(aws.registry_credentials()),
        })
    );
    let (src, dst) = (src.unwrap(), dst.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let digests = push_tags(&src, "argoproj/argocd", &["v2.13.1", "v2.13.2"], d).await;
    let token = d.join("token");
    std::fs::write(&token, "web-identity-jwt").unwrap();
    let m = d.join("image.yaml");
    std::fs::write(
        &m,
        format!(
            "apiVersion: skopeo.io/v1alpha1\nkind: Image\nmetadata: {{name: argocd}}\nspec:\n  mode: OneShot\n  source: {{name: {}/argoproj/argocd, version: v2.13.x, useAwsIRSA: false, tlsVerify: false}}\n  destination: {{name: {}/mirror/argocd, version: v2.13.x, useAwsIRSA: true, tlsVerify: false}}\n",
            src.host(),
            dst.host()
        ),
    )
    .unwrap();
    let run = |env: Vec<(String, String)>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ido"))
            .args(["sync", "-f", &m.display().to_string()])
            .env("IDO_LOG", "debug")
            .env("REGISTRY_AUTH_FILE", "/nonexistent")
            .envs(env)
            .output()
            .unwrap()
    };

    let out = run(aws.env(&token, "eu-central-1"));
    assert!(out.status.success(), "{}", explain(&out));
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        !all.contains(aws.ecr_password()),
        "the ECR password leaked: {all}"
    );
    assert!(
        !all.contains("web-identity-jwt"),
        "the web identity token leaked: {all}"
    );
    for (tag, digest) in &digests {
        let (_, got) = skopeo_raw(&dst, &format!("mirror/argocd:{tag}"), d)
            .await
            .unwrap();
        assert_eq!(&got, digest, "{tag}");
    }
    assert_eq!(aws.count("AssumeRoleWithWebIdentity"), 1);
    assert_eq!(aws.count("GetAuthorizationToken"), 1);

    // No web identity: the condition says which field needs what.
    let out = run(vec![]);
    assert!(!out.status.success(), "{}", explain(&out));
    let text = stdout(&out);
    assert!(
        text.contains("spec.destination.useAwsIRSA") && text.contains("AWS_ROLE_ARN"),
        "{text}"
    );
}
