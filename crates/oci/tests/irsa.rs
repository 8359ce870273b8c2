//! ECR credentials from the pod's web identity against the test kit's AWS stand-in (STS and
//! ECR, the signature checked by its own code) and an htpasswd `docker-registry` that takes
//! the ECR password for user `AWS`.

mod common;

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use common::{r, side};
use ido_oci::{
    Error,
    auth::AuthStore,
    aws::IrsaConfig,
    copy::{Platforms, copy},
    registry::{DEFAULT_CONCURRENCY, Registry, TlsSettings},
};
use ido_testkit::{
    aws::AwsStandIn,
    oci_image::{build_layout, push_layout},
    registry::{DockerRegistry, RegistryOptions, skopeo_raw},
};

const ROLE: &str = "arn:aws:iam::123456789012:role/ido-image-sync";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6aWRvOmlkbyJ9.c2lnbmF0dXJl";
const STS: &str = "AssumeRoleWithWebIdentity";
const ECR: &str = "GetAuthorizationToken";

/// An `IrsaConfig` from the stand-in's pod environment with the token in `dir/name`.
fn config(aws: &AwsStandIn, dir: &Path, name: &str, token: &str) -> IrsaConfig {
    ido_testkit::install_crypto_provider();
    let file = dir.join(name);
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let env: HashMap<String, String> = aws.env(&file, "eu-central-1").into_iter().collect();
    IrsaConfig::from_vars(|k| env.get(k).cloned()).unwrap()
}

#[tokio::test]
async fn credentials_from_the_web_identity_push_an_image() {
    let aws = AwsStandIn::start(ROLE, JWT).unwrap();
    let src = DockerRegistry::start(Default::default()).await.unwrap();
    let dst = DockerRegistry::start(RegistryOptions {
        auth: Some(aws.registry_credentials()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("l"), "v1", &["linux/amd64"], 2, 50_000, 7)
        .await
        .unwrap();
    push_layout(&layout, &src, "app:v1").await.unwrap();

    let irsa = config(&aws, dir.path(), "token", JWT);
    let creds = irsa.ecr_credentials(dst.host()).await.unwrap();
    assert_eq!(creds.username, "AWS");
    assert_eq!(creds.password, aws.ecr_password());
    assert!(!format!("{creds:?} {irsa:?}").contains(aws.ecr_password()));
    assert!(!format!("{irsa:?}").contains(JWT));
    // The host names no region: the environment's is signed for.
    let calls = aws.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].action.as_str(), calls[0].status), (STS, 200));
    assert_eq!((calls[1].action.as_str(), calls[1].status), (ECR, 200));
    assert_eq!(calls[1].region.as_deref(), Some("eu-central-1"));

    // A pull secret's credentials are not replaced; the registry's are added.
    let mut auths = AuthStore::default();
    assert!(auths.insert_if_absent(dst.host(), creds.clone()));
    assert!(!auths.insert_if_absent(dst.host(), creds));
    let tls = TlsSettings {
        verify: false,
        ca_bundle: None,
    };
    let dst_side = Registry::connect(dst.host(), &tls, Arc::new(auths), DEFAULT_CONCURRENCY)
        .await
        .unwrap();
    let rep = copy(
        &side(&src).await,
        &r(src.host(), "app:v1"),
        &dst_side,
        &r(dst.host(), "mirror/app:v1"),
        &Platforms::Host,
    )
    .await
    .unwrap();
    let (_, digest) = skopeo_raw(&dst, "mirror/app:v1", dir.path()).await.unwrap();
    assert_eq!(
        (rep.digest.as_str(), digest.as_str()),
        (layout.digest.as_str(), layout.digest.as_str())
    );

    // Anonymous, the same copy is refused: the credentials are what let it in.
    let anonymous = Registry::connect(
        dst.host(),
        &tls,
        Arc::new(AuthStore::default()),
        DEFAULT_CONCURRENCY,
    )
    .await
    .unwrap();
    let refused = copy(
        &side(&src).await,
        &r(src.host(), "app:v1"),
        &anonymous,
        &r(dst.host(), "mirror/app:v2"),
        &Platforms::Host,
    )
    .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn credentials_are_cached_per_region_until_near_expiry() {
    let aws = AwsStandIn::start(ROLE, JWT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let irsa = config(&aws, dir.path(), "token", JWT);
    let a = irsa.ecr_credentials("127.0.0.1:5000").await.unwrap();
    let b = irsa.clone().ecr_credentials("127.0.0.1:6000").await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        (aws.count(STS), aws.count(ECR)),
        (1, 1),
        "one fetch, shared by clones"
    );

    // Another region (named by the host): fetched for it, signed for it.
    let ecr_host = "123456789012.dkr.ecr.eu-west-3.amazonaws.com";
    irsa.ecr_credentials(ecr_host).await.unwrap();
    irsa.ecr_credentials(ecr_host).await.unwrap();
    assert_eq!((aws.count(STS), aws.count(ECR)), (2, 2));
    assert_eq!(aws.calls()[3].region.as_deref(), Some("eu-west-3"));

    // Tokens valid for less than the five-minute margin are fetched every time.
    aws.set_ecr_token_lifetime(Duration::from_secs(4 * 60));
    let irsa = config(&aws, dir.path(), "token2", JWT);
    irsa.ecr_credentials(ecr_host).await.unwrap();
    irsa.ecr_credentials(ecr_host).await.unwrap();
    assert_eq!((aws.count(STS), aws.count(ECR)), (4, 4));
}

#[tokio::test]
async fn refusals_name_the_step_and_hold_no_secret() {
    let aws = AwsStandIn::start(ROLE, JWT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = "eyJhbGciOiJSUzI1NiJ9.d3Jvbmc.d3Jvbmctc2lnbmF0dXJl";
    let irsa = config(&aws, dir.path(), "token", wrong);
    let e = irsa.ecr_credentials("127.0.0.1:5000").await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Aws { step, code: Some(c), .. } if step.starts_with("STS") && c == "InvalidIdentityToken"),
        "{e:?}"
    );
    assert!(
        text.starts_with("STS AssumeRoleWithWebIdentity at http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("InvalidIdentityToken") && text.contains("HTTP 400"),
        "{text}"
    );
    for secret in [wrong, JWT, aws.ecr_password()] {
        assert!(
            !text.contains(secret) && !format!("{e:?}").contains(secret),
            "{text}"
        );
    }
    assert_eq!((aws.count(STS), aws.count(ECR)), (1, 0));
    // Refusals are not cached: with the right token it works.
    std::fs::write(dir.path().join("token"), JWT).unwrap();
    irsa.ecr_credentials("127.0.0.1:5000").await.unwrap();

    // Another role: STS's AccessDenied.
    let env: HashMap<String, String> = aws
        .env(&dir.path().join("token"), "eu-central-1")
        .into_iter()
        .chain([(
            "AWS_ROLE_ARN".to_string(),
            "arn:aws:iam::123456789012:role/other".to_string(),
        )])
        .collect();
    let other = IrsaConfig::from_vars(|k| env.get(k).cloned()).unwrap();
    let e = other
        .ecr_credentials("127.0.0.1:5000")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AccessDenied") && e.contains("HTTP 403"), "{e}");

    // No token file: the variable is named.
    let env: HashMap<String, String> = aws
        .env(&dir.path().join("absent"), "eu-central-1")
        .into_iter()
        .collect();
    let absent = IrsaConfig::from_vars(|k| env.get(k).cloned()).unwrap();
    let e = absent
        .ecr_credentials("127.0.0.1:5000")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("AWS_WEB_IDENTITY_TOKEN_FILE: cannot read "), "{e}");

    // Nothing listens at the ECR endpoint: the step and endpoint are named.
    let port = ido_testkit::free_port().unwrap();
    let env: HashMap<String, String> = aws
        .env(&dir.path().join("token"), "eu-central-1")
        .into_iter()
        .chain([(
            "AWS_ENDPOINT_URL_ECR".to_string(),
            format!("http://127.0.0.1:{port}"),
        )])
        .collect();
    let unreachable = IrsaConfig::from_vars(|k| env.get(k).cloned()).unwrap();
    let e = unreachable
        .ecr_credentials("127.0.0.1:5000")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "ECR GetAuthorizationToken at http://127.0.0.1:{port}/: "
        )),
        "{e}"
    );
}
