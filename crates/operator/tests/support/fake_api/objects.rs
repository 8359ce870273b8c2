//! Object semantics of the fake: create, get, list, merge patch, update, status, delete.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Change, FakeApi, Key, STATUS_SUBRESOURCE, State, parse_path};

fn status(code: u16, reason: &str, message: String) -> (StatusCode, Value) {
    let s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), s)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string()
}

fn finalizers(v: &Value) -> Vec<String> {
    serde_json::from_value(v["metadata"]["finalizers"].clone()).unwrap_or_default()
}

impl FakeApi {
    /// Records a change and tells the watches.
    fn changed(&self, st: &mut State, kind: &'static str, key: &Key, object: &Value) {
        let c = Change {
            rv: st.rv,
            kind,
            prefix: key.0.clone(),
            resource: key.1.clone(),
            namespace: key.2.clone(),
            object: object.clone(),
        };
        st.log.push(c.clone());
        let _ = self.changes.send(c);
    }

    /// Stores `new` for `key`, or removes it when it is being deleted and has no finalizers.
    fn store(&self, st: &mut State, key: &Key, mut new: Value) -> Value {
        st.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        if new["metadata"]["deletionTimestamp"].is_string() && finalizers(&new).is_empty() {
            st.objects.remove(key);
            self.changed(st, "DELETED", key, &new);
        } else {
            let kind = if st.objects.insert(key.clone(), new.clone()).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            self.changed(st, kind, key, &new);
        }
        new
    }

    pub(super) fn apply(
        &self,
        method: Method,
        path: &str,
        _name: Option<String>,
        body: Value,
        query: &str,
    ) -> (StatusCode, Value) {
        let t = parse_path(path);
        let mut st = self.state.lock().unwrap();
        let has_status = STATUS_SUBRESOURCE.contains(&t.resource.as_str());
        let Some(name) = t
            .name
            .clone()
            .or_else(|| body["metadata"]["name"].as_str().map(String::from))
        else {
            // A list.
            assert_eq!(method, Method::GET);
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|(k, _)| {
                    k.0 == t.prefix && k.1 == t.resource && (t.namespace.is_none() || k.2 == t.namespace)
                })
                .filter(|(_, v)| super::selected(v, query))
                .map(|(_, v)| v.clone())
                .collect();
            return (
                StatusCode::OK,
                json!({"kind": "List", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            );
        };
        let key: Key = (
            t.prefix.clone(),
            t.resource.clone(),
            t.namespace.clone(),
            name.clone(),
        );
        let current = st.objects.get(&key).cloned();
        let what = format!("{}.{} {name:?}", t.resource, t.group);
        if method == Method::POST {
            if current.is_some() {
                return status(409, "AlreadyExists", format!("{what} already exists"));
            }
            if body["metadata"]["resourceVersion"].is_string() {
                return status(
                    400,
                    "BadRequest",
                    "resourceVersion should not be set on objects to be created".into(),
                );
            }
            let mut obj = body;
            if has_status {
                obj.as_object_mut().unwrap().remove("status");
            }
            let m = &mut obj["metadata"];
            m["uid"] = json!(format!("uid-{}-{name}", st.rv + 1));
            m["creationTimestamp"] = json!(now());
            m["generation"] = json!(1);
            if let Some(ns) = &t.namespace {
                m["namespace"] = json!(ns);
            }
            let stored = self.store(&mut st, &key, obj);
            return (StatusCode::CREATED, stored);
        }
        let Some(current) = current else {
            return status(404, "NotFound", format!("{what} not found"));
        };
        match method {
            Method::GET => (StatusCode::OK, current),
            Method::DELETE => {
                if finalizers(&current).is_empty() {
                    st.objects.remove(&key);
                    st.rv += 1;
                    self.changed(&mut st, "DELETED", &key, &current);
                    return (StatusCode::OK, current);
                }
                if current["metadata"]["deletionTimestamp"].is_string() {
                    return (StatusCode::OK, current);
                }
                let mut obj = current;
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                (StatusCode::OK, self.store(&mut st, &key, obj))
            }
            Method::PATCH | Method::PUT => {
                let rv = current["metadata"]["resourceVersion"].clone();
                let sent_rv = &body["metadata"]["resourceVersion"];
                if method == Method::PUT && !sent_rv.is_string() {
                    return status(
                        422,
                        "Invalid",
                        "metadata.resourceVersion: must be specified for an update".into(),
                    );
                }
                if sent_rv.is_string() && *sent_rv != rv {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {what}: the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    );
                }
                let mut wanted = if method == Method::PATCH {
                    current.clone()
                } else {
                    body.clone()
                };
                if method == Method::PATCH {
                    merge_patch(&mut wanted, &body);
                }
                let mut new = current.clone();
                if t.subresource.as_deref() == Some("status") {
                    assert!(has_status, "{} has no status subresource", t.resource);
                    new["status"] = wanted["status"].clone();
                } else {
                    assert!(
                        t.subresource.is_none(),
                        "unexpected subresource {:?}",
                        t.subresource
                    );
                    for (k, v) in wanted.as_object().unwrap() {
                        if k != "metadata" && !(has_status && k == "status") {
                            new[k] = v.clone();
                        }
                    }
                    for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        match wanted["metadata"].get(f) {
                            Some(v) if !v.is_null() => new["metadata"][f] = v.clone(),
                            _ => {
                                new["metadata"].as_object_mut().unwrap().remove(f);
                            }
                        }
                    }
                    let added = finalizers(&new)
                        .into_iter()
                        .any(|f| !finalizers(&current).contains(&f));
                    if current["metadata"]["deletionTimestamp"].is_string() && added {
                        return status(
                            422,
                            "Forbidden",
                            "no new finalizers can be added if the object is being deleted".into(),
                        );
                    }
                    let spec_changed = current
                        .as_object()
                        .unwrap()
                        .iter()
                        .chain(new.as_object().unwrap().iter())
                        .any(|(k, _)| {
                            !["metadata", "status"].contains(&k.as_str()) && current.get(k) != new.get(k)
                        });
                    if spec_changed {
                        new["metadata"]["generation"] =
                            json!(current["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                    }
                }
                if new == current {
                    return (StatusCode::OK, current);
                }
                (StatusCode::OK, self.store(&mut st, &key, new))
            }
            m => panic!("unexpected {m}"),
        }
    }
}
