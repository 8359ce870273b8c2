//! Leader election between two electors.

use std::time::Duration;

use ido_operator::{LeaderElector, LeaseConfig, LeaseError, Round};
use k8s_openapi::api::coordination::v1::Lease;

use crate::env::Env;

#[tokio::test]
async fn lease_is_taken_over_after_expiry_and_handed_over_on_release() {
    let env = Env::new("lease", serde_json::json!({})).await;
    let op_ns = env.op_ns.as_str();
    let cfg = |id: &str| LeaseConfig {
        duration: Duration::from_secs(1),
        retry: Duration::from_millis(100),
        renew_deadline: Duration::from_millis(500),
        ..LeaseConfig::new("ido-leader", op_ns, id)
    };
    let a = LeaderElector::new(env.operator_client().await, cfg("a"));
    let b = LeaderElector::new(env.operator_client().await, cfg("b"));
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Round::Leading);
    assert_eq!(
        b.try_acquire_or_renew().await.unwrap(),
        Round::Standby { holder: "a".into() }
    );
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Round::Leading, "renewed");

    // `a` stops renewing: `b` waits a whole lease duration by its own clock, then takes over.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), b.acquire(|_| {}))
        .await
        .expect("b leads");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "took over after {:?}",
        started.elapsed()
    );
    let lost = tokio::time::timeout(Duration::from_secs(2), a.hold())
        .await
        .expect("a notices");
    assert!(
        matches!(lost, LeaseError::TakenOver { ref holder, .. } if holder == "b"),
        "{lost}"
    );

    // Giving the lease up hands it over at once.
    b.release().await.unwrap();
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Round::Leading);
    let lease = env.get::<Lease>(Some(op_ns), "ido-leader").await.unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 2);
}
