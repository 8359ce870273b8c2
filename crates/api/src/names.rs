//! Object names as the API server validates them.
//!
//! Names become file paths (`ido run`'s state directory), S3 keys, template names and
//! labels, so every name is checked at each entry (manifests, configuration, the CLI, and
//! objects read from a store) before anything is built from it. The rules are the API
//! server's own: a DNS-1123 subdomain for object names, a DNS-1123 label for namespaces.

/// Longest DNS-1123 subdomain (object names).
pub const SUBDOMAIN_MAX: usize = 253;
/// Longest DNS-1123 label (namespaces, label-shaped names).
pub const LABEL_MAX: usize = 63;

/// A name that breaks the rules, with what it is and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field} {value}: {reason}")]
pub struct InvalidName {
    /// The object or input holding the name, e.g. `Release "vsphere-1.0.0"`.
    pub object: String,
    /// The field, e.g. `metadata.name`.
    pub field: String,
    /// The value, quoted with control characters escaped.
    pub value: String,
    /// Which rule it breaks.
    pub reason: String,
}

impl InvalidName {
    fn new(object: &str, field: &str, value: &str, reason: String) -> Self {
        Self {
            object: object.to_string(),
            field: field.to_string(),
            value: quote(value),
            reason,
        }
    }
}

/// `value` in double quotes with control characters escaped and long values cut, for messages.
pub fn quote(value: &str) -> String {
    const SHOWN: usize = 80;
    let cut: String = value.chars().take(SHOWN).collect();
    let more = if value.chars().count() > SHOWN { "…" } else { "" };
    format!("{:?}{more}", cut)
}

fn label_reason(part: &str) -> Option<String> {
    let b = part.as_bytes();
    if b.is_empty() {
        return Some("has an empty part (must not start or end with '.', nor hold '..')".into());
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "holds {c:?}: only lower-case letters, digits, '-' and '.' are allowed"
        ));
    }
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Some("must start and end with a lower-case letter or digit".into());
    }
    None
}

/// Why `value` is not a DNS-1123 subdomain (`None` when it is one).
pub fn subdomain_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".into());
    }
    if value.len() > SUBDOMAIN_MAX {
        return Some(format!(
            "is {} bytes long, at most {SUBDOMAIN_MAX} are allowed",
            value.len()
        ));
    }
    value.split('.').find_map(label_reason)
}

/// Why `value` is not a DNS-1123 label (`None` when it is one).
pub fn label_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".into());
    }
    if value.len() > LABEL_MAX {
        return Some(format!(
            "is {} bytes long, at most {LABEL_MAX} are allowed",
            value.len()
        ));
    }
    if value.contains('.') {
        return Some("holds '.': only lower-case letters, digits and '-' are allowed".into());
    }
    label_reason(value)
}

/// Checks that `value` (the `field` of `object`) is a DNS-1123 subdomain.
pub fn check_subdomain(object: &str, field: &str, value: &str) -> Result<(), InvalidName> {
    match subdomain_error(value) {
        None => Ok(()),
        Some(reason) => Err(InvalidName::new(object, field, value, reason)),
    }
}

/// Checks that `value` (the `field` of `object`) is a DNS-1123 label.
pub fn check_label(object: &str, field: &str, value: &str) -> Result<(), InvalidName> {
    match label_error(value) {
        None => Ok(()),
        Some(reason) => Err(InvalidName::new(object, field, value, reason)),
    }
}

/// Checks an object's `metadata.name` (a subdomain) and `metadata.namespace` (a label).
pub fn check_meta(kind: &str, name: Option<&str>, namespace: Option<&str>) -> Result<(), InvalidName> {
    let name = name.unwrap_or_default();
    if name.is_empty() {
        return Err(InvalidName::new(
            kind,
            "metadata.name",
            name,
            "is required".into(),
        ));
    }
    let object = format!("{kind} {}", quote(name));
    check_subdomain(&object, "metadata.name", name)?;
    if let Some(ns) = namespace {
        check_label(&object, "metadata.namespace", ns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_as_the_api_server_has_them() {
        for ok in [
            "a",
            "vsphere-30.1.0",
            "capv-flatcar-stable-1.2.3-kube-1.30.4-tooling-1.18.1-gs",
            "0",
            "a.b-c.d",
        ] {
            assert_eq!(subdomain_error(ok), None, "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "A",
            "a/b",
            "..",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "a_b",
            "vsphere-49.0.0/../../../../tmp/victim/config",
            "a\nb",
            "ä",
            long.as_str(),
        ] {
            assert!(subdomain_error(bad).is_some(), "{bad:?}");
        }
        assert_eq!(subdomain_error(&"a".repeat(253)), None);
    }

    #[test]
    fn labels_refuse_dots_and_long_names() {
        assert_eq!(label_error("giantswarm"), None);
        assert!(label_error("a.b").is_some());
        assert!(label_error(&"a".repeat(64)).is_some());
        assert_eq!(label_error(&"a".repeat(63)), None);
    }

    #[test]
    fn errors_name_object_field_and_value_with_control_characters_escaped() {
        let e = check_meta("Release", Some("x/../y\x1b[2J"), None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("Release \"x/../y\\u{1b}[2J\": metadata.name \"x/../y\\u{1b}[2J\": holds '/'"),
            "{msg}"
        );
        assert!(!msg.contains('\x1b'));
        let e = check_meta("NodeImage", Some("ok"), Some("../etc")).unwrap_err();
        assert_eq!(e.field, "metadata.namespace");
        assert_eq!(e.value, "\"../etc\"");
    }
}
