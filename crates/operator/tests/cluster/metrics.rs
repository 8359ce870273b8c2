//! The metrics endpoint as controller-runtime secures it: HTTPS, and bearer tokens the real
//! API server authenticates (TokenReview) and authorises (SubjectAccessReview) for the
//! non-resource URL `/metrics`; the operator's ServiceAccount makes the reviews with the
//! grants the chart must give it, and nothing more. Also the helpers other tests use to
//! scrape over HTTPS and to read samples.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ido_controllers::metrics::Metrics;
use ido_operator::{
    auth::Authorizer,
    http,
    tls::{self, CertSource},
};
use ido_testkit::TestCa;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use serde_json::json;

use crate::env::Env;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (as a scraper with `insecureSkipVerify` does) and keeps
/// the last one presented.
#[derive(Debug, Default)]
pub(crate) struct AnyCert {
    pub(crate) seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client that trusts any certificate; `verifier.seen` tells which one it got.
pub(crate) fn insecure_tls() -> (Arc<ClientConfig>, Arc<AnyCert>) {
    let verifier = Arc::new(AnyCert::default());
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    (Arc::new(config), verifier)
}

/// A TLS client that trusts only `roots` (DER).
pub(crate) fn verifying_tls(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// `GET path` over HTTPS (server name `localhost`) with an optional bearer token:
/// (status, head, body); `Err` when the TLS handshake fails.
pub(crate) async fn https_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    tls: Arc<ClientConfig>,
) -> Result<(u16, String, String), std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut conn = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut resp = Vec::new();
    match conn.read_to_end(&mut resp).await {
        Ok(_) => {}
        // A server that closes without close_notify: what was read is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(e),
    }
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    Ok((head[9..12].parse().unwrap(), head.to_string(), body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// The sum of the samples whose series starts with `prefix`.
pub(crate) fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Grants, as cluster admin: the operator's ServiceAccount what the metrics' reviews need
/// (the rules the chart must carry), and ServiceAccount `scraper` of the operator's
/// namespace `get` on `/metrics`. Creates `scraper` and `stranger` (no grant). Returns
/// the name of the scraper's ClusterRoleBinding.
pub(crate) async fn grant_metrics_access(env: &Env) -> String {
    let op_ns = &env.op_ns;
    let sa = &env.service_account;
    let yaml = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: scraper, namespace: {op_ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: stranger, namespace: {op_ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {op_ns}-metrics-auth}}
rules:
  - apiGroups: [authentication.k8s.io]
    resources: [tokenreviews]
    verbs: [create]
  - apiGroups: [authorization.k8s.io]
    resources: [subjectaccessreviews]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {op_ns}-metrics-auth}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {op_ns}-metrics-auth}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {op_ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {op_ns}-metrics-reader}}
rules:
  - nonResourceURLs: [/metrics]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {op_ns}-metrics-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {op_ns}-metrics-reader}}
subjects: [{{kind: ServiceAccount, name: scraper, namespace: {op_ns}}}]
"#
    );
    env.cluster()
        .kubectl_stdin(&["apply", "-f", "-"], &yaml)
        .await
        .unwrap();
    format!("{op_ns}-metrics-reader")
}

/// Polls `get` (up to 20 s) until it returns `code`; the last answer.
async fn until_status(
    what: &str,
    code: u16,
    mut get: impl AsyncFnMut() -> (u16, String, String),
) -> (u16, String, String) {
    let mut last = (0, String::new(), String::new());
    for _ in 0..100 {
        last = get().await;
        if last.0 == code {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: expected {code}, last answer {last:?}");
}

#[tokio::test]
async fn metrics_answer_only_tokens_the_api_server_authenticates_and_authorises() {
    let env = Env::new("metrics", json!({})).await;
    let metrics = Metrics::default();
    metrics
        .reconciles
        .get_or_create(&ido_controllers::metrics::ControllerLabels {
            controller: "nodeimage".into(),
        })
        .inc();
    // Allowed answers kept 2 s here, so that a revoked grant shows within the test.
    let mut auth = Authorizer::new(env.operator_client().await);
    auth.allow_ttl = Duration::from_secs(2);
    auth.deny_ttl = Duration::from_millis(500);
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls_listener =
        tls::TlsListener::new(listener, tls::server_config(&CertSource::SelfSigned).unwrap()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        tls_listener,
        http::metrics_router(metrics.clone(), Some(Arc::new(auth))),
        async {
            let _ = stopped.await;
        },
    ));
    let (tls, verifier) = insecure_tls();
    let get = |token: Option<String>| {
        let tls = tls.clone();
        async move { https_get(addr, "/metrics", token.as_deref(), tls).await.unwrap() }
    };

    // No token: 401 without asking the API server.
    assert_eq!(get(None).await.0, 401);

    let reader_binding = grant_metrics_access(&env).await;
    let scraper = env.cluster().token(&env.op_ns, "scraper").await.unwrap();
    let stranger = env.cluster().token(&env.op_ns, "stranger").await.unwrap();
    // Reviews need their grant: as `stranger`, who has none, they fail (a 500 for the
    // scrape, and nothing cached).
    let without = Authorizer::new(
        env.cluster()
            .client_with_token(&stranger, &env.op_ns)
            .await
            .unwrap(),
    );
    let e = without.check(&scraper, "/metrics", "get").await.unwrap_err();
    assert!(
        matches!(&e, ido_operator::auth::ReviewError::Authentication(kube::Error::Api(s)) if s.code == 403),
        "{e:?}"
    );
    until_status("a bogus token", 401, async || {
        get(Some("not-a-token".into())).await
    })
    .await;
    let (_, _, body) = until_status("a token without the grant", 403, async || {
        get(Some(stranger.clone())).await
    })
    .await;
    assert_eq!(
        body,
        format!(
            "Authorization denied for user system:serviceaccount:{}:stranger",
            env.op_ns
        )
    );
    let (_, head, body) = until_status("the scraper", 200, async || get(Some(scraper.clone())).await).await;
    assert!(head.contains(http::OPENMETRICS), "{head}");
    assert_eq!(
        crate::metrics::sample(&body, r#"ido_reconciles_total{controller="nodeimage"}"#),
        Some(1.0),
        "{body}"
    );

    // The certificate is self-signed, for localhost: trusting exactly it verifies.
    let cert = verifier.seen.lock().unwrap().clone().unwrap();
    let pinned = https_get(addr, "/metrics", Some(&scraper), verifying_tls(&[cert]))
        .await
        .unwrap();
    assert_eq!(pinned.0, 200);

    // Answers are cached: right after the grant goes, the scraper still gets in; once
    // the answer expired, the API server's refusal shows.
    env.cluster()
        .kubectl(&["delete", "clusterrolebinding", &reader_binding])
        .await
        .unwrap();
    assert_eq!(get(Some(scraper.clone())).await.0, 200, "a cached answer");
    until_status("the scraper without its grant", 403, async || {
        get(Some(scraper.clone())).await
    })
    .await;

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_certificate_directory_is_served_and_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let install = |ca: &TestCa| {
        std::fs::copy(&ca.server_cert, dir.path().join(tls::CERT_FILE)).unwrap();
        std::fs::copy(&ca.server_key, dir.path().join(tls::KEY_FILE)).unwrap();
    };
    let roots = |ca: &TestCa| {
        CertificateDer::pem_file_iter(&ca.ca_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let (first, second) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    install(&first);
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = tls::server_config(&CertSource::Dir(dir.path().to_path_buf())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        tls::TlsListener::new(listener, config).unwrap(),
        http::metrics_router(Metrics::default(), None),
        async {
            let _ = stopped.await;
        },
    ));
    let (code, _, body) = https_get(addr, "/metrics", None, verifying_tls(&roots(&first)))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.ends_with("# EOF\n"));
    assert!(
        https_get(addr, "/metrics", None, verifying_tls(&roots(&second)))
            .await
            .is_err(),
        "signed by the first CA only"
    );

    // A broken pair is not taken; the next good one is, within the reload period.
    std::fs::write(dir.path().join(tls::KEY_FILE), "not a key").unwrap();
    tokio::time::sleep(tls::RELOAD_EVERY + Duration::from_secs(1)).await;
    assert!(
        https_get(addr, "/metrics", None, verifying_tls(&roots(&first)))
            .await
            .is_ok(),
        "the old certificate stays while the files are broken"
    );
    install(&second);
    let mut reloaded = false;
    for _ in 0..60 {
        if https_get(addr, "/metrics", None, verifying_tls(&roots(&second)))
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(reloaded, "the new certificate is served");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// `rest_client_requests_total{code,method,host}` counts what the operator's client sends
/// to the real API server: the start-up check's and the Lease's GETs (200) and the Lease's
/// creation (POST, 201), labelled with the server's `host:port`; and a request the server
/// refuses is counted with its code (Secrets of a namespace the operator may not read). A
/// cluster of its own: the operator's release controller watches Releases cluster-wide.
#[tokio::test]
async fn client_requests_are_counted_by_code_method_and_host() {
    let env = Env::private("restclient", json!({})).await;
    let server = env.cluster().server().unwrap();
    let host = ido_operator::rest_client::host_of(&server);
    let metrics = Metrics::default();
    let parts = crate::parts(
        Arc::new(crate::MemProvider::default()),
        crate::s3_source().await,
        metrics.clone(),
        &env.ns,
    );
    let opts = ido_operator::OperatorOptions {
        api_server: Some(server.clone()),
        ..crate::operator::replica(&env.op_ns, "ido-rest-client")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let op = tokio::spawn(ido_operator::run_until(
        env.operator_client().await,
        parts,
        opts,
        async {
            let _ = stopped.await;
        },
    ));
    let series = |code: &str, method: &str| {
        format!(r#"rest_client_requests_total{{code="{code}",method="{method}",host="{host}"}}"#)
    };
    crate::wait_for("the Lease's creation to be counted", async || {
        sample(&metrics.encode(), &series("201", "POST")).unwrap_or(0.0) >= 1.0
    })
    .await;
    let text = metrics.encode();
    assert!(
        sample(&text, &series("200", "GET")).unwrap_or(0.0) >= 2.0,
        "the start-up check's GETs: {text}"
    );
    assert!(text.contains("# TYPE rest_client_requests counter"), "{text}");
    assert_eq!(
        sum(&text, r#"rest_client_requests_total{code="<error>""#),
        0.0,
        "{text}"
    );
    // Stopped at once, while the controllers' first lists may still run: a clean end.
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), op)
        .await
        .expect("the operator stops")
        .unwrap()
        .unwrap();

    // A refused request counts with its code, through the same client.
    let refused = Metrics::default();
    let client = ido_operator::rest_client::instrument(
        env.operator_client().await,
        &host,
        ido_operator::rest_client::requests(&refused),
    );
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client, "kube-system");
    assert!(secrets.list(&Default::default()).await.is_err());
    assert_eq!(
        sample(&refused.encode(), &series("403", "GET")),
        Some(1.0),
        "{}",
        refused.encode()
    );
}
