//! Every `reason` ido writes: of the conditions of its kinds and of the events it records.
//! One enum, so a reason is spelled once; [`docs/conditions.md`] explains each, per kind,
//! and a test keeps that page and this list the same.
//!
//! [`docs/conditions.md`]: https://github.com/giantswarm/image-distribution-operator/blob/main/docs/conditions.md

use std::fmt;

macro_rules! reasons {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A condition's or an event's reason (CamelCase on the wire).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $name, )*
        }

        impl Reason {
            /// Every reason, in the order declared.
            pub const ALL: &[Reason] = &[$(Reason::$name),*];

            /// The reason as written in a condition or an event.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$name => stringify!($name), )*
                }
            }
        }
    };
}

reasons! {
    // Shared by the kinds.
    /// A spec field is invalid; the message names it and the value.
    InvalidSpec,
    /// Waiting: nothing has happened yet, or a claim is not bound yet.
    Pending,
    /// Nothing is wrong (`Degraded=False`).
    AsExpected,
    /// No work is running (`Progressing=False`).
    Idle,

    // Releases.
    /// The Release names no version for a component the image name is built from.
    MissingComponent,
    /// The Release created its NodeImage (event).
    NodeImageCreated,
    /// The Release went away and let its NodeImage go (event).
    ReleasedImage,

    // NodeImages.
    /// `spec.provider` is not an enabled provider.
    ProviderNotEnabled,
    /// No `s3` source is configured.
    NoSource,
    /// The image's file is not in the source bucket (checked again later).
    SourceMissing,
    /// The source bucket could not be asked (retried).
    SourceUnavailable,
    /// An import into a location is running.
    Uploading,
    /// An import into a location finished (event).
    Uploaded,
    /// An import into a location failed.
    UploadFailed,
    /// The image is in every location.
    Available,
    /// At least one location failed (`Degraded=True`).
    LocationFailed,
    /// Something of the template's name that ido did not make is in a location; ido leaves
    /// it alone.
    NameClash,
    /// The image is in an error state (`state: Error`).
    Error,
    /// The image is being removed from its locations.
    Deleting,
    /// No release uses the image; it waits out the retention period.
    AwaitingDeletion,
    /// The retention period of an unused image ended (event).
    RetentionExpired,
    /// Removing the template from a location failed (retried).
    DeleteFailed,
    /// The template was removed from a location (event).
    Deleted,

    // ImageSyncs and image-operator's Images.
    /// Every selected tag is at the destination.
    Synced,
    /// A referenced Secret or CA ConfigMap is missing or unusable.
    CredentialsUnavailable,
    /// A registry could not be reached or refused the request.
    RegistryUnavailable,
    /// The source has no tag matching `source.version`.
    NoMatchingTags,
    /// More tags matched than `maxTags`: only the highest were synced.
    TagLimitExceeded,
    /// Copying at least one tag failed.
    CopyFailed,
    /// A sync pass is running.
    Syncing,

    // DiskImports.
    /// The claim is bound.
    Bound,
    /// The claim lost its volume.
    ClaimLost,
    /// The importer's pod is running.
    PodRunning,
    /// The transfer is running (`Ready=False`).
    TransferRunning,
    /// The import finished.
    Completed,
    /// The import failed for good (retries exhausted, or a permanent error).
    ImportFailed,
    /// `storage.size` is absent and the image's virtual size cannot be learnt up front.
    SizeUnknown,
    /// The claim or the importer Job could not be created.
    CreateFailed,
    /// The importer's pod cannot be scheduled.
    Unschedulable,
    /// The importer's image cannot be pulled.
    ImagePullFailed,
    /// The claim and the importer Job were created (event).
    ImportScheduled,
    /// The importer started (event).
    ImportInProgress,
    /// The import finished (event).
    ImportSucceeded,
    /// The claim and the upload Job were created; the upload pod is not ready (event).
    UploadScheduled,
    /// The upload pod is ready to take the upload (condition and event).
    UploadReady,
    /// Uploads are not served: the operator has no upload key (`--upload-key-file`).
    UploadUnavailable,
    /// The clone's claim and Job were created; the copy has not started (event).
    CloneScheduled,
    /// The clone's copy started (event).
    CloneInProgress,
    /// A clone from another namespace carries no valid authorization of the operator's
    /// webhook.
    CloneUnauthorized,

    // DiskSources.
    /// The claim exists, is bound, and the DiskImport filling it (if any) succeeded.
    ClaimReady,
    /// The claim does not exist.
    ClaimMissing,
    /// The claim is not bound to a volume.
    ClaimNotBound,
    /// The DiskImport that fills the claim has not succeeded.
    ImportNotSucceeded,

    // DiskImportCrons.
    /// The DiskSource points at the import of what the source held at the last poll.
    UpToDate,
    /// The source changed and its import has not succeeded yet.
    Outdated,
    /// The source could not be polled (retried with backoff).
    PollFailed,
    /// A DiskImport of a new digest was created (event).
    ImportCreated,
    /// The DiskSource was pointed at a new import's claim (event).
    SourceUpdated,
    /// An outdated import was deleted (event).
    GarbageCollected,

    // The workload image cache.
    /// The policy's workloads were looked at; the message counts the copies.
    Scanned,
    /// The copy is being made.
    Copying,
    /// The copy is present.
    Cached,
    /// The copy went unused past the retention and was deleted (event).
    Expired,
    /// The policy that caches the image is gone; the record goes, its copy stays (event).
    PolicyGone,
    /// A workload's pod template was pointed at copies (`patch` mode, event).
    WorkloadPatched,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_variants() {
        assert_eq!(Reason::NameClash.as_str(), "NameClash");
        assert_eq!(
            Reason::ALL.len(),
            Reason::ALL
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }

    /// docs/conditions.md explains every reason, and names none that is not one.
    #[test]
    fn the_conditions_page_lists_every_reason() {
        let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/conditions.md"))
            .expect("docs/conditions.md");
        let missing: Vec<&str> = Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .filter(|r| !page.contains(&format!("`{r}`")))
            .collect();
        assert!(missing.is_empty(), "docs/conditions.md lacks {missing:?}");
    }
}
