//! ido's mark on the VMs it imports, and telling ido's VMs from anyone else's.
//!
//! The mark is two `config.extraConfig` entries that [`mark_import_spec`] writes into the
//! import spec's `configSpec` before `ImportVApp`, so the VM carries it from the moment it
//! exists (a half-made VM of a crashed import included):
//!
//! | key | value |
//! |---|---|
//! | `ido.managed-by` ([`MANAGED_BY_KEY`]) | `ido` |
//! | `ido.image` ([`IMAGE_KEY`]) | the image name (for people; not checked) |
//!
//! [`ownership`] reads it back: only a VM with `ido.managed-by = ido` is ever destroyed by
//! ido, and never while it is powered on. Anything else at the template's path is a name
//! clash. A VM made before ido set the mark is adopted by setting the key (see
//! `docs/architecture.md`).

use super::{
    client::Client,
    soap::SoapError,
    xml::{MoRef, Node, escape},
};
use crate::{MANAGED_BY_KEY, MANAGED_BY_VALUE};

/// The extraConfig key holding the image name.
pub const IMAGE_KEY: &str = "ido.image";

/// The fields of `VirtualMachineConfigSpec` that come before `extraConfig`, in WSDL order
/// (vim25 8.0). `extraConfig` goes after the last of them present; later fields (new ones are
/// added at the end) stay after it.
const BEFORE_EXTRA_CONFIG: &[&str] = &[
    "changeVersion",
    "name",
    "version",
    "createDate",
    "uuid",
    "instanceUuid",
    "npivNodeWorldWideName",
    "npivPortWorldWideName",
    "npivWorldWideNameType",
    "npivDesiredNodeWwns",
    "npivDesiredPortWwns",
    "npivTemporaryDisabled",
    "npivOnNonRdmDisks",
    "npivWorldWideNameOp",
    "locationId",
    "guestId",
    "alternateGuestName",
    "annotation",
    "files",
    "tools",
    "flags",
    "consolePreferences",
    "powerOpInfo",
    "rebootPowerOff",
    "numCPUs",
    "vcpuConfig",
    "numCoresPerSocket",
    "memoryMB",
    "memoryHotAddEnabled",
    "cpuHotAddEnabled",
    "cpuHotRemoveEnabled",
    "virtualICH7MPresent",
    "virtualSMCPresent",
    "deviceChange",
    "cpuAllocation",
    "memoryAllocation",
    "latencySensitivity",
    "cpuAffinity",
    "memoryAffinity",
    "networkShaper",
    "cpuFeatureMask",
    "extraConfig",
];

/// The extraConfig entries of ido's mark for `image`.
pub fn mark_entries(image: &str) -> [(&'static str, String); 2] {
    [
        (MANAGED_BY_KEY, MANAGED_BY_VALUE.to_string()),
        (IMAGE_KEY, image.to_string()),
    ]
}

/// Why an import spec cannot carry ido's mark.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("import spec is not XML: {0}")]
    Xml(#[from] ido_io::xml::XmlError),
    #[error("the import spec ({0}) has no configSpec: only OVFs of one virtual machine can be imported")]
    NotOneVm(String),
    #[error("the OVF sets extraConfig {0:?} itself, which ido reserves for its mark")]
    Reserved(String),
}

/// `spec_xml` (a spliced `<spec xsi:type="VirtualMachineImportSpec">`, see
/// [`ImportSpec::spec_xml`](super::lease::ImportSpec::spec_xml)) with ido's mark for `image`
/// added to its `configSpec.extraConfig`, in WSDL order. Errors when there is no `configSpec`
/// (a vApp's import spec) or the OVF itself sets one of ido's keys.
pub fn mark_import_spec(spec_xml: &str, image: &str) -> Result<String, MarkError> {
    let root = Node::parse(spec_xml)?;
    let cs = root
        .child("configSpec")
        .ok_or_else(|| MarkError::NotOneVm(root.type_name().unwrap_or("untyped").to_string()))?;
    let entries = mark_entries(image);
    for (key, _) in option_values(cs.children_named("extraConfig")) {
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(MarkError::Reserved(key.to_string()));
        }
    }
    let at = match cs
        .children
        .iter()
        .rev()
        .find(|c| BEFORE_EXTRA_CONFIG.contains(&c.name.as_str()))
    {
        Some(c) => end_of(spec_xml, c),
        None => cs.inner.start,
    };
    let mut add = String::new();
    for (key, value) in &entries {
        add.push_str(&format!(
            concat!(
                "<extraConfig><key>{}</key>",
                r#"<value xmlns:xsd="http://www.w3.org/2001/XMLSchema" xsi:type="xsd:string">{}</value>"#,
                "</extraConfig>"
            ),
            escape(key),
            escape(value)
        ));
    }
    Ok(format!("{}{add}{}", &spec_xml[..at], &spec_xml[at..]))
}

/// The byte offset just past the end tag of `n` in `src`.
fn end_of(src: &str, n: &Node) -> usize {
    let empty_element = n.inner.is_empty() && src[..n.inner.start].ends_with("/>");
    if empty_element {
        return n.inner.end;
    }
    src[n.inner.end..]
        .find('>')
        .map_or(src.len(), |i| n.inner.end + i + 1)
}

/// `(key, value)` of `OptionValue` elements (extraConfig entries, or the children of an
/// `ArrayOfOptionValue` property value).
fn option_values<'a>(nodes: impl Iterator<Item = &'a Node>) -> impl Iterator<Item = (String, String)> {
    nodes.map(|o| {
        let text = |p: &str| o.text_at(p).unwrap_or_default().trim().to_string();
        (text("key"), text("value"))
    })
}

/// Whose the object at a template's path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// A VM carrying ido's mark (and not powered on): ido may delete or replace it.
    Ours {
        /// Whether it is marked as a template (else: a leftover of a failed import).
        template: bool,
    },
    /// Anything else; what was found, for the name clash's message.
    Clash(String),
}

/// Reads whose `obj` is; `None` when it vanished meanwhile.
pub async fn ownership(client: &Client, obj: &MoRef) -> Result<Option<Ownership>, SoapError> {
    if obj.kind != "VirtualMachine" {
        return Ok(Some(Ownership::Clash(format!("a {} (not a VM)", obj.kind))));
    }
    let paths = [
        "config.template",
        "config.extraConfig",
        "config.annotation",
        "runtime.powerState",
    ];
    let o = match client.properties(obj, &paths).await {
        Err(e) if e.is_fault("ManagedObjectNotFound") => return Ok(None),
        r => r?,
    };
    if o.obj.is_none() {
        return Ok(None);
    }
    let template = o.bool("config.template") == Some(true);
    let powered_on = o.text("runtime.powerState") == Some("poweredOn");
    let mut marked = false;
    let mut image = None;
    if let Some(v) = o.get("config.extraConfig") {
        for (key, value) in option_values(v.children.iter()) {
            match key.as_str() {
                MANAGED_BY_KEY => marked |= value == MANAGED_BY_VALUE,
                IMAGE_KEY => image = Some(value),
                _ => {}
            }
        }
    }
    let what = if template {
        "a template"
    } else if powered_on {
        "a powered-on VM"
    } else {
        "a VM"
    };
    Ok(Some(match (marked, powered_on) {
        (true, false) => Ownership::Ours { template },
        (true, true) => Ownership::Clash(format!(
            "{what} carrying ido's mark{}: ido never destroys a running VM",
            image.map(|i| format!(" (image {i:?})")).unwrap_or_default()
        )),
        (false, _) => {
            let note = o
                .text("config.annotation")
                .filter(|a| !a.is_empty())
                .map(|a| format!(", annotated {:?}", a.chars().take(80).collect::<String>()))
                .unwrap_or_default();
            Ownership::Clash(format!(
                "{what} without ido's mark (extraConfig {MANAGED_BY_KEY}={MANAGED_BY_VALUE}){note}"
            ))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsphere::xml::NodeExt as _;

    const SPEC: &str = concat!(
        r#"<spec xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualMachineImportSpec">"#,
        "<configSpec><name>t</name><numCPUs>2</numCPUs>",
        r#"<deviceChange xsi:type="VirtualDeviceConfigSpec"><operation>add</operation></deviceChange>"#,
        "<extraConfig><key>a</key><value>b</value></extraConfig>",
        "<bootOptions/><firmware>efi</firmware></configSpec>",
        r#"<resPoolEntity type="ResourcePool">r</resPoolEntity></spec>"#
    );

    fn names(xml: &str) -> Vec<String> {
        let n = Node::parse(xml).unwrap();
        n.child("configSpec")
            .unwrap()
            .children
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn the_mark_goes_after_the_last_field_before_extra_config() {
        let marked = mark_import_spec(SPEC, "img&1").unwrap();
        assert_eq!(
            names(&marked),
            [
                "name",
                "numCPUs",
                "deviceChange",
                "extraConfig",
                "extraConfig",
                "extraConfig",
                "bootOptions",
                "firmware"
            ]
        );
        let n = Node::parse(&marked).unwrap();
        let cs = n.child("configSpec").unwrap();
        let entries: Vec<_> = option_values(cs.children_named("extraConfig")).collect();
        assert_eq!(
            entries,
            [
                ("a".to_string(), "b".to_string()),
                (MANAGED_BY_KEY.into(), MANAGED_BY_VALUE.into()),
                (IMAGE_KEY.into(), "img&1".into())
            ]
        );
        let v = cs
            .children_named("extraConfig")
            .nth(1)
            .unwrap()
            .child("value")
            .unwrap();
        assert_eq!(v.type_name(), Some("string"));
        assert_eq!(
            n.child("resPoolEntity").and_then(Node::moref),
            Some(MoRef::new("ResourcePool", "r"))
        );
    }

    #[test]
    fn empty_elements_and_bare_config_specs() {
        let spec = r#"<spec xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><configSpec><name/><firmware>bios</firmware></configSpec></spec>"#;
        let marked = mark_import_spec(spec, "i").unwrap();
        assert_eq!(names(&marked), ["name", "extraConfig", "extraConfig", "firmware"]);
        let spec = r#"<spec xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><configSpec><bootOptions></bootOptions></configSpec></spec>"#;
        let marked = mark_import_spec(spec, "i").unwrap();
        assert_eq!(names(&marked), ["extraConfig", "extraConfig", "bootOptions"]);
    }

    #[test]
    fn vapps_and_reserved_keys_are_refused() {
        let vapp = r#"<spec xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualAppImportSpec"><name>v</name></spec>"#;
        let e = mark_import_spec(vapp, "i").unwrap_err().to_string();
        assert!(e.contains("VirtualAppImportSpec"), "{e}");
        let own = SPEC.replace("<key>a</key>", "<key>ido.managed-by</key>");
        let e = mark_import_spec(&own, "i").unwrap_err().to_string();
        assert!(e.contains("ido.managed-by"), "{e}");
    }
}
