//! The manifests `ido run` is given: read (every document names its file and field in
//! errors), applied as the desired set, and what earlier runs applied but is no longer
//! given pruned (finalizers honoured).

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context as _, bail};
use ido_api::{
    DiskImport, DiskImportCron, DiskSource, ImageSync, NodeImage, Release, cdi::DataVolume,
    image_operator::Image,
};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use serde_json::Value;

use crate::{
    file_store::{FileStore, Key},
    store::Store,
};

/// Annotation marking objects applied from manifests (only those are pruned).
pub const APPLIED_ANNOTATION: &str = "ido.dev/applied-by";

/// An object read from a manifest.
#[derive(Clone, Debug)]
pub enum Manifest {
    Release(Box<Release>),
    NodeImage(Box<NodeImage>),
    ImageSync(Box<ImageSync>),
    /// image-operator's `Image` (`skopeo.io/v1alpha1`), synced as an ImageSync.
    Image(Box<Image>),
    /// A disk import: its claim and importer Job are stored; nothing runs the Job here.
    DiskImport(Box<DiskImport>),
    /// A stable name for a claim (CDI's DataSource).
    DiskSource(Box<DiskSource>),
    /// A scheduled import keeping a DiskSource at the newest image (CDI's DataImportCron).
    DiskImportCron(Box<DiskImportCron>),
    /// CDI's DataVolume (`cdi.kubevirt.io/v1beta1`), imported as a DiskImport.
    DataVolume(Box<DataVolume>),
    /// A claim; one annotated as in CDI's PVC flow (`cdi.kubevirt.io/storage.import.endpoint`)
    /// is filled by an import.
    Claim(Box<PersistentVolumeClaim>),
    /// Credentials an ImageSync references (`kubernetes.io/dockerconfigjson`).
    Secret(Box<Secret>),
    /// CA bundles an ImageSync references (`certConfigMap`).
    ConfigMap(Box<ConfigMap>),
}

/// Reads manifests (files, or directories of `*.yaml`/`*.yml`; multi-document YAML).
pub fn load_manifests(paths: &[PathBuf], namespace: &str) -> anyhow::Result<Vec<Manifest>> {
    let mut files = vec![];
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| matches!(f.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        // No snippet in the message: the lines around an error may hold a Secret's data.
        let docs: Vec<Value> =
            yaml::from_multiple_with_options(&text, yaml::options! { with_snippet: false })
                .map_err(|e| anyhow::anyhow!("{}: invalid YAML: {e}", f.display()))?;
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let api = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let at = format!("{}: document {}", f.display(), i + 1);
            let ns = Some(namespace);
            let m = match (api.as_str(), kind.as_str()) {
                ("release.giantswarm.io/v1alpha1", "Release") => Manifest::Release(object(&doc, &at, None)?),
                ("image.giantswarm.io/v1alpha1", "NodeImage") => Manifest::NodeImage(object(&doc, &at, ns)?),
                ("ido.dev/v1alpha1", "ImageSync") => Manifest::ImageSync(object(&doc, &at, ns)?),
                ("skopeo.io/v1alpha1", "Image") => Manifest::Image(object(&doc, &at, ns)?),
                ("ido.dev/v1alpha1", "DiskImport") => Manifest::DiskImport(object(&doc, &at, ns)?),
                ("ido.dev/v1alpha1", "DiskSource") => Manifest::DiskSource(object(&doc, &at, ns)?),
                ("ido.dev/v1alpha1", "DiskImportCron") => Manifest::DiskImportCron(object(&doc, &at, ns)?),
                // v1alpha1 (CDI's older examples) has v1beta1's shape.
                ("cdi.kubevirt.io/v1beta1" | "cdi.kubevirt.io/v1alpha1", "DataVolume") => {
                    Manifest::DataVolume(object(&doc, &at, ns)?)
                }
                ("v1", "PersistentVolumeClaim") => Manifest::Claim(object(&doc, &at, ns)?),
                ("v1", "Secret") => Manifest::Secret(object(&doc, &at, ns)?),
                ("v1", "ConfigMap") => Manifest::ConfigMap(object(&doc, &at, ns)?),
                _ => bail!(
                    "{at}: unsupported kind {kind:?} (apiVersion {api:?}); expected Release (release.giantswarm.io/v1alpha1), NodeImage (image.giantswarm.io/v1alpha1), ImageSync, DiskImport, DiskSource or DiskImportCron (ido.dev/v1alpha1), Image (skopeo.io/v1alpha1), DataVolume (cdi.kubevirt.io/v1beta1 or v1alpha1), PersistentVolumeClaim, Secret or ConfigMap (v1)"
                ),
            };
            out.push(m);
        }
    }
    Ok(out)
}

/// One manifest document as a `K`: errors name the document and the field (for a Secret
/// never what its value is); a name is required; `namespace`, for namespaced kinds, is
/// set unless the document names one.
fn object<K: crate::store::Object>(doc: &Value, at: &str, namespace: Option<&str>) -> anyhow::Result<Box<K>> {
    let kind = K::kind(&());
    let mut obj: K = serde_path_to_error::deserialize(doc).map_err(|e| {
        if kind == "Secret" {
            anyhow::anyhow!("{at}: Secret field {} is invalid", e.path())
        } else {
            anyhow::anyhow!("{at}: {kind} field {}: {}", e.path(), e.inner())
        }
    })?;
    if let Some(ns) = namespace {
        obj.meta_mut().namespace.get_or_insert_with(|| ns.to_string());
    }
    let m = obj.meta();
    ido_api::names::check_meta(&kind, m.name.as_deref(), m.namespace.as_deref())
        .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    Ok(Box::new(obj))
}

/// Applies the desired set: creates/updates the manifests' objects and deletes objects an
/// earlier run applied that are no longer given.
pub async fn apply_desired(store: &FileStore, manifests: &[Manifest]) -> anyhow::Result<()> {
    let wanted = apply(store, manifests).await?;
    prune::<Release>(store, &wanted).await?;
    prune::<NodeImage>(store, &wanted).await?;
    prune::<ImageSync>(store, &wanted).await?;
    prune::<Image>(store, &wanted).await?;
    prune::<DiskImport>(store, &wanted).await?;
    prune::<DiskSource>(store, &wanted).await?;
    prune::<DiskImportCron>(store, &wanted).await?;
    prune::<DataVolume>(store, &wanted).await?;
    prune::<PersistentVolumeClaim>(store, &wanted).await?;
    prune::<Secret>(store, &wanted).await?;
    prune::<ConfigMap>(store, &wanted).await?;
    Ok(())
}

/// Creates or updates the manifests' objects (nothing is pruned); returns their keys.
pub async fn apply(store: &FileStore, manifests: &[Manifest]) -> anyhow::Result<BTreeSet<Key>> {
    fn mark<K: crate::store::Object>(obj: &K) -> K {
        let mut obj = obj.clone();
        obj.meta_mut()
            .annotations
            .get_or_insert_default()
            .insert(APPLIED_ANNOTATION.into(), "ido-run".into());
        obj
    }
    let mut wanted = BTreeSet::new();
    for m in manifests {
        let key = match m {
            Manifest::Release(r) => FileStore::key_of(&store.apply(&mark(r.as_ref()))?),
            Manifest::NodeImage(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::ImageSync(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::Image(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::DiskImport(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::DiskSource(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::DiskImportCron(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::DataVolume(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::Claim(n) => FileStore::key_of(&store.apply(&mark(n.as_ref()))?),
            Manifest::Secret(s) => {
                apply_data(store, &mark(s.as_ref()), |a, b| {
                    a.type_ == b.type_ && a.data == b.data && a.string_data == b.string_data
                })
                .await?
            }
            Manifest::ConfigMap(c) => {
                apply_data(store, &mark(c.as_ref()), |a, b| {
                    a.data == b.data && a.binary_data == b.binary_data
                })
                .await?
            }
        };
        wanted.insert(key);
    }
    Ok(wanted)
}

/// Stores a Secret or ConfigMap, replacing a stored one whose content (`same`), labels or
/// annotations differ (the store's `apply` compares only `spec`, which they do not have).
async fn apply_data<K: crate::store::Object>(
    store: &FileStore,
    obj: &K,
    same: impl Fn(&K, &K) -> bool,
) -> anyhow::Result<Key> {
    let key = FileStore::key_of(obj);
    let m = obj.meta();
    let name = m.name.as_deref().unwrap_or_default();
    if let Some(old) = store.get::<K>(m.namespace.as_deref(), name).await? {
        if same(&old, obj) && old.meta().labels == m.labels && old.meta().annotations == m.annotations {
            return Ok(key);
        }
        store.delete(&old).await?;
    }
    store.create(obj).await?;
    Ok(key)
}

/// Keys of the objects earlier runs applied from manifests (what an empty desired set
/// would delete).
pub async fn applied_keys(store: &FileStore) -> anyhow::Result<Vec<Key>> {
    async fn of<K: crate::store::Object>(store: &FileStore, out: &mut Vec<Key>) -> anyhow::Result<()> {
        for obj in store.list::<K>().await? {
            if obj
                .meta()
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(APPLIED_ANNOTATION))
            {
                out.push(FileStore::key_of(&obj));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    of::<Release>(store, &mut out).await?;
    of::<NodeImage>(store, &mut out).await?;
    of::<ImageSync>(store, &mut out).await?;
    of::<Image>(store, &mut out).await?;
    of::<DiskImport>(store, &mut out).await?;
    of::<DiskSource>(store, &mut out).await?;
    of::<DiskImportCron>(store, &mut out).await?;
    of::<PersistentVolumeClaim>(store, &mut out).await?;
    of::<Secret>(store, &mut out).await?;
    of::<ConfigMap>(store, &mut out).await?;
    Ok(out)
}

async fn prune<K: crate::store::Object>(store: &FileStore, wanted: &BTreeSet<Key>) -> anyhow::Result<()> {
    for obj in store.list::<K>().await? {
        let applied = obj
            .meta()
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(APPLIED_ANNOTATION));
        if applied && !wanted.contains(&FileStore::key_of(&obj)) {
            store.delete(&obj).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<Vec<Manifest>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, text).unwrap();
        load_manifests(&[path], "team")
    }

    fn error(text: &str) -> String {
        format!("{:#}", load(text).unwrap_err())
    }

    #[test]
    fn manifests_get_the_namespace_and_errors_name_document_and_field() {
        let ms = load(
            "apiVersion: release.giantswarm.io/v1alpha1\nkind: Release\nmetadata: {name: r}\nspec: {}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: x}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: other}\n",
        )
        .unwrap();
        let [Manifest::Release(r), Manifest::ConfigMap(c), Manifest::Secret(s)] = ms.as_slice() else {
            panic!("{ms:?}")
        };
        assert_eq!(r.metadata.namespace, None, "Releases are cluster-scoped");
        assert_eq!(c.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("other"));

        let e = error(
            "---\napiVersion: ido.dev/v1alpha1\nkind: ImageSync\nmetadata: {name: a}\nspec: {mode: Sometimes}\n",
        );
        assert!(
            e.contains("m.yaml: document 1: ImageSync field spec.mode: unknown variant `Sometimes`"),
            "{e}"
        );
        let e = error(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: 'hunter2-not-base64!'}\n",
        );
        assert!(
            e.contains("document 1: Secret field data.token is invalid"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "a Secret's value is never echoed: {e}");
        let e = error("apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n");
        assert!(
            e.contains("document 1: ConfigMap: metadata.name \"\": is required"),
            "{e}"
        );
        let e = error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n");
        assert!(e.contains("unsupported kind \"Pod\""), "{e}");
    }
}
