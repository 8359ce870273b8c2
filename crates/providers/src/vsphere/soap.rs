//! SOAP transport: one POST per call to `<vcenter>/sdk`, the session cookie, and faults.
//!
//! The transport knows nothing about logins: it sends the `vmware_soap_session` cookie it
//! last received (kept byte for byte, quotes included) and turns `<soapenv:Fault>` bodies
//! into [`Fault`]s. Session recovery lives in [`super::client`].

use std::{fmt, sync::Mutex};

use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use url::Url;

use super::xml::{self, Node};

/// `SOAPAction` sent with every call (6.7 exposes the lease features this client may use).
pub const SOAP_ACTION: &str = "\"urn:vim25/6.7\"";
/// Name of vCenter's session cookie.
pub const SESSION_COOKIE: &str = "vmware_soap_session";
/// Largest response body accepted.
const MAX_RESPONSE: usize = 64 << 20;

/// A vim25 fault: its kind (e.g. `NotAuthenticated`) and the server's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Fault type without prefix or `Fault` suffix, e.g. `InvalidLogin`.
    pub kind: String,
    /// `faultstring` or `localizedMessage`; may be empty.
    pub message: String,
}

impl Fault {
    /// Reads a `<soapenv:Fault>` element: the kind is the `xsi:type` of the first child of
    /// `<detail>`, or else that child's name without its `Fault` suffix, or else the
    /// `faultcode`.
    pub fn from_soap(fault: &Node) -> Self {
        let message = fault
            .text_at("faultstring")
            .unwrap_or_default()
            .trim()
            .to_string();
        let kind = fault
            .child("detail")
            .and_then(|d| d.children.first())
            .map(|d| match d.type_name() {
                Some(t) => t.to_string(),
                None => d.name.strip_suffix("Fault").unwrap_or(&d.name).to_string(),
            })
            .or_else(|| {
                let code = fault.text_at("faultcode")?.trim();
                Some(code.rsplit(':').next().unwrap_or(code).to_string())
            })
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "UnknownFault".into());
        Self { kind, message }
    }

    /// Reads a `LocalizedMethodFault` (`<fault xsi:type=…/><localizedMessage>…`), as found in
    /// task and lease errors and in `CreateImportSpec` results.
    pub fn from_localized(n: &Node) -> Self {
        let kind = n
            .child("fault")
            .and_then(|f| f.type_name().map(str::to_string))
            .or_else(|| n.type_name().map(str::to_string))
            .unwrap_or_else(|| "UnknownFault".into());
        let message = n
            .text_at("localizedMessage")
            .unwrap_or_default()
            .trim()
            .to_string();
        Self { kind, message }
    }

    /// Whether this fault is of `kind`.
    pub fn is(&self, kind: &str) -> bool {
        self.kind == kind
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{} ({})", self.message, self.kind)
        }
    }
}

/// Errors of one SOAP call.
#[derive(Debug, thiserror::Error)]
pub enum SoapError {
    /// The server answered with a fault (or a task or lease ended in one).
    #[error("vSphere {method}: {fault}")]
    Fault {
        /// The call.
        method: &'static str,
        /// What the server said.
        fault: Fault,
    },
    /// A non-SOAP HTTP error.
    #[error("vSphere {method}: HTTP {status}: {message}")]
    Http {
        /// The call.
        method: &'static str,
        /// HTTP status.
        status: u16,
        /// Reason phrase.
        message: String,
    },
    /// The request did not get through (connection, TLS, timeout).
    #[error("vSphere {method}: {message}")]
    Transport {
        /// The call.
        method: &'static str,
        /// The error and its causes.
        message: String,
    },
    /// The answer was not the expected XML.
    #[error("vSphere {method}: unexpected response: {message}")]
    Response {
        /// The call.
        method: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl SoapError {
    /// The fault, if the server sent one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Self::Fault { fault, .. } => Some(fault),
            _ => None,
        }
    }

    /// Whether the server sent a fault of `kind`.
    pub fn is_fault(&self, kind: &str) -> bool {
        self.fault().is_some_and(|f| f.is(kind))
    }

    /// Whether the session is gone (log in again and retry).
    pub fn is_not_authenticated(&self) -> bool {
        self.is_fault("NotAuthenticated")
    }

    pub(crate) fn response(method: &'static str, message: impl Into<String>) -> Self {
        Self::Response {
            method,
            message: message.into(),
        }
    }
}

/// An error and its sources on one line (reqwest hides the TLS reason in the sources).
pub use ido_io::error_chain;

/// One `<METHODResponse>` element and the text it was parsed from.
#[derive(Debug)]
pub struct Response {
    /// The response document.
    pub src: String,
    /// The `<METHODResponse>` element (the first child of `<soapenv:Body>`).
    pub node: Node,
    /// Namespace prefixes declared above `node` (on the envelope and body), as `(p, uri)`.
    pub outer_decls: Vec<(String, String)>,
}

impl Response {
    /// `returnval`, if any.
    pub fn returnval(&self) -> Option<&Node> {
        self.node.child("returnval")
    }

    /// The source text of `n`'s content (`n` must come from this response).
    pub fn raw_inner(&self, n: &Node) -> &str {
        self.src.get(n.inner.clone()).unwrap_or_default()
    }
}

/// Sends SOAP calls to one endpoint with one session cookie.
#[derive(Debug)]
pub struct Transport {
    http: reqwest::Client,
    url: Url,
    cookie: Mutex<Option<String>>,
}

impl Transport {
    /// A transport for the SDK endpoint `url` (e.g. `https://vc.example/sdk`).
    pub fn new(http: reqwest::Client, url: Url) -> Self {
        Self {
            http,
            url,
            cookie: Mutex::new(None),
        }
    }

    /// The SDK endpoint.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The HTTP client (same TLS settings for SOAP and NFC uploads).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The session cookie pair (`vmware_soap_session=…`) as received, if any.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().expect("cookie lock").clone()
    }

    /// Forgets the session cookie.
    pub fn clear_cookie(&self) {
        *self.cookie.lock().expect("cookie lock") = None;
    }

    /// POSTs `body` (the content of `<soapenv:Body>`) and returns the response element, or
    /// the fault. `method` names the call in errors and logs; the body is never logged.
    pub async fn call(&self, method: &'static str, body: &str) -> Result<Response, SoapError> {
        tracing::trace!(method, url = %self.url, "vSphere call");
        let mut req = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
            .header("SOAPAction", SOAP_ACTION)
            .body(xml::envelope(body));
        if let Some(c) = self.cookie() {
            let v = HeaderValue::from_str(&c)
                .map_err(|_| SoapError::response(method, "session cookie is not a valid header value"))?;
            req = req.header(COOKIE, v);
        }
        let resp = req.send().await.map_err(|e| SoapError::Transport {
            method,
            message: error_chain(&e),
        })?;
        for v in resp.headers().get_all(SET_COOKIE) {
            if let Some(pair) = v.to_str().ok().and_then(session_cookie) {
                *self.cookie.lock().expect("cookie lock") = Some(pair.to_string());
            }
        }
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| SoapError::Transport {
            method,
            message: error_chain(&e),
        })?;
        if bytes.len() > MAX_RESPONSE {
            return Err(SoapError::response(
                method,
                format!("response of {} bytes is too large", bytes.len()),
            ));
        }
        parse_response(method, status, bytes.to_vec())
    }
}

/// The `vmware_soap_session=…` pair of a `Set-Cookie` value, exactly as sent.
pub fn session_cookie(set_cookie: &str) -> Option<&str> {
    let pair = set_cookie.split(';').next()?.trim();
    let (name, _) = pair.split_once('=')?;
    (name.trim() == SESSION_COOKIE).then_some(pair)
}

/// Turns an HTTP answer (its status and body) into the response element or an error.
pub fn parse_response(method: &'static str, status: u16, body: Vec<u8>) -> Result<Response, SoapError> {
    let parsed = String::from_utf8(body)
        .map_err(|_| "response is not UTF-8".to_string())
        .and_then(|s| Node::parse(&s).map(|n| (s, n)).map_err(|e| e.to_string()));
    let (src, root) = match parsed {
        Ok(p) => p,
        Err(e) if (200..300).contains(&status) => return Err(SoapError::response(method, e)),
        Err(_) => {
            return Err(SoapError::Http {
                method,
                status,
                message: http_reason(status),
            });
        }
    };
    let body = (root.name == "Envelope")
        .then(|| root.children.iter().find(|c| c.name == "Body"))
        .flatten()
        .and_then(|b| b.children.first());
    let Some(body) = body else {
        if !(200..300).contains(&status) {
            return Err(SoapError::Http {
                method,
                status,
                message: http_reason(status),
            });
        }
        return Err(SoapError::response(method, "no SOAP body"));
    };
    if body.name == "Fault" {
        return Err(SoapError::Fault {
            method,
            fault: Fault::from_soap(body),
        });
    }
    if !(200..300).contains(&status) {
        return Err(SoapError::Http {
            method,
            status,
            message: http_reason(status),
        });
    }
    let mut outer_decls = root.ns_decls.clone();
    if let Some(b) = root.children.iter().find(|c| c.name == "Body") {
        outer_decls.extend(b.ns_decls.iter().cloned());
    }
    let node = body.clone();
    Ok(Response {
        src,
        node,
        outer_decls,
    })
}

fn http_reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsphere::xml::NodeExt as _;

    const VCSIM_FAULT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

    fn fault_of(src: &str) -> Fault {
        match parse_response("Login", 500, src.into()) {
            Err(SoapError::Fault { fault, .. }) => fault,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fault_kind_from_detail_xsi_type() {
        let f = fault_of(VCSIM_FAULT);
        assert_eq!(
            f,
            Fault {
                kind: "InvalidLogin".into(),
                message: "Login failure".into()
            }
        );
        assert_eq!(f.to_string(), "Login failure (InvalidLogin)");
    }

    #[test]
    fn fault_kind_with_vcsim_prefix_and_fields() {
        let src = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The object has already been deleted or has not been completely created</faultstring><detail><ManagedObjectNotFoundFault xmlns="urn:vim25" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ManagedObjectNotFound"><obj type="VirtualMachine">vm-1</obj></ManagedObjectNotFoundFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let f = fault_of(src);
        assert!(f.is("ManagedObjectNotFound"), "{f:?}");
    }

    #[test]
    fn fault_kind_from_element_name_or_code() {
        let src = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>session is not authenticated</faultstring><detail><NotAuthenticatedFault xmlns="urn:vim25"><object type="Folder">group-d1</object><privilegeId>System.View</privilegeId></NotAuthenticatedFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        let err = parse_response("CurrentTime", 500, src.into()).unwrap_err();
        assert!(err.is_not_authenticated(), "{err:?}");
        let src = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode><faultstring>bad</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(fault_of(src).kind, "Client");
    }

    #[test]
    fn localized_method_fault() {
        let src = r#"<error xmlns="urn:vim25"><fault xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="OvfUnsupportedType"><lineNumber>3</lineNumber></fault><localizedMessage>Unsupported hardware family &apos;vmx-99&apos;.</localizedMessage></error>"#;
        let f = Fault::from_localized(&Node::parse(src).unwrap());
        assert_eq!(f.kind, "OvfUnsupportedType");
        assert_eq!(f.message, "Unsupported hardware family 'vmx-99'.");
    }

    #[test]
    fn responses_and_http_errors() {
        let ok = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><FindByInventoryPathResponse xmlns="urn:vim25"><returnval type="Folder">folder-3</returnval></FindByInventoryPathResponse></soapenv:Body></soapenv:Envelope>"#;
        let r = parse_response("FindByInventoryPath", 200, ok.into()).unwrap();
        assert_eq!(r.returnval().and_then(Node::moref).unwrap().value, "folder-3");
        assert_eq!(r.raw_inner(r.returnval().unwrap()), "folder-3");
        let e = parse_response("X", 405, "Method Not Allowed".into()).unwrap_err();
        assert!(matches!(e, SoapError::Http { status: 405, .. }), "{e:?}");
        let e = parse_response("X", 200, "<html>".into()).unwrap_err();
        assert!(matches!(e, SoapError::Response { .. }), "{e:?}");
    }

    #[test]
    fn session_cookie_is_kept_verbatim() {
        assert_eq!(
            session_cookie("vmware_soap_session=abc-1; HttpOnly"),
            Some("vmware_soap_session=abc-1")
        );
        assert_eq!(
            session_cookie("vmware_soap_session=\"52a9\"; Path=/; HttpOnly; Secure"),
            Some("vmware_soap_session=\"52a9\"")
        );
        assert_eq!(session_cookie("other=1; Path=/"), None);
    }
}
