//! The kinds the ImageSync engine serves: `ImageSync` and image-operator's `Image`
//! (`skopeo.io/v1alpha1`, see `ido_api::image_operator`). A kind gives its spec as an
//! ImageSync's and lends its status's ImageSync part; the pass does the rest.

use std::borrow::Cow;

use ido_api::{
    ConditionStatus, ImageSync, ImageSyncSpec, ImageSyncStatus,
    condition::find,
    image_operator::{HISTORY, HistoryEntry, Image, ImageStatus, phases},
    imagesync::conditions,
};

use crate::store::Object;

/// A kind whose objects the ImageSync engine syncs.
pub trait SyncKind: Object {
    /// The spec as an ImageSync's, the kind's defaults applied.
    fn sync_spec(&self) -> Cow<'_, ImageSyncSpec>;
    /// The ImageSync part of the status, if there is a status.
    fn sync_status(&self) -> Option<&ImageSyncStatus>;
    /// The ImageSync part of the status, made if absent.
    fn sync_status_mut(&mut self) -> &mut ImageSyncStatus;
    /// Called in every status write after the ImageSync part is set; `pass_ended` when the
    /// write ends a pass. The kind derives its own status fields here.
    fn status_written(&mut self, _pass_ended: bool) {}
}

impl SyncKind for ImageSync {
    fn sync_spec(&self) -> Cow<'_, ImageSyncSpec> {
        Cow::Borrowed(&self.spec)
    }
    fn sync_status(&self) -> Option<&ImageSyncStatus> {
        self.status.as_ref()
    }
    fn sync_status_mut(&mut self) -> &mut ImageSyncStatus {
        self.status.get_or_insert_with(Default::default)
    }
}

impl SyncKind for Image {
    fn sync_spec(&self) -> Cow<'_, ImageSyncSpec> {
        Cow::Owned(Image::sync_spec(self))
    }
    fn sync_status(&self) -> Option<&ImageSyncStatus> {
        self.status.as_ref().map(|s| &s.sync)
    }
    fn sync_status_mut(&mut self) -> &mut ImageSyncStatus {
        &mut self.status.get_or_insert_with(ImageStatus::default).sync
    }
    /// image-operator's fields: the pass in `history` (the last 20), `phase` from the
    /// conditions, the tags at the destination, the generation seen.
    fn status_written(&mut self, pass_ended: bool) {
        let st = self.status.get_or_insert_with(ImageStatus::default);
        let is = |t: &str| find(&st.sync.conditions, t).is_some_and(|c| c.status == ConditionStatus::True);
        st.phase = Some(
            if is(conditions::PROGRESSING) {
                phases::SYNCING
            } else if is(conditions::READY) {
                phases::COMPLETED
            } else {
                phases::FAILED
            }
            .into(),
        );
        st.last_generation_seen = st.sync.observed_generation;
        st.tag_already_synced = st
            .sync
            .tags
            .iter()
            .filter(|t| t.result.in_sync())
            .map(|t| t.tag.clone())
            .collect();
        if pass_ended && let Some(at) = st.sync.last_sync_time {
            st.history.push(HistoryEntry { performed_at: at });
            let extra = st.history.len().saturating_sub(HISTORY);
            st.history.drain(..extra);
        }
    }
}
