//! Token-authenticated docker-registry: skopeo pushes and reads back through the test kit's
//! token server, anonymous pushes and wrong passwords are refused, and cross-repository blob
//! mounts need pull on the source in the token.

use std::path::Path;

use anyhow::Context;
use ido_testkit::{
    oci_image::{Layout, build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo, skopeo_raw},
    token_server::{INVALID_CREDENTIALS, Scope, TokenPolicy},
};
use reqwest::StatusCode;
use serde_json::Value;

fn policy() -> TokenPolicy {
    TokenPolicy::new()
        .user("alice", "alice-secret")
        .allow("alice", "team/", &["pull", "push"])
        .user("carol", "carol-secret")
        .allow("carol", "other/", &["pull", "push"])
}

fn client(reg: &DockerRegistry) -> anyhow::Result<reqwest::Client> {
    ido_testkit::install_crypto_provider();
    match reg.ca() {
        Some(ca) => ca.reqwest_client(),
        None => Ok(reqwest::Client::builder().no_proxy().build()?),
    }
}

/// Asks the registry's token server for `scopes`; its status and JSON body.
async fn ask_token(
    reg: &DockerRegistry,
    creds: Option<(&str, &str)>,
    scopes: &[&str],
) -> anyhow::Result<(StatusCode, Value)> {
    let ts = reg.token_server().context("no token server")?;
    let mut query = vec![("service", ts.service().to_string())];
    query.extend(scopes.iter().map(|s| ("scope", s.to_string())));
    let mut req = client(reg)?.get(ts.realm()).query(&query);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = serde_json::from_slice(&resp.bytes().await?).context("token server body")?;
    Ok((status, body))
}

async fn token(reg: &DockerRegistry, creds: (&str, &str), scopes: &[&str]) -> anyhow::Result<String> {
    let (status, body) = ask_token(reg, Some(creds), scopes).await?;
    anyhow::ensure!(status == StatusCode::OK, "token request: {status} {body}");
    Ok(body["token"].as_str().context("no token")?.to_string())
}

fn scopes(list: &[Scope]) -> Vec<String> {
    list.iter().map(Scope::to_string).collect()
}

/// The layer digests of the layout's (single) image.
fn layer_digests(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let hex = layout.digest.strip_prefix("sha256:").context("digest")?;
    let manifest: Value = serde_json::from_slice(&std::fs::read(layout.dir.join("blobs/sha256").join(hex))?)?;
    Ok(manifest["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str().map(String::from))
        .collect())
}

/// distribution 2.8 refuses a request whose token lacks a scope it needs with a 401 whose
/// challenge names the missing scope (for a mount: pull on the source).
fn assert_insufficient_scope(resp: &reqwest::Response, missing: &str) {
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains(missing), "{www}");
}

async fn small_image(dir: &Path, seed: u64) -> anyhow::Result<Layout> {
    build_layout(dir, "v1", &["linux/amd64"], 2, 48 * 1024, seed).await
}

async fn push_and_read_back(tls: bool) -> anyhow::Result<()> {
    let reg = DockerRegistry::start_with_token(
        RegistryOptions {
            tls,
            ..Default::default()
        },
        policy(),
    )
    .await?;
    assert_eq!(
        reg.credentials().map(|(u, _)| u.as_str()),
        Some("alice"),
        "a token registry logs clients in as the policy's first user"
    );
    let realm = reg.token_server().context("token server")?.realm();
    assert!(
        realm.starts_with(if tls { "https://" } else { "http://" }),
        "{realm}"
    );

    let challenge = client(&reg)?
        .get(format!("{}/v2/team/app/manifests/v1", reg.base_url()))
        .send()
        .await?;
    assert_eq!(challenge.status(), StatusCode::UNAUTHORIZED);
    let www = challenge
        .headers()
        .get("www-authenticate")
        .context("no challenge")?
        .to_str()?
        .to_string();
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains(&format!("realm=\"{realm}\"")), "{www}");

    let scratch = tempfile::tempdir()?;
    let layout = small_image(&scratch.path().join("img"), 7).await?;
    push_layout(&layout, &reg, "team/app:v1").await?;
    let (raw, digest) = skopeo_raw(&reg, "team/app:v1", scratch.path()).await?;
    assert_eq!(digest, layout.digest);
    let manifest: Value = serde_json::from_slice(&raw)?;
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(2));

    let requests = reg.token_requests();
    assert!(
        requests.iter().any(|r| r.user.as_deref() == Some("alice")
            && r.status == 200
            && scopes(&r.requested).contains(&"repository:team/app:pull,push".to_string())
            && scopes(&r.granted).contains(&"repository:team/app:pull,push".to_string())),
        "no push token for alice among {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.service.as_deref() == Some("ido-test-registry")),
        "{requests:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn skopeo_pushes_and_reads_back_through_tokens() -> anyhow::Result<()> {
    push_and_read_back(false).await
}

#[tokio::test]
async fn skopeo_pushes_and_reads_back_through_tokens_over_tls() -> anyhow::Result<()> {
    push_and_read_back(true).await
}

#[tokio::test]
async fn anonymous_push_and_wrong_passwords_are_refused() -> anyhow::Result<()> {
    let reg =
        DockerRegistry::start_with_token(RegistryOptions::default(), policy().anonymous_pull(true)).await?;
    let scratch = tempfile::tempdir()?;
    let layout = small_image(&scratch.path().join("img"), 11).await?;
    push_layout(&layout, &reg, "team/app:v1").await?;

    reg.token_server().context("token server")?.clear_requests();
    let anon_push = skopeo(&[
        "copy".into(),
        "-q".into(),
        "--dest-tls-verify=false".into(),
        "--dest-no-creds".into(),
        format!("oci:{}:v1", layout.dir.display()),
        format!("docker://{}/team/anon:v1", reg.host()),
    ])
    .await;
    let err = anon_push
        .expect_err("an anonymous push must be refused")
        .to_string();
    assert!(
        err.contains("denied") || err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    let requests = reg.token_requests();
    assert!(
        requests.iter().any(|r| r.user.is_none()
            && scopes(&r.requested).contains(&"repository:team/anon:pull,push".to_string())
            && r.granted.iter().all(|g| g.actions == ["pull"])),
        "{requests:#?}"
    );
    let t = token(&reg, ("alice", "alice-secret"), &["repository:team/anon:pull"]).await?;
    let after = client(&reg)?
        .get(format!("{}/v2/team/anon/manifests/v1", reg.base_url()))
        .bearer_auth(t)
        .send()
        .await?;
    assert_eq!(
        after.status(),
        StatusCode::NOT_FOUND,
        "the anonymous push left a manifest"
    );

    let anon_pull = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        "--no-creds".into(),
        format!("docker://{}/team/app:v1", reg.host()),
    ])
    .await?;
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&anon_pull))
        ),
        layout.digest
    );

    let authfile = scratch.path().join("wrong.json");
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "alice:not-her-password",
    );
    std::fs::write(
        &authfile,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )?;
    let wrong = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("--authfile={}", authfile.display()),
        format!("docker://{}/team/app:v1", reg.host()),
    ])
    .await;
    let err = wrong.expect_err("a wrong password must be refused").to_string();
    assert!(err.contains(INVALID_CREDENTIALS), "{err}");

    let (status, body) = ask_token(&reg, Some(("mallory", "guess")), &["repository:team/app:pull"]).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    assert_eq!(body["errors"][0]["message"], INVALID_CREDENTIALS);
    let last = reg.token_requests().pop().context("no request recorded")?;
    assert_eq!(last.user.as_deref(), Some("mallory"));
    assert_eq!(last.status, 401);
    assert!(last.granted.is_empty());
    Ok(())
}

#[tokio::test]
async fn cross_repository_mounts_need_pull_on_the_source() -> anyhow::Result<()> {
    let reg = DockerRegistry::start_with_token(RegistryOptions::default(), policy()).await?;
    let scratch = tempfile::tempdir()?;
    let layout = small_image(&scratch.path().join("img"), 23).await?;
    push_layout(&layout, &reg, "team/app:v1").await?;
    let layers = layer_digests(&layout)?;
    let http = client(&reg)?;
    let mount = |dst: &str, digest: &str, token: &str| {
        http.post(format!(
            "{}/v2/{dst}/blobs/uploads/?mount={digest}&from=team/app",
            reg.base_url()
        ))
        .bearer_auth(token)
        .send()
    };

    let both = ["repository:team/app:pull", "repository:team/copy:pull,push"];
    let (status, body) = ask_token(&reg, Some(("alice", "alice-secret")), &both).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    let granted = reg.token_requests().pop().context("no request recorded")?;
    assert_eq!(scopes(&granted.requested), both);
    assert_eq!(scopes(&granted.granted), both);
    let t = body["token"].as_str().context("token")?;
    let mounted = mount("team/copy", &layers[0], t).await?;
    assert_eq!(mounted.status(), StatusCode::CREATED);
    assert_eq!(
        mounted
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()),
        Some(layers[0].as_str())
    );
    let head = http
        .head(format!("{}/v2/team/copy/blobs/{}", reg.base_url(), layers[0]))
        .bearer_auth(t)
        .send()
        .await?;
    assert_eq!(head.status(), StatusCode::OK);

    let missing = format!("sha256:{}", "0".repeat(64));
    let fallback = mount("team/copy", &missing, t).await?;
    assert_eq!(
        fallback.status(),
        StatusCode::ACCEPTED,
        "a mount of a blob the source lacks opens an upload"
    );
    let location = fallback
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(location.contains("/v2/team/copy/blobs/uploads/"), "{location}");

    let only_dst = token(
        &reg,
        ("alice", "alice-secret"),
        &["repository:team/other:pull,push"],
    )
    .await?;
    let refused = mount("team/other", &layers[1], &only_dst).await?;
    assert_insufficient_scope(&refused, "repository:team/app:pull");

    let asked = ["repository:team/app:pull", "repository:other/copy:pull,push"];
    let carol = token(&reg, ("carol", "carol-secret"), &asked).await?;
    let last = reg.token_requests().pop().context("no request recorded")?;
    assert_eq!(scopes(&last.requested), asked);
    assert_eq!(scopes(&last.granted), ["repository:other/copy:pull,push"]);
    let refused = mount("other/copy", &layers[1], &carol).await?;
    assert_insufficient_scope(&refused, "repository:team/app:pull");
    let absent = http
        .head(format!("{}/v2/other/copy/blobs/{}", reg.base_url(), layers[1]))
        .bearer_auth(&carol)
        .send()
        .await?;
    assert_eq!(
        absent.status(),
        StatusCode::NOT_FOUND,
        "the refused mount linked the blob"
    );
    Ok(())
}
