//! A small XML element tree read with quick-xml's `NsReader` (namespaces resolved,
//! `xsi:type` matched by namespace URI whatever its prefix, entities decoded, nesting
//! bounded), for the XML APIs and documents ido reads: vSphere's SOAP, Cloud Director's
//! REST, OVF descriptors.

use std::{borrow::Cow, ops::Range};

use quick_xml::{
    XmlVersion,
    escape::resolve_predefined_entity,
    events::{BytesStart, Event},
    name::ResolveResult,
    reader::NsReader,
};

/// Namespace of `xsi:type` (vcsim writes the prefix `XMLSchema-instance`, vCenter `xsi`).
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Deepest element nesting accepted in a document.
const MAX_DEPTH: usize = 128;

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// quick-xml could not read on.
    #[error("{source} at byte {at}")]
    Syntax {
        at: usize,
        #[source]
        source: quick_xml::Error,
    },
    /// A prefix no `xmlns:` declares.
    #[error("unknown namespace prefix {0:?}")]
    UnknownPrefix(String),
    /// A malformed attribute.
    #[error("bad attribute in <{element}>: {reason}")]
    Attribute { element: String, reason: String },
    /// An entity that is neither a character reference nor one of XML's five.
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
    /// A second root element.
    #[error("content after the root element: <{0}>")]
    AfterRoot(String),
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unbalanced end tag")]
    Unbalanced,
    #[error("unexpected end of document")]
    UnexpectedEnd,
    #[error("no root element")]
    NoRoot,
}

/// Escapes text for element content or a double-quoted attribute value.
pub fn escape(s: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// One attribute other than `xsi:type` and namespace declarations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI, `None` for unprefixed attributes.
    pub ns: Option<String>,
    /// Local name.
    pub name: String,
    /// Unescaped value.
    pub value: String,
}

/// One element of a parsed document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Namespace URI of the element, if bound.
    pub ns: Option<String>,
    /// Local name.
    pub name: String,
    /// The `xsi:type` value as written (may carry a prefix such as `xsd:`).
    pub xsi_type: Option<String>,
    /// Other attributes.
    pub attrs: Vec<Attr>,
    /// Namespace prefixes this element declares (`xmlns:p="uri"`), as `(p, uri)`.
    pub ns_decls: Vec<(String, String)>,
    /// Unescaped text directly inside the element (all text pieces joined).
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Node>,
    /// Byte range of the element's content (between its tags) in the source.
    pub inner: Range<usize>,
}

impl Node {
    /// Parses a document and returns its root element.
    pub fn parse(src: &str) -> Result<Node, XmlError> {
        let mut reader = NsReader::from_str(src);
        let mut stack: Vec<Node> = Vec::new();
        let mut root = None;
        loop {
            let before = reader.buffer_position() as usize;
            let (ns, event) = reader
                .read_resolved_event()
                .map_err(|source| XmlError::Syntax { at: before, source })?;
            let ns = match ns {
                ResolveResult::Bound(n) => Some(n.into_inner().to_string()),
                ResolveResult::Unbound => None,
                ResolveResult::Unknown(p) => return Err(XmlError::UnknownPrefix(p.to_string())),
            };
            match event {
                Event::Start(e) | Event::Empty(e) if root.is_some() => {
                    return Err(XmlError::AfterRoot(e.name().0.to_string()));
                }
                Event::Start(e) => {
                    let mut node = start_node(&reader, &e, ns)?;
                    let pos = reader.buffer_position() as usize;
                    node.inner = pos..pos;
                    stack.push(node);
                    if stack.len() > MAX_DEPTH {
                        return Err(XmlError::TooDeep);
                    }
                }
                Event::Empty(e) => {
                    let mut node = start_node(&reader, &e, ns)?;
                    let pos = reader.buffer_position() as usize;
                    node.inner = pos..pos;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                Event::End(_) => {
                    let mut node = stack.pop().ok_or(XmlError::Unbalanced)?;
                    node.inner.end = before;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                Event::Text(t) => {
                    if let Some(n) = stack.last_mut() {
                        n.text.push_str(&t.xml10_content());
                    }
                }
                Event::CData(t) => {
                    if let Some(n) = stack.last_mut() {
                        n.text.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(r) => {
                    let Some(n) = stack.last_mut() else { continue };
                    let entity = || XmlError::UnknownEntity(r.xml10_content().into_owned());
                    match r.resolve_char_ref().map_err(|_| entity())? {
                        Some(c) => n.text.push(c),
                        None => {
                            let name = r.xml10_content();
                            let v = resolve_predefined_entity(&name).ok_or_else(entity)?;
                            n.text.push_str(v);
                        }
                    }
                }
                Event::Eof => break,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        if !stack.is_empty() {
            return Err(XmlError::UnexpectedEnd);
        }
        root.ok_or(XmlError::NoRoot)
    }

    /// The first child element named `name` (local name, any namespace).
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All child elements named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at a `/`-separated path of child names, e.g. `info/state`.
    pub fn at(&self, path: &str) -> Option<&Node> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .try_fold(self, |n, seg| n.child(seg))
    }

    /// The text of the element at `path` (see [`Node::at`]).
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.at(path).map(|n| n.text.as_str())
    }

    /// The value of the unprefixed attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.name == name)
            .map(|a| a.value.as_str())
    }

    /// The value of attribute `name` in any namespace (or none), e.g. `ovf:href`.
    pub fn attr_any_ns(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }

    /// The `xsi:type` without any prefix (`xsd:boolean` → `boolean`).
    pub fn type_name(&self) -> Option<&str> {
        self.xsi_type
            .as_deref()
            .map(|t| t.rsplit(':').next().unwrap_or(t))
    }

    /// The text read as an `xsd:boolean`.
    pub fn as_bool(&self) -> Option<bool> {
        match self.text.trim() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }
}

fn start_node(reader: &NsReader<&[u8]>, e: &BytesStart<'_>, ns: Option<String>) -> Result<Node, XmlError> {
    let mut node = Node {
        ns,
        name: e.local_name().into_inner().to_string(),
        ..Node::default()
    };
    for a in e.attributes() {
        let bad = |reason: String| XmlError::Attribute {
            element: e.name().0.to_string(),
            reason,
        };
        let a = a.map_err(|err| bad(err.to_string()))?;
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| bad(err.to_string()))?
            .into_owned();
        if let Some(decl) = a.key.as_namespace_binding() {
            if let quick_xml::name::PrefixDeclaration::Named(p) = decl {
                node.ns_decls.push((p.to_string(), value));
            }
            continue;
        }
        let (rns, local) = reader.resolver().resolve_attribute(a.key);
        let ns = match rns {
            ResolveResult::Bound(n) => Some(n.into_inner().to_string()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => return Err(XmlError::UnknownPrefix(p.to_string())),
        };
        if ns.as_deref() == Some(XSI) && local.into_inner() == "type" {
            node.xsi_type = Some(value);
        } else {
            node.attrs.push(Attr {
                ns,
                name: local.into_inner().to_string(),
                value,
            });
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_ranges_cover_content_and_entities_decode() {
        let src = "<a><b x=\"1 &amp; 2\">t&#65;&lt;<c/>u</b><d></d></a>";
        let a = Node::parse(src).unwrap();
        let b = a.child("b").unwrap();
        assert_eq!(&src[b.inner.clone()], "t&#65;&lt;<c/>u");
        assert_eq!(b.text, "tA<u");
        assert_eq!(b.attr("x"), Some("1 & 2"));
        assert_eq!(&src[a.child("d").unwrap().inner.clone()], "");
        assert_eq!(
            &src[a.inner.clone()],
            "<b x=\"1 &amp; 2\">t&#65;&lt;<c/>u</b><d></d>"
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(Node::parse("<a><b></a>").is_err());
        assert!(Node::parse("<a>").is_err());
        assert!(Node::parse("").is_err());
        assert!(Node::parse("<a>&bogus;</a>").is_err());
        assert!(Node::parse("<p:a/>").is_err());
    }
}
