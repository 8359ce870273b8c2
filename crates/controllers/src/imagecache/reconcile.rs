//! The policy reconciler: what the workloads in scope run, recorded as CachedImages (one
//! per source image, named after it, so however many workloads and pods ask there is one
//! copy), their use kept current, and in `patch` mode the workloads pointed at copies.
//!
//! ```text
//!   policy ─compile─▶ scope, filter, target ─▶ workloads (every kind, unowned) ─▶ tally
//!     per source image: CachedImage created if absent; status.workloads, lastUsedTime,
//!                       pullSecrets (namespace/name; read only by the copy)
//!     per record of the policy no workload runs: status.workloads emptied (its retention
//!                       runs from lastUsedTime)
//!     patch mode: each workload whose images have copies present ─▶ one update of its
//!                       pod template (images, plus the cache's pull secret; its own kept)
//!     status: cached / pending, Ready ─▶ requeue after `recheck`
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use ido_api::{
    CachePhase, CachedImage, CachedImageSpec, ConditionStatus, Reason,
    condition::set_condition,
    imagecache::{CacheMode, PullSecretReference, WorkloadReference},
};
use ido_oci::Reference;

use super::{
    Workload,
    policy::{Compiled, PolicyKind, compile},
    rewrite,
    scan::{Scan, tally, workloads},
};
use crate::{
    Action, Context, Error,
    imagesync::status::{MAX_MESSAGE, clip, condition, now_s},
    store::{Event, Store, StoreError, modify_status},
};

/// How stale `lastUsedTime` may be while workloads run the image (at most a tenth of the
/// retention): fewer status writes.
const USED_GRANULARITY: Duration = Duration::from_secs(600);

/// Reconciles one policy (see the module docs).
pub async fn reconcile<S: Store, P: PolicyKind>(p: &P, ctx: &Arc<Context<S>>) -> Result<Action, Error> {
    let compiled = match compile(p, &ctx.settings.namespace) {
        Ok(c) => c,
        Err(e) => {
            let message = clip(&e.to_string(), MAX_MESSAGE);
            let before = p
                .cache_status()
                .and_then(|s| ido_api::condition::find(&s.conditions, "Ready"))
                .map(|c| c.message.clone());
            write_status(
                ctx,
                p,
                ConditionStatus::False,
                Reason::InvalidSpec,
                message.clone(),
                None,
            )
            .await?;
            if before.as_deref() != Some(message.as_str()) {
                ctx.store
                    .event(
                        p,
                        Event::warning(Reason::InvalidSpec.as_str(), "Validate", message),
                    )
                    .await;
            }
            return Ok(Action::AwaitChange);
        }
    };
    let found = workloads(&ctx.store, &compiled.scope).await?;
    let scan = tally(&ctx.store, &found, &compiled.filter, &compiled.target).await?;
    let records = record(ctx, &compiled, &scan).await?;
    if compiled.mode == CacheMode::Patch {
        patch_workloads(ctx, &compiled, &found, &records).await?;
    }
    let in_scope: Vec<&CachedImage> = records
        .values()
        .filter(|r| {
            r.spec.policy == compiled.reference && r.status.as_ref().is_some_and(|s| !s.workloads.is_empty())
        })
        .collect();
    let cached = in_scope.iter().filter(|r| phase(r) == CachePhase::Cached).count() as u32;
    let pending = in_scope.len() as u32 - cached;
    let mut message = format!(
        "{} images in use: {cached} cached, {pending} pending",
        in_scope.len()
    );
    if !scan.unreadable.is_empty() {
        let (w, e) = &scan.unreadable[0];
        message.push_str(&format!(
            "; {} images are not references, e.g. {} {}/{}: {e}",
            scan.unreadable.len(),
            w.kind,
            w.namespace,
            w.name
        ));
    }
    write_status(
        ctx,
        p,
        ConditionStatus::True,
        Reason::Scanned,
        clip(&message, MAX_MESSAGE),
        Some((cached, pending)),
    )
    .await?;
    Ok(Action::Requeue(ctx.settings.recheck))
}

fn phase(r: &CachedImage) -> CachePhase {
    r.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

async fn write_status<S: Store, P: PolicyKind>(
    ctx: &Context<S>,
    p: &P,
    status: ConditionStatus,
    reason: Reason,
    message: String,
    counts: Option<(u32, u32)>,
) -> Result<(), Error> {
    modify_status(&ctx.store, p, |o: &mut P| {
        let g = o.meta().generation;
        let st = o.cache_status_mut();
        st.observed_generation = g;
        if let Some((cached, pending)) = counts {
            st.cached = cached;
            st.pending = pending;
        }
        set_condition(
            &mut st.conditions,
            condition("Ready", status, reason.as_str(), message.clone(), g),
        );
    })
    .await?;
    Ok(())
}

/// Brings the CachedImages in line with the scan; returns every record by source image.
async fn record<S: Store>(
    ctx: &Context<S>,
    policy: &Compiled,
    scan: &Scan,
) -> Result<BTreeMap<String, CachedImage>, Error> {
    let mut records: BTreeMap<String, CachedImage> = ctx
        .store
        .list::<CachedImage>()
        .await?
        .into_iter()
        .map(|r| (r.spec.source.clone(), r))
        .collect();
    let now = now_s();
    // Each record of this policy: who runs its source, or its copy directly.
    let mut used: BTreeMap<String, (BTreeSet<WorkloadReference>, Vec<PullSecretReference>)> = BTreeMap::new();
    for (source, in_use) in &scan.images {
        let secrets: Vec<PullSecretReference> = in_use
            .pull_secrets
            .iter()
            .flat_map(|(ns, names)| {
                names.iter().map(|n| PullSecretReference {
                    namespace: ns.clone(),
                    name: n.clone(),
                })
            })
            .collect();
        if !records.contains_key(source) {
            match create(ctx, policy, &in_use.source, &secrets).await? {
                Some(r) => {
                    records.insert(source.clone(), r);
                }
                None => continue,
            }
        }
        used.insert(source.clone(), (in_use.workloads.clone(), secrets));
    }
    for r in records.values_mut() {
        if r.spec.policy != policy.reference {
            continue;
        }
        let (mut workloads, secrets) = used.remove(&r.spec.source).unwrap_or_default();
        for held in copy_names(r) {
            if let Some(w) = scan.in_cache.get(&held) {
                workloads.extend(w.iter().cloned());
            }
        }
        let granularity = USED_GRANULARITY.min(policy.retention / 10);
        let st = r.status.clone().unwrap_or_default();
        let stale = st
            .last_used_time
            .is_none_or(|t| Duration::try_from(now.duration_since(t)).unwrap_or_default() >= granularity);
        let list: Vec<WorkloadReference> = workloads.into_iter().collect();
        let secrets = if list.is_empty() {
            st.pull_secrets.clone()
        } else {
            secrets
        };
        if st.workloads == list && st.pull_secrets == secrets && (list.is_empty() || !stale) {
            continue;
        }
        if let Some(stored) = modify_status(&ctx.store, r, |o: &mut CachedImage| {
            let s = o.status.get_or_insert_default();
            // In use now, or just stopped being used by workloads it had.
            if !list.is_empty() || (s.last_used_time.is_none() && !s.workloads.is_empty()) {
                s.last_used_time = Some(now);
            }
            s.workload_count = list.len() as u32;
            s.workloads = list.clone();
            s.pull_secrets = secrets.clone();
        })
        .await?
        {
            *r = stored;
        }
    }
    Ok(records)
}

/// The names a workload may give the copy of `r`: its target, and by digest.
fn copy_names(r: &CachedImage) -> Vec<String> {
    let mut out = vec![r.spec.target.clone()];
    if let (Ok(t), Some(d)) = (
        ido_oci::reference::parse(&r.spec.target),
        r.status.as_ref().and_then(|s| s.digest.clone()),
    ) {
        out.push(Reference::with_digest(t.registry().into(), t.repository().into(), d.clone()).whole());
        if let Some(tag) = t.tag() {
            out.push(
                Reference::with_tag_and_digest(t.registry().into(), t.repository().into(), tag.into(), d)
                    .whole(),
            );
        }
    }
    out
}

/// Creates the record of `source` under `policy` with the pull secrets to read it with
/// (`None` when its copy cannot be named). A record another policy made first is that
/// policy's.
pub async fn create<S: Store>(
    ctx: &Context<S>,
    policy: &Compiled,
    source: &Reference,
    secrets: &[PullSecretReference],
) -> Result<Option<CachedImage>, Error> {
    let target = match policy.target.cached(source) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(policy = %policy.reference, error = %e, "not cached");
            return Ok(None);
        }
    };
    let name = super::cached_image_name(source);
    let mut obj = CachedImage::new(
        &name,
        CachedImageSpec {
            source: source.whole(),
            target: target.whole(),
            policy: policy.reference.clone(),
        },
    );
    obj.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "ido".to_string(),
    )]));
    match ctx.store.create(&obj).await {
        Ok(created) => {
            tracing::info!(source = %source.whole(), cachedimage = %name, policy = %policy.reference, "queued for the cache");
            if secrets.is_empty() {
                return Ok(Some(created));
            }
            // At once: the copy reads the source with them.
            Ok(modify_status(&ctx.store, &created, |o: &mut CachedImage| {
                let s = o.status.get_or_insert_default();
                if s.pull_secrets.is_empty() {
                    s.pull_secrets = secrets.to_vec();
                }
            })
            .await?)
        }
        Err(StoreError::AlreadyExists { .. }) => Ok(ctx.store.get::<CachedImage>(None, &name).await?),
        Err(e) => Err(e.into()),
    }
}

/// The copy a workload's image is pointed at, if the image is cached and its copy present.
fn copy_for(policy: &Compiled, records: &BTreeMap<String, CachedImage>, image: &str) -> Option<String> {
    let source = ido_oci::reference::parse(image).ok()?;
    if policy.target.holds(&source) || !policy.filter.admits(&source) {
        return None;
    }
    let r = records.get(&source.whole())?;
    let st = r.status.as_ref()?;
    if st.phase != CachePhase::Cached {
        return None;
    }
    Some(pointed_at(policy, &r.spec.target, st.digest.as_deref()))
}

/// The reference workloads are pointed at: the copy, by digest with `pinDigest`.
pub fn pointed_at(policy: &Compiled, target: &str, digest: Option<&str>) -> String {
    match (policy.pin_digest, digest, ido_oci::reference::parse(target)) {
        (true, Some(d), Ok(t)) if t.digest().is_none() => match t.tag() {
            Some(tag) => Reference::with_tag_and_digest(
                t.registry().into(),
                t.repository().into(),
                tag.into(),
                d.into(),
            )
            .whole(),
            None => Reference::with_digest(t.registry().into(), t.repository().into(), d.into()).whole(),
        },
        _ => target.to_string(),
    }
}

/// `patch` mode: points each workload (not bare Pods) at the copies present, one update
/// each; a conflict is left for the next pass.
async fn patch_workloads<S: Store>(
    ctx: &Context<S>,
    policy: &Compiled,
    found: &[Workload],
    records: &BTreeMap<String, CachedImage>,
) -> Result<(), Error> {
    for w in found {
        if matches!(w, Workload::Pod(_)) {
            continue;
        }
        let mut w = w.clone();
        let Some(spec) = w.pod_spec_mut() else { continue };
        let rewrites = rewrite::rewrites(spec, |image| copy_for(policy, records, image));
        if !rewrite::apply(spec, &rewrites, policy.pull_secret.as_deref()) {
            continue;
        }
        let who = format!(
            "{} {}/{}",
            w.kind(),
            w.meta().namespace.as_deref().unwrap_or_default(),
            w.meta().name.as_deref().unwrap_or_default()
        );
        match w.replace(&ctx.store).await {
            Ok(()) => {
                let changed: Vec<String> = rewrites
                    .iter()
                    .map(|r| format!("{} → {}", r.from, r.to))
                    .collect();
                tracing::info!(workload = %who, images = ?changed, "pointed at the cache");
                w.event(
                    &ctx.store,
                    Event::normal(
                        Reason::WorkloadPatched.as_str(),
                        "Patch",
                        format!("pointed at the cache: {}", changed.join(", ")),
                    ),
                )
                .await;
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
