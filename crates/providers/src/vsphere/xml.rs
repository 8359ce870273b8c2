//! XML of the vim25 client: managed object references, request bodies (a writer that escapes
//! every text and attribute value) and SOAP envelopes, over the element tree of
//! [`ido_io::xml`].

use std::fmt;

pub use ido_io::xml::{Attr, Node, XSI, escape};

/// Namespace of the vim25 API.
pub const VIM25: &str = "urn:vim25";
/// Namespace of SOAP 1.1 envelopes.
pub const SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// A managed object reference: `<obj type="HostSystem">host-34</obj>`. Ids are opaque.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MoRef {
    /// Managed object class, e.g. `VirtualMachine`.
    pub kind: String,
    /// Server-assigned id, e.g. `vm-42`.
    pub value: String,
}

impl MoRef {
    /// A reference of `kind` with id `value`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl fmt::Display for MoRef {
    /// `Kind:id`, e.g. `VirtualMachine:vm-42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Reading a managed object reference from an element.
pub trait NodeExt {
    /// The element read as a managed object reference (unprefixed `type` plus text).
    fn moref(&self) -> Option<MoRef>;
}

impl NodeExt for Node {
    fn moref(&self) -> Option<MoRef> {
        let kind = self.attr("type")?;
        let value = self.text.trim();
        (!value.is_empty()).then(|| MoRef::new(kind, value))
    }
}

/// Builds a request body: every value escaped, elements in the order written.
#[derive(Debug, Default)]
pub struct Writer(String);

impl Writer {
    /// Starts `<method xmlns="urn:vim25"><_this type=…>…</_this>`; close it with [`Writer::finish`].
    pub fn call(method: &str, this: &MoRef) -> Self {
        let mut w = Self(String::with_capacity(512));
        w.0.push('<');
        w.0.push_str(method);
        w.0.push_str(" xmlns=\"urn:vim25\">");
        w.moref("_this", this);
        w
    }

    /// `<tag>escaped text</tag>`.
    pub fn text(&mut self, tag: &str, value: &str) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push('>');
        self.0.push_str(&escape(value));
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
        self
    }

    /// `<tag type="Kind">id</tag>`.
    pub fn moref(&mut self, tag: &str, r: &MoRef) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push_str(" type=\"");
        self.0.push_str(&escape(&r.kind));
        self.0.push_str("\">");
        self.0.push_str(&escape(&r.value));
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
        self
    }

    /// `<tag>`, or `<tag xsi:type="…">` when `xsi_type` is set.
    pub fn open(&mut self, tag: &str, xsi_type: Option<&str>) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        if let Some(t) = xsi_type {
            self.0.push_str(" xsi:type=\"");
            self.0.push_str(&escape(t));
            self.0.push('"');
        }
        self.0.push('>');
        self
    }

    /// `</tag>`.
    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
        self
    }

    /// Appends XML as is (only for XML that came from the server or from this writer).
    pub fn raw(&mut self, xml: &str) -> &mut Self {
        self.0.push_str(xml);
        self
    }

    /// The XML written so far (parameters for [`super::client::Client::invoke`]).
    pub fn into_string(self) -> String {
        self.0
    }

    /// Closes the method element and returns the body.
    pub fn finish(mut self, method: &str) -> String {
        self.close(method);
        self.0
    }
}

/// Wraps a body in a SOAP envelope declaring `soapenv`, `xsd` and `xsi` on the root.
pub fn envelope(body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="{}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="{}">"#,
            "<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"
        ),
        SOAPENV, XSI, body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let mut w = Writer::call("Login", &MoRef::new("SessionManager", "a<b"));
        w.text("userName", "u&<>\"'")
            .text("password", "]]></password><x>");
        let body = w.finish("Login");
        assert_eq!(
            body,
            "<Login xmlns=\"urn:vim25\"><_this type=\"SessionManager\">a&lt;b</_this>\
             <userName>u&amp;&lt;&gt;&quot;&apos;</userName>\
             <password>]]&gt;&lt;/password&gt;&lt;x&gt;</password></Login>"
        );
        // Round trip: the escaped text parses back to the original values.
        let n = Node::parse(&envelope(&body)).unwrap();
        let login = n.at("Body/Login").unwrap();
        assert_eq!(login.ns.as_deref(), Some(VIM25));
        assert_eq!(login.text_at("userName"), Some("u&<>\"'"));
        assert_eq!(login.text_at("password"), Some("]]></password><x>"));
        assert_eq!(
            login.child("_this").unwrap().moref(),
            Some(MoRef::new("SessionManager", "a<b"))
        );
    }

    #[test]
    fn xsi_type_is_matched_by_namespace_not_prefix() {
        let src = r#"<r xmlns="urn:vim25"><val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ManagedObjectReference" type="Folder">folder-3</val><val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xsd:boolean">true</val><val xmlns:foo="urn:other" foo:type="Nope">x</val></r>"#;
        let r = Node::parse(src).unwrap();
        let vals: Vec<_> = r.children_named("val").collect();
        assert_eq!(vals[0].type_name(), Some("ManagedObjectReference"));
        assert_eq!(vals[0].moref(), Some(MoRef::new("Folder", "folder-3")));
        assert_eq!(vals[1].xsi_type.as_deref(), Some("xsd:boolean"));
        assert_eq!(vals[1].as_bool(), Some(true));
        assert_eq!(vals[2].xsi_type, None);
        assert_eq!(vals[2].attrs[0].ns.as_deref(), Some("urn:other"));
    }
}
