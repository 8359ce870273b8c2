//! The image controller: each NodeImage exists in every location of its provider.
//!
//! Per NodeImage: look up the source in S3, then hand a round to a task ([`crate::tasks`]):
//! for every location at once (bounded) check for a complete template and import one if
//! absent, writing each location's state, bytes and message to `status.locations` as it
//! goes; `state` and the conditions summarise them. The reconcile returns at once; the
//! round wakes the object when it ends. Deletion cancels a running round, then removes the
//! template from every location before the finalizer goes.
//! Images no release uses are deleted, or kept `AwaitingDeletion` for the retention period.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use ido_api::{
    Condition, ConditionStatus, LocationState, LocationStatus, NodeImage, NodeImageState, NodeImageStatus,
    Reason, Release,
    condition::set_condition,
    nodeimage::{self, conditions},
};
use ido_io::s3::node_image_key;
use ido_providers::{Progress, Provider, ProviderError, Template};
use jiff::Timestamp;
use tokio::sync::Mutex;

use crate::{
    Action, Context, Error,
    release::mark_unused,
    store::{Event, Store, finalizer_patch, has_finalizer, modify_status, patch_metadata_retry},
    tasks::{TaskKey, TaskState},
};

mod cleanup;
mod status;

use cleanup::*;
use status::*;
pub use status::{NAME_CLASH, summarize};

/// How often bytes transferred are written to the status during an upload.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Reconciles one NodeImage.
pub async fn reconcile<S: Store>(ni: &NodeImage, ctx: &Arc<Context<S>>) -> Result<Action, Error> {
    if let Err(invalid) = check_spec(ni) {
        return reject_invalid(ni, ctx, &invalid).await;
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
        set_overall(
            ctx,
            ni,
            NodeImageState::Error,
            Reason::ProviderNotEnabled.as_str(),
            &msg,
        )
        .await?;
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
        return unlisted(&ni, &status, ctx).await;
    }

    // The upload round runs as a task; while it runs, reconciles return at once, and when
    // it ends it wakes the object, whose next reconcile takes its outcome. (The requeues
    // while it runs only guard against a wake lost by a driver.)
    let key = TaskKey::of(&ni);
    match ctx.tasks.take::<Option<ProviderError>>(&key) {
        TaskState::Running => return Ok(Action::Requeue(ctx.settings.recheck)),
        TaskState::Done(Some(e)) => return Err(e.into()),
        TaskState::Done(None) => return Ok(Action::Requeue(ctx.settings.recheck)),
        TaskState::Idle => {}
    }
    let object = match find_source(ctx, &ni, &provider, status.state).await? {
        Ok(object) => object,
        Err(next) => return Ok(next),
    };

    let (tasks, ctx) = (ctx.tasks.clone(), ctx.clone());
    let recheck = ctx.settings.recheck;
    tasks.start(
        key,
        move |_| async move { round(&ctx, ni, provider, object).await },
    );
    Ok(Action::Requeue(recheck))
}

/// A NodeImage whose names fail [`check_spec`]: its state becomes Error.
async fn reject_invalid<S: Store>(
    ni: &NodeImage,
    ctx: &Context<S>,
    invalid: &ido_api::names::InvalidName,
) -> Result<Action, Error> {
    // Nothing was ever made from a name that fails here: on deletion just let go.
    if ni.metadata.deletion_timestamp.is_some() {
        if has_finalizer(ni, nodeimage::FINALIZER) {
            patch_metadata_retry(&ctx.store, ni, &finalizer_patch(ni, nodeimage::FINALIZER, false)).await?;
        }
    } else {
        set_overall(
            ctx,
            ni,
            NodeImageState::Error,
            Reason::InvalidSpec.as_str(),
            &invalid.to_string(),
        )
        .await?;
    }
    Ok(Action::AwaitChange)
}

/// A NodeImage no release lists: unused, unless just created (within [`CLAIM_GRACE`]).
async fn unlisted<S: Store>(
    ni: &NodeImage,
    status: &NodeImageStatus,
    ctx: &Arc<Context<S>>,
) -> Result<Action, Error> {
    // The Release that creates a NodeImage records itself in `status.releases` in a
    // second write (a create cannot set the status): until then the image is not unused.
    let age = ni
        .metadata
        .creation_timestamp
        .as_ref()
        // Rounded to the second, a creation time can be a little ahead of now.
        .map(|t| {
            Duration::from_millis((Timestamp::now().as_millisecond() - t.0.as_millisecond()).max(0) as u64)
        });
    match age {
        Some(age) if age < CLAIM_GRACE && status.state != NodeImageState::AwaitingDeletion => {
            Ok(Action::Requeue(CLAIM_GRACE - age + Duration::from_millis(50)))
        }
        _ => {
            // A round that ended after the image fell out of use leaves an outcome no one
            // needs: drop it, so that the next use starts a round of its own (one still
            // running wakes the object when it ends, and is dropped then).
            if let TaskState::Done(_) = ctx.tasks.take::<Option<ProviderError>>(&TaskKey::of(ni)) {
                tracing::debug!("an upload round ended after the image fell out of use");
            }
            unused(ni, status, ctx).await
        }
    }
}

/// The S3 object to upload from, when the source has it; `Ok(Err(next))` when there is
/// nothing to upload (no source configured, or the object missing): the reconcile returns
/// `next`. `was` is the image's state before.
async fn find_source<S: Store>(
    ctx: &Context<S>,
    ni: &NodeImage,
    provider: &Arc<dyn Provider>,
    was: NodeImageState,
) -> Result<Result<ido_io::s3::S3Object, Action>, Error> {
    let Some(source) = &ctx.source else {
        set_overall(
            ctx,
            ni,
            NodeImageState::Error,
            Reason::NoSource.as_str(),
            "no s3 source is configured",
        )
        .await?;
        return Ok(Err(Action::AwaitChange));
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
            set_all_locations(ctx, ni, provider.as_ref(), LocationState::Missing, &msg).await?;
            if was != NodeImageState::Missing {
                ctx.store
                    .event(ni, Event::warning(Reason::SourceMissing.as_str(), "Import", msg))
                    .await;
            }
            return Ok(Err(Action::Requeue(ctx.settings.recheck)));
        }
        Err(e) => {
            let e = ProviderError::from(e);
            set_overall(
                ctx,
                ni,
                NodeImageState::Error,
                Reason::SourceUnavailable.as_str(),
                &e.to_string(),
            )
            .await?;
            return Err(e.into());
        }
    }
    Ok(Ok(object))
}

/// One round over every location of the provider at once (bounded): each gets the image if
/// it lacks it. The first error worth retrying at once is the outcome; a name clash needs a
/// person and the others wait for a change, so those are checked again at the next
/// recheck.
async fn round<S: Store>(
    ctx: &Context<S>,
    ni: NodeImage,
    provider: Arc<dyn Provider>,
    object: ido_io::s3::S3Object,
) -> Option<ProviderError> {
    let locations = provider.locations();
    let latest = Arc::new(Mutex::new(ni));
    let (latest, object) = (&latest, &object);
    let results: Vec<Result<(), ProviderError>> = stream::iter(locations)
        .map(|loc| {
            let provider = provider.clone();
            async move { distribute(ctx, latest, provider, &loc, object).await }
        })
        .buffer_unordered(ctx.settings.location_concurrency.max(1))
        .collect()
        .await;
    results.into_iter().find_map(|r| match r {
        Ok(())
        | Err(ProviderError::InvalidImage(_))
        | Err(ProviderError::SourceMissing(_))
        | Err(ProviderError::NameClash { .. }) => None,
        Err(e) => Some(e),
    })
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
    object: &ido_io::s3::S3Object,
) -> Result<(), ProviderError> {
    let image = latest.lock().await.spec.name.clone();
    let pid = provider.id();
    let outcome = match provider.exists(loc, &image).await {
        Ok(Some(t)) => Ok((t, None)),
        Ok(None) => upload(ctx, latest, &provider, loc, &image, object).await,
        Err(e) => Err(e),
    };
    let result_label = |r: &str| crate::metrics::UploadResultLabels {
        provider: pid.into(),
        location: loc.into(),
        result: r.into(),
    };
    match outcome {
        Ok((t, uploaded)) => {
            let bytes = match uploaded {
                Some((b, _)) => b,
                None => current_bytes(latest, loc).await,
            };
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
                    .event(&obj, Event::normal(Reason::Uploaded.as_str(), "Import", msg))
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
                Reason::UploadFailed.as_str()
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

/// Imports `image` into `loc`, writing the bytes sent to the location's status as it goes;
/// the template made, with the bytes and time the upload took.
async fn upload<S: Store>(
    ctx: &Context<S>,
    latest: &Arc<Mutex<NodeImage>>,
    provider: &Arc<dyn Provider>,
    loc: &str,
    image: &str,
    object: &ido_io::s3::S3Object,
) -> Result<(Template, Option<(u64, Duration)>), ProviderError> {
    let pid = provider.id();
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
                Reason::Uploading.as_str(),
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
        r = provider.create(loc, image, object, &progress) => r,
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

fn ctx_labels(provider: &str, loc: &str) -> crate::metrics::UploadLabels {
    crate::metrics::UploadLabels {
        provider: provider.into(),
        location: loc.into(),
    }
}

/// The bytes a location's status records (a template that was there already keeps what
/// its upload counted). Waits for a status write in flight rather than reading 0.
async fn current_bytes(latest: &Arc<Mutex<NodeImage>>, loc: &str) -> u64 {
    let ni = latest.lock().await;
    ni.status
        .as_ref()
        .and_then(|s| s.locations.iter().find(|l| l.location == loc))
        .map_or(0, |l| l.bytes_transferred)
}

#[cfg(test)]
mod tests;
