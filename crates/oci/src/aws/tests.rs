use super::*;

/// The AWS Signature Version 4 test suite's keys, scope and time.
fn suite_keys(token: Option<&str>) -> SessionKeys {
    SessionKeys {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: token.map(String::from),
    }
}
const SUITE_SCOPE: Scope = Scope {
    region: "us-east-1",
    service: "service",
};
const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

fn authorization(
    keys: &SessionKeys,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let url = Url::parse(url).unwrap();
    let time: jiff::Timestamp = "2015-08-30T12:36:00Z".parse().unwrap();
    let req = Signable {
        method,
        url: &url,
        headers,
        body,
    };
    let added = sign(keys, &SUITE_SCOPE, time, &req);
    assert_eq!(added[0], ("x-amz-date", "20150830T123600Z".to_string()));
    added.into_iter().find(|(k, _)| *k == "authorization").unwrap().1
}

/// Cases of the aws-sig-v4-test-suite (the `authz` files), signed here from scratch.
#[test]
fn sigv4_matches_the_aws_test_suite() {
    let keys = suite_keys(None);
    let scope = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
    assert_eq!(
        authorization(&keys, "GET", "https://example.amazonaws.com/", &[], b""),
        format!(
            "{scope}, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        ),
        "get-vanilla"
    );
    assert_eq!(
        authorization(
            &keys,
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            &[],
            b""
        ),
        format!(
            "{scope}, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ),
        "get-vanilla-query-order-key-case"
    );
    assert_eq!(
        authorization(
            &keys,
            "POST",
            "https://example.amazonaws.com/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"Param1=value1"
        ),
        format!(
            "{scope}, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        ),
        "post-x-www-form-urlencoded"
    );
    // post-sts-token/post-sts-header-before: the session token is signed.
    let with_token = suite_keys(Some(SUITE_TOKEN));
    assert_eq!(
        authorization(&with_token, "POST", "https://example.amazonaws.com/", &[], b""),
        format!(
            "{scope}, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
        ),
        "post-sts-header-before"
    );
    assert_ne!(
        authorization(
            &suite_keys(None),
            "POST",
            "https://example.amazonaws.com/",
            &[],
            b"x"
        ),
        authorization(
            &suite_keys(None),
            "POST",
            "https://example.amazonaws.com/",
            &[],
            b""
        ),
        "the body is signed"
    );
    assert!(!format!("{with_token:?}").contains("EXAMPLEKEY"));
    assert!(!format!("{with_token:?}").contains("AQoD"));
}

#[test]
fn signing_host_keeps_a_port() {
    let url = Url::parse("http://127.0.0.1:8080/").unwrap();
    let time: jiff::Timestamp = "2015-08-30T12:36:00Z".parse().unwrap();
    let keys = suite_keys(None);
    let req = Signable {
        method: "POST",
        url: &url,
        headers: &[],
        body: b"",
    };
    let with_port = sign(&keys, &SUITE_SCOPE, time, &req);
    let url = Url::parse("http://127.0.0.1/").unwrap();
    let req = Signable { url: &url, ..req };
    assert_ne!(with_port, sign(&keys, &SUITE_SCOPE, time, &req));
}

#[test]
fn regions_from_ecr_hosts() {
    let r = |h: &str| region_from_host(h);
    assert_eq!(
        r("123456789012.dkr.ecr.eu-central-1.amazonaws.com").as_deref(),
        Some("eu-central-1")
    );
    assert_eq!(
        r("123456789012.dkr.ecr.us-west-2.amazonaws.com:443").as_deref(),
        Some("us-west-2")
    );
    assert_eq!(
        r("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").as_deref(),
        Some("cn-north-1")
    );
    assert_eq!(
        r("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com").as_deref(),
        Some("us-east-1")
    );
    assert_eq!(
        r("123456789012.dkr-ecr.ap-south-1.on.aws").as_deref(),
        Some("ap-south-1")
    );
    assert_eq!(
        r("https://123456789012.dkr.ecr.eu-west-3.amazonaws.com/v2/").as_deref(),
        Some("eu-west-3")
    );
    assert_eq!(r("public.ecr.aws"), None);
    assert_eq!(r("127.0.0.1:5000"), None);
    assert_eq!(r("dkr.ecr.eu-west-1.amazonaws.com.evil.example"), None);
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn environment_and_endpoints() {
    ido_testkit::install_crypto_provider();
    let e = IrsaConfig::from_vars(vars(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AwsEnv {
                var: "AWS_ROLE_ARN",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("AWS_ROLE_ARN: not set"), "{e}");
    let e = IrsaConfig::from_vars(vars(&[("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")])).unwrap_err();
    assert!(
        e.to_string().starts_with("AWS_WEB_IDENTITY_TOKEN_FILE: not set"),
        "{e}"
    );
    let e = IrsaConfig::from_vars(vars(&[
        ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ("AWS_ENDPOINT_URL_ECR", "not a url"),
    ]))
    .unwrap_err();
    assert!(e.to_string().starts_with("AWS_ENDPOINT_URL_ECR: "), "{e}");

    let base = [
        ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ("AWS_DEFAULT_REGION", "eu-north-1"),
    ];
    let c = IrsaConfig::from_vars(vars(&base)).unwrap();
    assert_eq!(c.region_for("127.0.0.1:5000").unwrap(), "eu-north-1");
    assert_eq!(
        c.region_for("1.dkr.ecr.us-east-2.amazonaws.com").unwrap(),
        "us-east-2"
    );
    assert_eq!(
        c.endpoint(&c.sts_endpoint, "sts", "us-east-2").as_str(),
        "https://sts.us-east-2.amazonaws.com/"
    );
    assert_eq!(
        c.endpoint(&c.ecr_endpoint, "api.ecr", "cn-north-1").as_str(),
        "https://api.ecr.cn-north-1.amazonaws.com.cn/"
    );
    let c = IrsaConfig::from_vars(vars(&[
        base[0],
        base[1],
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:2"),
    ]))
    .unwrap();
    assert_eq!(
        c.endpoint(&c.sts_endpoint, "sts", "x").as_str(),
        "http://127.0.0.1:2/"
    );
    assert_eq!(
        c.endpoint(&c.ecr_endpoint, "api.ecr", "x").as_str(),
        "http://127.0.0.1:1/"
    );
    let e = c.region_for("127.0.0.1:5000").unwrap_err().to_string();
    assert!(e.starts_with("AWS_REGION: not set"), "{e}");
    let c = IrsaConfig::from_vars(vars(&[base[0], base[1], ("AWS_REGION", "eu west/1")])).unwrap();
    let e = c.region_for("127.0.0.1:5000").unwrap_err().to_string();
    assert_eq!(e, r#"AWS_REGION: "eu west/1" is not a region name"#);
}

#[test]
fn sts_answers_parse() {
    let ok = br#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser>
    <Credentials>
      <SessionToken>tok&amp;en&#x2F;1</SessionToken>
      <SecretAccessKey>secret</SecretAccessKey>
      <Expiration>2014-10-24T23:00:23Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
    let creds = ["AssumeRoleWithWebIdentityResult", "Credentials"];
    let [id, token, arn] = xml_texts(
        ok,
        [
            &[creds[0], creds[1], "AccessKeyId"],
            &[creds[0], creds[1], "SessionToken"],
            &["AssumedRoleUser", "Arn"],
        ],
    );
    assert_eq!(id.as_deref(), Some("ASIAEXAMPLE"));
    assert_eq!(token.as_deref(), Some("tok&en/1"));
    assert_eq!(arn, None, "paths start below the root");
    let err = br#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
    let [code, message] = xml_texts(err, [&["Error", "Code"], &["Error", "Message"]]);
    assert_eq!(code.as_deref(), Some("InvalidIdentityToken"));
    assert_eq!(message.as_deref(), Some("No OpenIDConnect provider found"));
    assert_eq!(xml_texts(b"not xml <", [&["Error", "Code"]]), [None]);
}

#[test]
fn errors_hide_echoed_secrets() {
    let url = Url::parse("https://sts.eu-west-1.amazonaws.com/").unwrap();
    let e = aws_error(
        STS,
        &url,
        400,
        Some("InvalidIdentityToken".into()),
        Some("token eyJhbGciOi.secret.part is bad".into()),
        b"",
        &["eyJhbGciOi.secret.part"],
    )
    .to_string();
    assert_eq!(
        e,
        "STS AssumeRoleWithWebIdentity at https://sts.eu-west-1.amazonaws.com/: InvalidIdentityToken: token <redacted> is bad (HTTP 400)"
    );
}
