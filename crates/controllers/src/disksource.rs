//! The DiskSource controller: resolves a DiskSource to its claim and says whether that claim
//! can be cloned.
//!
//! ```text
//!  spec.source.pvc.name ──▶ claim exists? ── no ──▶ Ready=False ClaimMissing
//!                            │ filled by a DiskImport (controller owner) not Succeeded
//!                            │                  ──▶ Ready=False ImportNotSucceeded
//!                            │ not Bound        ──▶ Ready=False ClaimNotBound
//!                            └──────────────────▶ Ready=True ClaimReady, status.claim
//! ```
//!
//! Nothing tells a DiskSource that its claim or the DiskImport filling it changed (neither
//! is its own), so a DiskSource that is not Ready is looked at again every 10 s, a Ready one
//! at the DiskImport controller's recheck.

use std::time::Duration;

use ido_api::{
    Condition, ConditionStatus, DiskImport, DiskImportPhase, DiskSource, DiskSourceStatus,
    condition::set_condition,
    disksource::{conditions, reasons},
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::{
    Action, Context, Error,
    store::{Store, modify_status},
};

/// How soon a DiskSource that is not Ready is looked at again.
const NOT_READY_RECHECK: Duration = Duration::from_secs(10);

/// Reconciles one DiskSource.
pub async fn reconcile<S: Store>(ds: &DiskSource, ctx: &Context<S>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let ns = ds.metadata.namespace.as_deref().unwrap_or_default();
    let claim = ds.spec.source.pvc.name.as_str();
    let (ready, next) = match resolve(ctx, ns, claim).await? {
        Ok(()) => (
            (ConditionStatus::True, reasons::CLAIM_READY, String::new()),
            Action::Requeue(ctx.settings.disk_import.recheck),
        ),
        Err((reason, message)) => (
            (ConditionStatus::False, reason, message),
            Action::Requeue(NOT_READY_RECHECK),
        ),
    };
    let g = ds.metadata.generation;
    let (status, reason, message) = ready;
    let condition = Condition {
        type_: conditions::READY.into(),
        status,
        observed_generation: g,
        last_transition_time: Timestamp::now(),
        reason: reason.into(),
        message,
    };
    let resolved = (reason != reasons::INVALID_SPEC).then(|| claim.to_string());
    modify_status(&ctx.store, ds, |o: &mut DiskSource| {
        let st = o.status.get_or_insert_with(DiskSourceStatus::default);
        st.observed_generation = g;
        st.claim = resolved.clone();
        set_condition(&mut st.conditions, condition.clone());
    })
    .await?;
    Ok(next)
}

/// `Ok(Ok(()))` when the claim `ns/name` can be cloned, else the reason and message.
async fn resolve<S: Store>(
    ctx: &Context<S>,
    ns: &str,
    name: &str,
) -> Result<Result<(), (&'static str, String)>, Error> {
    if let Some(why) = ido_api::names::subdomain_error(name) {
        return Ok(Err((
            reasons::INVALID_SPEC,
            format!("spec.source.pvc.name: {name:?}: {why}"),
        )));
    }
    let Some(pvc) = ctx.store.get::<PersistentVolumeClaim>(Some(ns), name).await? else {
        return Ok(Err((
            reasons::CLAIM_MISSING,
            format!("the claim {ns}/{name} does not exist"),
        )));
    };
    let filler = pvc
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "DiskImport" && r.controller == Some(true))
        .map(|r| r.name.clone());
    if let Some(filler) = filler {
        let phase = ctx
            .store
            .get::<DiskImport>(Some(ns), &filler)
            .await?
            .and_then(|d| d.status)
            .map(|s| s.phase);
        if phase != Some(DiskImportPhase::Succeeded) {
            let phase = phase.map_or("gone".to_string(), |p| {
                if p == DiskImportPhase::New {
                    "new".into()
                } else {
                    p.to_string()
                }
            });
            return Ok(Err((
                reasons::IMPORT_NOT_SUCCEEDED,
                format!("the claim {ns}/{name} is filled by DiskImport {filler}, which is {phase}"),
            )));
        }
    }
    match pvc.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Bound") => Ok(Ok(())),
        phase => Ok(Err((
            reasons::CLAIM_NOT_BOUND,
            format!(
                "the claim {ns}/{name} is not bound (phase {})",
                phase.unwrap_or("Pending")
            ),
        ))),
    }
}
