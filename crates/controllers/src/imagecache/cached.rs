//! The CachedImage reconciler: make the copy, keep a mutable tag's copy current, and
//! delete a copy unused past its policy's retention.
//!
//! ```text
//!   CachedImage ─▶ its policy (spec.policy) ─┬─ gone ──────────────▶ record deleted (copy kept)
//!                                            ├─ copy due ─────────▶ copy task (≤ imageCache.concurrency at once):
//!                                            │   pull Secrets (status.pullSecrets) ─▶ source ──copy──▶ cache
//!                                            ├─ unused > retention ▶ expire task: the copy ido pushed deleted
//!                                            │                        (unless another record holds its digest), then the record
//!                                            └─ else ─────────────▶ wait for the refresh or the expiry
//! ```
//!
//! A copy is due when none was made yet, or the last failed, or a tag's copy is older than
//! the policy's `refreshInterval` (a digest reference never moves). The engine skips a copy
//! whose digest is already at the cache, so a refresh of an unchanged tag reads two
//! manifests. Only a record whose copy ido pushed deletes it from the registry: a copy that
//! was there before is left.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use ido_api::{
    CachePhase, CachedImage, ConditionStatus, Reason,
    condition::{find, set_condition},
};
use ido_oci::{Reference, copy::copy, registry::Registry};
use jiff::Timestamp;
use tokio::sync::Semaphore;

use super::policy::{self, Compiled};
use crate::{
    Action, Context, Error,
    imagesync::status::{MAX_MESSAGE, clip, condition, now_s},
    metrics::{CacheCopyLabels, CacheLabels},
    store::{Event, Store, modify_status},
    tasks::{TaskKey, TaskState},
};

/// Shortest and longest wait before a failed copy is tried again.
const RETRY_MIN: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// Condition type.
const READY: &str = "Ready";

/// The copies of one process at once (`imageCache.concurrency`).
#[derive(Debug, Default)]
pub struct CopySlots(OnceLock<Arc<Semaphore>>);

impl CopySlots {
    fn get(&self, n: usize) -> Arc<Semaphore> {
        self.0.get_or_init(|| Arc::new(Semaphore::new(n.max(1)))).clone()
    }
}

/// What a CachedImage's task ends with: when to look again.
type TaskOutcome = Result<Duration, Error>;

/// Reconciles one CachedImage (see the module docs).
pub async fn reconcile<S: Store>(ci: &CachedImage, ctx: &Arc<Context<S>>) -> Result<Action, Error> {
    if ci.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let key = TaskKey::of(ci);
    match ctx.tasks.take::<TaskOutcome>(&key) {
        TaskState::Running => return Ok(Action::Requeue(ctx.settings.recheck)),
        TaskState::Done(Err(e)) => return Err(e),
        TaskState::Done(Ok(wait)) => return Ok(Action::Requeue(wait.min(ctx.settings.recheck))),
        TaskState::Idle => {}
    }
    let Some(found) = policy::find(&ctx.store, &ci.spec.policy).await? else {
        tracing::info!(cachedimage = ?ci.metadata.name, policy = %ci.spec.policy, "its policy is gone: the record goes, the copy stays");
        ctx.store
            .event(
                ci,
                Event::normal(
                    Reason::PolicyGone.as_str(),
                    "Delete",
                    format!(
                        "{} is gone; the copy {} is left in the registry",
                        ci.spec.policy, ci.spec.target
                    ),
                ),
            )
            .await;
        ctx.store.delete(ci).await?;
        return Ok(Action::AwaitChange);
    };
    // An invalid policy reports itself; its images wait for it to be fixed.
    let Ok(compiled) = found.compile(&ctx.settings.namespace) else {
        return Ok(Action::Requeue(ctx.settings.recheck));
    };
    let now = Timestamp::now();
    let expires = expires_at(ci, &compiled);
    if let Some(at) = expires
        && at <= now
    {
        let (task_ctx, ci) = (ctx.clone(), ci.clone());
        ctx.tasks.start(
            key,
            move |_| async move { expire(&ci, &compiled, &task_ctx).await },
        );
        return Ok(Action::Requeue(ctx.settings.recheck));
    }
    let due = match copy_due(ci, &compiled, now) {
        Some(wait) if !wait.is_zero() => wait,
        Some(_) => {
            let (task_ctx, ci) = (ctx.clone(), ci.clone());
            ctx.tasks.start(
                key,
                move |_| async move { copy_task(&ci, &compiled, &task_ctx).await },
            );
            return Ok(Action::Requeue(ctx.settings.recheck));
        }
        None => ctx.settings.recheck,
    };
    let expiry = expires.map(|t| until(now, t));
    Ok(Action::Requeue(
        [Some(due), expiry, Some(ctx.settings.recheck)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(ctx.settings.recheck),
    ))
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or_default() + Duration::from_millis(100)
}

/// When the record expires: no workload runs the image, and none did for the retention.
pub fn expires_at(ci: &CachedImage, policy: &Compiled) -> Option<Timestamp> {
    let st = ci.status.as_ref();
    if st.is_some_and(|s| !s.workloads.is_empty()) {
        return None;
    }
    let since = st
        .and_then(|s| s.last_used_time)
        .or_else(|| ci.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    since
        .checked_add(jiff::SignedDuration::try_from(policy.retention).ok()?)
        .ok()
}

/// `Some(zero)` when a copy is due now, `Some(wait)` when one will be, `None` for never (a
/// digest reference copied).
fn copy_due(ci: &CachedImage, policy: &Compiled, now: Timestamp) -> Option<Duration> {
    let st = ci.status.as_ref();
    let phase = st.map(|s| s.phase).unwrap_or_default();
    match phase {
        CachePhase::Pending | CachePhase::Copying => return Some(Duration::ZERO),
        CachePhase::Failed => {
            let failing_since = st
                .and_then(|s| find(&s.conditions, READY))
                .map(|c| c.last_transition_time)
                .unwrap_or(now);
            let last = st.and_then(|s| s.last_attempt_time).unwrap_or(failing_since);
            let failing = Duration::try_from(now.duration_since(failing_since)).unwrap_or_default();
            let next = last
                .checked_add(jiff::SignedDuration::try_from(failing.clamp(RETRY_MIN, RETRY_MAX)).ok()?)
                .ok()?;
            return Some(if next <= now {
                Duration::ZERO
            } else {
                until(now, next)
            });
        }
        CachePhase::Cached => {}
    }
    if ido_oci::reference::parse(&ci.spec.source).is_ok_and(|r| r.digest().is_some()) {
        return None;
    }
    let last = st.and_then(|s| s.last_copied_time)?;
    let next = last
        .checked_add(jiff::SignedDuration::try_from(policy.refresh).ok()?)
        .ok()?;
    Some(if next <= now {
        Duration::ZERO
    } else {
        until(now, next)
    })
}

/// Writes the record's phase and `Ready` condition (and `more` of the status).
async fn set_phase<S: Store>(
    ctx: &Context<S>,
    ci: &CachedImage,
    phase: CachePhase,
    reason: Reason,
    message: String,
    more: impl Fn(&mut ido_api::CachedImageStatus),
) -> Result<Option<CachedImage>, Error> {
    let message = clip(&message, MAX_MESSAGE);
    let ready = if phase == CachePhase::Cached {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    Ok(modify_status(&ctx.store, ci, |o: &mut CachedImage| {
        let g = o.metadata.generation;
        let st = o.status.get_or_insert_default();
        st.observed_generation = g;
        st.phase = phase;
        set_condition(
            &mut st.conditions,
            condition(READY, ready, reason.as_str(), message.clone(), g),
        );
        more(st);
    })
    .await?)
}

/// Makes (or refreshes) the copy, with a slot of the process's copies.
async fn copy_task<S: Store>(ci: &CachedImage, policy: &Compiled, ctx: &Context<S>) -> TaskOutcome {
    let slots = ctx.cache_copies.get(ctx.settings.cache_concurrency);
    let _slot = slots.acquire_owned().await.expect("never closed");
    let started = std::time::Instant::now();
    let Some(ci) = set_phase(
        ctx,
        ci,
        CachePhase::Copying,
        Reason::Copying,
        String::new(),
        |st| {
            st.last_attempt_time = Some(now_s());
        },
    )
    .await?
    else {
        return Ok(Duration::ZERO);
    };
    let labels = |result: &str| CacheCopyLabels {
        policy: policy.reference.clone(),
        result: result.into(),
    };
    match copy_once(&ci, policy, ctx).await {
        Ok(report) => {
            let result = if report.skipped { "present" } else { "copied" };
            ctx.metrics.cache_copies.get_or_create(&labels(result)).inc();
            ctx.metrics
                .cache_bytes
                .get_or_create(&CacheLabels {
                    policy: policy.reference.clone(),
                })
                .inc_by(report.bytes);
            let message = format!("{} at {}", report.digest, ci.spec.target);
            if !report.skipped {
                ctx.store
                    .event(
                        &ci,
                        Event::normal(
                            Reason::Cached.as_str(),
                            "Copy",
                            format!(
                                "{} copied to {} ({} bytes, {:.1} s)",
                                ci.spec.source,
                                ci.spec.target,
                                report.bytes,
                                started.elapsed().as_secs_f64()
                            ),
                        ),
                    )
                    .await;
            }
            set_phase(ctx, &ci, CachePhase::Cached, Reason::Cached, message, |st| {
                // A copy that was there before ido's first stays someone else's.
                st.pushed |= !report.skipped;
                st.digest = Some(report.digest.clone());
                st.bytes = report.bytes;
                st.last_copied_time = Some(now_s());
            })
            .await?;
            Ok(policy.refresh)
        }
        Err((reason, message)) => {
            ctx.metrics.cache_copies.get_or_create(&labels("failed")).inc();
            tracing::warn!(cachedimage = ?ci.metadata.name, source = %ci.spec.source, %message, "copy failed");
            ctx.store
                .event(&ci, Event::warning(reason.as_str(), "Copy", message.clone()))
                .await;
            set_phase(ctx, &ci, CachePhase::Failed, reason, message, |_| {}).await?;
            Ok(RETRY_MIN)
        }
    }
}

/// The copy itself: source credentials from the pull Secrets, the cache's from the policy.
async fn copy_once<S: Store>(
    ci: &CachedImage,
    policy: &Compiled,
    ctx: &Context<S>,
) -> Result<ido_oci::copy::CopyReport, (Reason, String)> {
    let source = parse(&ci.spec.source, "spec.source")?;
    let target = parse(&ci.spec.target, "spec.target")?;
    let secrets: Vec<(String, String)> = ci
        .status
        .iter()
        .flat_map(|s| &s.pull_secrets)
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect();
    let (auths, _skipped) = crate::imagesync::pull_secrets_auth(ctx, &secrets)
        .await
        .map_err(|e| (Reason::CredentialsUnavailable, e.to_string()))?;
    let src = Registry::connect(
        source.registry(),
        &policy.source_tls(source.registry()),
        Arc::new(auths),
        ido_oci::registry::DEFAULT_CONCURRENCY,
    )
    .await
    .map_err(|e| {
        (
            Reason::RegistryUnavailable,
            format!("source {}: {e}", source.registry()),
        )
    })?;
    let dst = policy
        .connect(ctx)
        .await
        .map_err(|e| (Reason::RegistryUnavailable, e))?;
    copy(&src, &source, &dst, &target, &policy.platforms)
        .await
        .map_err(|e| (Reason::CopyFailed, e.to_string()))
}

fn parse(s: &str, field: &str) -> Result<Reference, (Reason, String)> {
    ido_oci::reference::parse(s).map_err(|e| (Reason::InvalidSpec, format!("{field}: {e}")))
}

/// Deletes an expired copy (if ido pushed it and no other record holds its digest in that
/// repository), then the record.
async fn expire<S: Store>(ci: &CachedImage, policy: &Compiled, ctx: &Context<S>) -> TaskOutcome {
    let st = ci.status.clone().unwrap_or_default();
    if let (true, Some(digest)) = (st.pushed, st.digest.as_deref())
        && let Ok(target) = ido_oci::reference::parse(&ci.spec.target)
    {
        let shared = ctx.store.list::<CachedImage>().await?.into_iter().any(|o| {
            o.metadata.name != ci.metadata.name
                && o.status.as_ref().and_then(|s| s.digest.as_deref()) == Some(digest)
                && ido_oci::reference::parse(&o.spec.target)
                    .is_ok_and(|t| t.registry() == target.registry() && t.repository() == target.repository())
        });
        if !shared {
            let by_digest = Reference::with_digest(
                target.registry().into(),
                target.repository().into(),
                digest.into(),
            );
            let deleted = match policy.connect(ctx).await {
                Ok(dst) => dst.delete_manifest(&by_digest).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(message) = deleted {
                let message = format!("deleting the expired copy {}: {message}", by_digest.whole());
                ctx.store
                    .event(
                        ci,
                        Event::warning(Reason::DeleteFailed.as_str(), "Expire", message.clone()),
                    )
                    .await;
                tracing::warn!(cachedimage = ?ci.metadata.name, %message, "expiry failed");
                return Ok(RETRY_MAX);
            }
        }
    }
    ctx.metrics
        .cache_copies
        .get_or_create(&CacheCopyLabels {
            policy: policy.reference.clone(),
            result: "expired".into(),
        })
        .inc();
    tracing::info!(cachedimage = ?ci.metadata.name, source = %ci.spec.source, "unused past the retention: deleted");
    ctx.store
        .event(
            ci,
            Event::normal(
                Reason::Expired.as_str(),
                "Expire",
                format!("unused for {:?}: {} deleted", policy.retention, ci.spec.target),
            ),
        )
        .await;
    ctx.store.delete(ci).await?;
    Ok(Duration::ZERO)
}
