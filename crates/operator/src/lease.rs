//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`.
//!
//! ```text
//!   acquire ──(lease free, expired, or ours)──▶ leading ──hold: renew every 5 s──▶ …
//!      ▲  every 5 s while another holder renews            │ taken over, or no renewal
//!      └── standby                                          ▼ for 10 s → LeaseError (the
//!                                                             process stops its controllers)
//! ```
//!
//! Expiry is judged by the local clock only: a lease counts as expired when its record
//! (holder, renew time) has not changed for `leaseDurationSeconds` since this replica first
//! saw it, so clock skew between nodes does not matter. Every write is a replace carrying the
//! Lease's `resourceVersion`; two candidates racing for the same lease get one winner and
//! one `409 Conflict`. On shutdown the leader clears the holder so a standby takes over at
//! once instead of waiting for expiry. RBAC: `get`, `create`, `update` on `leases`.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::Mutex, time::Instant};

/// Where the lease is and who this replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name (default `ido-leader`).
    pub name: String,
    /// Namespace of the Lease: the operator's own.
    pub namespace: String,
    /// `holderIdentity` of this replica: its pod name.
    pub identity: String,
    /// `leaseDurationSeconds`: how long a lease stays valid without renewal (15 s).
    pub duration: Duration,
    /// How often the leader renews, and a standby retries (5 s).
    pub retry: Duration,
    /// How long the leader keeps going while renewals fail (10 s, below `duration`).
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// Defaults for `name` in `namespace` held as `identity`: 15 s lease, 5 s retry, 10 s
    /// renew deadline (client-go's ratios).
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds the lease now.
    #[error("lease {namespace}/{name} was taken over by {holder:?}")]
    TakenOver {
        namespace: String,
        name: String,
        holder: String,
    },
    /// Renewals failed for longer than the renew deadline.
    #[error("lease {namespace}/{name} could not be renewed for {elapsed:?}: {last_error}")]
    NotRenewed {
        namespace: String,
        name: String,
        elapsed: Duration,
        last_error: String,
    },
}

/// What one election round found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// This replica holds the lease.
    Leading,
    /// Another replica holds a valid lease.
    Standby { holder: String },
}

/// The lease record as last seen, and when it was first seen in that form.
#[derive(Clone, Debug)]
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    since: Instant,
}

/// Takes, renews and gives up one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Mutex<Option<Observed>>,
}

impl LeaderElector {
    /// An elector for `cfg.namespace/cfg.name`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: Mutex::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn spec(&self, now: MicroTime, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: creates the lease, renews it if ours, or takes it if free or expired.
    pub async fn try_acquire_or_renew(&self) -> Result<Round, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Standby {
                    holder: String::new(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() && !self.expired(&holder, &spec).await {
            return Ok(Round::Standby { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Standby { holder }),
            Err(e) => Err(e),
        }
    }

    /// Whether `holder`'s record has gone unchanged for a whole lease duration, by our clock.
    async fn expired(&self, holder: &str, spec: &LeaseSpec) -> bool {
        let mut seen = self.observed.lock().await;
        let same = seen
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew_time == spec.renew_time);
        if !same {
            *seen = Some(Observed {
                holder: holder.to_string(),
                renew_time: spec.renew_time.clone(),
                since: Instant::now(),
            });
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.duration);
        seen.as_ref().is_some_and(|o| o.since.elapsed() >= duration)
    }

    /// Waits until this replica holds the lease, retrying every `retry`. `on_round` hears
    /// every round's outcome (readiness, logs).
    pub async fn acquire(&self, mut on_round: impl FnMut(&Result<Round, kube::Error>)) {
        loop {
            let r = match tokio::time::timeout(self.cfg.retry, self.try_acquire_or_renew()).await {
                Ok(r) => r,
                Err(_) => Err(kube::Error::Service("lease request timed out".into())),
            };
            on_round(&r);
            if r.as_ref().is_ok_and(|r| *r == Round::Leading) {
                return;
            }
            tokio::time::sleep(self.cfg.retry).await;
        }
    }

    /// Renews every `retry` while leading; returns why leadership ended.
    pub async fn hold(&self) -> LeaseError {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry).await;
            let r = match tokio::time::timeout(self.cfg.retry, self.try_acquire_or_renew()).await {
                Ok(r) => r,
                Err(_) => Err(kube::Error::Service("lease request timed out".into())),
            };
            match r {
                Ok(Round::Leading) => last_ok = Instant::now(),
                Ok(Round::Standby { holder }) => {
                    return LeaseError::TakenOver {
                        namespace: self.cfg.namespace.clone(),
                        name: self.cfg.name.clone(),
                        holder,
                    };
                }
                Err(e) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "renewing the lease failed");
                    if last_ok.elapsed() >= self.cfg.renew_deadline {
                        return LeaseError::NotRenewed {
                            namespace: self.cfg.namespace.clone(),
                            name: self.cfg.name.clone(),
                            elapsed: last_ok.elapsed(),
                            last_error: e.to_string(),
                        };
                    }
                }
            }
        }
    }

    /// Gives the lease up if this replica holds it, so a standby need not wait for expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}
