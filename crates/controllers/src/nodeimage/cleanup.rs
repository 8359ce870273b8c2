//! Letting images go: releases that vanished are dropped from an image, an image no release
//! uses is deleted (after the retention period), and a deleted image's templates are
//! removed from every location before its finalizer goes.

use super::*;
use ido_api::Reason;

/// Removes releases that no longer exist from `status.releases` (e.g. a Release whose
/// finalizer was removed by hand), so the list stays exact.
pub(super) async fn drop_vanished_releases<S: Store>(
    ni: &NodeImage,
    ctx: &Context<S>,
) -> Result<Option<NodeImage>, Error> {
    let listed = ni.status.as_ref().map(|s| s.releases.clone()).unwrap_or_default();
    let mut gone = vec![];
    for r in &listed {
        if ctx.seen_releases.fresh(r) {
            continue;
        }
        let exists = ctx.store.get::<Release>(None, r).await?.is_some();
        ctx.seen_releases.set(r, exists);
        if !exists {
            gone.push(r.clone());
        }
    }
    if gone.is_empty() {
        return Ok(Some(ni.clone()));
    }
    let out = modify_status(&ctx.store, ni, |ni: &mut NodeImage| {
        if let Some(st) = ni.status.as_mut() {
            st.releases.retain(|r| !gone.contains(r));
        }
    })
    .await?;
    Ok(out)
}

/// How long a new NodeImage without releases waits for the Release that created it to
/// record itself before it counts as unused.
pub const CLAIM_GRACE: Duration = Duration::from_secs(30);

/// An image no release uses any more.
pub(super) async fn unused<S: Store>(
    ni: &NodeImage,
    status: &NodeImageStatus,
    ctx: &Context<S>,
) -> Result<Action, Error> {
    let retention = ctx.settings.retention;
    if retention.is_zero() {
        ctx.store.delete(ni).await?;
        return Ok(Action::AwaitChange);
    }
    let last_used = ni
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(nodeimage::LAST_USED_ANNOTATION))
        .and_then(|v| v.parse::<Timestamp>().ok());
    match (status.state, last_used) {
        (NodeImageState::AwaitingDeletion, Some(t)) => {
            let age = Timestamp::now().duration_since(t);
            let remaining =
                jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX) - age;
            if remaining.is_negative() || remaining.is_zero() {
                ctx.store
                    .event(
                        ni,
                        Event::normal(
                            Reason::RetentionExpired.as_str(),
                            "Delete",
                            "unused for the retention period",
                        ),
                    )
                    .await;
                ctx.store.delete(ni).await?;
                Ok(Action::AwaitChange)
            } else {
                Ok(Action::Requeue(
                    Duration::try_from(remaining).unwrap_or(retention) + Duration::from_millis(50),
                ))
            }
        }
        _ => {
            mark_unused(ni, ctx).await?;
            Ok(Action::Requeue(retention))
        }
    }
}

/// Deletion: remove the template from every location, then the finalizer.
pub(super) async fn cleanup<S: Store>(ni: &NodeImage, ctx: &Context<S>) -> Result<Action, Error> {
    if !has_finalizer(ni, nodeimage::FINALIZER) {
        return Ok(Action::AwaitChange);
    }
    // A round still importing is stopped, not waited for: its uploads are dropped and clean
    // up after themselves, and whatever they left is removed with the templates below.
    if ctx.tasks.cancel(&TaskKey::of(ni)).await {
        tracing::info!(
            nodeimage = ni.metadata.name.as_deref().unwrap_or_default(),
            "deleted while importing: the import was stopped"
        );
    }
    let Some(provider) = ctx.providers.get(&ni.spec.provider).cloned() else {
        let msg = format!(
            "provider {:?} is not enabled: its templates were not removed",
            ni.spec.provider
        );
        ctx.store
            .event(
                ni,
                Event::warning(Reason::ProviderNotEnabled.as_str(), "Delete", msg),
            )
            .await;
        patch_metadata_retry(&ctx.store, ni, &finalizer_patch(ni, nodeimage::FINALIZER, false)).await?;
        return Ok(Action::AwaitChange);
    };
    let pid = provider.id();
    let locations = provider.locations();
    let mut ni = match modify_status(&ctx.store, ni, |ni: &mut NodeImage| {
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        st.state = NodeImageState::Deleting;
        for l in &locations {
            upsert_location(st, pid, l, &Update::new(LocationState::Deleting, "deleting"));
        }
    })
    .await?
    {
        Some(ni) => ni,
        None => return Ok(Action::AwaitChange),
    };
    let image = ni.spec.name.clone();
    let results = delete_templates(ctx, &provider, &locations, &image).await;
    if let Some(updated) = modify_status(&ctx.store, &ni, |ni: &mut NodeImage| {
        write_deletions(ni, pid, &results)
    })
    .await?
    {
        ni = updated;
    }
    if let Some((e, clash_only)) = report_failures(ctx, &ni, pid, results).await {
        if clash_only {
            return Ok(Action::Requeue(ctx.settings.recheck));
        }
        return Err(e.into());
    }
    ctx.store
        .event(
            &ni,
            Event::normal(
                Reason::Deleted.as_str(),
                "Delete",
                format!("removed {image} from {} location(s)", locations.len()),
            ),
        )
        .await;
    patch_metadata_retry(
        &ctx.store,
        &ni,
        &finalizer_patch(&ni, nodeimage::FINALIZER, false),
    )
    .await?;
    Ok(Action::AwaitChange)
}

/// Deletes the template of `image` in every location at once (bounded).
async fn delete_templates<S: Store>(
    ctx: &Context<S>,
    provider: &Arc<dyn Provider>,
    locations: &[String],
    image: &str,
) -> Vec<(String, Result<(), ProviderError>)> {
    stream::iter(locations.to_vec())
        .map(|loc| {
            let provider = provider.clone();
            let image = image.to_string();
            async move {
                let r = provider.delete(&loc, &image).await;
                (loc, r)
            }
        })
        .buffer_unordered(ctx.settings.location_concurrency.max(1))
        .collect()
        .await
}

/// Writes each location's deletion outcome to the status of `ni`, and a name clash (objects
/// ido did not make) to its Ready condition.
fn write_deletions(ni: &mut NodeImage, pid: &str, results: &[(String, Result<(), ProviderError>)]) {
    let st = ni.status.get_or_insert_with(NodeImageStatus::default);
    for (loc, r) in results {
        match r {
            Ok(()) => upsert_location(st, pid, loc, &Update::new(LocationState::Deleted, "deleted")),
            Err(e) => upsert_location(st, pid, loc, &Update::new(LocationState::Error, e.to_string())),
        }
    }
    st.state = if results.iter().all(|(_, r)| r.is_ok()) {
        NodeImageState::Deleted
    } else {
        NodeImageState::Error
    };
    // Objects ido did not make keep the finalizer until someone adopts, renames or
    // removes them.
    let clashes: Vec<String> = results
        .iter()
        .filter_map(|(loc, r)| {
            r.as_ref()
                .err()
                .filter(|e| e.is_name_clash())
                .map(|e| format!("{loc}: {e}"))
        })
        .collect();
    if !clashes.is_empty() {
        set_condition(
            &mut st.conditions,
            Condition {
                type_: conditions::READY.into(),
                status: ConditionStatus::False,
                observed_generation: ni.metadata.generation,
                last_transition_time: Timestamp::now(),
                reason: NAME_CLASH.into(),
                message: clashes.join("; "),
            },
        );
    }
}

/// An event for each location whose template could not be deleted; the first error, and
/// whether every error is a name clash.
async fn report_failures<S: Store>(
    ctx: &Context<S>,
    ni: &NodeImage,
    pid: &str,
    results: Vec<(String, Result<(), ProviderError>)>,
) -> Option<(ProviderError, bool)> {
    let mut first_err = None;
    let mut clash_only = true;
    for (loc, r) in results {
        if let Err(e) = r {
            let reason = if e.is_name_clash() {
                NAME_CLASH
            } else {
                clash_only = false;
                Reason::DeleteFailed.as_str()
            };
            ctx.store
                .event(ni, Event::warning(reason, "Delete", format!("{pid}/{loc}: {e}")))
                .await;
            first_err = first_err.or(Some(e));
        }
    }
    first_err.map(|e| (e, clash_only))
}
