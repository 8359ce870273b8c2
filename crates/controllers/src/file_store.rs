//! A file-backed [`Store`]: one JSON file per object under a state directory, with the API
//! server's semantics that the reconcilers rely on (resourceVersion conflicts, generation,
//! finalizers holding deletion, status written apart from spec, owned objects deleted with
//! their owner as the garbage collector does). `ido run` and the
//! end-to-end tests drive the controllers over it; no cluster is needed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::store::{Event, MetaPatch, Object, Result, Store, StoreError};

/// Identity of a stored object (the store's [`ObjectKey`](crate::store::ObjectKey)).
pub use crate::store::ObjectKey as Key;

impl Key {
    /// The object's file under `root`, built only from a name and namespace the API
    /// server would accept, so no key reaches outside `root`.
    fn path(&self, root: &Path) -> Result<PathBuf> {
        let kind = self.resource.split('.').next().unwrap_or_default();
        ido_api::names::check_meta(kind, Some(&self.name), self.namespace.as_deref())
            .map_err(StoreError::Invalid)?;
        Ok(root
            .join(&self.resource)
            .join(self.namespace.as_deref().unwrap_or("_cluster"))
            .join(format!("{}.json", self.name)))
    }
}

/// A recorded event with the object it is about.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RecordedEvent {
    pub object: String,
    pub time: jiff::Timestamp,
    #[serde(flatten)]
    pub event: Event,
}

struct Inner {
    root: PathBuf,
    objects: BTreeMap<Key, Value>,
    next_rv: u64,
    events: Vec<RecordedEvent>,
}

/// The file-backed store. Cheap to clone.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Key>,
}

/// Now, to the second (as the API server writes timestamps).
fn now_s() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Second).unwrap_or(now)
}

/// An I/O error at `path`.
fn io_at(path: &Path) -> impl Fn(std::io::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A JSON error about `what`.
fn encoding(what: impl std::fmt::Display) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |source| StoreError::Encoding {
        what: what.to_string(),
        source,
    }
}

impl FileStore {
    /// Opens (creating if needed) the state directory and loads every object in it. The
    /// directory is made private (0700): it holds Secrets' data (files are written 0600).
    pub fn open(root: &Path) -> Result<Self> {
        create_private_dir(root)?;
        let mut objects = BTreeMap::new();
        let mut max_rv = 0;
        for res in read_dirs(root)? {
            for ns in read_dirs(&res)? {
                for file in std::fs::read_dir(&ns).map_err(io_at(&ns))? {
                    let path = file.map_err(io_at(&ns))?.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("json") {
                        continue;
                    }
                    let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
                    let v: Value = serde_json::from_str(&text).map_err(encoding(path.display()))?;
                    let name = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or_default()
                        .to_string();
                    let nsname = ns.file_name().and_then(|s| s.to_str()).unwrap_or_default();
                    let key = Key {
                        resource: res
                            .file_name()
                            .and_then(|s| s.to_str())
                            .unwrap_or_default()
                            .to_string(),
                        namespace: (nsname != "_cluster").then(|| nsname.to_string()),
                        name,
                    };
                    let rv = v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    max_rv = max_rv.max(rv);
                    objects.insert(key, v);
                }
            }
        }
        let (changes, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                root: root.to_path_buf(),
                objects,
                next_rv: max_rv + 1,
                events: vec![],
            })),
            changes,
        })
    }

    /// Keys of changed objects, as they change.
    pub fn subscribe(&self) -> broadcast::Receiver<Key> {
        self.changes.subscribe()
    }

    /// Events recorded since the store was opened.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.inner.lock().expect("lock").events.clone()
    }

    /// The stored JSON of `key`, if any.
    pub fn raw(&self, key: &Key) -> Option<Value> {
        self.inner.lock().expect("lock").objects.get(key).cloned()
    }

    /// Key of a typed object.
    pub fn key_of<K: Object>(obj: &K) -> Key {
        let m = obj.meta();
        Key::named::<K>(m.namespace.as_deref(), m.name.as_deref().unwrap_or_default())
    }

    /// Key for a kind, namespace and name.
    pub fn key<K: Object>(namespace: Option<&str>, name: &str) -> Key {
        Key::named::<K>(namespace, name)
    }

    fn write(&self, inner: &mut Inner, key: &Key, value: Option<Value>) -> Result<()> {
        let path = key.path(&inner.root)?;
        match &value {
            Some(v) => {
                let dir = path.parent().expect("parent");
                create_private_dir(dir)?;
                let tmp = path.with_extension("json.tmp");
                write_private(
                    &tmp,
                    &serde_json::to_vec_pretty(v).map_err(encoding(path.display()))?,
                )?;
                std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
                inner.objects.insert(key.clone(), v.clone());
            }
            None => {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_at(&path)(e)),
                }
                inner.objects.remove(key);
            }
        }
        let _ = self.changes.send(key.clone());
        Ok(())
    }

    fn bump(inner: &mut Inner, v: &mut Value) {
        v["metadata"]["resourceVersion"] = json!(inner.next_rv.to_string());
        inner.next_rv += 1;
    }

    /// The stored copy of `obj`, if `obj` is not stale.
    fn current<K: Object>(inner: &Inner, key: &Key, obj: &K) -> Result<Value> {
        let v = inner
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind: K::kind(&()).to_string(),
                name: key.name.clone(),
            })?;
        Self::check_rv(&v, obj, key)?;
        Ok(v)
    }

    fn check_rv<K: Object>(stored: &Value, obj: &K, key: &Key) -> Result<()> {
        let want = obj.meta().resource_version.as_deref();
        if want.is_some() && stored["metadata"]["resourceVersion"].as_str() != want {
            return Err(StoreError::Conflict {
                kind: K::kind(&()).to_string(),
                name: key.name.clone(),
            });
        }
        Ok(())
    }

    /// Removes the object if it is being deleted and has no finalizers left; then, like
    /// the cluster's garbage collector, deletes the objects it owned (`ownerReferences`).
    fn finish_deletion(&self, inner: &mut Inner, key: &Key, v: Value) -> Result<Value> {
        let deleting = !v["metadata"]["deletionTimestamp"].is_null();
        let no_finalizers = v["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        if deleting && no_finalizers {
            self.write(inner, key, None)?;
            if let Some(uid) = v["metadata"]["uid"].as_str() {
                self.collect_garbage(inner, uid)?;
            }
        } else {
            self.write(inner, key, Some(v.clone()))?;
        }
        Ok(v)
    }

    /// Deletes every object with an owner reference to `uid` (background propagation).
    fn collect_garbage(&self, inner: &mut Inner, uid: &str) -> Result<()> {
        let owned: Vec<(Key, Value)> = inner
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, mut v) in owned {
            if v["metadata"]["deletionTimestamp"].is_null() {
                v["metadata"]["deletionTimestamp"] = json!(now_s().to_string());
                Self::bump(inner, &mut v);
            }
            self.finish_deletion(inner, &key, v)?;
        }
        Ok(())
    }
}

/// Creates `dir` (and its parents) readable by the owner only, and makes an existing one so.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = io_at(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Writes `bytes` to a new file at `path` readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let err = io_at(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// The exclusive hold of one `ido` process on a state directory (`<state>/.lock`, a file
/// lock the kernel drops when the process ends, holding the holder's pid): two runs on
/// one state would undo each other's work.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock; when another process holds it, fails at once naming its pid, or
    /// with `wait` waits for it.
    pub async fn acquire(root: &Path, wait: bool) -> Result<Self> {
        use std::{
            io::{Read, Seek, Write},
            os::unix::fs::OpenOptionsExt,
        };
        create_private_dir(root)?;
        let path = root.join(".lock");
        let err = io_at(&path);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown" } else { holder };
                if !wait {
                    return Err(StoreError::Busy {
                        path: root.to_path_buf(),
                        holder: holder.to_string(),
                    });
                }
                tracing::info!(state = %root.display(), pid = holder, "waiting for the state directory's lock");
                file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await
                    .map_err(|e| err(std::io::Error::other(e)))?
                    .map_err(&err)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        file.set_len(0).map_err(err)?;
        file.rewind().map_err(err)?;
        write!(file, "{}", std::process::id()).map_err(err)?;
        Ok(Self { _file: file })
    }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let p = e.map_err(io_at(dir))?.path();
        if p.is_dir() {
            out.push(p);
        }
    }
    Ok(out)
}

fn decode<K: Object>(v: Value) -> Result<K> {
    serde_json::from_value(v).map_err(encoding(format!("decoding {}", K::kind(&()))))
}

impl Store for FileStore {
    async fn get<K: Object>(&self, namespace: Option<&str>, name: &str) -> Result<Option<K>> {
        let v = self
            .inner
            .lock()
            .expect("lock")
            .objects
            .get(&Key::named::<K>(namespace, name))
            .cloned();
        v.map(decode).transpose()
    }

    async fn list<K: Object>(&self) -> Result<Vec<K>> {
        self.list_in::<K>(None).await
    }

    async fn list_in<K: Object>(&self, namespace: Option<&str>) -> Result<Vec<K>> {
        let resource = format!("{}.{}", K::plural(&()), K::group(&()));
        let vals: Vec<Value> = self
            .inner
            .lock()
            .expect("lock")
            .objects
            .iter()
            .filter(|(k, _)| {
                k.resource == resource && namespace.is_none_or(|n| k.namespace.as_deref() == Some(n))
            })
            .map(|(_, v)| v.clone())
            .collect();
        vals.into_iter().map(decode).collect()
    }

    async fn replace<K: Object>(&self, obj: &K) -> Result<K> {
        let key = Self::key_of(obj);
        let mut inner = self.inner.lock().expect("lock");
        let stored = Self::current(&inner, &key, obj)?;
        let mut v = serde_json::to_value(obj).map_err(encoding(format!("encoding {}", K::kind(&()))))?;
        v["apiVersion"] = json!(K::api_version(&()));
        v["kind"] = json!(K::kind(&()));
        // What the server owns stays as stored: identity, generation, deletion, the status.
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "finalizers",
        ] {
            match stored["metadata"].get(field) {
                Some(f) => v["metadata"][field] = f.clone(),
                None => {
                    if let Some(m) = v["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        v["status"] = stored.get("status").cloned().unwrap_or(Value::Null);
        if v.get("spec") != stored.get("spec") {
            v["metadata"]["generation"] = json!(stored["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        Self::bump(&mut inner, &mut v);
        self.write(&mut inner, &key, Some(v.clone()))?;
        decode(v)
    }

    async fn list_labeled<K: Object>(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<K>> {
        let resource = format!("{}.{}", K::plural(&()), K::group(&()));
        let vals: Vec<Value> = self
            .inner
            .lock()
            .expect("lock")
            .objects
            .iter()
            .filter(|(k, v)| {
                k.resource == resource
                    && k.namespace.as_deref() == Some(namespace)
                    && labels
                        .iter()
                        .all(|(l, want)| v["metadata"]["labels"][l].as_str() == Some(want.as_str()))
            })
            .map(|(_, v)| v.clone())
            .collect();
        vals.into_iter().map(decode).collect()
    }

    async fn create<K: Object>(&self, obj: &K) -> Result<K> {
        self.create_now(obj)
    }

    async fn patch_metadata<K: Object>(&self, obj: &K, patch: &MetaPatch) -> Result<K> {
        let key = Self::key_of(obj);
        let mut inner = self.inner.lock().expect("lock");
        let mut v = Self::current(&inner, &key, obj)?;
        if let Some(f) = &patch.finalizers {
            v["metadata"]["finalizers"] = json!(f);
        }
        if !patch.annotations.is_empty() {
            if !v["metadata"]["annotations"].is_object() {
                v["metadata"]["annotations"] = json!({});
            }
            let a = v["metadata"]["annotations"].as_object_mut().expect("object");
            for (k, val) in &patch.annotations {
                match val {
                    Some(val) => a.insert(k.clone(), json!(val)),
                    None => a.remove(k),
                };
            }
        }
        Self::bump(&mut inner, &mut v);
        let v = self.finish_deletion(&mut inner, &key, v)?;
        decode(v)
    }

    async fn update_status<K: Object>(&self, obj: &K) -> Result<K> {
        let key = Self::key_of(obj);
        let status =
            crate::store::status_of(obj).map_err(encoding(format!("encoding {} status", K::kind(&()))))?;
        let mut inner = self.inner.lock().expect("lock");
        let mut v = Self::current(&inner, &key, obj)?;
        v["status"] = status.unwrap_or(Value::Null);
        Self::bump(&mut inner, &mut v);
        self.write(&mut inner, &key, Some(v.clone()))?;
        decode(v)
    }

    async fn delete<K: Object>(&self, obj: &K) -> Result<()> {
        let key = Self::key_of(obj);
        let mut inner = self.inner.lock().expect("lock");
        let Some(mut v) = inner.objects.get(&key).cloned() else {
            return Ok(());
        };
        if v["metadata"]["deletionTimestamp"].is_null() {
            v["metadata"]["deletionTimestamp"] = json!(now_s().to_string());
            Self::bump(&mut inner, &mut v);
        }
        self.finish_deletion(&mut inner, &key, v)?;
        Ok(())
    }

    async fn event<K: Object>(&self, obj: &K, event: Event) {
        let key = Self::key_of(obj);
        tracing::info!(object = %key, reason = %event.reason, kind = ?event.type_, "{}", event.message);
        let mut inner = self.inner.lock().expect("lock");
        let rec = RecordedEvent {
            object: key.to_string(),
            time: jiff::Timestamp::now(),
            event,
        };
        let path = inner.root.join("events.jsonl");
        if let Ok(line) = serde_json::to_string(&rec) {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
        inner.events.push(rec);
    }
}

impl FileStore {
    fn create_now<K: Object>(&self, obj: &K) -> Result<K> {
        let key = Self::key_of(obj);
        ido_api::names::check_meta(K::kind(&()).as_ref(), Some(&key.name), key.namespace.as_deref())?;
        let mut inner = self.inner.lock().expect("lock");
        if inner.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                kind: K::kind(&()).to_string(),
                name: key.name,
            });
        }
        let mut v = serde_json::to_value(obj).map_err(encoding(format!("encoding {}", K::kind(&()))))?;
        v["apiVersion"] = json!(K::api_version(&()));
        v["kind"] = json!(K::kind(&()));
        let m = &mut v["metadata"];
        m["uid"] = json!(format!("{:032x}", rand_id(&key, inner.next_rv)));
        m["creationTimestamp"] = json!(now_s().to_string());
        m["generation"] = json!(1);
        if let Some(o) = m.as_object_mut() {
            o.remove("deletionTimestamp");
            o.remove("resourceVersion");
        }
        Self::bump(&mut inner, &mut v);
        self.write(&mut inner, &key, Some(v.clone()))?;
        decode(v)
    }

    /// Creates `obj` or, if it exists, replaces its spec and labels/annotations given
    /// (bumping the generation when the spec changed). Used to apply manifests.
    pub fn apply<K: Object>(&self, obj: &K) -> Result<K> {
        let key = Self::key_of(obj);
        let new = serde_json::to_value(obj).map_err(encoding(format!("encoding {}", K::kind(&()))))?;
        let mut inner = self.inner.lock().expect("lock");
        let Some(mut v) = inner.objects.get(&key).cloned() else {
            drop(inner);
            return self.create_now(obj);
        };
        let mut changed = false;
        if v["spec"] != new["spec"] {
            v["spec"] = new["spec"].clone();
            let g = v["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            v["metadata"]["generation"] = json!(g);
            changed = true;
        }
        for field in ["labels", "annotations"] {
            if let Some(m) = new["metadata"][field].as_object() {
                if !v["metadata"][field].is_object() {
                    v["metadata"][field] = json!({});
                }
                for (k, val) in m {
                    if v["metadata"][field][k] != *val {
                        v["metadata"][field][k] = val.clone();
                        changed = true;
                    }
                }
            }
        }
        if changed {
            Self::bump(&mut inner, &mut v);
            self.write(&mut inner, &key, Some(v.clone()))?;
        }
        decode(v)
    }
}

fn rand_id(key: &Key, n: u64) -> u128 {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new();
    let a = s.hash_one((key, n));
    ((a as u128) << 64) | s.hash_one(a) as u128
}

#[cfg(test)]
mod tests;
