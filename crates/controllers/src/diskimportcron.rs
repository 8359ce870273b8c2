//! The DiskImportCron controller: golden images kept fresh (CDI's DataImportCron).
//!
//! ```text
//!  spec ──check──▶ schedule (croner, UTC), importsToKeep ≥ 1, template (registry | http)
//!  due? (created, spec changed, nextPollTime come) ──▶ poll: registry manifest digest,
//!        or HTTP ETag / Last-Modified ──▶ status.lastPolledDigest, lastPollTime, nextPollTime
//!        (a failed poll: PollFailed, retried after 1 s doubling to 5 min, nothing deleted)
//!  lastPolledDigest not yet imported ──▶ DiskImport <cron>-<8 hex of sha256(digest)>
//!        (owned, label ido.dev/disk-import-cron, registry pinned @digest) ── ImportCreated
//!  newest Succeeded import ──▶ DiskSource managedDiskSource: spec.source.pvc = its claim
//!        (created owned by the cron; someone else's is left alone: NameClash) ── SourceUpdated
//!  garbageCollect Outdated ──▶ own imports beyond importsToKeep deleted, oldest first,
//!        never the one the DiskSource points at ── GarbageCollected
//! ```
//!
//! The poll's schedule lives in the status (`nextPollTime`), so both drivers agree on it and
//! a reconcile triggered by the cron's own status write polls nothing. The cron is woken by
//! its DiskImports (they are owned by it) and at `nextPollTime`.
//!
//! A DiskImport of the current digest that failed is deleted at the next poll and created
//! again (by the reconcile its deletion triggers). DiskImports the cron did not create (no
//! controller owner reference to it) are never deleted, even with its label.

mod poll;

use std::time::Duration;

use ido_api::{
    Condition, ConditionStatus, CronImport, DiskImport, DiskImportCron, DiskImportCronStatus,
    DiskImportPhase, DiskSource, DiskSourceSpec, GarbageCollect,
    condition::set_condition,
    diskimport::conditions as di_conditions,
    diskimportcron::{conditions, reasons},
    disksource::{ClaimReference, DiskSourceSource},
};
use jiff::{Timestamp, tz::TimeZone};
use sha2::Digest as _;

use ido_api::Reason;

use crate::{
    Action, Context, Error,
    diskimport::short_name,
    imagesync::parse_schedule,
    store::{Event, Store, StoreError, modify_status},
    store::{controller_reference as owner_reference, owned_by},
};

/// Label on the DiskImports a cron creates: the cron's name (cut with a hash past 63 bytes).
pub const CRON_LABEL: &str = "ido.dev/disk-import-cron";
/// Annotation on a cron's DiskImport: what the source was at the poll that made it.
pub const DIGEST_ANNOTATION: &str = "ido.dev/source-digest";
/// Annotation on a cron's DiskImport: when it was created (orders the imports).
pub const CREATED_ANNOTATION: &str = "ido.dev/created-at";

/// The DiskImport of `digest` for `cron`: `<cron>-<first 8 hex of sha256(digest)>`.
pub fn import_name(cron: &str, digest: &str) -> String {
    let hash = hex::encode(sha2::Sha256::digest(digest.as_bytes()));
    format!("{cron}-{}", &hash[..8])
}

/// Longest cron name: its DiskImports' names (`-` and 8 hex added) are claim names.
const NAME_MAX: usize = 253 - 9;

/// What `check` makes of a spec.
struct Checked {
    schedule: croner::Cron,
    keep: usize,
}

/// Checks what the API server's schema cannot; the error names the field and the value.
fn check(cron: &DiskImportCron) -> Result<Checked, String> {
    let spec = &cron.spec;
    let name = cron.metadata.name.as_deref().unwrap_or_default();
    if name.len() > NAME_MAX {
        return Err(format!(
            "metadata.name: {name:?} is longer than {NAME_MAX} characters (its DiskImports add 9)"
        ));
    }
    let schedule = parse_schedule(&spec.schedule).map_err(|e| {
        format!(
            "spec.schedule: invalid value {:?}: {e} (expected 5-field cron, e.g. \"0 3 * * *\", UTC)",
            spec.schedule
        )
    })?;
    if spec.imports_to_keep() == 0 {
        return Err("spec.importsToKeep: invalid value 0: must be at least 1".into());
    }
    if let Some(why) = ido_api::names::subdomain_error(&spec.managed_disk_source) {
        return Err(format!(
            "spec.managedDiskSource: {:?}: {why}",
            spec.managed_disk_source
        ));
    }
    match poll::source(&spec.template) {
        None => {
            return Err(
                "spec.template.source: must be registry or http (the sources whose changes can be polled)"
                    .into(),
            );
        }
        Some(poll::Polled::Registry(r)) => {
            poll::registry_reference(r)?;
        }
        Some(poll::Polled::Http(_)) => {}
    }
    // The template must make a valid DiskImport: its own checks, under the template's path.
    let mut probe = DiskImport::new(&import_name(name, ""), spec.template.clone());
    probe.metadata.namespace = cron.metadata.namespace.clone();
    crate::diskimport::validate(&probe).map_err(|e| {
        format!(
            "spec.template.{}: {}",
            e.field.strip_prefix("spec.").unwrap_or(e.field),
            e.message
        )
    })?;
    Ok(Checked {
        schedule,
        keep: spec.imports_to_keep() as usize,
    })
}

fn key(cron: &DiskImportCron) -> String {
    format!(
        "{}/{}",
        cron.metadata.namespace.as_deref().unwrap_or_default(),
        cron.metadata.name.as_deref().unwrap_or_default()
    )
}

fn phase(di: &DiskImport) -> DiskImportPhase {
    di.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn annotation<'a>(di: &'a DiskImport, k: &str) -> Option<&'a str> {
    di.metadata.annotations.as_ref()?.get(k).map(String::as_str)
}

fn name_of(di: &DiskImport) -> &str {
    di.metadata.name.as_deref().unwrap_or_default()
}

/// The cron's own DiskImports (its label and its controller reference), newest first.
async fn own_imports<S: Store>(
    cron: &DiskImportCron,
    ctx: &Context<S>,
) -> Result<Vec<DiskImport>, StoreError> {
    let ns = cron.metadata.namespace.as_deref().unwrap_or_default();
    let label = short_name("", cron.metadata.name.as_deref().unwrap_or_default(), 63);
    let mut imports: Vec<DiskImport> = ctx
        .store
        .list_labeled::<DiskImport>(ns, &[(CRON_LABEL.to_string(), label)].into())
        .await?
        .into_iter()
        .filter(|d| owned_by(&d.metadata, cron) && d.metadata.deletion_timestamp.is_none())
        .collect();
    imports.sort_by(|a, b| {
        (annotation(b, CREATED_ANNOTATION), name_of(b)).cmp(&(annotation(a, CREATED_ANNOTATION), name_of(a)))
    });
    Ok(imports)
}

/// The DiskImport of `digest` made from the cron's template.
fn new_import(cron: &DiskImportCron, digest: &str, now: Timestamp) -> DiskImport {
    let cron_name = cron.metadata.name.as_deref().unwrap_or_default();
    let mut di = DiskImport::new(
        &import_name(cron_name, digest),
        poll::pinned(&cron.spec.template, digest),
    );
    di.metadata.namespace = cron.metadata.namespace.clone();
    di.metadata.labels = Some(
        [
            (CRON_LABEL.to_string(), short_name("", cron_name, 63)),
            ("app.kubernetes.io/managed-by".into(), "ido".into()),
        ]
        .into(),
    );
    di.metadata.annotations = Some(
        [
            (DIGEST_ANNOTATION.to_string(), digest.to_string()),
            (CREATED_ANNOTATION.to_string(), now.to_string()),
        ]
        .into(),
    );
    di.metadata.owner_references = Some(vec![
        serde_json::from_value(owner_reference(cron)).expect("an owner reference"),
    ]);
    di
}

/// What one reconcile found and did, for the status.
#[derive(Default)]
struct Found {
    /// The poll's outcome, if one ran.
    polled: Option<Result<String, String>>,
    /// `Some(message)` when the DiskSource is someone else's.
    clash: Option<String>,
    /// The claim the DiskSource points at now.
    pointed: Option<String>,
}

/// Reconciles one DiskImportCron.
pub async fn reconcile<S: Store>(cron: &DiskImportCron, ctx: &Context<S>) -> Result<Action, Error> {
    if cron.metadata.deletion_timestamp.is_some() {
        // Its DiskImports and DiskSource go with it (owner references).
        return Ok(Action::AwaitChange);
    }
    let checked = match check(cron) {
        Ok(c) => c,
        Err(message) => {
            invalid(cron, ctx, message).await?;
            return Ok(Action::AwaitChange);
        }
    };
    let ns = cron.metadata.namespace.clone().unwrap_or_default();
    let now = Timestamp::now();
    let before = cron.status.clone().unwrap_or_default();
    let mut found = Found::default();

    // 1. Poll when due.
    let due = before.last_poll_time.is_none()
        || before.observed_generation != cron.metadata.generation
        || before.next_poll_time.is_none_or(|t| t <= now);
    if due {
        let r = poll::poll(ctx, &ns, &cron.spec.template).await;
        match &r {
            Ok(d) => tracing::debug!(cron = %key(cron), digest = %d, "polled"),
            Err(e) => {
                tracing::warn!(cron = %key(cron), error = %e, "poll failed");
                ctx.store
                    .event(
                        cron,
                        Event::warning(Reason::PollFailed.as_str(), "Poll", e.clone()),
                    )
                    .await;
            }
        }
        found.polled = Some(r);
    }
    let current = match &found.polled {
        Some(Ok(d)) => Some(d.clone()),
        _ => before.last_polled_digest.clone(),
    };

    // 2. The import of the current digest: created if missing, made again after a failure.
    let mut retry_soon = false;
    let mut imports = own_imports(cron, ctx).await?;
    let newest_ok = imports.iter().find(|d| phase(d) == DiskImportPhase::Succeeded);
    let imported = newest_ok.and_then(|d| annotation(d, DIGEST_ANNOTATION));
    if let Some(digest) = current.as_deref()
        && imported != Some(digest)
    {
        let name = import_name(cron.metadata.name.as_deref().unwrap_or_default(), digest);
        match imports.iter().find(|d| name_of(d) == name) {
            Some(d) if phase(d) == DiskImportPhase::Failed && matches!(found.polled, Some(Ok(_))) => {
                tracing::info!(cron = %key(cron), diskimport = %name, "the import of the current digest failed; deleting it to import again");
                ctx.store.delete(d).await?;
                imports.retain(|d| name_of(d) != name);
                retry_soon = true;
            }
            Some(_) => {}
            None => match ctx.store.get::<DiskImport>(Some(&ns), &name).await? {
                // Someone else's DiskImport of that name, or ours still being deleted.
                Some(other) if !owned_by(&other.metadata, cron) => {
                    found.clash = Some(format!(
                        "a DiskImport {ns}/{name} exists and is not this cron's; delete or rename it"
                    ));
                }
                Some(_) => {}
                None => {
                    let di = ctx.store.create(&new_import(cron, digest, now)).await?;
                    tracing::info!(cron = %key(cron), diskimport = %name, %digest, "import created");
                    ctx.store
                        .event(
                            cron,
                            Event::normal(
                                Reason::ImportCreated.as_str(),
                                "Import",
                                format!("created DiskImport {name} for {digest}"),
                            ),
                        )
                        .await;
                    imports.insert(0, di);
                }
            },
        }
    }

    // 3. The DiskSource at the newest import that succeeded.
    let newest_ok = imports
        .iter()
        .find(|d| phase(d) == DiskImportPhase::Succeeded)
        .cloned();
    let existing = ctx
        .store
        .get::<DiskSource>(Some(&ns), &cron.spec.managed_disk_source)
        .await?;
    found.pointed = existing.as_ref().map(|d| d.spec.source.pvc.name.clone());
    match (&existing, &newest_ok) {
        (Some(ds), _) if !owned_by(&ds.metadata, cron) => {
            found.clash = Some(format!(
                "a DiskSource {ns}/{} exists and is not this cron's; it is left alone (delete it, or choose another spec.managedDiskSource)",
                cron.spec.managed_disk_source
            ));
        }
        (_, Some(newest)) => {
            let claim = newest
                .status
                .as_ref()
                .and_then(|s| s.claim_name.clone())
                .unwrap_or_else(|| name_of(newest).to_string());
            if found.pointed.as_deref() != Some(claim.as_str()) {
                point(cron, ctx, existing.as_ref(), &claim).await?;
                found.pointed = Some(claim);
            }
        }
        _ => {}
    }

    // 4. Outdated imports (not after a failed poll).
    let failed_poll = matches!(found.polled, Some(Err(_)));
    if cron.spec.garbage_collect() == GarbageCollect::Outdated && !failed_poll {
        let mut kept = Vec::new();
        for (i, di) in imports.into_iter().enumerate() {
            if i < checked.keep || found.pointed.as_deref() == Some(name_of(&di)) {
                kept.push(di);
                continue;
            }
            ctx.store.delete(&di).await?;
            tracing::info!(cron = %key(cron), diskimport = %name_of(&di), "outdated import deleted");
            ctx.store
                .event(
                    cron,
                    Event::normal(
                        Reason::GarbageCollected.as_str(),
                        "GarbageCollect",
                        format!("deleted outdated DiskImport {} and its claim", name_of(&di)),
                    ),
                )
                .await;
        }
        imports = kept;
    }

    // 5. The status.
    let next_tick = checked
        .schedule
        .find_next_occurrence(&now.to_zoned(TimeZone::UTC), false)
        .ok()
        .map(|z| z.timestamp());
    let running = imports
        .iter()
        .any(|d| !matches!(phase(d), DiskImportPhase::Succeeded | DiskImportPhase::Failed));
    let next_poll = write_status(cron, ctx, &before, &imports, &found, current, next_tick, now).await?;
    let mut wait = next_poll.map(|t| until(now, t));
    if running {
        // Its DiskImports wake it too; this is in case a wake is lost.
        let recheck = ctx.settings.disk_import.recheck;
        wait = Some(wait.map_or(recheck, |w| w.min(recheck)));
    }
    if retry_soon {
        // The failed import was deleted: the next reconcile makes it again.
        wait = Some(Duration::from_secs(1));
    }
    Ok(wait.map_or(Action::AwaitChange, Action::Requeue))
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or_default() + Duration::from_millis(100)
}

/// Creates the DiskSource pointing at `claim`, or points the cron's own at it.
async fn point<S: Store>(
    cron: &DiskImportCron,
    ctx: &Context<S>,
    existing: Option<&DiskSource>,
    claim: &str,
) -> Result<(), Error> {
    let name = &cron.spec.managed_disk_source;
    let source = DiskSourceSource {
        pvc: ClaimReference { name: claim.into() },
    };
    match existing {
        Some(ds) => {
            let mut next = ds.clone();
            next.spec.source = source;
            ctx.store.replace(&next).await?;
        }
        None => {
            let mut ds = DiskSource::new(name, DiskSourceSpec { source });
            ds.metadata.namespace = cron.metadata.namespace.clone();
            ds.metadata.labels =
                Some([("app.kubernetes.io/managed-by".to_string(), "ido".to_string())].into());
            ds.metadata.owner_references = Some(vec![
                serde_json::from_value(owner_reference(cron)).expect("an owner reference"),
            ]);
            ctx.store.create(&ds).await?;
        }
    }
    tracing::info!(cron = %key(cron), disksource = %name, %claim, "DiskSource pointed at the newest import");
    ctx.store
        .event(
            cron,
            Event::normal(
                Reason::SourceUpdated.as_str(),
                "Update",
                format!("DiskSource {name} now points at claim {claim}"),
            ),
        )
        .await;
    Ok(())
}

fn condition(
    cron: &DiskImportCron,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        observed_generation: cron.metadata.generation,
        last_transition_time: Timestamp::now(),
        reason: reason.into(),
        message,
    }
}

/// `InvalidSpec` on both conditions, with an event when the message is new.
async fn invalid<S: Store>(cron: &DiskImportCron, ctx: &Context<S>, message: String) -> Result<(), Error> {
    let old = cron
        .status
        .as_ref()
        .and_then(|s| ido_api::condition::find(&s.conditions, conditions::UP_TO_DATE))
        .map(|c| c.message.clone());
    let up = condition(
        cron,
        conditions::UP_TO_DATE,
        ConditionStatus::False,
        reasons::INVALID_SPEC,
        message.clone(),
    );
    let progressing = condition(
        cron,
        conditions::PROGRESSING,
        ConditionStatus::False,
        reasons::INVALID_SPEC,
        message.clone(),
    );
    let g = cron.metadata.generation;
    modify_status(&ctx.store, cron, |o: &mut DiskImportCron| {
        let st = o.status.get_or_insert_with(DiskImportCronStatus::default);
        st.observed_generation = g;
        st.next_poll_time = None;
        set_condition(&mut st.conditions, up.clone());
        set_condition(&mut st.conditions, progressing.clone());
    })
    .await?;
    if old.as_deref() != Some(message.as_str()) {
        tracing::warn!(cron = %key(cron), %message, "invalid spec");
        ctx.store
            .event(cron, Event::warning(reasons::INVALID_SPEC, "Validate", message))
            .await;
    }
    Ok(())
}

/// Writes the status; returns when the next poll is due.
#[allow(clippy::too_many_arguments)]
async fn write_status<S: Store>(
    cron: &DiskImportCron,
    ctx: &Context<S>,
    before: &DiskImportCronStatus,
    imports: &[DiskImport],
    found: &Found,
    current: Option<String>,
    next_tick: Option<Timestamp>,
    now: Timestamp,
) -> Result<Option<Timestamp>, Error> {
    let mut st = before.clone();
    st.observed_generation = cron.metadata.generation;
    match &found.polled {
        Some(Ok(d)) => {
            st.last_poll_time = Some(now);
            st.last_polled_digest = Some(d.clone());
            st.poll_failures = 0;
            st.next_poll_time = next_tick;
        }
        Some(Err(_)) => {
            st.last_poll_time = Some(now);
            st.poll_failures += 1;
            let retry = jiff::SignedDuration::try_from(crate::backoff(st.poll_failures)).unwrap_or_default();
            let retry = now.saturating_add(retry).unwrap_or(now);
            st.next_poll_time = Some(next_tick.map_or(retry, |t| t.min(retry)));
        }
        None => {}
    }
    let succeeded_at = |d: &DiskImport| {
        d.status
            .as_ref()
            .and_then(|s| ido_api::condition::find(&s.conditions, di_conditions::READY))
            .map_or(now, |c| c.last_transition_time)
    };
    st.current_imports = imports
        .iter()
        .filter(|d| phase(d) == DiskImportPhase::Succeeded)
        .map(|d| CronImport {
            disk_import: name_of(d).to_string(),
            digest: annotation(d, DIGEST_ANNOTATION).unwrap_or_default().to_string(),
            time: succeeded_at(d),
        })
        .collect();
    // The claim the DiskSource points at, if it is one of the cron's imports.
    let pointed = found
        .clash
        .is_none()
        .then(|| {
            imports.iter().find(|d| {
                found.pointed.as_deref() == Some(name_of(d)) && phase(d) == DiskImportPhase::Succeeded
            })
        })
        .flatten();
    st.last_imported_claim = pointed.map(|d| name_of(d).to_string());
    st.last_import_time = pointed.map(succeeded_at);

    // Conditions.
    let current_import = current.as_deref().map(|d| {
        let name = import_name(cron.metadata.name.as_deref().unwrap_or_default(), d);
        imports.iter().find(|i| name_of(i) == name)
    });
    let (up, reason, message) = if let Some(m) = &found.clash {
        (ConditionStatus::False, reasons::NAME_CLASH, m.clone())
    } else if let Some(Err(e)) = &found.polled {
        (ConditionStatus::False, reasons::POLL_FAILED, e.clone())
    } else if st.poll_failures > 0 {
        let keep = ido_api::condition::find(&before.conditions, conditions::UP_TO_DATE)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        (ConditionStatus::False, reasons::POLL_FAILED, keep)
    } else {
        match current_import {
            Some(Some(d)) if pointed.is_some_and(|p| name_of(p) == name_of(d)) => (
                ConditionStatus::True,
                reasons::UP_TO_DATE,
                format!(
                    "DiskSource {} points at claim {} ({})",
                    cron.spec.managed_disk_source,
                    name_of(d),
                    current.as_deref().unwrap_or_default()
                ),
            ),
            Some(Some(d)) if phase(d) == DiskImportPhase::Failed => {
                let why = d
                    .status
                    .as_ref()
                    .and_then(|s| ido_api::condition::find(&s.conditions, di_conditions::READY))
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                (
                    ConditionStatus::False,
                    reasons::IMPORT_FAILED,
                    format!(
                        "DiskImport {} failed: {why}; it is made again at the next poll",
                        name_of(d)
                    ),
                )
            }
            Some(Some(d)) => (
                ConditionStatus::False,
                reasons::OUTDATED,
                format!(
                    "importing {} into DiskImport {} ({})",
                    current.as_deref().unwrap_or_default(),
                    name_of(d),
                    phase(d)
                ),
            ),
            _ => (
                ConditionStatus::False,
                reasons::OUTDATED,
                "the source's current image is not imported yet".into(),
            ),
        }
    };
    let running: Vec<&str> = imports
        .iter()
        .filter(|d| !matches!(phase(d), DiskImportPhase::Succeeded | DiskImportPhase::Failed))
        .map(name_of)
        .collect();
    let progressing = if running.is_empty() {
        (ConditionStatus::False, reasons::IDLE, String::new())
    } else {
        (
            ConditionStatus::True,
            reasons::IMPORT_IN_PROGRESS,
            format!("importing: {}", running.join(", ")),
        )
    };
    set_condition(
        &mut st.conditions,
        condition(cron, conditions::UP_TO_DATE, up, reason, message),
    );
    set_condition(
        &mut st.conditions,
        condition(
            cron,
            conditions::PROGRESSING,
            progressing.0,
            progressing.1,
            progressing.2,
        ),
    );
    let next = st.next_poll_time;
    modify_status(&ctx.store, cron, |o: &mut DiskImportCron| {
        o.status = Some(st.clone());
    })
    .await?;
    Ok(next)
}

#[cfg(test)]
mod tests;
