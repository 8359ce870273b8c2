use super::sigv4::{Authorization, canonical_request, hmac_sha256, signature};
use super::*;

const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

#[test]
fn hmac_matches_rfc_4231() {
    // Test case 2 of RFC 4231.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Test case 6: a key longer than the block.
    assert_eq!(
        hex::encode(hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

/// The signature recomputed from a request of AWS's SigV4 test suite (its `.req` and
/// `.authz` files) equals the suite's.
fn suite_check(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8], authz: &str) {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, _) = b.body(()).unwrap().into_parts();
    let auth = Authorization::parse(authz).unwrap();
    assert_eq!(auth.region, "us-east-1");
    let got = signature(
        SUITE_SECRET,
        &auth,
        "20150830T123600Z",
        &canonical_request(&parts, &auth, body),
    );
    assert_eq!(got, auth.signature, "{uri} {headers:?}");
}

#[test]
fn verifier_matches_the_aws_test_suite() {
    let c = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
    let host = ("Host", "example.amazonaws.com");
    let date = ("X-Amz-Date", "20150830T123600Z");
    suite_check(
        "GET",
        "/",
        &[host, date],
        b"",
        &format!(
            "{c}, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        ),
    );
    suite_check(
        "GET",
        "/?Param2=value2&Param1=value1",
        &[host, date],
        b"",
        &format!(
            "{c}, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ),
    );
    suite_check(
        "POST",
        "/",
        &[("Content-Type", "application/x-www-form-urlencoded"), host, date],
        b"Param1=value1",
        &format!(
            "{c}, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        ),
    );
    suite_check(
        "POST",
        "/",
        &[host, date, ("X-Amz-Security-Token", SUITE_TOKEN)],
        b"",
        &format!(
            "{c}, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
        ),
    );
}

/// Temporary keys from the stand-in's STS.
async fn assume(http: &reqwest::Client, s: &AwsStandIn) -> (String, String, String) {
    let res = http
        .post(s.endpoint())
        .form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", "arn:aws:iam::123456789012:role/ido"),
            ("RoleSessionName", "unit"),
            ("WebIdentityToken", "jwt-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let xml = res.text().await.unwrap();
    let field = |name: &str| {
        let open = format!("<{name}>");
        let start = xml.find(&open).unwrap() + open.len();
        xml[start..start + xml[start..].find('<').unwrap()].to_string()
    };
    (
        field("AccessKeyId"),
        field("SecretAccessKey"),
        field("SessionToken"),
    )
}

/// An ECR request signed here (by the verifier's own functions) at `amz_date`.
fn ecr_request(
    http: &reqwest::Client,
    s: &AwsStandIn,
    (id, secret, token): (&str, &str, Option<&str>),
    amz_date: &str,
) -> reqwest::RequestBuilder {
    let host = s.addr.to_string();
    let mut headers = vec![
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host.as_str()),
        ("x-amz-date", amz_date),
    ];
    if let Some(t) = token {
        headers.push(("x-amz-security-token", t));
    }
    headers.push(("x-amz-target", ECR_TARGET));
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let auth = Authorization {
        access_key_id: id.into(),
        date: amz_date[..8].into(),
        region: "eu-west-3".into(),
        service: "ecr".into(),
        signed_headers: signed.iter().map(|s| s.to_string()).collect(),
        signature: String::new(),
    };
    let mut b = Request::builder().method("POST").uri("/");
    for (k, v) in &headers {
        b = b.header(*k, *v);
    }
    let (parts, _) = b.body(()).unwrap().into_parts();
    let sig = signature(secret, &auth, amz_date, &canonical_request(&parts, &auth, b"{}"));
    let mut req = http.post(s.endpoint()).body("{}");
    for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
        req = req.header(*k, *v);
    }
    req.header(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={id}/{}/eu-west-3/ecr/aws4_request, SignedHeaders={}, Signature={sig}",
            &amz_date[..8],
            signed.join(";")
        ),
    )
}

async fn refusal(req: reqwest::RequestBuilder) -> String {
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 400);
    let json: serde_json::Value = res.json().await.unwrap();
    assert!(json["message"].is_string(), "{json}");
    json["__type"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn ecr_checks_signatures() {
    crate::install_crypto_provider();
    let s = AwsStandIn::start("arn:aws:iam::123456789012:role/ido", "jwt-1").unwrap();
    let http = reqwest::Client::new();
    let (id, secret, token) = assume(&http, &s).await;
    assert!(id.starts_with("ASIA") && secret.len() == 40 && token.len() == 300);
    let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();

    let res = ecr_request(&http, &s, (&id, &secret, Some(&token)), &now)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = res.json().await.unwrap();
    let data = &json["authorizationData"][0];
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data["authorizationToken"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, format!("AWS:{}", s.ecr_password()).as_bytes());
    assert!(data["expiresAt"].as_f64().unwrap() > jiff::Timestamp::now().as_second() as f64);

    // A wrong secret, a stale date, no or another session token, unknown keys, nothing.
    let wrong = ecr_request(&http, &s, (&id, "not-the-secret", Some(&token)), &now);
    assert_eq!(refusal(wrong).await, "InvalidSignatureException");
    let stale = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(20))
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let old = ecr_request(&http, &s, (&id, &secret, Some(&token)), &stale);
    assert_eq!(refusal(old).await, "InvalidSignatureException");
    let no_token = ecr_request(&http, &s, (&id, &secret, None), &now);
    assert_eq!(refusal(no_token).await, "UnrecognizedClientException");
    let other_token = ecr_request(&http, &s, (&id, &secret, Some("AQoD-other")), &now);
    assert_eq!(refusal(other_token).await, "UnrecognizedClientException");
    let unknown = ecr_request(&http, &s, ("ASIAUNKNOWN", &secret, Some(&token)), &now);
    assert_eq!(refusal(unknown).await, "UnrecognizedClientException");
    let unsigned = http
        .post(s.endpoint())
        .header("x-amz-target", ECR_TARGET)
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}");
    assert_eq!(refusal(unsigned).await, "MissingAuthenticationTokenException");
    // A body other than the one signed.
    let tampered = ecr_request(&http, &s, (&id, &secret, Some(&token)), &now).body("{ }");
    assert_eq!(refusal(tampered).await, "InvalidSignatureException");

    let calls = s.calls();
    assert_eq!(s.count("AssumeRoleWithWebIdentity"), 1);
    assert_eq!(s.count("GetAuthorizationToken"), 8);
    assert_eq!(calls[1].region.as_deref(), Some("eu-west-3"));
    assert_eq!((calls[1].status, calls[2].status), (200, 400));
}

#[tokio::test]
async fn sts_checks_token_and_role() {
    crate::install_crypto_provider();
    let s = AwsStandIn::start("arn:aws:iam::123456789012:role/ido", "jwt-1").unwrap();
    let http = reqwest::Client::new();
    let call = |role: &'static str, token: &'static str| {
        http.post(s.endpoint())
            .form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", role),
                ("RoleSessionName", "unit"),
                ("WebIdentityToken", token),
            ])
            .send()
    };
    let res = call("arn:aws:iam::123456789012:role/ido", "jwt-2").await.unwrap();
    assert_eq!(res.status(), 400);
    let body = res.text().await.unwrap();
    assert!(body.contains("<Code>InvalidIdentityToken</Code>"), "{body}");
    let res = call("arn:aws:iam::123456789012:role/other", "jwt-1")
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("<Code>AccessDenied</Code>"));
    assert_eq!(s.count("AssumeRoleWithWebIdentity"), 2);
    assert!(s.calls().iter().all(|c| c.error.is_some()));
}
