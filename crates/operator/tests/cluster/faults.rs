//! Faults against the real API server: the API server restarted in the middle of an upload,
//! and the leader killed in the middle of one. Either way each location ends with exactly one
//! template, uploaded once to completion, and the NodeImage's status is right.

use std::{sync::Arc, time::Duration};

use ido_api::NodeImage;
use ido_controllers::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

use crate::{IMAGE, MemProvider, RELEASE, env::Env, operator::replica, parts, release, s3_source, wait_for};

async fn start(
    env: &Env,
    provider: Arc<MemProvider>,
    identity: &str,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let parts = parts(provider, s3_source().await, Metrics::default(), &env.ns);
    tokio::spawn(ido_operator::run_until(
        env.operator_client().await,
        parts,
        replica(&env.op_ns, identity),
        std::future::pending(),
    ))
}

/// Waits (up to 60 s) for the NodeImage to be Available in both locations.
async fn available(env: &Env) {
    for _ in 0..600 {
        if let Some(ni) = env.get::<NodeImage>(Some(&env.ns), IMAGE).await {
            let locs = ni["status"]["locations"].as_array().cloned().unwrap_or_default();
            if ni["status"]["state"] == "Available"
                && locs.len() == 2
                && locs.iter().all(|l| l["state"] == "Available")
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the NodeImage never became Available: {:?}",
        env.get::<NodeImage>(Some(&env.ns), IMAGE).await
    );
}

#[tokio::test]
async fn an_api_server_restart_mid_upload_leaves_one_template_per_location() {
    let env = Env::private("restart", json!({})).await;
    let provider = Arc::new(MemProvider {
        delay: Duration::from_secs(8),
        ..MemProvider::default()
    });
    let op = start(&env, provider.clone(), "ido-0").await;
    env.create(&release(RELEASE)).await;
    wait_for("the uploads to start", async || {
        *provider.creates.lock().unwrap() == 2
    })
    .await;

    env.cluster().restart("kube-apiserver").await.unwrap();
    available(&env).await;
    assert_eq!(
        *provider.completed.lock().unwrap(),
        2,
        "each location uploaded once"
    );
    assert_eq!(provider.templates.lock().unwrap().len(), 2);
    assert!(
        !op.is_finished(),
        "the operator kept running (and leading) through the restart"
    );
    op.abort();
}

#[tokio::test]
async fn a_leader_killed_mid_upload_is_replaced_within_the_lease_and_one_template_results() {
    let env = Env::private("failover", json!({})).await;
    let op_ns = env.op_ns.clone();
    // One catalog seen by both replicas, as one vCenter would be.
    let provider = Arc::new(MemProvider {
        delay: Duration::from_secs(6),
        ..MemProvider::default()
    });
    let a = start(&env, provider.clone(), "ido-0").await;
    let holder = async || {
        env.get::<Lease>(Some(&op_ns), "ido-leader")
            .await
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    wait_for("ido-0 to lead", async || holder().await == Some(json!("ido-0"))).await;
    let b = start(&env, provider.clone(), "ido-1").await;
    env.create(&release(RELEASE)).await;
    wait_for("the uploads to start", async || {
        *provider.creates.lock().unwrap() == 2
    })
    .await;

    // Killed: no clean shutdown, the lease is not given up, the uploads never finish.
    a.abort();
    let killed = std::time::Instant::now();
    for _ in 0..250 {
        if holder().await == Some(json!("ido-1")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    assert_eq!(
        holder().await,
        Some(json!("ido-1")),
        "the standby never took over"
    );
    // The lease lasts 15 s; the standby retries every 5 s.
    assert!(took < Duration::from_secs(22), "took over after {took:?}");
    available(&env).await;
    assert_eq!(
        *provider.completed.lock().unwrap(),
        2,
        "one finished upload per location"
    );
    assert_eq!(
        provider.templates.lock().unwrap().len(),
        2,
        "exactly one template per location"
    );
    assert!(!b.is_finished());
    b.abort();
}
