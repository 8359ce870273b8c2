//! Parameter formats of the qemu endpoints, as PVE's JSON schema checks them: VM config
//! keys, DNS names, tags, `netN` and disk property strings.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::server::{PveError, Req};

/// VM config keys the fake accepts (a trailing `N` means a numbered family).
pub(super) const CONFIG_KEYS: &[&str] = &[
    "name",
    "memory",
    "cores",
    "sockets",
    "scsihw",
    "bios",
    "agent",
    "netN",
    "scsiN",
    "virtioN",
    "sataN",
    "ideN",
    "boot",
    "tags",
    "ostype",
    "description",
    "cpu",
    "vga",
    "serialN",
    "onboot",
    "numa",
    "balloon",
    "machine",
];

/// Keys whose values `GET …/config` shows as JSON numbers.
const INT_KEYS: &[&str] = &["cores", "sockets", "numa", "onboot", "balloon", "template"];

/// Controller types of `scsihw`.
const SCSIHW: &[&str] = &[
    "lsi",
    "lsi53c810",
    "virtio-scsi-pci",
    "virtio-scsi-single",
    "megasas",
    "pvscsi",
];

/// NIC models of `netN`.
const NET_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// A disk config value, checked but not yet applied.
#[derive(Clone, Debug)]
pub(super) struct DiskPlan {
    /// Target storage id.
    pub storage: String,
    /// What to put there.
    pub alloc: Alloc,
    /// Options kept in the config (`discard=on`, …).
    pub opts: Vec<String>,
}

/// Where a disk's volume comes from.
#[derive(Clone, Debug)]
pub(super) enum Alloc {
    /// `<storage>:0,import-from=<src storage>:<volume>`.
    Import { storage: String, volume: String },
    /// `<storage>:<GiB>`: a new empty volume.
    New(u64),
    /// `<storage>:<volume>`: an existing volume.
    Existing(String),
}

/// One checked config change.
#[derive(Clone, Debug)]
pub(super) enum Change {
    /// A plain key and its value as the config shows it.
    Set(String, Value),
    /// A disk key.
    Disk(String, DiskPlan),
    /// A key listed in `delete`.
    Delete(String),
}

/// Whether `k` is a disk key (`scsi0`, `virtio1`, …).
pub(super) fn is_disk_key(k: &str) -> bool {
    ["scsi", "virtio", "sata", "ide"].iter().any(|p| {
        k.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// PVE's `dns-name` format: dot-separated labels of `[A-Za-z0-9-]`, alphanumeric at both ends.
pub(super) fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// PVE's `pve-tag` format, for every tag of a `;`/`,`/space separated list.
pub(super) fn is_tag_list(s: &str) -> bool {
    s.split([';', ',', ' ']).filter(|t| !t.is_empty()).all(|t| {
        let b = t.as_bytes();
        (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.'))
    })
}

/// A tag list as PVE stores it (`PVE::GuestHelpers::get_unique_tags`): split on `;`, `,` and
/// spaces, duplicates dropped, joined with `;`.
pub(super) fn unique_tags(s: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for t in s.split([';', ',', ' ']).filter(|t| !t.is_empty()) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.join(";")
}

/// Checks every config key of `req` and turns it into a [`Change`]; `vmid` numbers new MACs.
pub(super) fn config_changes(req: &Req, vmid: u32) -> Result<Vec<Change>, PveError> {
    let mut out = Vec::new();
    let mut errors = BTreeMap::new();
    for (k, v) in &req.params {
        let base = k.trim_end_matches(|c: char| c.is_ascii_digit());
        let r = match base {
            "name" if !is_dns_name(v) => {
                Err("invalid format - value does not look like a valid DNS name".into())
            }
            "memory" => int_value(v, 16).map(|_| json!(v)),
            "cores" | "sockets" => int_value(v, 1).map(|n| json!(n)),
            "scsihw" => one_of(v, SCSIHW),
            "bios" => one_of(v, &["seabios", "ovmf"]),
            "agent" if !(v == "0" || v == "1" || v.starts_with("enabled=") || v.starts_with("1,")) => Err(
                format!("invalid format - value '{v}' does not match the agent format"),
            ),
            "tags" if !is_tag_list(v) => Err(format!("invalid format - invalid tag '{v}'")),
            "tags" => Ok(json!(unique_tags(v))),
            "net" => net_value(v, vmid, k).map(|s| json!(s)),
            "boot" => boot_value(v).map(|_| json!(v)),
            _ if is_disk_key(k) => match disk_plan(v) {
                Ok(plan) => {
                    out.push(Change::Disk(k.clone(), plan));
                    continue;
                }
                Err(e) => Err(e),
            },
            "delete" => {
                for d in v.split([',', ';', ' ']).filter(|d| !d.is_empty()) {
                    out.push(Change::Delete(d.to_string()));
                }
                continue;
            }
            _ if CONFIG_KEYS.contains(&base) || CONFIG_KEYS.contains(&format!("{base}N").as_str()) => {
                Ok(if INT_KEYS.contains(&base) {
                    v.parse::<i64>().map(|n| json!(n)).unwrap_or_else(|_| json!(v))
                } else {
                    json!(v)
                })
            }
            _ => continue, // not a config key (vmid, digest, …): the endpoint's own check
        };
        match r {
            Ok(value) => out.push(Change::Set(k.clone(), value)),
            Err(e) => {
                errors.insert(k.clone(), e);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PveError::params(errors))
    }
}

/// An integer ≥ `min`.
fn int_value(v: &str, min: i64) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("value must have a minimum value of {min}")),
        Err(_) => Err(format!("type check ('integer') failed - got '{v}'")),
    }
}

/// One of an enumeration.
fn one_of(v: &str, allowed: &[&str]) -> Result<Value, String> {
    if allowed.contains(&v) {
        Ok(json!(v))
    } else {
        Err(format!(
            "value '{v}' does not have a value in the enumeration '{}'",
            allowed.join(", ")
        ))
    }
}

/// `netN`: `<model>[=<mac>],bridge=<br>[,…]`; a missing MAC is generated.
fn net_value(v: &str, vmid: u32, key: &str) -> Result<String, String> {
    let mut parts = v.split(',');
    let first = parts.next().unwrap_or_default();
    let (model, mac) = match first.split_once('=') {
        Some(("model", m)) => (m, None),
        Some((m, mac)) => (m, Some(mac.to_string())),
        None => (first, None),
    };
    if !NET_MODELS.contains(&model) {
        return Err(format!(
            "invalid format - format error\n{key}.model: value '{model}' does not have a value in the enumeration"
        ));
    }
    let mut rest = Vec::new();
    for p in parts {
        match p.split_once('=') {
            Some((
                "bridge" | "firewall" | "tag" | "mtu" | "rate" | "queues" | "link_down" | "macaddr",
                _,
            )) => rest.push(p),
            _ => {
                return Err(format!(
                    "invalid format - format error\n{key}: unknown option '{p}'"
                ));
            }
        }
    }
    let n: u32 = key[3..].parse().unwrap_or(0);
    let mac = mac.unwrap_or_else(|| {
        format!(
            "BC:24:11:{:02X}:{:02X}:{:02X}",
            (vmid >> 8) & 0xff,
            vmid & 0xff,
            n
        )
    });
    Ok(std::iter::once(format!("{model}={mac}"))
        .chain(rest.into_iter().map(str::to_string))
        .collect::<Vec<_>>()
        .join(","))
}

/// `boot`: `order=<dev>[;<dev>…]` (or the legacy `c`/`d`/`n` letters).
fn boot_value(v: &str) -> Result<(), String> {
    if let Some(order) = v.strip_prefix("order=") {
        for dev in order.split(';') {
            if !(is_disk_key(dev) || dev.starts_with("net")) {
                return Err(format!(
                    "invalid format - format error\nboot.order: invalid boot device '{dev}'"
                ));
            }
        }
        return Ok(());
    }
    if !v.is_empty() && v.bytes().all(|b| matches!(b, b'a' | b'c' | b'd' | b'n')) {
        return Ok(());
    }
    Err(format!(
        "invalid format - format error\nboot: invalid value '{v}'"
    ))
}

/// Parses a disk property string.
fn disk_plan(v: &str) -> Result<DiskPlan, String> {
    let mut parts = v.split(',');
    let first = parts.next().unwrap_or_default();
    let first = first.strip_prefix("file=").unwrap_or(first);
    let mut import = None;
    let mut opts = Vec::new();
    for p in parts {
        match p.split_once('=') {
            Some(("import-from", src)) => import = Some(src.to_string()),
            Some(("format", _)) => {}
            Some((_, _)) => opts.push(p.to_string()),
            None => return Err(format!("invalid format - format error\nunknown option '{p}'")),
        }
    }
    let Some((storage, vol)) = first.split_once(':') else {
        return Err("invalid format - unable to parse volume ID".into());
    };
    let alloc = match (import, vol.parse::<u64>()) {
        (Some(src), Ok(0)) => {
            let (s, volume) = src
                .split_once(':')
                .ok_or_else(|| format!("invalid format - unable to parse volume ID '{src}'"))?;
            Alloc::Import {
                storage: s.into(),
                volume: volume.into(),
            }
        }
        (Some(_), _) => {
            return Err(
                "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>".into(),
            );
        }
        (None, Ok(gib)) => Alloc::New(gib << 30),
        (None, Err(_)) => Alloc::Existing(vol.into()),
    };
    Ok(DiskPlan {
        storage: storage.into(),
        alloc,
        opts,
    })
}
