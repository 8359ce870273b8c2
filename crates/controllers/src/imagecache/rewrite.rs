//! Pointing a pod spec at copies: which images change, as edits of a workload's template
//! (`patch` mode) or as a JSON patch of a Pod (the admission webhook). The pod's own pull
//! secrets are always kept; the cache's is added once.

use k8s_openapi::api::core::v1::{LocalObjectReference, PodSpec};
use serde_json::{Value, json};

use super::{ContainerKind, collect::pod_images};

/// One container's image, pointed at its copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub kind: ContainerKind,
    pub index: usize,
    pub from: String,
    pub to: String,
}

/// The images of `spec` that `copy_of` maps to a copy (it gets the image as written).
pub fn rewrites(spec: &PodSpec, mut copy_of: impl FnMut(&str) -> Option<String>) -> Vec<Rewrite> {
    pod_images(spec)
        .into_iter()
        .filter_map(|u| {
            let to = copy_of(&u.image)?;
            (to != u.image).then_some(Rewrite {
                kind: u.kind,
                index: u.index,
                from: u.image,
                to,
            })
        })
        .collect()
}

/// Whether `spec` lacks the pull secret `name`.
fn lacks_secret(spec: &PodSpec, name: &str) -> bool {
    !spec.image_pull_secrets.iter().flatten().any(|s| s.name == name)
}

/// Applies `rewrites` to `spec` and adds `pull_secret` if any image changed; whether
/// anything changed.
pub fn apply(spec: &mut PodSpec, rewrites: &[Rewrite], pull_secret: Option<&str>) -> bool {
    for r in rewrites {
        let image = match r.kind {
            ContainerKind::Init => spec
                .init_containers
                .as_mut()
                .and_then(|c| c.get_mut(r.index))
                .map(|c| &mut c.image),
            ContainerKind::Main => spec.containers.get_mut(r.index).map(|c| &mut c.image),
            ContainerKind::Ephemeral => spec
                .ephemeral_containers
                .as_mut()
                .and_then(|c| c.get_mut(r.index))
                .map(|c| &mut c.image),
        };
        if let Some(image) = image {
            *image = Some(r.to.clone());
        }
    }
    if let Some(name) = pull_secret.filter(|n| !rewrites.is_empty() && lacks_secret(spec, n)) {
        spec.image_pull_secrets
            .get_or_insert_default()
            .push(LocalObjectReference {
                name: name.to_string(),
            });
    }
    !rewrites.is_empty()
}

/// `rewrites` (and the pull secret) as JSON patch operations on a Pod (`/spec/…`).
pub fn json_patch(spec: &PodSpec, rewrites: &[Rewrite], pull_secret: Option<&str>) -> Vec<Value> {
    let mut ops: Vec<Value> = rewrites
        .iter()
        .map(|r| {
            let list = match r.kind {
                ContainerKind::Init => "initContainers",
                ContainerKind::Main => "containers",
                ContainerKind::Ephemeral => "ephemeralContainers",
            };
            json!({"op": "replace", "path": format!("/spec/{list}/{}/image", r.index), "value": r.to})
        })
        .collect();
    if let Some(name) = pull_secret.filter(|n| !rewrites.is_empty() && lacks_secret(spec, n)) {
        ops.push(match &spec.image_pull_secrets {
            Some(_) => json!({"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": name}}),
            None => json!({"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": name}]}),
        });
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn images_are_pointed_at_copies_and_the_pods_own_pull_secrets_kept() {
        let s = spec(json!({
            "imagePullSecrets": [{"name": "own"}],
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "a", "image": "nginx:1.27"}, {"name": "b", "image": "cache/x:1"}],
        }));
        let map = |i: &str| (i != "cache/x:1").then(|| format!("cache/{i}"));
        let rw = rewrites(&s, map);
        assert_eq!(rw.len(), 2);
        let ops = json_patch(&s, &rw, Some("cache-pull"));
        assert_eq!(
            ops,
            [
                json!({"op": "replace", "path": "/spec/initContainers/0/image", "value": "cache/busybox"}),
                json!({"op": "replace", "path": "/spec/containers/0/image", "value": "cache/nginx:1.27"}),
                json!({"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "cache-pull"}}),
            ]
        );
        let mut edited = s.clone();
        assert!(apply(&mut edited, &rw, Some("cache-pull")));
        let names: Vec<&str> = edited
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["own", "cache-pull"]);
        assert_eq!(edited.containers[0].image.as_deref(), Some("cache/nginx:1.27"));
        // Applied twice: nothing more (the copies map to themselves, the secret is there).
        let again = rewrites(&edited, |i| {
            (!i.starts_with("cache/")).then(|| format!("cache/{i}"))
        });
        assert!(again.is_empty());
        assert!(json_patch(&edited, &again, Some("cache-pull")).is_empty());
        // No pull secret list yet: the list is made.
        let bare = spec(json!({"containers": [{"name": "a", "image": "nginx"}]}));
        let rw = rewrites(&bare, |i| Some(format!("cache/{i}")));
        assert_eq!(
            json_patch(&bare, &rw, Some("p"))[1],
            json!({"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "p"}]})
        );
    }
}
