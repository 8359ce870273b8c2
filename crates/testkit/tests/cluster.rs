//! The control plane of the test kit: real controllers run (namespaces get their
//! ServiceAccount and root CA, Jobs get Pods, the garbage collector removes what an owner
//! leaves), RBAC is enforced for ServiceAccount tokens, and a restarted API server serves again.

use std::time::Duration;

use ido_testkit::Cluster;

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_shared_cluster_runs_the_controllers_and_enforces_rbac() {
    let c = Cluster::shared().await.unwrap();
    let ns = c.namespace("kit").await.unwrap();
    // The serviceaccount and root-CA publisher controllers.
    eventually("the default ServiceAccount", async || {
        c.kubectl(&["get", "serviceaccount", "default", "-n", &ns])
            .await
            .is_ok()
    })
    .await;
    eventually("kube-root-ca.crt", async || {
        c.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", &ns])
            .await
            .is_ok()
    })
    .await;

    // The job controller makes a Pod; the garbage collector removes it with the Job.
    c.kubectl(&["create", "job", "j", "-n", &ns, "--image=busybox", "--", "true"])
        .await
        .unwrap();
    let pods = async || {
        c.kubectl(&["get", "pods", "-n", &ns, "-l", "job-name=j", "-o", "name"])
            .await
            .unwrap()
    };
    eventually("the Job's Pod", async || !pods().await.trim().is_empty()).await;
    c.kubectl(&["delete", "job", "j", "-n", &ns, "--cascade=background"])
        .await
        .unwrap();
    eventually("the Pod to be collected", async || pods().await.trim().is_empty()).await;

    // A ServiceAccount token gets only what RBAC grants.
    c.kubectl(&["create", "serviceaccount", "reader", "-n", &ns])
        .await
        .unwrap();
    c.kubectl(&[
        "create",
        "role",
        "cm-reader",
        "-n",
        &ns,
        "--verb=get,list",
        "--resource=configmaps",
    ])
    .await
    .unwrap();
    c.kubectl(&[
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        &ns,
        "--role=cm-reader",
        &format!("--serviceaccount={ns}:reader"),
    ])
    .await
    .unwrap();
    let token = c.token(&ns, "reader").await.unwrap();
    let client = c.client_with_token(&token, &ns).await.unwrap();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client.clone(), &ns);
    cms.get("kube-root-ca.crt").await.unwrap();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client, &ns);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("listing Secrets without a grant: {other:?}"),
    }
}

#[tokio::test]
async fn a_private_cluster_survives_an_api_server_restart_and_stops_on_drop() {
    let c = Cluster::start().await.unwrap();
    c.kubectl(&["create", "configmap", "before", "-n", "default"])
        .await
        .unwrap();
    c.restart("kube-apiserver").await.unwrap();
    let out = c
        .kubectl(&["get", "configmap", "before", "-n", "default", "-o", "name"])
        .await
        .unwrap();
    assert_eq!(out.trim(), "configmap/before");
    let dir = c.dir().to_path_buf();
    let pid: u32 = std::fs::read_to_string(dir.join("pids/kube-apiserver.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(c);
    // Gone, or a zombie waiting for init to reap it.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state.rsplit(") ").next().unwrap_or_default();
    assert!(
        state.is_empty() || state.starts_with('Z'),
        "the API server outlived its cluster: {state}"
    );
    assert!(!dir.exists(), "the cluster directory was left behind");
}
