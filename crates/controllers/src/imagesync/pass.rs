//! One sync pass: prepare the two registries and the tag list, copy what is not at the
//! destination yet (bounded, progress written as it goes), then write the ending, the next
//! pass and the events.

use super::*;

/// One sync pass: see the module docs.
pub(super) async fn pass<S: Store, K: SyncKind>(
    is: &K,
    plan: &Plan,
    ctx: &Context<S>,
) -> Result<PassOutcome<K>, Error> {
    let started = Timestamp::now();
    let g = is.meta().generation;
    let ns = is.meta().namespace.clone().unwrap_or_else(|| "default".into());
    let labels = SyncLabels {
        source_registry: plan.source.registry.clone(),
        destination_registry: plan.destination.registry.clone(),
    };
    let previous = is.sync_status().cloned().unwrap_or_default();
    let before = ready_reason(is.sync_status());

    let prepared = match prepare(ctx, &ns, plan).await {
        Ok(p) => p,
        Err((reason, message)) => {
            count_failure(ctx, &labels, reason);
            return unprepared(ctx, is, plan, &previous, started, reason, message).await;
        }
    };

    let same_generation = previous.observed_generation == g;
    let mut entries = tag_entries(plan, &prepared, &previous, same_generation);
    let todo: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].result == TagResult::Pending)
        .collect();
    let (known, verified) =
        destination_digests(is, plan, &prepared, &previous, same_generation, &entries, &todo).await;

    let Some(mut current) = announce(ctx, is, plan, &prepared, &entries, todo.len()).await? else {
        return Ok(gone(is));
    };
    let tally = copy_tags(
        ctx,
        plan,
        &prepared,
        &labels,
        &mut entries,
        &todo,
        known,
        &mut current,
    )
    .await?;
    if tally.gone {
        return Ok(gone(is));
    }
    if !tally.failed.is_empty() {
        count_failure(ctx, &labels, reasons::COPY_FAILED);
    }

    // The ending, the next pass, the status.
    let ending = ending_of(plan, &prepared, &tally.failed);
    let next = if is_failing(plan, &ending) {
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
        conclude(st, &ending, in_sync, tally.copied.len(), g);
        o.status_written(true);
    })
    .await?;
    let obj = object.as_ref().unwrap_or(is);
    report_pass(ctx, is, obj, plan, &ending, &tally, in_sync, before).await;
    Ok(PassOutcome {
        object,
        next_sync: next,
    })
}

/// Writes that `count` tags are being synced (nothing when none is): the object as stored,
/// `None` if it was deleted.
async fn announce<S: Store, K: SyncKind>(
    ctx: &Context<S>,
    is: &K,
    plan: &Plan,
    prepared: &Prepared,
    entries: &[TagStatus],
    count: usize,
) -> Result<Option<K>, Error> {
    if count == 0 {
        return Ok(Some(is.clone()));
    }
    let msg = format!("syncing {count} tag(s) to {}", plan.destination.display());
    write_progress(ctx, is, entries, prepared.matched, &msg).await
}

/// The object was deleted during the pass: it stops (the copies in flight are dropped).
fn gone<K: SyncKind>(is: &K) -> PassOutcome<K> {
    tracing::info!(object = %is.meta().name.as_deref().unwrap_or_default(), "deleted during its pass: the pass stops");
    PassOutcome {
        object: None,
        next_sync: None,
    }
}

/// Whether a pass that ended so failed: the next one is due as after a failure.
fn is_failing(plan: &Plan, ending: &Ending) -> bool {
    match ending {
        Ending::Failed(_) => true,
        Ending::NoMatch(_) => plan.mode == SyncMode::OneShot,
        Ending::Done { failed, .. } => !failed.is_empty(),
    }
}

/// Counts a failed pass in the metrics.
fn count_failure<S: Store>(ctx: &Context<S>, labels: &SyncLabels, reason: &str) {
    ctx.metrics
        .sync_failures
        .get_or_create(&SyncFailureLabels {
            source_registry: labels.source_registry.clone(),
            destination_registry: labels.destination_registry.clone(),
            reason: reason.into(),
        })
        .inc();
}

/// A pass that could not reach the registries (or read the tags): a warning, and the
/// failure written with the next (failing) pass.
async fn unprepared<S: Store, K: SyncKind>(
    ctx: &Context<S>,
    is: &K,
    plan: &Plan,
    previous: &ImageSyncStatus,
    started: Timestamp,
    reason: &'static str,
    message: String,
) -> Result<PassOutcome<K>, Error> {
    let g = is.meta().generation;
    tracing::warn!(imagesync = %key(is), reason, %message, "sync pass failed");
    ctx.store
        .event(is, Event::warning(reason, "Sync", clip(&message, MAX_MESSAGE)))
        .await;
    let next = next_failing(plan, previous, started);
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
    Ok(PassOutcome {
        object,
        next_sync: next,
    })
}

/// The tag entries of a pass, in order; OnceByTag skips what it copied before in this
/// generation, every other entry is `Pending`.
pub(super) fn tag_entries(
    plan: &Plan,
    prepared: &Prepared,
    previous: &ImageSyncStatus,
    same_generation: bool,
) -> Vec<TagStatus> {
    prepared
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
        .collect()
}

/// What the destination tags of `todo` hold, as the last passes left them: trusted for a day
/// within a generation, for the tags the destination still lists (one listing instead of a
/// manifest read per tag). Also the `destinationsVerifiedTime` to record.
pub(super) async fn destination_digests<K: SyncKind>(
    is: &K,
    plan: &Plan,
    prepared: &Prepared,
    previous: &ImageSyncStatus,
    same_generation: bool,
    entries: &[TagStatus],
    todo: &[usize],
) -> (Vec<Option<String>>, Option<Timestamp>) {
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
                for (k, &i) in known.iter_mut().zip(todo) {
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
    (known, verified)
}

/// What a pass's copies did.
pub(super) struct Tally {
    /// Tags copied (not those found unchanged).
    copied: Vec<String>,
    /// Bytes copied.
    bytes: u64,
    /// `(tag, message)` of the copies that failed.
    failed: Vec<(String, String)>,
    /// The object was deleted meanwhile: the copying stopped.
    gone: bool,
}

/// Copies the `todo` entries, `concurrency` tags at once, recording each result in its entry
/// and the metrics; progress is written to `current` every few seconds.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_tags<S: Store, K: SyncKind>(
    ctx: &Context<S>,
    plan: &Plan,
    prepared: &Prepared,
    labels: &SyncLabels,
    entries: &mut [TagStatus],
    todo: &[usize],
    known: Vec<Option<String>>,
    current: &mut K,
) -> Result<Tally, Error> {
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
    let mut gone = false;
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
                    ctx.metrics.sync_bytes.get_or_create(labels).inc_by(rep.bytes);
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
        count_copy(ctx, labels, result, took);
        if last_write.elapsed() >= PROGRESS_EVERY && done < todo.len() {
            let msg = format!("synced {done} of {} tag(s)", todo.len());
            match write_progress(ctx, current, entries, prepared.matched, &msg).await? {
                Some(o) => *current = o,
                None => {
                    gone = true;
                    break;
                }
            }
            last_write = Instant::now();
        }
    }
    drop(results);
    Ok(Tally {
        copied,
        bytes,
        failed,
        gone,
    })
}

/// Counts one tag's copy (`copied`, `unchanged` or `failed`) and its time in the metrics.
fn count_copy<S: Store>(ctx: &Context<S>, labels: &SyncLabels, result: &str, took: Duration) {
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
        .get_or_create(labels)
        .observe(took.as_secs_f64());
}

/// How a pass that reached the registries ended.
pub(super) fn ending_of(plan: &Plan, prepared: &Prepared, failed: &[(String, String)]) -> Ending {
    let source = plan.source.display();
    if prepared.matched == 0 {
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
            failed: failed.to_vec(),
            exceeded,
        }
    }
}

/// The events and log line of a pass: what changed, never the credentials.
#[allow(clippy::too_many_arguments)]
pub(super) async fn report_pass<S: Store, K: SyncKind>(
    ctx: &Context<S>,
    is: &K,
    obj: &K,
    plan: &Plan,
    ending: &Ending,
    tally: &Tally,
    in_sync: usize,
    before: Option<(String, String)>,
) {
    let Tally {
        copied,
        bytes,
        failed,
        gone: _,
    } = tally;
    let source = plan.source.display();
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
}

/// The next pass after a failing one: the retry delay, or the scheduled pass if sooner.
pub(super) fn next_failing(plan: &Plan, previous: &ImageSyncStatus, started: Timestamp) -> Option<Timestamp> {
    let now = Timestamp::now();
    let d = jiff::SignedDuration::try_from(retry_delay(previous, now)).unwrap_or(jiff::SignedDuration::MAX);
    let retry = now.saturating_add(d).unwrap_or(Timestamp::MAX);
    Some(match plan.next_after(started, now) {
        Some(t) => t.min(retry),
        None => retry,
    })
}

/// Writes the entries so far with `Progressing=True`.
pub(super) async fn write_progress<S: Store, K: SyncKind>(
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
