use super::*;

/// A tiny upstream: `GET /big` is 1 MiB, `POST /up` echoes the byte count and answers
/// with a `Location` at itself, `PUT /up` counts the body.
async fn upstream() -> (String, JoinHandle<()>) {
    use axum::routing::{get, post};
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/big", get(|| async { vec![7u8; 1 << 20] }))
        .route(
            "/up",
            post(move || async move {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::ACCEPTED;
                r.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_str(&format!("http://{addr}/up?_state=x")).unwrap(),
                );
                r
            })
            .put(|body: Bytes| async move { body.len().to_string() }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(tcp, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn forwards_rewrites_and_injects() {
    let (up, _task) = upstream().await;
    let proxy = FaultProxy::start(&up).await.unwrap();
    let c = reqwest::Client::new();
    let u = proxy.url();

    // Plain forwarding, Location rewritten to the proxy, uploads streamed through.
    let big = c
        .get(format!("{u}/big"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big.len(), 1 << 20);
    let post = c.post(format!("{u}/up")).send().await.unwrap();
    assert_eq!(post.status(), 202);
    let loc = post.headers()[header::LOCATION].to_str().unwrap().to_string();
    assert!(loc.starts_with(&u), "{loc}");
    let n = c
        .put(&loc)
        .body(vec![1u8; 300_000])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(n, "300000");

    // 503 on every 2nd GET, 429 with Retry-After on the first POST.
    proxy.set_rules(vec![
        Rule::new(Fault::Status(503))
            .method("GET")
            .when(When::EveryNth(2)),
        Rule::new(Fault::TooManyRequests { retry_after_secs: 1 })
            .method("POST")
            .when(When::First(1)),
    ]);
    let codes: Vec<u16> = futures::future::join_all(
        (0..4).map(|_| async { c.get(format!("{u}/big")).send().await.unwrap().status().as_u16() }),
    )
    .await;
    assert_eq!(codes.iter().filter(|&&s| s == 503).count(), 2, "{codes:?}");
    let r = c.post(format!("{u}/up")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    assert!(r.text().await.unwrap().contains("TOOMANYREQUESTS"));
    assert_eq!(c.post(format!("{u}/up")).send().await.unwrap().status(), 202);
    let counts = proxy.counts();
    assert_eq!(
        (counts.statuses, counts.too_many_requests, counts.requests),
        (2, 1, 6)
    );

    // A reset mid-body: the client gets some bytes, then an error.
    proxy.set_rules(vec![
        Rule::new(Fault::ResetResponse { after_bytes: 100_000 })
            .path("/big")
            .when(When::First(1)),
    ]);
    let r = c.get(format!("{u}/big")).send().await.unwrap();
    let e = r.bytes().await.expect_err("the body must fail");
    assert!(format!("{e:?}").contains("ConnectionReset"), "a real RST: {e:?}");
    assert_eq!(proxy.counts().resets_response, 1);
    let ok = c
        .get(format!("{u}/big"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(ok.len(), 1 << 20, "only the first one is cut");

    // A reset mid-upload.
    proxy.set_rules(vec![
        Rule::new(Fault::ResetRequest { after_bytes: 50_000 }).method("PUT"),
    ]);
    let e = c.put(&loc).body(vec![1u8; 1 << 20]).send().await;
    assert!(format!("{e:?}").contains("ConnectionReset"), "a real RST: {e:?}");
    assert_eq!(proxy.counts().resets_request, 1);
    assert_eq!(proxy.events().len(), 1);
    proxy.clear_rules();
    assert!(
        c.put(&loc)
            .body(vec![1u8; 10])
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
}
