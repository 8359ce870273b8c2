//! AWS Signature Version 4, checked as AWS does: the `Authorization` header parsed, the
//! canonical request and the signature recomputed from the request as received.

use std::collections::HashMap;

use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::{MAX_SKEW_SECS, State, header_str, lock};

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Authorization {
    pub(super) access_key_id: String,
    pub(super) date: String,
    pub(super) region: String,
    pub(super) service: String,
    pub(super) signed_headers: Vec<String>,
    pub(super) signature: String,
}

impl Authorization {
    pub(super) fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            fields.insert(k, v);
        }
        let scope: Vec<&str> = fields.get("Credential")?.split('/').collect();
        let [id, date, region, service, "aws4_request"] = scope.as_slice() else {
            return None;
        };
        Some(Self {
            access_key_id: id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers: fields
                .get("SignedHeaders")?
                .split(';')
                .map(String::from)
                .collect(),
            signature: fields.get("Signature")?.to_string(),
        })
    }
}

pub(super) type Refusal = (&'static str, String);

/// Checks the SigV4 signature of an ECR request: the keys must be ones issued here, unexpired,
/// with their session token; the date recent; the signature the one computed here.
pub(super) fn verify(st: &State, parts: &Parts, body: &[u8]) -> Result<Authorization, Refusal> {
    let Some(value) = header_str(&parts.headers, "authorization") else {
        return Err((
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".into(),
        ));
    };
    let auth = Authorization::parse(value).ok_or((
        "IncompleteSignatureException",
        "Authorization header requires Credential, SignedHeaders and Signature".to_string(),
    ))?;
    let invalid_token = || {
        (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_string(),
        )
    };
    let issued = lock(&st.issued)
        .get(&auth.access_key_id)
        .cloned()
        .ok_or_else(invalid_token)?;
    if header_str(&parts.headers, "x-amz-security-token") != Some(issued.session_token.as_str()) {
        return Err(invalid_token());
    }
    if jiff::Timestamp::now() >= issued.expires {
        return Err((
            "ExpiredTokenException",
            "The security token included in the request is expired".into(),
        ));
    }
    if auth.service != "ecr" {
        return Err((
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: 'ecr', not '{}'",
                auth.service
            ),
        ));
    }
    for needed in ["host", "x-amz-date", "x-amz-security-token"] {
        if !auth.signed_headers.iter().any(|h| h == needed) {
            return Err((
                "InvalidSignatureException",
                format!("'{needed}' must be a signed header"),
            ));
        }
    }
    let amz_date = header_str(&parts.headers, "x-amz-date").unwrap_or_default();
    let when = parse_amz_date(amz_date).ok_or((
        "IncompleteSignatureException",
        "X-Amz-Date must be YYYYMMDDTHHMMSSZ".to_string(),
    ))?;
    if !amz_date.starts_with(&auth.date) {
        return Err((
            "InvalidSignatureException",
            "Credential should be scoped to a valid date".into(),
        ));
    }
    let skew = (jiff::Timestamp::now().as_second() - when.as_second()).abs();
    if skew > MAX_SKEW_SECS {
        return Err((
            "InvalidSignatureException",
            format!("Signature expired: {amz_date} is more than {MAX_SKEW_SECS} s from now"),
        ));
    }
    let expected = signature(
        &issued.secret,
        &auth,
        amz_date,
        &canonical_request(parts, &auth, body),
    );
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err((
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        ));
    }
    Ok(auth)
}

pub(super) fn parse_amz_date(s: &str) -> Option<jiff::Timestamp> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
    .parse()
    .ok()
}

/// The canonical request of a received request, for the headers `auth` says were signed.
pub(super) fn canonical_request(parts: &Parts, auth: &Authorization, body: &[u8]) -> String {
    let path: String = parts
        .uri
        .path()
        .split('/')
        .map(aws_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<String> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| format!("{}={}", aws_encode(&k), aws_encode(&v)))
        .collect();
    query.sort();
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        headers += &format!("{name}:{}\n", values.join(","));
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        if path.is_empty() { "/".into() } else { path },
        query.join("&"),
        headers,
        auth.signed_headers.join(";"),
        hex::encode(Sha256::digest(body))
    )
}

/// The hex signature of `canonical_request` under `secret` and `auth`'s scope.
pub(super) fn signature(
    secret: &str,
    auth: &Authorization,
    amz_date: &str,
    canonical_request: &str,
) -> String {
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac_sha256(&k_date, auth.region.as_bytes());
    let k_service = hmac_sha256(&k_region, auth.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    hex::encode(hmac_sha256(&k_signing, to_sign.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104) written out on a hash.
pub(super) fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

pub(super) fn aws_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
