//! The chart's RBAC as the API server enforces it. Every other test here runs the operator
//! as the chart's ServiceAccount, so a request the chart does not grant fails that test;
//! this one checks the other side, least privilege: what the ServiceAccount may not do.

use serde_json::json;

use crate::env::Env;

/// `kubectl auth can-i VERB RESOURCE -n NS --as SA`: the API server's own answer.
async fn can_i(env: &Env, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let sa = format!("system:serviceaccount:{}:{}", env.op_ns, env.service_account);
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", &sa];
    args.extend(sub.as_deref());
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let out = env.cluster().kubectl_output(&args, None).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn the_chart_grants_what_the_operator_uses_and_no_more() {
    let env = Env::new("rbac", json!({})).await;
    let (ns, op_ns) = (env.ns.as_str(), env.op_ns.as_str());
    // Granted: what the reconcilers and leader election do.
    for (verb, resource, where_) in [
        ("watch", "releases.release.giantswarm.io", None),
        ("patch", "releases.release.giantswarm.io", None),
        ("watch", "nodeimages.image.giantswarm.io", Some(ns)),
        ("patch", "nodeimages.image.giantswarm.io/status", Some(ns)),
        ("patch", "imagesyncs.ido.dev/status", Some(ns)),
        ("get", "secrets", Some(ns)),
        ("create", "events.events.k8s.io", Some(ns)),
        ("create", "events.events.k8s.io", Some("default")),
        ("update", "leases.coordination.k8s.io", Some(op_ns)),
    ] {
        assert!(
            can_i(&env, verb, resource, where_).await,
            "{verb} {resource} in {where_:?} is needed"
        );
    }
    // Not granted: Secrets are read by name only, Releases never changed or deleted,
    // NodeImages only in their namespace, and without DiskImports no Jobs, claims or pods.
    for (verb, resource, where_) in [
        ("list", "secrets", Some(ns)),
        ("watch", "secrets", Some(ns)),
        ("update", "nodeimages.image.giantswarm.io/status", Some(ns)),
        ("get", "secrets", Some(op_ns)),
        ("delete", "releases.release.giantswarm.io", None),
        ("update", "releases.release.giantswarm.io", None),
        ("create", "nodeimages.image.giantswarm.io", Some("default")),
        ("create", "jobs.batch", Some(ns)),
        ("create", "persistentvolumeclaims", Some(ns)),
        ("list", "pods", Some(ns)),
        ("watch", "diskimports.ido.dev", None),
    ] {
        assert!(
            !can_i(&env, verb, resource, where_).await,
            "{verb} {resource} in {where_:?} is not needed"
        );
    }

    // With DiskImports: cluster-wide Jobs, claims and importer pod lists, still no Secrets.
    let env = Env::new("rbac-disk", json!({"diskImport": {"enabled": true}})).await;
    for (verb, resource) in [
        ("watch", "diskimports.ido.dev"),
        ("create", "jobs.batch"),
        ("delete", "persistentvolumeclaims"),
        ("list", "pods"),
        ("get", "pods/log"),
    ] {
        assert!(can_i(&env, verb, resource, None).await, "{verb} {resource}");
    }
    assert!(can_i(&env, "patch", "diskimports.ido.dev/status", None).await);
    for (verb, resource) in [
        ("get", "secrets"),
        ("delete", "pods"),
        ("update", "jobs.batch"),
        ("patch", "persistentvolumeclaims"),
    ] {
        assert!(!can_i(&env, verb, resource, None).await, "{verb} {resource}");
    }

    // With CDI compatibility: claims' annotations patched (CDI's PVC flow), nothing more.
    let env = Env::new(
        "rbac-cdi",
        json!({"diskImport": {"enabled": true}, "cdiCompat": {"enabled": true}}),
    )
    .await;
    assert!(can_i(&env, "patch", "persistentvolumeclaims", None).await);
    for (verb, resource) in [
        ("update", "persistentvolumeclaims"),
        ("get", "secrets"),
        ("delete", "pods"),
    ] {
        assert!(!can_i(&env, verb, resource, None).await, "{verb} {resource}");
    }
}
