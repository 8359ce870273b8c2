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
mod plan;
mod sides;
mod status;

pub use ido_oci::reference::is_tag;
pub use kinds::SyncKind;
pub use plan::{Every, Plan, Selector, Side, SpecError, parse_schedule, sort_tags};
pub use sides::SideError;
use sides::{side_auth, side_tls};

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

/// Reconciles one ImageSync: a pass if one is due, then the wait until the next.
pub async fn reconcile<S: Store, K: SyncKind>(is: &K, ctx: &Context<S>) -> Result<Action, Error> {
    let plan = match Plan::from_spec(&is.sync_spec()) {
        Ok(p) => p,
        Err(e) => {
            invalid(is, ctx, &e).await?;
            return Ok(Action::AwaitChange);
        }
    };
    match due(is, Timestamp::now()) {
        Due::Now => {}
        Due::At(t) => return Ok(Action::Requeue(until(Timestamp::now(), t))),
        Due::Never => return Ok(Action::AwaitChange),
    }
    let out = pass(is, &plan, ctx).await?;
    Ok(match out.next_sync {
        Some(t) => Action::Requeue(until(Timestamp::now(), t)),
        None => Action::AwaitChange,
    })
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

/// One sync pass: see the module docs.
async fn pass<S: Store, K: SyncKind>(is: &K, plan: &Plan, ctx: &Context<S>) -> Result<PassOutcome<K>, Error> {
    let started = Timestamp::now();
    let g = is.meta().generation;
    let ns = is.meta().namespace.clone().unwrap_or_else(|| "default".into());
    let labels = SyncLabels {
        source_registry: plan.source.registry.clone(),
        destination_registry: plan.destination.registry.clone(),
    };
    let previous = is.sync_status().cloned().unwrap_or_default();
    let before = ready_reason(is.sync_status());
    let count_failure = |reason: &str| {
        ctx.metrics
            .sync_failures
            .get_or_create(&SyncFailureLabels {
                source_registry: labels.source_registry.clone(),
                destination_registry: labels.destination_registry.clone(),
                reason: reason.into(),
            })
            .inc();
    };

    let prepared = match prepare(ctx, &ns, plan).await {
        Ok(p) => p,
        Err((reason, message)) => {
            count_failure(reason);
            tracing::warn!(imagesync = %key(is), reason, %message, "sync pass failed");
            ctx.store
                .event(is, Event::warning(reason, "Sync", clip(&message, MAX_MESSAGE)))
                .await;
            let next = next_failing(plan, &previous, started);
            let ending = Ending::Failed((reason, message));
            let object = modify_status(&ctx.store, is, |o: &mut K| {
                let st = o.sync_status_mut();
                st.observed_generation = g;
                st.last_sync_time = Some(now_s());
                st.next_sync_time = next;
                conclude(st, &ending, 0, 0, g);
                o.status_written(true);
            })
            .await?;
            return Ok(PassOutcome {
                object,
                next_sync: next,
            });
        }
    };

    // The tag entries, in order; OnceByTag skips what it copied before in this generation.
    let same_generation = previous.observed_generation == g;
    let mut entries: Vec<TagStatus> = prepared
        .pairs
        .iter()
        .map(|(s, d)| {
            let old = previous.tags.iter().find(|t| &t.tag == s);
            let mut e = old.cloned().unwrap_or(TagStatus {
                tag: s.clone(),
                destination_tag: None,
                source_digest: None,
                destination_digest: None,
                result: TagResult::Pending,
                last_copied: None,
                bytes: 0,
                message: String::new(),
            });
            e.destination_tag = (s != d).then(|| d.clone());
            let skip = plan.mode == SyncMode::OnceByTag
                && same_generation
                && old.is_some_and(|o| o.result.in_sync() && o.destination_tag == e.destination_tag);
            if skip {
                e.result = TagResult::Skipped;
                e.message = "copied before; OnceByTag does not copy a tag again".into();
            } else {
                e.result = TagResult::Pending;
                e.message = String::new();
            }
            e
        })
        .collect();
    let todo: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].result == TagResult::Pending)
        .collect();

    // What the destination tags hold, as the last passes left them: trusted for a day within
    // a generation, for the tags the destination still lists (one listing instead of a
    // manifest read per tag).
    let started_at = Timestamp::now();
    let recent = same_generation
        && previous.destinations_verified_time.is_some_and(|t| {
            started_at.duration_since(t) < jiff::SignedDuration::try_from(VERIFY_EVERY).unwrap_or_default()
        });
    let mut known: Vec<Option<String>> = todo
        .iter()
        .map(|&i| {
            let e = &entries[i];
            previous
                .tags
                .iter()
                .find(|o| o.tag == e.tag && o.destination_tag == e.destination_tag && o.result.in_sync())
                .and_then(|o| o.destination_digest.clone())
        })
        .collect();
    let trusted = recent && known.iter().any(Option::is_some);
    if trusted {
        match list_tags(&prepared.dst, &plan.destination.reference("latest")).await {
            Ok(listed) => {
                let listed: std::collections::HashSet<String> = listed.into_iter().collect();
                for (k, &i) in known.iter_mut().zip(&todo) {
                    if !listed.contains(&prepared.pairs[i].1) {
                        *k = None;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(imagesync = %key(is), error = %e, "listing the destination's tags failed; reading each tag");
                known.iter_mut().for_each(|k| *k = None);
            }
        }
    } else {
        known.iter_mut().for_each(|k| *k = None);
    }
    let verified = if todo.is_empty() || known.iter().any(Option::is_some) {
        previous.destinations_verified_time
    } else {
        Some(now_s())
    };

    let mut current = is.clone();
    if !todo.is_empty() {
        let msg = format!("syncing {} tag(s) to {}", todo.len(), plan.destination.display());
        if let Some(o) = write_progress(ctx, &current, &entries, prepared.matched, &msg).await? {
            current = o;
        }
    }

    // Copy, `concurrency` tags at once; progress written every few seconds.
    let (src, dst) = (&prepared.src, &prepared.dst);
    let mut results = stream::iter(todo.iter().copied().zip(known))
        .map(|(i, known)| {
            let (s, d) = &prepared.pairs[i];
            let (sr, dr) = (plan.source.reference(s), plan.destination.reference(d));
            async move {
                let t0 = Instant::now();
                let r = copy_known(src, &sr, dst, &dr, &plan.platforms, known.as_deref()).await;
                (i, r, t0.elapsed())
            }
        })
        .buffer_unordered(plan.concurrency.max(1));
    let mut last_write = Instant::now();
    let (mut copied, mut bytes, mut done) = (vec![], 0u64, 0usize);
    let mut failed: Vec<(String, String)> = vec![];
    while let Some((i, r, took)) = results.next().await {
        done += 1;
        let e = &mut entries[i];
        let result = match r {
            Ok(rep) => {
                e.destination_digest = Some(rep.digest.clone());
                e.source_digest = matches!(plan.platforms, Platforms::All).then(|| rep.digest.clone());
                if rep.skipped {
                    e.result = TagResult::Unchanged;
                    e.message = String::new();
                    "unchanged"
                } else {
                    e.result = TagResult::Copied;
                    e.last_copied = Some(now_s());
                    e.bytes = rep.bytes;
                    e.message = format!(
                        "{} manifest(s); {} blob(s) copied, {} present, {} mounted",
                        rep.manifests, rep.blobs_copied, rep.blobs_present, rep.blobs_mounted
                    );
                    copied.push(e.tag.clone());
                    bytes += rep.bytes;
                    ctx.metrics.sync_bytes.get_or_create(&labels).inc_by(rep.bytes);
                    "copied"
                }
            }
            Err(err) => {
                e.result = TagResult::Failed;
                e.message = clip(&err.to_string(), MAX_MESSAGE);
                failed.push((e.tag.clone(), e.message.clone()));
                "failed"
            }
        };
        ctx.metrics
            .sync_copies
            .get_or_create(&SyncResultLabels {
                source_registry: labels.source_registry.clone(),
                destination_registry: labels.destination_registry.clone(),
                result: result.into(),
            })
            .inc();
        ctx.metrics
            .sync_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if last_write.elapsed() >= PROGRESS_EVERY && done < todo.len() {
            let msg = format!("synced {done} of {} tag(s)", todo.len());
            if let Some(o) = write_progress(ctx, &current, &entries, prepared.matched, &msg).await? {
                current = o;
            }
            last_write = Instant::now();
        }
    }
    drop(results);
    if !failed.is_empty() {
        count_failure(reasons::COPY_FAILED);
    }

    // The ending, the next pass, the status.
    let source = plan.source.display();
    let ending = if prepared.matched == 0 {
        let version = match &plan.selector {
            Selector::Pattern { text, .. } => text.clone(),
            Selector::Single { source, .. } => source.clone(),
        };
        let mut m = format!(
            "no tag of {source} matches {version:?} ({} tag(s) listed)",
            prepared.listed
        );
        if prepared.rc_excluded > 0 {
            m += &format!(
                "; {} release candidate(s) would match with spec.allowCandidateRelease",
                prepared.rc_excluded
            );
        }
        Ending::NoMatch(m)
    } else {
        let exceeded = (prepared.matched > plan.max_tags).then(|| {
            let (hi, lo) = (
                prepared.pairs.first().map(|p| p.0.as_str()).unwrap_or_default(),
                prepared.pairs.last().map(|p| p.0.as_str()).unwrap_or_default(),
            );
            format!(
                "{} tags of {source} match, more than spec.maxTags {}: synced the {} highest ({hi} … {lo}); raise spec.maxTags or narrow spec.source.version",
                prepared.matched, plan.max_tags, plan.max_tags
            )
        });
        Ending::Done {
            failed: failed.clone(),
            exceeded,
        }
    };
    let failing = match &ending {
        Ending::Failed(_) => true,
        Ending::NoMatch(_) => plan.mode == SyncMode::OneShot,
        Ending::Done { failed, .. } => !failed.is_empty(),
    };
    let next = if failing {
        next_failing(plan, &previous, started)
    } else {
        plan.next_after(started, Timestamp::now())
    };
    let in_sync = entries.iter().filter(|t| t.result.in_sync()).count();
    let object = modify_status(&ctx.store, &current, |o: &mut K| {
        let st = o.sync_status_mut();
        st.observed_generation = g;
        st.last_sync_time = Some(now_s());
        st.next_sync_time = next;
        st.matched_tags = u32::try_from(prepared.matched).unwrap_or(u32::MAX);
        st.tags = entries.clone();
        st.tag_summary = summary(&entries);
        st.destinations_verified_time = verified;
        conclude(st, &ending, in_sync, copied.len(), g);
        o.status_written(true);
    })
    .await?;

    // Events and logs: what changed, never the credentials.
    let obj = object.as_ref().unwrap_or(is);
    let dest = plan.destination.display();
    tracing::info!(
        imagesync = %key(is), source = %source, destination = %dest,
        copied = copied.len(), in_sync, failed = failed.len(), bytes, "sync pass done"
    );
    if !copied.is_empty() {
        let shown: Vec<&str> = copied.iter().take(10).map(String::as_str).collect();
        let more = copied.len().saturating_sub(shown.len());
        let msg = format!(
            "copied {} tag(s) from {source} to {dest} ({bytes} bytes): {}{}",
            copied.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        ctx.store
            .event(
                obj,
                Event::normal(reasons::SYNCED, "Copy", clip(&msg, MAX_MESSAGE)),
            )
            .await;
    }
    let after = ready_reason(obj.sync_status());
    match &ending {
        Ending::Done { failed, .. } if !failed.is_empty() => {
            let each: Vec<String> = failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
            let msg = format!("{} tag(s) failed: {}", failed.len(), each.join("; "));
            ctx.store
                .event(
                    obj,
                    Event::warning(reasons::COPY_FAILED, "Copy", clip(&msg, MAX_MESSAGE)),
                )
                .await;
        }
        _ => {
            if let Some((reason, message)) = &after
                && before.as_ref().map(|b| &b.0) != Some(reason)
                && [reasons::NO_MATCHING_TAGS, reasons::TAG_LIMIT_EXCEEDED].contains(&reason.as_str())
            {
                ctx.store
                    .event(obj, Event::warning(reason, "Sync", message.clone()))
                    .await;
            }
        }
    }
    Ok(PassOutcome {
        object,
        next_sync: next,
    })
}

/// The next pass after a failing one: the retry delay, or the scheduled pass if sooner.
fn next_failing(plan: &Plan, previous: &ImageSyncStatus, started: Timestamp) -> Option<Timestamp> {
    let now = Timestamp::now();
    let d = jiff::SignedDuration::try_from(retry_delay(previous, now)).unwrap_or(jiff::SignedDuration::MAX);
    let retry = now.saturating_add(d).unwrap_or(Timestamp::MAX);
    Some(match plan.next_after(started, now) {
        Some(t) => t.min(retry),
        None => retry,
    })
}

/// Writes the entries so far with `Progressing=True`.
async fn write_progress<S: Store, K: SyncKind>(
    ctx: &Context<S>,
    current: &K,
    entries: &[TagStatus],
    matched: usize,
    message: &str,
) -> Result<Option<K>, Error> {
    Ok(modify_status(&ctx.store, current, |o: &mut K| {
        let g = o.meta().generation;
        let st = o.sync_status_mut();
        st.tags = entries.to_vec();
        st.tag_summary = summary(entries);
        st.matched_tags = u32::try_from(matched).unwrap_or(u32::MAX);
        set_condition(
            &mut st.conditions,
            condition(
                conditions::PROGRESSING,
                ConditionStatus::True,
                reasons::SYNCING,
                message.into(),
                g,
            ),
        );
        order_conditions(&mut st.conditions);
        o.status_written(false);
    })
    .await?)
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
