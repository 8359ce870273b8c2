//! The release controller: Releases decide which NodeImages must exist.
//!
//! For each Release of an enabled provider it derives the node image name, makes sure the
//! NodeImage `<provider>-<image>` exists and lists the release in `status.releases`, and on
//! deletion takes the release out again (deleting the image, or marking it
//! `AwaitingDeletion` for the retention period, when no release is left).
//!
//! Fixed against the original: metadata and status are written separately, each from the
//! object the previous write returned (no lost status write); releases of disabled providers
//! and releases missing a component get no finalizer (and lose one they had) and no error
//! loop; an image a release no longer uses stops listing it.

use std::time::Duration;

use ido_api::{
    NodeImage, NodeImageSpec, NodeImageState, NodeImageStatus, Reason, Release, names, nodeimage, release,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    Action, Context, Error,
    store::{
        Event, MetaPatch, Store, StoreError, finalizer_patch, has_finalizer, modify_status,
        patch_metadata_retry,
    },
};

/// How often a settled Release is looked at again.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Why a Release has no node image name.
#[derive(Debug, thiserror::Error)]
pub enum ImageNameError {
    #[error("component {0:?} is missing or has no version")]
    MissingComponent(&'static str),
    /// A version (or the name made of them) that cannot be an object name.
    #[error(transparent)]
    Invalid(#[from] names::InvalidName),
}

/// Node image name of a release: `flatcar-<channel>-<flatcar>-kube-<k8s>-tooling-<tooling>-gs`.
/// Errors name the missing component, or the version that could not be part of a name
/// (versions become object names, S3 keys and template names: only `[a-z0-9.-]`).
pub fn image_name(rel: &Release, channel: &str) -> Result<String, ImageNameError> {
    let object = format!(
        "Release {}",
        names::quote(rel.metadata.name.as_deref().unwrap_or_default())
    );
    let get = |c: &'static str| {
        let v = rel.component(c).ok_or(ImageNameError::MissingComponent(c))?;
        names::check_subdomain(&object, &format!("spec.components[{c}].version"), v)?;
        Ok::<_, ImageNameError>(v)
    };
    let flatcar = get("flatcar")?;
    let kube = get("kubernetes")?;
    let tooling = get("os-tooling")?;
    let image = format!(
        "flatcar-{channel}-{flatcar}-kube-{}-tooling-{}-gs",
        kube.trim_start_matches('v'),
        tooling.trim_start_matches('v')
    );
    names::check_subdomain(&object, "node image name", &image)?;
    Ok(image)
}

/// Annotation on a Release: the NodeImage it was last recorded in.
pub const NODE_IMAGE_ANNOTATION: &str = "ido.dev/node-image";

/// Reconciles one Release.
pub async fn reconcile<S: Store>(rel: &Release, ctx: &Context<S>) -> Result<Action, Error> {
    let name = rel.metadata.name.clone().unwrap_or_default();
    let deleting = rel.metadata.deletion_timestamp.is_some();
    let ours = has_finalizer(rel, release::FINALIZER);

    let provider = ctx.providers.for_release(&name).map(|p| p.id().to_string());
    let Some(provider) = provider else {
        tracing::debug!(release = %name, "provider not enabled, skipping");
        if ours {
            // The provider was disabled since: let the Release go.
            let_go(rel, &name, ctx).await?;
        }
        return Ok(Action::AwaitChange);
    };

    let image = match image_name(rel, &ctx.settings.channel) {
        Ok(i) => i,
        Err(e) => {
            let msg = e.to_string();
            ctx.store
                .event(
                    rel,
                    Event::warning(Reason::MissingComponent.as_str(), "DeriveImage", msg.clone()),
                )
                .await;
            tracing::warn!(release = %name, "{msg}");
            if ours {
                let_go(rel, &name, ctx).await?;
            }
            return Ok(Action::AwaitChange);
        }
    };
    let ni_name = NodeImage::object_name(&provider, &image);

    if deleting {
        if ours {
            let_go(rel, &name, ctx).await?;
        }
        return Ok(Action::AwaitChange);
    }

    // The NodeImage this Release was last recorded in: when it is this one, no other can
    // list the Release, and the NodeImages need not be looked through.
    let recorded = rel
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_IMAGE_ANNOTATION))
        .cloned();
    if !ours {
        // Seen for the first time: listed nowhere yet. Finalizer and record in one write.
        let mut p = finalizer_patch(rel, release::FINALIZER, true);
        p.annotations
            .insert(NODE_IMAGE_ANNOTATION.into(), Some(ni_name.clone()));
        patch_metadata_retry(&ctx.store, rel, &p).await?;
    }

    // It exists: the image controller need not ask the store about it for a while.
    ctx.seen_releases.set(&name, true);
    let ni = ensure_node_image(rel, ctx, &ni_name, &image, &provider).await?;
    if ni.metadata.deletion_timestamp.is_some() {
        // Being removed (e.g. retention ran out just now): create it anew once it is gone.
        return Ok(Action::Requeue(Duration::from_secs(5)));
    }

    list_release(ctx, &ni, &name).await?;

    // Keep status.releases exact: an image this release no longer uses stops listing it
    // (only when its image changed, or was never recorded), then the new image is recorded.
    if ours && recorded.as_deref() != Some(ni_name.as_str()) {
        release_images(rel, &name, Some(&ni_name), ctx).await?;
        let mut p = MetaPatch::default();
        p.annotations
            .insert(NODE_IMAGE_ANNOTATION.into(), Some(ni_name.clone()));
        patch_metadata_retry(&ctx.store, rel, &p).await?;
    }
    Ok(Action::Requeue(RECHECK))
}

/// The NodeImage `ni_name` of `image` on `provider`, created (with an event on `rel`) when
/// missing.
async fn ensure_node_image<S: Store>(
    rel: &Release,
    ctx: &Context<S>,
    ni_name: &str,
    image: &str,
    provider: &str,
) -> Result<NodeImage, Error> {
    let ns = ctx.settings.namespace.as_str();
    match ctx.store.get::<NodeImage>(Some(ns), ni_name).await? {
        Some(ni) => Ok(ni),
        None => {
            let new = NodeImage {
                metadata: ObjectMeta {
                    name: Some(ni_name.to_string()),
                    namespace: Some(ns.to_string()),
                    ..Default::default()
                },
                spec: NodeImageSpec {
                    name: image.to_string(),
                    provider: provider.to_string(),
                },
                status: None,
            };
            match ctx.store.create(&new).await {
                Ok(ni) => {
                    ctx.store
                        .event(
                            rel,
                            Event::normal(
                                Reason::NodeImageCreated.as_str(),
                                "Create",
                                format!("created NodeImage {ns}/{ni_name}"),
                            ),
                        )
                        .await;
                    Ok(ni)
                }
                Err(StoreError::AlreadyExists { .. }) => ctx
                    .store
                    .get::<NodeImage>(Some(ns), ni_name)
                    .await?
                    .ok_or_else(|| {
                        Error::Store(StoreError::NotFound {
                            kind: "NodeImage".into(),
                            name: ni_name.to_string(),
                        })
                    }),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Lists release `rel_name` in the status of `ni` (a New or AwaitingDeletion image becomes
/// Pending), and takes away the image's last-used mark.
async fn list_release<S: Store>(ctx: &Context<S>, ni: &NodeImage, rel_name: &str) -> Result<(), Error> {
    let ni = modify_status(&ctx.store, ni, |ni: &mut NodeImage| {
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        if !st.releases.iter().any(|r| r == rel_name) {
            st.releases.push(rel_name.to_string());
            st.releases.sort();
        }
        if matches!(st.state, NodeImageState::New | NodeImageState::AwaitingDeletion) {
            st.state = NodeImageState::Pending;
        }
    })
    .await?;
    if let Some(ni) = ni
        && ni
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(nodeimage::LAST_USED_ANNOTATION))
    {
        let mut p = MetaPatch::default();
        p.annotations.insert(nodeimage::LAST_USED_ANNOTATION.into(), None);
        patch_metadata_retry(&ctx.store, &ni, &p).await?;
    }
    Ok(())
}

/// Takes the Release out of every NodeImage and removes its finalizer.
async fn let_go<S: Store>(rel: &Release, name: &str, ctx: &Context<S>) -> Result<(), Error> {
    release_images(rel, name, None, ctx).await?;
    remove_finalizer(rel, ctx).await
}

async fn remove_finalizer<S: Store>(rel: &Release, ctx: &Context<S>) -> Result<(), Error> {
    patch_metadata_retry(&ctx.store, rel, &finalizer_patch(rel, release::FINALIZER, false)).await?;
    Ok(())
}

/// Takes release `name` out of every NodeImage except `keep`, handling images left unused.
/// A Release that recorded its image (the [`NODE_IMAGE_ANNOTATION`]) can be in that one
/// only, which is read by name; one that never did (made before the annotation) is looked
/// for in every NodeImage.
async fn release_images<S: Store>(
    rel: &Release,
    name: &str,
    keep: Option<&str>,
    ctx: &Context<S>,
) -> Result<(), Error> {
    let recorded = rel
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_IMAGE_ANNOTATION));
    let candidates = match recorded {
        Some(ni_name) => ctx
            .store
            .get::<NodeImage>(Some(&ctx.settings.namespace), ni_name)
            .await?
            .into_iter()
            .collect(),
        None => ctx.store.list::<NodeImage>().await?,
    };
    for ni in candidates {
        let ni_name = ni.metadata.name.clone().unwrap_or_default();
        if Some(ni_name.as_str()) == keep
            || !ni
                .status
                .as_ref()
                .is_some_and(|s| s.releases.iter().any(|r| r == name))
        {
            continue;
        }
        let Some(ni) = modify_status(&ctx.store, &ni, |ni: &mut NodeImage| {
            if let Some(st) = ni.status.as_mut() {
                st.releases.retain(|r| r != name);
            }
        })
        .await?
        else {
            continue;
        };
        ctx.store
            .event(
                rel,
                Event::normal(
                    Reason::ReleasedImage.as_str(),
                    "Release",
                    format!("release no longer uses NodeImage {ni_name}"),
                ),
            )
            .await;
        if ni.status.as_ref().is_some_and(|s| s.releases.is_empty()) {
            mark_unused(&ni, ctx).await?;
        }
    }
    Ok(())
}

/// An image no release uses: delete it now, or keep it for the retention period.
pub(crate) async fn mark_unused<S: Store>(ni: &NodeImage, ctx: &Context<S>) -> Result<(), Error> {
    if ctx.settings.retention.is_zero() {
        ctx.store.delete(ni).await?;
        return Ok(());
    }
    let mut p = MetaPatch::default();
    p.annotations.insert(
        nodeimage::LAST_USED_ANNOTATION.into(),
        Some(jiff::Timestamp::now().to_string()),
    );
    let Some(ni) = patch_metadata_retry(&ctx.store, ni, &p).await? else {
        return Ok(());
    };
    modify_status(&ctx.store, &ni, |ni: &mut NodeImage| {
        let st = ni.status.get_or_insert_with(NodeImageStatus::default);
        if st.releases.is_empty() {
            st.state = NodeImageState::AwaitingDeletion;
        }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str, comps: &[(&str, &str)]) -> Release {
        Release::with_components(name, comps)
    }

    #[test]
    fn image_name_like_the_original() {
        let r = rel(
            "vsphere-30.0.0",
            &[
                ("flatcar", "3975.2.0"),
                ("kubernetes", "v1.30.4"),
                ("os-tooling", "v1.18.1"),
            ],
        );
        assert_eq!(
            image_name(&r, "stable").unwrap(),
            "flatcar-stable-3975.2.0-kube-1.30.4-tooling-1.18.1-gs"
        );
        assert_eq!(
            image_name(&r, "beta").unwrap(),
            "flatcar-beta-3975.2.0-kube-1.30.4-tooling-1.18.1-gs"
        );
        let r = rel(
            "vsphere-30.0.0",
            &[("flatcar", "3975.2.0"), ("kubernetes", "1.30.4")],
        );
        assert!(
            image_name(&r, "stable")
                .unwrap_err()
                .to_string()
                .contains("os-tooling")
        );
    }

    #[test]
    fn versions_that_could_leave_a_path_are_refused_by_name() {
        for bad in [
            "../../../../tmp/victim",
            "1.2.3/x",
            "1.2.3\nFORGED",
            "V1.30.4",
            "1.2.3+build",
            "",
        ] {
            let r = rel(
                "vsphere-49.0.0",
                &[
                    ("flatcar", "3975.2.0"),
                    ("kubernetes", bad),
                    ("os-tooling", "1.18.1"),
                ],
            );
            let e = image_name(&r, "stable").unwrap_err().to_string();
            if bad.is_empty() {
                assert!(e.contains("\"kubernetes\" is missing"), "{e}");
            } else {
                assert!(
                    e.starts_with("Release \"vsphere-49.0.0\": spec.components[kubernetes].version"),
                    "{e}"
                );
            }
        }
        let long = "1".repeat(240);
        let r = rel(
            "vsphere-49.0.0",
            &[
                ("flatcar", &long),
                ("kubernetes", "1.30.4"),
                ("os-tooling", "1.18.1"),
            ],
        );
        assert!(
            image_name(&r, "stable")
                .unwrap_err()
                .to_string()
                .contains("node image name")
        );
    }
}
