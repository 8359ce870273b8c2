//! Watches: the change log replayed after a `resourceVersion`, then live changes.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;
use tokio::sync::broadcast;

use super::{Body, Change, FakeApi, Target};

impl FakeApi {
    /// A watch: changes after the requested `resourceVersion`, then live ones.
    pub(super) fn watch(&self, t: Target, query: &str) -> Response<Body> {
        let since: u64 = query
            .split('&')
            .find_map(|q| q.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let query = query.to_string();
        let matches = move |c: &Change| {
            c.prefix == t.prefix
                && c.resource == t.resource
                && (t.namespace.is_none() || c.namespace == t.namespace)
                && super::selected(&c.object, &query)
        };
        let (replay, rx) = {
            let st = self.state.lock().unwrap();
            let replay: Vec<Change> = st
                .log
                .iter()
                .filter(|c| c.rv > since && matches(c))
                .cloned()
                .collect();
            (replay, self.changes.subscribe())
        };
        let last = replay.last().map(|c| c.rv).unwrap_or(since);
        let live = futures::stream::unfold((rx, last), move |(mut rx, last)| {
            let matches = matches.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(c) if c.rv > last && matches(&c) => return Some((c, (rx, last))),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let lines = futures::stream::iter(replay).chain(live).map(|c| {
            let line = json!({"type": c.kind, "object": c.object}).to_string() + "\n";
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(line)))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(lines).boxed_unsync())
            .unwrap()
    }
}
