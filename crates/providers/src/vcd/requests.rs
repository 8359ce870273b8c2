//! Authenticated request helpers of the [`Client`]: XML GET/POST, actions, DELETE and
//! transfer PUTs, all through [`Client::send`] (one re-login and retry on 401).

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};

use super::{
    client::{Client, Use, read_xml},
    error::VcdError,
};
use ido_io::xml::Node;

impl Client {
    /// GET an entity or query.
    pub async fn get(&self, what: &str, href: &str) -> Result<Node, VcdError> {
        let resp = self.send(what, Use::Api, |h| h.get(href)).await?;
        read_xml(resp, what).await
    }

    /// POST an XML body of `content_type`; returns the answer's root element.
    pub async fn post(
        &self,
        what: &str,
        href: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Node, VcdError> {
        self.send_xml(reqwest::Method::POST, what, href, content_type, body)
            .await
    }

    /// PUT an XML body of `content_type` to an API href; returns the answer's root element
    /// (e.g. the Task of a metadata write).
    pub async fn put_xml(
        &self,
        what: &str,
        href: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Node, VcdError> {
        self.send_xml(reqwest::Method::PUT, what, href, content_type, body)
            .await
    }

    async fn send_xml(
        &self,
        method: reqwest::Method,
        what: &str,
        href: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Node, VcdError> {
        let body = Bytes::copy_from_slice(body.as_bytes());
        let resp = self
            .send(what, Use::Api, |h| {
                h.request(method.clone(), href)
                    .header(CONTENT_TYPE, content_type)
                    .body(body.clone())
            })
            .await?;
        read_xml(resp, what).await
    }

    /// POST without a body (actions such as a task cancel).
    pub async fn post_empty(&self, what: &str, href: &str) -> Result<(), VcdError> {
        self.send(what, Use::Api, |h| h.post(href).header(CONTENT_LENGTH, 0))
            .await
            .map(drop)
    }

    /// DELETE; returns the Task VCD answers with, if any.
    pub async fn delete(&self, what: &str, href: &str) -> Result<Option<Node>, VcdError> {
        let resp = self.send(what, Use::Api, |h| h.delete(href)).await?;
        let body = resp.bytes().await.map_err(|e| VcdError::transport(what, e))?;
        let text = String::from_utf8_lossy(&body);
        if text.trim().is_empty() {
            return Ok(None);
        }
        Node::parse(text.trim_start_matches('\u{feff}'))
            .map(Some)
            .map_err(|e| VcdError::protocol(what, format!("not XML: {e}")))
    }

    /// PUT `body` to a transfer URL; with `range = (start, total)` as one piece of a file.
    pub async fn put(
        &self,
        what: &str,
        href: &str,
        content_type: &str,
        body: Bytes,
        range: Option<(u64, u64)>,
    ) -> Result<(), VcdError> {
        let len = body.len() as u64;
        self.send(what, Use::Transfer, |h| {
            let mut r = h
                .put(href)
                .header(CONTENT_TYPE, content_type)
                .header(CONTENT_LENGTH, len);
            if let Some((start, total)) = range {
                let end = (start + len).saturating_sub(1);
                r = r.header(CONTENT_RANGE, format!("bytes {start}-{end}/{total}"));
            }
            r.body(body.clone())
        })
        .await
        .map(drop)
    }
}
