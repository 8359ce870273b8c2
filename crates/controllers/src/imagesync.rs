//! The ImageSync controller: mirror the tags an ImageSync selects from its source
//! repository to its destination, in-process, with bounded concurrency.
//!
//! ```text
//!  spec ──Plan::from_spec──▶ Plan ──(due?)──▶ pass:
//!     Secrets (dockerconfigjson, per side), CA ConfigMaps ─▶ Registry::connect (TLS, CA) per side
//!     source.version: tag ─────────────────▶ [(tag, destination.version or tag)]
//!                     pattern ─list_tags───▶ matching, highest first, ≤ maxTags ─▶ [(tag, tag)]
//!     copy::copy per tag (spec.concurrency at once; the engine skips a tag whose
//!     destination already has the source digest) ─▶ status.tags, conditions, events, metrics
//! ```
//!
//! Scheduling lives in the status, so every driver (and a reconcile triggered by the
//! controller's own status write) agrees on it: a pass is due when the generation changed
//! since the last pass, or `status.nextSyncTime` has come. After a pass:
//! - OneShot plans nothing more (`nextSyncTime` absent) until the spec changes;
//! - OnceByTag and Recurrent plan the next pass by `schedule` (cron, UTC) or `frequency`;
//!   OnceByTag does not look at a tag it copied before in this generation (`Skipped`),
//!   Recurrent checks every tag again (and copies it again if the source moved);
//! - a failed pass (credentials, registry, a copy, or OneShot finding no tag yet) is
//!   retried after as long as the ImageSync has been failing, from 1 min to 15 min, or at
//!   the next scheduled pass if sooner.
//!
//! A tag's copy reads its source manifest and the destination tag (two requests when nothing
//! moved). Within a generation, for a day after a pass that read every destination tag
//! (`status.destinationsVerifiedTime`), a pass takes the destination digests it recorded in
//! `status.tags` instead, for the tags the destination still lists (one tag listing): an
//! unchanged tag then costs one request, and a tag deleted at the destination is copied
//! again; a tag someone overwrote at the destination is put right at the next full read.
//!
//! Credentials are read from the Secrets for each pass, handed only to the copy engine,
//! and never written to logs, events or the status.

mod kinds;
mod pass;
mod plan;
mod sides;
pub(crate) mod status;

pub use ido_oci::reference::is_tag;
pub use kinds::SyncKind;
use pass::pass;
pub use plan::{Every, Plan, Selector, Side, SpecError, parse_schedule, sort_tags};
pub use sides::SideError;
pub(crate) use sides::{pull_secrets_auth, side_auth, side_tls};

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use ido_api::{
    ConditionStatus, ImageSyncStatus, SyncMode, TagResult, TagStatus,
    condition::set_condition,
    imagesync::{conditions, reasons},
};
use ido_oci::{
    copy::{Platforms, copy_known},
    registry::{DEFAULT_CONCURRENCY, Registry},
    tags::list_tags,
};
use jiff::Timestamp;

use crate::{
    Action, Context, Error,
    metrics::{SyncFailureLabels, SyncLabels, SyncResultLabels},
    store::{Event, Store, modify_status},
    tasks::{TaskKey, TaskState},
};
use status::{
    Ending, Failure, MAX_MESSAGE, clip, conclude, condition, now_s, order_conditions, ready_reason,
    retry_delay, summary,
};

/// Key of the docker config in a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
/// How long the destination digests a pass recorded are taken for what the destination
/// holds (see `ImageSyncStatus::destinations_verified_time`).
const VERIFY_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How often progress is written to the status during a pass.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Whether a pass is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Now,
    At(Timestamp),
    /// OneShot done: nothing until the spec changes.
    Never,
}

/// Whether `is` needs a pass at `now` (see the module docs).
pub fn due<K: SyncKind>(is: &K, now: Timestamp) -> Due {
    let Some(st) = is.sync_status() else {
        return Due::Now;
    };
    if st.last_sync_time.is_none() || st.observed_generation != is.meta().generation {
        return Due::Now;
    }
    match st.next_sync_time {
        None => Due::Never,
        Some(t) if t <= now => Due::Now,
        Some(t) => Due::At(t),
    }
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or_default() + Duration::from_millis(100)
}

/// Reconciles one ImageSync: a pass if one is due, then the wait until the next. The pass
/// (listing, copying) runs as a task ([`crate::tasks`]): the reconcile starts it and
/// returns; when it ends it wakes the object, whose next reconcile takes its outcome and
/// waits for the schedule (or, if the spec changed meanwhile, starts the new spec's pass).
pub async fn reconcile<S: Store, K: SyncKind>(is: &K, ctx: &Arc<Context<S>>) -> Result<Action, Error> {
    let key = TaskKey::of(is);
    let plan = match Plan::from_spec(&is.sync_spec()) {
        Ok(p) => p,
        Err(e) => {
            ctx.tasks.cancel(&key).await;
            invalid(is, ctx, &e).await?;
            return Ok(Action::AwaitChange);
        }
    };
    match ctx.tasks.take::<PassResult>(&key) {
        TaskState::Running => return Ok(Action::Requeue(ctx.settings.recheck)),
        TaskState::Done((_, Err(e))) => return Err(e),
        // A pass for this object's current spec: wait for the schedule. One for an older
        // spec (or an object of the same name deleted since) falls through: a pass for this
        // one is due now.
        TaskState::Done((worked_for, Ok(next))) if worked_for == version_of(is) => {
            return Ok(after(next));
        }
        TaskState::Done(_) | TaskState::Idle => {}
    }
    match due(is, Timestamp::now()) {
        Due::Now => {}
        Due::At(t) => return Ok(Action::Requeue(until(Timestamp::now(), t))),
        Due::Never => return Ok(Action::AwaitChange),
    }
    let (task_ctx, is) = (ctx.clone(), is.clone());
    let worked_for = version_of(&is);
    ctx.tasks.start(key, move |_| async move {
        let out = pass(&is, &plan, &task_ctx).await.map(|o| o.next_sync);
        (worked_for, out)
    });
    Ok(Action::Requeue(ctx.settings.recheck))
}

/// What a pass task ends with: the object and spec it worked for ([`version_of`]), and
/// when the next pass is due.
type PassResult = ((Option<String>, Option<i64>), Result<Option<Timestamp>, Error>);

/// The object's uid and generation: which object, and which of its specs.
fn version_of<K: SyncKind>(is: &K) -> (Option<String>, Option<i64>) {
    (is.meta().uid.clone(), is.meta().generation)
}

/// The wait after a pass.
fn after(next: Option<Timestamp>) -> Action {
    match next {
        Some(t) => Action::Requeue(until(Timestamp::now(), t)),
        None => Action::AwaitChange,
    }
}

/// Runs one pass now, whatever the schedule (`ido sync`). Returns the ImageSync as stored
/// afterwards (`None` if it disappeared).
pub async fn sync<S: Store, K: SyncKind>(is: &K, ctx: &Context<S>) -> Result<Option<K>, Error> {
    match Plan::from_spec(&is.sync_spec()) {
        Err(e) => invalid(is, ctx, &e).await,
        Ok(plan) => Ok(pass(is, &plan, ctx).await?.object),
    }
}

/// What a pass left.
struct PassOutcome<K> {
    object: Option<K>,
    next_sync: Option<Timestamp>,
}

/// The registries of a pass and the tags it works on.
struct Prepared {
    src: Registry,
    dst: Registry,
    /// `(source tag, destination tag)`, highest version first.
    pairs: Vec<(String, String)>,
    /// Tags the pattern matched before the cap (1 for a single tag).
    matched: usize,
    /// Tags listed at the source (patterns only).
    listed: usize,
    /// Release candidates that would have matched with `allowCandidateRelease`.
    rc_excluded: usize,
}

/// Writes `InvalidSpec` (once per distinct message) and plans nothing.
async fn invalid<S: Store, K: SyncKind>(is: &K, ctx: &Context<S>, e: &SpecError) -> Result<Option<K>, Error> {
    let message = clip(&e.to_string(), MAX_MESSAGE);
    let before = ready_reason(is.sync_status());
    let stored = modify_status(&ctx.store, is, |o: &mut K| {
        let g = o.meta().generation;
        let st = o.sync_status_mut();
        st.observed_generation = g;
        st.next_sync_time = None;
        let c = &mut st.conditions;
        set_condition(
            c,
            condition(
                conditions::READY,
                ConditionStatus::False,
                reasons::INVALID_SPEC,
                message.clone(),
                g,
            ),
        );
        set_condition(
            c,
            condition(
                conditions::PROGRESSING,
                ConditionStatus::False,
                reasons::IDLE,
                String::new(),
                g,
            ),
        );
        set_condition(
            c,
            condition(
                conditions::DEGRADED,
                ConditionStatus::True,
                reasons::INVALID_SPEC,
                message.clone(),
                g,
            ),
        );
        o.status_written(false);
    })
    .await?;
    if before != Some((reasons::INVALID_SPEC.into(), message.clone())) {
        tracing::warn!(imagesync = %key(is), %message, "invalid ImageSync");
        ctx.store
            .event(is, Event::warning(reasons::INVALID_SPEC, "Validate", message))
            .await;
    }
    Ok(stored)
}

fn key<K: SyncKind>(is: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        is.meta().namespace.as_deref().unwrap_or_default(),
        is.meta().name.as_deref().unwrap_or_default()
    )
}

/// Credentials, registries and the tags to work on.
async fn prepare<S: Store>(ctx: &Context<S>, ns: &str, plan: &Plan) -> Result<Prepared, Failure> {
    let mut regs = vec![];
    for side in [&plan.source, &plan.destination] {
        let auths = side_auth(ctx, ns, side)
            .await
            .map_err(|e| (reasons::CREDENTIALS_UNAVAILABLE, e.to_string()))?;
        let tls = side_tls(ctx, ns, side)
            .await
            .map_err(|e| (reasons::CREDENTIALS_UNAVAILABLE, e.to_string()))?;
        let reg = Registry::connect(&side.host(), &tls, Arc::new(auths), DEFAULT_CONCURRENCY)
            .await
            .map_err(|e| (reasons::REGISTRY_UNAVAILABLE, format!("{}: {e}", side.field)))?;
        regs.push(reg);
    }
    let dst = regs.pop().expect("two registries");
    let src = regs.pop().expect("two registries");
    let (pairs, matched, listed, rc_excluded) = match &plan.selector {
        Selector::Single { source, destination } => (vec![(source.clone(), destination.clone())], 1, 0, 0),
        Selector::Pattern { pattern, .. } => {
            let tags = list_tags(&src, &plan.source.reference("latest"))
                .await
                .map_err(|e| (reasons::REGISTRY_UNAVAILABLE, format!("spec.source: {e}")))?;
            let mut matching: Vec<String> = tags
                .iter()
                .filter(|t| pattern.matches(t, plan.rc))
                .cloned()
                .collect();
            let rc_excluded = if plan.rc {
                0
            } else {
                tags.iter()
                    .filter(|t| !pattern.matches(t, false) && pattern.matches(t, true))
                    .count()
            };
            sort_tags(&mut matching);
            matching.reverse();
            let matched = matching.len();
            matching.truncate(plan.max_tags);
            let pairs = matching.into_iter().map(|t| (t.clone(), t)).collect();
            (pairs, matched, tags.len(), rc_excluded)
        }
    };
    Ok(Prepared {
        src,
        dst,
        pairs,
        matched,
        listed,
        rc_excluded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ido_api::{ImageSync, ImageSyncSpec, SyncEndpoint};

    fn is(generation: i64, status: Option<ImageSyncStatus>) -> ImageSync {
        let mut o = ImageSync::new(
            "x",
            ImageSyncSpec {
                mode: SyncMode::Recurrent,
                frequency: None,
                schedule: None,
                allow_candidate_release: false,
                source: SyncEndpoint::default(),
                destination: SyncEndpoint::default(),
                platforms: vec![],
                max_tags: None,
                concurrency: None,
            },
        );
        o.metadata.generation = Some(generation);
        o.status = status;
        o
    }

    #[test]
    fn passes_are_due_on_new_generations_and_at_the_planned_time() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let now = t("2025-01-01T10:00:00Z");
        assert_eq!(due(&is(1, None), now), Due::Now);
        let st = |g, next: Option<&str>| ImageSyncStatus {
            observed_generation: Some(g),
            last_sync_time: Some(t("2025-01-01T09:00:00Z")),
            next_sync_time: next.map(t),
            ..Default::default()
        };
        assert_eq!(due(&is(2, Some(st(1, None))), now), Due::Now, "the spec changed");
        assert_eq!(due(&is(1, Some(st(1, None))), now), Due::Never);
        assert_eq!(
            due(&is(1, Some(st(1, Some("2025-01-01T10:15:00Z")))), now),
            Due::At(t("2025-01-01T10:15:00Z"))
        );
        assert_eq!(
            due(&is(1, Some(st(1, Some("2025-01-01T09:59:00Z")))), now),
            Due::Now
        );
        // An InvalidSpec status (no pass yet) does not count as a pass.
        let mut bad = st(1, None);
        bad.last_sync_time = None;
        assert_eq!(due(&is(1, Some(bad)), now), Due::Now);
    }
}
