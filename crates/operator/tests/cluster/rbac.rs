//! The chart's RBAC replayed against the requests the operator made.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde_json::{Value, json};

use crate::{
    NS, OPERATOR_NS, diskimport::diskimport_scenario, fake_api::Call, helm, imagesync::imagesync_scenario,
    operator::operator_scenario, reconcile::reconcilers_scenario,
};

/// Events `patch`: kube's Recorder sends it only for an identical event repeated within
/// minutes (an event series), which a test run may or may not produce.
fn is_event_patch(g: &Grant) -> bool {
    g.resource == "events" && g.verb == "patch"
}

/// A permission from the chart: `namespace` `None` means cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    namespace: Option<String>,
    group: String,
    resource: String,
    verb: String,
}

/// Chart values with the DiskImport controller on (its grants are cluster-wide, rendered
/// only then).
pub(crate) fn disk_import_values() -> Value {
    json!({"namespace": NS, "diskImport": {"enabled": true}})
}

/// The chart's RBAC for its ServiceAccount, rendered with `values` (the NodeImage
/// namespace `NS`) and the release in `OPERATOR_NS`.
fn chart_grants(values: &Value) -> Vec<Grant> {
    let chart = helm::Chart::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/image-distribution-operator"),
    );
    let docs: Vec<Value> = chart
        .manifests("ido", OPERATOR_NS, values)
        .into_iter()
        .filter(|(file, _)| file == "rbac.yaml")
        .map(|(_, d)| d)
        .collect();
    let mut roles = BTreeMap::new();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        let key = (
            d["kind"].as_str().unwrap(),
            d["metadata"]["namespace"].as_str(),
            d["metadata"]["name"].as_str().unwrap(),
        );
        roles.insert(key, d["rules"].as_array().unwrap().clone());
    }
    let mut grants = vec![];
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let ours = b["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == "image-distribution-operator"
                && s["namespace"] == OPERATOR_NS
        });
        if !ours {
            continue;
        }
        let ns = b["metadata"]["namespace"].as_str();
        let role_ns = if b["roleRef"]["kind"] == "Role" { ns } else { None };
        let rules = &roles[&(
            b["roleRef"]["kind"].as_str().unwrap(),
            role_ns,
            b["roleRef"]["name"].as_str().unwrap(),
        )];
        let each = |v: &Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        for r in rules {
            for group in each(&r["apiGroups"]) {
                for resource in each(&r["resources"]) {
                    for verb in each(&r["verbs"]) {
                        grants.push(Grant {
                            namespace: ns.map(String::from),
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                        });
                    }
                }
            }
        }
    }
    grants
}

fn resource_of(c: &Call) -> String {
    match &c.subresource {
        Some(s) => format!("{}/{s}", c.resource),
        None => c.resource.clone(),
    }
}

/// Grants of the chart that allow `call`.
fn granting<'a>(grants: &'a [Grant], c: &Call) -> Vec<&'a Grant> {
    grants
        .iter()
        .filter(|g| {
            g.group == c.group
                && g.resource == resource_of(c)
                && g.verb == c.verb
                && (g.namespace.is_none() || g.namespace == c.namespace)
        })
        .collect()
}

/// Every request the operator made is allowed by the chart's RBAC (default values).
pub(crate) fn assert_granted(calls: &[Call]) {
    assert_granted_with(calls, &json!({"namespace": NS}));
}

/// Every request the operator made is allowed by the chart's RBAC rendered with `values`.
pub(crate) fn assert_granted_with(calls: &[Call], values: &Value) {
    let grants = chart_grants(values);
    let denied: BTreeSet<&Call> = calls.iter().filter(|c| granting(&grants, c).is_empty()).collect();
    assert!(denied.is_empty(), "the chart's RBAC denies {denied:#?}");
}

#[tokio::test]
async fn rbac_grants_exactly_what_the_operator_uses() {
    let mut calls = reconcilers_scenario().await;
    calls.extend(operator_scenario().await);
    calls.extend(imagesync_scenario().await);
    assert_granted(&calls);
    let disk_calls = diskimport_scenario().await;
    calls.extend(disk_calls.iter().cloned());
    let values = disk_import_values();
    assert_granted_with(&calls, &values);
    // Least privilege: every grant is used, except events `patch`, which kube's Recorder
    // sends only for an identical event repeated within minutes (an event series).
    let grants = chart_grants(&values);
    let used: BTreeSet<&Grant> = calls.iter().flat_map(|c| granting(&grants, c)).collect();
    let unused: Vec<&Grant> = grants
        .iter()
        .filter(|g| !used.contains(g) && !is_event_patch(g))
        .collect();
    assert!(unused.is_empty(), "grants nothing uses: {unused:#?}");
    assert!(
        calls
            .iter()
            .any(|c| c.verb == "watch" && c.resource == "releases" && c.namespace.is_none())
    );
    assert!(
        calls
            .iter()
            .any(|c| c.verb == "watch" && c.resource == "nodeimages" && c.namespace.as_deref() == Some(NS))
    );
    assert!(
        calls
            .iter()
            .any(|c| c.verb == "watch" && c.resource == "imagesyncs" && c.namespace.as_deref() == Some(NS))
    );
    assert!(
        calls
            .iter()
            .any(|c| c.group == "coordination.k8s.io" && c.namespace.as_deref() == Some(OPERATOR_NS))
    );
    for resource in ["diskimports", "jobs", "persistentvolumeclaims"] {
        assert!(
            disk_calls
                .iter()
                .any(|c| c.verb == "watch" && c.resource == resource && c.namespace.is_none()),
            "{resource} watched cluster-wide"
        );
    }
    // Without DiskImports, no cluster-wide grant on Jobs, claims or pods is rendered.
    let default = chart_grants(&json!({"namespace": NS}));
    assert!(
        !default
            .iter()
            .any(|g| ["jobs", "persistentvolumeclaims", "pods", "diskimports"].contains(&g.resource.as_str())),
        "{default:#?}"
    );
}
