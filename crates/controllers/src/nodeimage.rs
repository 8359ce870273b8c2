//! The image controller: each NodeImage exists in every location of its provider.
//!
//! Per NodeImage: look up the source in S3, then for every location at once (bounded)
//! check for a complete template and import one if absent, writing each location's state,
//! bytes and message to `status.locations` as it goes; `state` and the conditions summarise
//! them. Deletion removes the template from every location before the finalizer goes.
//! Images no release uses are deleted, or kept `AwaitingDeletion` for the retention period.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use ido_api::{
    Condition, ConditionStatus, LocationState, LocationStatus, NodeImage, NodeImageState, NodeImageStatus,
    Release,
    condition::set_condition,
    nodeimage::{self, conditions},
};
use ido_engine::s3::node_image_key;
use ido_providers::{Progress, Provider, ProviderError};
use jiff::Timestamp;
use tokio::sync::Mutex;

use crate::{
    Action, Context, Error,
    release::mark_unused,
    store::{Event, Store, finalizer_patch, has_finalizer, modify_status, patch_metadata_retry},
};

/// How often bytes transferred are written to the status during an upload.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Reconciles one NodeImage.
pub async fn reconcile<S: Store>(ni: &NodeImage, ctx: &Context<S>) -> Result<Action, Error> {
    if let Err(invalid) = check_spec(ni) {
        // Nothing was ever made from a name that fails here: on deletion just let go.
        if ni.metadata.deletion_timestamp.is_some() {
            if has_finalizer(ni, nodeimage::FINALIZER) {
                patch_metadata_retry(&ctx.store, ni, &finalizer_patch(ni, nodeimage::FINALIZER, false))
                    .await?;
            }
        } else {
            set_overall(
                ctx,
                ni,
                NodeImageState::Error,
                "InvalidSpec",
                &invalid.to_string(),
            )
            .await?;
        }
        return Ok(Action::AwaitChange);
    }
    if ni.metadata.deletion_timestamp.is_some() {
        return cleanup(ni, ctx).await;
    }
    let Some(provider) = ctx.providers.get(&ni.spec.provider).cloned() else {
        let msg = format!(
            "provider {:?} is not enabled (enabled: {})",
            ni.spec.provider,
            ctx.providers.ids().join(", ")
        );
        set_overall(ctx, ni, NodeImageState::Error, "ProviderNotEnabled", &msg).await?;
        return Ok(Action::AwaitChange);
    };
    let ni = if has_finalizer(ni, nodeimage::FINALIZER) {
        ni.clone()
    } else {
        match patch_metadata_retry(&ctx.store, ni, &finalizer_patch(ni, nodeimage::FINALIZER, true)).await? {
            Some(ni) => ni,
            None => return Ok(Action::AwaitChange),
        }
    };
    let Some(ni) = drop_vanished_releases(&ni, ctx).await? else {
        return Ok(Action::AwaitChange);
    };

    let status = ni.status.clone().unwrap_or_default();
    if status.releases.is_empty() && status.state != NodeImageState::New {
        // The Release that creates a NodeImage records itself in `status.releases` in a
        // second write (a create cannot set the status): until then the image is not unused.
        let age =
            ni.metadata
                .creation_timestamp
                .as_ref()
                // Rounded to the second, a creation time can be a little ahead of now.
                .map(|t| {
                    Duration::from_millis(
                        (Timestamp::now().as_millisecond() - t.0.as_millisecond()).max(0) as u64
                    )
                });
        match age {
            Some(age) if age < CLAIM_GRACE && status.state != NodeImageState::AwaitingDeletion => {
                return Ok(Action::Requeue(CLAIM_GRACE - age + Duration::from_millis(50)));
            }
            _ => return unused(&ni, &status, ctx).await,
        }
    }

    let Some(source) = &ctx.source else {
        set_overall(
            ctx,
            &ni,
            NodeImageState::Error,
            "NoSource",
            "no s3 source is configured",
        )
        .await?;
        return Ok(Action::AwaitChange);
    };
    let object = source.object(&node_image_key(
        provider.id(),
        &ni.spec.name,
        provider.format().ext(),
    ));
    match object.head().await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let msg = format!("source {} not found", object.display_url());
            let was = status.state;
            set_all_locations(ctx, &ni, provider.as_ref(), LocationState::Missing, &msg).await?;
            if was != NodeImageState::Missing {
                ctx.store
                    .event(&ni, Event::warning("SourceMissing", "Import", msg))
                    .await;
            }
            return Ok(Action::Requeue(ctx.settings.recheck));
        }
        Err(e) => {
            let e = ProviderError::from(e);
            set_overall(
                ctx,
                &ni,
                NodeImageState::Error,
                "SourceUnavailable",
                &e.to_string(),
            )
            .await?;
            return Err(e.into());
        }
    }

    let locations = provider.locations();
    let latest = Arc::new(Mutex::new(ni.clone()));
    let (latest, object) = (&latest, &object);
    let results: Vec<Result<(), ProviderError>> = stream::iter(locations)
        .map(|loc| {
            let provider = provider.clone();
            async move { distribute(ctx, latest, provider, &loc, object).await }
        })
        .buffer_unordered(ctx.settings.location_concurrency.max(1))
        .collect()
        .await;

    let mut retry = None;
    for r in results {
        match r {
            // A name clash needs a person: checked again at the next recheck, not retried now.
            Ok(())
            | Err(ProviderError::InvalidImage(_))
            | Err(ProviderError::SourceMissing(_))
            | Err(ProviderError::NameClash { .. }) => {}
            Err(e) => retry = retry.or(Some(e)),
        }
    }
    match retry {
        Some(e) => Err(e.into()),
        None => Ok(Action::Requeue(ctx.settings.recheck)),
    }
}

/// Checks the names that S3 keys and template names are built from: `spec.name` must be a
/// DNS-1123 subdomain and `spec.provider` a label, as the NodeImages the release controller
/// makes are (a NodeImage written by hand may hold anything).
fn check_spec(ni: &NodeImage) -> Result<(), ido_api::names::InvalidName> {
    let object = format!(
        "NodeImage {}",
        ido_api::names::quote(ni.metadata.name.as_deref().unwrap_or_default())
    );
    ido_api::names::check_subdomain(&object, "spec.name", &ni.spec.name)?;
    ido_api::names::check_label(&object, "spec.provider", &ni.spec.provider)
}

/// Makes the image exist in one location; writes the location's status on the way.
async fn distribute<S: Store>(
    ctx: &Context<S>,
    latest: &Arc<Mutex<NodeImage>>,
    provider: Arc<dyn Provider>,
    loc: &str,
    object: &ido_engine::s3::S3Object,
) -> Result<(), ProviderError> {
    let image = latest.lock().await.spec.name.clone();
    let pid = provider.id();
    let outcome = match provider.exists(loc, &image).await {
        Ok(Some(t)) => Ok((t, None)),
        Ok(None) => {
            let progress = Progress::default();
            write_location(
                ctx,
                latest,
                pid,
                loc,
                Update::new(LocationState::Uploading, "importing"),
            )
            .await;
            let obj = latest.lock().await.clone();
            ctx.store
                .event(
                    &obj,
                    Event::normal(
                        "Uploading",
                        "Import",
                        format!("importing {image} into {pid}/{loc}"),
                    ),
                )
                .await;
            let started = std::time::Instant::now();
            let ticker = {
                let (progress, latest) = (progress.clone(), latest.clone());
                let loc = loc.to_string();
                let ctx_ref = ctx;
                async move {
                    loop {
                        tokio::time::sleep(PROGRESS_EVERY).await;
                        let b = progress.get();
                        let update = Update::new(LocationState::Uploading, "importing").bytes(b);
                        write_location(ctx_ref, &latest, pid, &loc, update).await;
                    }
                }
            };
            let created = tokio::select! {
                r = provider.create(loc, &image, object, &progress) => r,
                _ = ticker => unreachable!("the ticker never ends"),
            };
            let labels = ctx_labels(pid, loc);
            ctx.metrics
                .upload_bytes
                .get_or_create(&labels)
                .inc_by(progress.get());
            ctx.metrics
                .upload_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            created.map(|t| (t, Some((progress.get(), started.elapsed()))))
        }
        Err(e) => Err(e),
    };
    let result_label = |r: &str| crate::metrics::UploadResultLabels {
        provider: pid.into(),
        location: loc.into(),
        result: r.into(),
    };
    match outcome {
        Ok((t, uploaded)) => {
            let bytes = uploaded
                .map(|u| u.0)
                .unwrap_or_else(|| current_bytes(latest, loc));
            let msg = format!("template {}", t.path);
            let update = Update::new(LocationState::Available, msg)
                .bytes(bytes)
                .template(t.reference.clone());
            write_location(ctx, latest, pid, loc, update).await;
            if let Some((b, took)) = uploaded {
                ctx.metrics.uploads.get_or_create(&result_label("success")).inc();
                let obj = latest.lock().await.clone();
                let msg = format!(
                    "imported {image} into {pid}/{loc} as {} ({b} bytes in {:.1?})",
                    t.path, took
                );
                ctx.store
                    .event(&obj, Event::normal("Uploaded", "Import", msg))
                    .await;
            }
            Ok(())
        }
        Err(e) => {
            let state = match e {
                ProviderError::SourceMissing(_) => LocationState::Missing,
                _ => LocationState::Error,
            };
            ctx.metrics.uploads.get_or_create(&result_label("failure")).inc();
            write_location(ctx, latest, pid, loc, Update::new(state, e.to_string())).await;
            let obj = latest.lock().await.clone();
            let reason = if e.is_name_clash() {
                NAME_CLASH
            } else {
                "UploadFailed"
            };
            ctx.store
                .event(
                    &obj,
                    Event::warning(reason, "Import", format!("{pid}/{loc}: {e}")),
                )
                .await;
            Err(e)
        }
    }
}

fn ctx_labels(provider: &str, loc: &str) -> crate::metrics::UploadLabels {
    crate::metrics::UploadLabels {
        provider: provider.into(),
        location: loc.into(),
    }
}

fn current_bytes(latest: &Arc<Mutex<NodeImage>>, loc: &str) -> u64 {
    latest
        .try_lock()
        .ok()
        .and_then(|ni| {
            ni.status.as_ref().and_then(|s| {
                s.locations
                    .iter()
                    .find(|l| l.location == loc)
                    .map(|l| l.bytes_transferred)
            })
        })
        .unwrap_or(0)
}

/// A location's new state, as written into `status.locations`.
struct Update {
    state: LocationState,
    template: Option<String>,
    bytes: u64,
    message: String,
}

impl Update {
    fn new(state: LocationState, message: impl Into<String>) -> Self {
        Self {
            state,
            template: None,
            bytes: 0,
            message: message.into(),
        }
    }
    fn bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }
    fn template(mut self, template: String) -> Self {
        self.template = Some(template);
        self
    }
}

/// Sets one location's entry and re-summarises the status.
async fn write_location<S: Store>(
    ctx: &Context<S>,
    latest: &Arc<Mutex<NodeImage>>,
    provider: &str,
    loc: &str,
    update: Update,
) {
    let mut guard = latest.lock().await;
    let locations = ctx
        .providers
        .get(provider)
        .map(|p| p.locations())
        .unwrap_or_default();
    let r = modify_status(&ctx.store, &*guard, |ni: &mut NodeImage| {
        let generation = ni.metadata.generation;
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        upsert_location(st, provider, loc, &update);
        summarize(st, &locations, generation);
    })
    .await;
    match r {
        Ok(Some(ni)) => *guard = ni,
        Ok(None) => {}
        Err(e) => tracing::warn!(location = loc, error = %e, "status write failed"),
    }
}

fn upsert_location(st: &mut NodeImageStatus, provider: &str, loc: &str, u: &Update) {
    let now = Timestamp::now();
    match st.locations.iter_mut().find(|l| l.location == loc) {
        Some(l) => {
            if l.state != u.state {
                l.last_transition_time = now;
            }
            // An Available location keeps its template reference unless a new one is given.
            let keep = u.state == LocationState::Available;
            l.template = u
                .template
                .clone()
                .or_else(|| if keep { l.template.clone() } else { None });
            l.state = u.state;
            l.bytes_transferred = u.bytes;
            l.message = u.message.clone();
            l.provider = provider.to_string();
        }
        None => st.locations.push(LocationStatus {
            location: loc.to_string(),
            provider: provider.to_string(),
            state: u.state,
            template: u.template.clone(),
            bytes_transferred: u.bytes,
            message: u.message.clone(),
            last_transition_time: now,
        }),
    }
}

/// Derives `state`, the conditions and `observedGeneration` from the locations.
pub fn summarize(st: &mut NodeImageStatus, configured: &[String], generation: Option<i64>) {
    st.locations.retain(|l| configured.contains(&l.location));
    st.locations.sort_by(|a, b| a.location.cmp(&b.location));
    let any = |s: LocationState| st.locations.iter().any(|l| l.state == s);
    let all_available = !configured.is_empty()
        && configured.iter().all(|c| {
            st.locations
                .iter()
                .any(|l| &l.location == c && l.state == LocationState::Available)
        });
    let state = if any(LocationState::Uploading) {
        NodeImageState::Uploading
    } else if any(LocationState::Error) {
        NodeImageState::Error
    } else if any(LocationState::Missing) {
        NodeImageState::Missing
    } else if all_available {
        NodeImageState::Available
    } else {
        NodeImageState::Pending
    };
    let not_ok: Vec<String> = st
        .locations
        .iter()
        .filter(|l| l.state != LocationState::Available)
        .map(|l| {
            format!(
                "{}: {}",
                l.location,
                if l.message.is_empty() {
                    format!("{:?}", l.state)
                } else {
                    l.message.clone()
                }
            )
        })
        .collect();
    let (ready, reason, message) = match state {
        NodeImageState::Available => (
            ConditionStatus::True,
            "Available",
            format!("available in {} location(s)", configured.len()),
        ),
        NodeImageState::Missing => (ConditionStatus::False, "SourceMissing", not_ok.join("; ")),
        NodeImageState::Error if name_clash(st) => (ConditionStatus::False, NAME_CLASH, not_ok.join("; ")),
        s => (ConditionStatus::False, s.as_str(), not_ok.join("; ")),
    };
    let reason = if reason.is_empty() { "Pending" } else { reason };
    let cond = |t: &str, s: ConditionStatus, r: &str, m: String| Condition {
        type_: t.into(),
        status: s,
        observed_generation: generation,
        last_transition_time: Timestamp::now(),
        reason: r.into(),
        message: m,
    };
    set_condition(
        &mut st.conditions,
        cond(conditions::READY, ready, reason, message),
    );
    let uploading: Vec<&str> = st
        .locations
        .iter()
        .filter(|l| l.state == LocationState::Uploading)
        .map(|l| l.location.as_str())
        .collect();
    let progressing = if uploading.is_empty() {
        cond(
            conditions::PROGRESSING,
            ConditionStatus::False,
            "Idle",
            String::new(),
        )
    } else {
        cond(
            conditions::PROGRESSING,
            ConditionStatus::True,
            "Uploading",
            format!("importing into {}", uploading.join(", ")),
        )
    };
    set_condition(&mut st.conditions, progressing);
    let failed: Vec<String> = st
        .locations
        .iter()
        .filter(|l| l.state == LocationState::Error)
        .map(|l| format!("{}: {}", l.location, l.message))
        .collect();
    let degraded = if failed.is_empty() {
        cond(
            conditions::DEGRADED,
            ConditionStatus::False,
            "AsExpected",
            String::new(),
        )
    } else {
        let reason = if name_clash(st) {
            NAME_CLASH
        } else {
            "LocationFailed"
        };
        cond(
            conditions::DEGRADED,
            ConditionStatus::True,
            reason,
            failed.join("; "),
        )
    };
    set_condition(&mut st.conditions, degraded);
    st.state = state;
    st.observed_generation = generation;
}

/// Condition reason (and event reason) of a location whose template name is taken by an
/// object ido did not make ([`ProviderError::NameClash`]).
pub const NAME_CLASH: &str = "NameClash";

/// Whether a location is in `Error` because of a name clash (its message says so).
fn name_clash(st: &NodeImageStatus) -> bool {
    st.locations
        .iter()
        .any(|l| l.state == LocationState::Error && ProviderError::is_name_clash_message(&l.message))
}

/// Sets every location to `state` with `message`.
async fn set_all_locations<S: Store>(
    ctx: &Context<S>,
    ni: &NodeImage,
    provider: &dyn Provider,
    state: LocationState,
    message: &str,
) -> Result<(), Error> {
    let locations = provider.locations();
    let pid = provider.id();
    modify_status(&ctx.store, ni, |ni: &mut NodeImage| {
        let generation = ni.metadata.generation;
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        for l in &locations {
            upsert_location(st, pid, l, &Update::new(state, message));
        }
        summarize(st, &locations, generation);
    })
    .await?;
    Ok(())
}

/// Sets the overall state with a failing Ready condition (no per-location work possible).
async fn set_overall<S: Store>(
    ctx: &Context<S>,
    ni: &NodeImage,
    state: NodeImageState,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let before = ni
        .status
        .as_ref()
        .and_then(|s| ido_api::condition::find(&s.conditions, conditions::READY))
        .cloned();
    modify_status(&ctx.store, ni, |ni: &mut NodeImage| {
        let generation = ni.metadata.generation;
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        st.state = state;
        st.observed_generation = generation;
        set_condition(
            &mut st.conditions,
            Condition {
                type_: conditions::READY.into(),
                status: ConditionStatus::False,
                observed_generation: generation,
                last_transition_time: Timestamp::now(),
                reason: reason.into(),
                message: message.into(),
            },
        );
    })
    .await?;
    if before.is_none_or(|c| c.reason != reason || c.message != message) {
        ctx.store
            .event(ni, Event::warning(reason, "Reconcile", message))
            .await;
    }
    Ok(())
}

/// Removes releases that no longer exist from `status.releases` (e.g. a Release whose
/// finalizer was removed by hand), so the list stays exact.
async fn drop_vanished_releases<S: Store>(
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
async fn unused<S: Store>(
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
                        Event::normal("RetentionExpired", "Delete", "unused for the retention period"),
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
async fn cleanup<S: Store>(ni: &NodeImage, ctx: &Context<S>) -> Result<Action, Error> {
    if !has_finalizer(ni, nodeimage::FINALIZER) {
        return Ok(Action::AwaitChange);
    }
    let Some(provider) = ctx.providers.get(&ni.spec.provider).cloned() else {
        let msg = format!(
            "provider {:?} is not enabled: its templates were not removed",
            ni.spec.provider
        );
        ctx.store
            .event(ni, Event::warning("ProviderNotEnabled", "Delete", msg))
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
    let results: Vec<(String, Result<(), ProviderError>)> = stream::iter(locations.clone())
        .map(|loc| {
            let provider = provider.clone();
            let image = image.clone();
            async move {
                let r = provider.delete(&loc, &image).await;
                (loc, r)
            }
        })
        .buffer_unordered(ctx.settings.location_concurrency.max(1))
        .collect()
        .await;
    let mut first_err = None;
    if let Some(updated) = modify_status(&ctx.store, &ni, |ni: &mut NodeImage| {
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        for (loc, r) in &results {
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
    })
    .await?
    {
        ni = updated;
    }
    let mut clash_only = true;
    for (loc, r) in results {
        if let Err(e) = r {
            let reason = if e.is_name_clash() {
                NAME_CLASH
            } else {
                clash_only = false;
                "DeleteFailed"
            };
            ctx.store
                .event(&ni, Event::warning(reason, "Delete", format!("{pid}/{loc}: {e}")))
                .await;
            first_err = first_err.or(Some(e));
        }
    }
    if let Some(e) = first_err {
        if clash_only {
            return Ok(Action::Requeue(ctx.settings.recheck));
        }
        return Err(e.into());
    }
    ctx.store
        .event(
            &ni,
            Event::normal(
                "Deleted",
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

#[cfg(test)]
mod tests {
    //! The reconciler over a file store and an in-memory provider: what it writes for specs
    //! it cannot work on, and how a deletion removes the templates and lets go.

    use std::sync::Mutex as StdMutex;

    use ido_api::{LocationState, NodeImageSpec};
    use ido_engine::s3::S3Object;
    use ido_providers::{Providers, SourceFormat, Template};

    use super::*;
    use crate::{Settings, file_store::FileStore, metrics::Metrics};

    /// Templates in memory; deletions recorded; `fail_delete` makes deletions fail.
    #[derive(Default)]
    struct Mem {
        deleted: StdMutex<Vec<(String, String)>>,
        fail_delete: bool,
    }

    #[async_trait::async_trait]
    impl Provider for Mem {
        fn id(&self) -> &'static str {
            "capv"
        }
        fn release_prefix(&self) -> &'static str {
            "vsphere"
        }
        fn format(&self) -> SourceFormat {
            SourceFormat::Ova
        }
        fn locations(&self) -> Vec<String> {
            vec!["a".into(), "b".into()]
        }
        async fn exists(&self, _: &str, _: &str) -> Result<Option<Template>, ProviderError> {
            Ok(None)
        }
        async fn create(
            &self,
            _: &str,
            _: &str,
            _: &S3Object,
            _: &Progress,
        ) -> Result<Template, ProviderError> {
            Err(ProviderError::Transport("not in this test".into()))
        }
        async fn delete(&self, location: &str, image: &str) -> Result<(), ProviderError> {
            if self.fail_delete {
                return Err(ProviderError::Transport(format!("{location} is down")));
            }
            self.deleted.lock().unwrap().push((location.into(), image.into()));
            Ok(())
        }
    }

    fn context(dir: &std::path::Path, provider: Option<Arc<Mem>>) -> Context<FileStore> {
        let mut providers = Providers::default();
        if let Some(p) = provider {
            providers.insert(p);
        }
        Context {
            store: FileStore::open(dir).unwrap(),
            providers,
            source: None,
            settings: Settings::default(),
            metrics: Metrics::default(),
            seen_releases: Default::default(),
        }
    }

    async fn stored(
        ctx: &Context<FileStore>,
        spec_name: &str,
        provider: &str,
        releases: &[&str],
    ) -> NodeImage {
        let mut ni = NodeImage::new(
            "img",
            NodeImageSpec {
                name: spec_name.into(),
                provider: provider.into(),
            },
        );
        ni.metadata.namespace = Some(ctx.settings.namespace.clone());
        let ni = ctx.store.create(&ni).await.unwrap();
        modify_status(&ctx.store, &ni, |n: &mut NodeImage| {
            n.status.get_or_insert_with(Default::default).releases =
                releases.iter().map(|r| r.to_string()).collect();
        })
        .await
        .unwrap()
        .unwrap()
    }

    async fn get(ctx: &Context<FileStore>) -> NodeImage {
        ctx.store
            .get::<NodeImage>(Some(&ctx.settings.namespace), "img")
            .await
            .unwrap()
            .unwrap()
    }

    fn ready(ni: &NodeImage) -> (NodeImageState, String, String) {
        let st = ni.status.as_ref().unwrap();
        let c = ido_api::condition::find(&st.conditions, conditions::READY).unwrap();
        (st.state, c.reason.clone(), c.message.clone())
    }

    #[tokio::test]
    async fn a_name_that_could_leave_a_path_is_invalid_and_nothing_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(Mem::default());
        let ctx = context(dir.path(), Some(mem.clone()));
        let ni = stored(&ctx, "../../etc", "capv", &["vsphere-1.0.0"]).await;
        assert_eq!(reconcile(&ni, &ctx).await.unwrap(), Action::AwaitChange);
        let ni = get(&ctx).await;
        let (state, reason, message) = ready(&ni);
        assert_eq!((state, reason.as_str()), (NodeImageState::Error, "InvalidSpec"));
        assert!(
            message.contains("spec.name") && message.contains("../../etc"),
            "{message}"
        );
        assert!(
            !has_finalizer(&ni, nodeimage::FINALIZER),
            "nothing to clean up later"
        );
    }

    #[tokio::test]
    async fn a_provider_not_enabled_is_named_with_the_enabled_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), Some(Arc::new(Mem::default())));
        let ni = stored(&ctx, "flatcar-x", "capz", &["azure-1.0.0"]).await;
        reconcile(&ni, &ctx).await.unwrap();
        let (state, reason, message) = ready(&get(&ctx).await);
        assert_eq!(
            (state, reason.as_str()),
            (NodeImageState::Error, "ProviderNotEnabled")
        );
        assert!(
            message.contains("\"capz\"") && message.contains("capv"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn without_a_source_the_image_says_so_and_keeps_its_finalizer() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), Some(Arc::new(Mem::default())));
        let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
        reconcile(&ni, &ctx).await.unwrap();
        let ni = get(&ctx).await;
        assert_eq!(ready(&ni).1, "NoSource");
        assert!(has_finalizer(&ni, nodeimage::FINALIZER), "taken before any work");
    }

    #[tokio::test]
    async fn deletion_removes_the_template_everywhere_then_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(Mem::default());
        let ctx = context(dir.path(), Some(mem.clone()));
        let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
        reconcile(&ni, &ctx).await.unwrap(); // takes the finalizer
        ctx.store.delete(&get(&ctx).await).await.unwrap();
        let deleting = get(&ctx).await;
        assert!(
            deleting.metadata.deletion_timestamp.is_some(),
            "held by the finalizer"
        );
        reconcile(&deleting, &ctx).await.unwrap();
        let mut deleted = mem.deleted.lock().unwrap().clone();
        deleted.sort();
        assert_eq!(
            deleted,
            [
                ("a".to_string(), "flatcar-x".to_string()),
                ("b".into(), "flatcar-x".into())
            ]
        );
        assert!(
            ctx.store
                .get::<NodeImage>(Some(&ctx.settings.namespace), "img")
                .await
                .unwrap()
                .is_none(),
            "the finalizer went, and the object with it"
        );
    }

    #[tokio::test]
    async fn a_failed_deletion_keeps_the_finalizer_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(Mem {
            fail_delete: true,
            ..Mem::default()
        });
        let ctx = context(dir.path(), Some(mem));
        let ni = stored(&ctx, "flatcar-x", "capv", &["vsphere-1.0.0"]).await;
        reconcile(&ni, &ctx).await.unwrap();
        ctx.store.delete(&get(&ctx).await).await.unwrap();
        let _ = reconcile(&get(&ctx).await, &ctx).await;
        let ni = get(&ctx).await;
        assert!(has_finalizer(&ni, nodeimage::FINALIZER));
        let st = ni.status.unwrap();
        assert_eq!(st.state, NodeImageState::Error);
        assert!(
            st.locations
                .iter()
                .all(|l| l.state == LocationState::Error && l.message.contains("is down")),
            "{:?}",
            st.locations
        );
    }
}
