//! What the image controller writes: each location's line in `status.locations`, and the
//! state and conditions that summarise them.

use super::*;
use ido_api::Reason;

/// A location's new state, as written into `status.locations`.
pub(super) struct Update {
    state: LocationState,
    template: Option<String>,
    bytes: u64,
    message: String,
}

impl Update {
    pub(super) fn new(state: LocationState, message: impl Into<String>) -> Self {
        Self {
            state,
            template: None,
            bytes: 0,
            message: message.into(),
        }
    }
    pub(super) fn bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }
    pub(super) fn template(mut self, template: String) -> Self {
        self.template = Some(template);
        self
    }
}

/// Sets one location's entry and re-summarises the status.
pub(super) async fn write_location<S: Store>(
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

pub(super) fn upsert_location(st: &mut NodeImageStatus, provider: &str, loc: &str, u: &Update) {
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
    let state = overall_state(st, configured);
    let cond = |t: &str, (s, r, m): ConditionParts| Condition {
        type_: t.into(),
        status: s,
        observed_generation: generation,
        last_transition_time: Timestamp::now(),
        reason: r.into(),
        message: m,
    };
    let ready = ready(st, state, configured);
    set_condition(&mut st.conditions, cond(conditions::READY, ready));
    let progressing = progressing(st);
    set_condition(&mut st.conditions, cond(conditions::PROGRESSING, progressing));
    let degraded = degraded(st);
    set_condition(&mut st.conditions, cond(conditions::DEGRADED, degraded));
    st.state = state;
    st.observed_generation = generation;
}

/// A condition's status, reason and message.
type ConditionParts = (ConditionStatus, &'static str, String);

/// The image's state from its locations': the first of Uploading, Error, Missing that any
/// location is in, else Available when every configured location is, else Pending.
fn overall_state(st: &NodeImageStatus, configured: &[String]) -> NodeImageState {
    let any = |s: LocationState| st.locations.iter().any(|l| l.state == s);
    let all_available = !configured.is_empty()
        && configured.iter().all(|c| {
            st.locations
                .iter()
                .any(|l| &l.location == c && l.state == LocationState::Available)
        });
    if any(LocationState::Uploading) {
        NodeImageState::Uploading
    } else if any(LocationState::Error) {
        NodeImageState::Error
    } else if any(LocationState::Missing) {
        NodeImageState::Missing
    } else if all_available {
        NodeImageState::Available
    } else {
        NodeImageState::Pending
    }
}

/// The Ready condition for `state`: the locations not Available are its message.
fn ready(st: &NodeImageStatus, state: NodeImageState, configured: &[String]) -> ConditionParts {
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
            Reason::Available.as_str(),
            format!("available in {} location(s)", configured.len()),
        ),
        NodeImageState::Missing => (
            ConditionStatus::False,
            Reason::SourceMissing.as_str(),
            not_ok.join("; "),
        ),
        NodeImageState::Error if name_clash(st) => (ConditionStatus::False, NAME_CLASH, not_ok.join("; ")),
        s => (ConditionStatus::False, s.as_str(), not_ok.join("; ")),
    };
    let reason = if reason.is_empty() {
        Reason::Pending.as_str()
    } else {
        reason
    };
    (ready, reason, message)
}

/// The Progressing condition: the locations being imported into.
fn progressing(st: &NodeImageStatus) -> ConditionParts {
    let uploading: Vec<&str> = st
        .locations
        .iter()
        .filter(|l| l.state == LocationState::Uploading)
        .map(|l| l.location.as_str())
        .collect();
    if uploading.is_empty() {
        (ConditionStatus::False, Reason::Idle.as_str(), String::new())
    } else {
        (
            ConditionStatus::True,
            Reason::Uploading.as_str(),
            format!("importing into {}", uploading.join(", ")),
        )
    }
}

/// The Degraded condition: the locations in Error, and why.
fn degraded(st: &NodeImageStatus) -> ConditionParts {
    let failed: Vec<String> = st
        .locations
        .iter()
        .filter(|l| l.state == LocationState::Error)
        .map(|l| format!("{}: {}", l.location, l.message))
        .collect();
    if failed.is_empty() {
        (ConditionStatus::False, Reason::AsExpected.as_str(), String::new())
    } else {
        let reason = if name_clash(st) {
            NAME_CLASH
        } else {
            Reason::LocationFailed.as_str()
        };
        (ConditionStatus::True, reason, failed.join("; "))
    }
}

/// Condition reason (and event reason) of a location whose template name is taken by an
/// object ido did not make ([`ProviderError::NameClash`]).
pub const NAME_CLASH: &str = Reason::NameClash.as_str();

/// Whether a location is in `Error` because of a name clash (its message says so).
pub(super) fn name_clash(st: &NodeImageStatus) -> bool {
    st.locations
        .iter()
        .any(|l| l.state == LocationState::Error && ProviderError::is_name_clash_message(&l.message))
}

/// Sets every location to `state` with `message`.
pub(super) async fn set_all_locations<S: Store>(
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
pub(super) async fn set_overall<S: Store>(
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
