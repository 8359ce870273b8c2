//! `ido cache`: the workload image cache's records (CachedImages) of a state directory,
//! one row per source image: where its copy is, whether it is there, and why it is kept
//! (the workloads that run it, or when it goes unused).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Args;
use ido_api::CachedImage;
use ido_controllers::{
    Settings,
    file_store::FileStore,
    imagecache::{cached::expires_at, policy},
    run::default_state_dir,
    store::Store,
};
use jiff::Timestamp;

/// `ido cache`.
#[derive(Args)]
pub(crate) struct CacheArgs {
    /// State directory (the one `ido run --state` keeps; default `.ido/state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Only the images of this policy: NAME (a ClusterImageCachePolicy), NAMESPACE/NAME (an
    /// ImageCachePolicy), or as CachedImages name it (`ClusterImageCachePolicy/NAME`,
    /// `ImageCachePolicy/NAMESPACE/NAME`).
    #[arg(long)]
    policy: Option<String>,
    /// Workloads named per image (the others are counted).
    #[arg(long, default_value_t = 3)]
    workloads: usize,
}

/// Whether the record of policy `reference` is selected by `--policy want`.
fn policy_matches(reference: &str, want: &str) -> bool {
    reference == want || reference.split_once('/').is_some_and(|(_, rest)| rest == want)
}

/// Prints the CachedImages of the state directory, by source image.
pub(crate) async fn cache_cmd(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let state = args.state.unwrap_or_else(default_state_dir);
    if !state.is_dir() {
        bail!(
            "no state directory at {} (give the one of `ido run --state`)",
            state.display()
        );
    }
    // Read only: every object file is replaced whole (written aside, then renamed), so a
    // running `ido run` need not be waited for.
    let store = FileStore::open(&state).with_context(|| format!("opening state {}", state.display()))?;
    let mut records: Vec<CachedImage> = store
        .list::<CachedImage>()
        .await?
        .into_iter()
        .filter(|c| {
            args.policy
                .as_deref()
                .is_none_or(|want| policy_matches(&c.spec.policy, want))
        })
        .collect();
    if records.is_empty() {
        match &args.policy {
            Some(p) => eprintln!("no cached image of policy {p} in {}", state.display()),
            None => eprintln!("no cached image in {}", state.display()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    records.sort_by(|a, b| a.spec.source.cmp(&b.spec.source));
    let now = Timestamp::now();
    let own = Settings::default().namespace;
    let mut rows = Vec::new();
    for c in &records {
        // When an unused copy is deleted: its policy's retention after the last use.
        let expires = match policy::find(&store, &c.spec.policy).await? {
            Some(p) => match p.compile(&own) {
                Ok(compiled) => Expiry::At(expires_at(c, &compiled)),
                Err(_) => Expiry::PolicyInvalid,
            },
            None => Expiry::PolicyGone,
        };
        rows.push(row(c, now, expires, args.workloads));
    }
    crate::cli::out(table(&rows))?;
    Ok(ExitCode::SUCCESS)
}

/// What the record's policy says of an unused copy.
enum Expiry {
    At(Option<Timestamp>),
    PolicyGone,
    PolicyInvalid,
}

const HEADERS: [&str; 7] = [
    "SOURCE",
    "COPY",
    "PHASE",
    "DIGEST",
    "LAST USED",
    "POLICY",
    "WORKLOADS",
];

fn row(c: &CachedImage, now: Timestamp, expires: Expiry, named: usize) -> [String; 7] {
    let st = c.status.clone().unwrap_or_default();
    let digest = st
        .digest
        .as_deref()
        .map(|d| {
            let hex = d.split_once(':').map_or(d, |(_, h)| h);
            hex.chars().take(12).collect()
        })
        .unwrap_or_else(|| "-".into());
    let last_used = st
        .last_used_time
        .map(|t| format!("{} ago", age(now.duration_since(t))))
        .unwrap_or_else(|| "-".into());
    let count = st.workloads.len().max(st.workload_count as usize);
    let why = if st.workloads.is_empty() {
        let left = match expires {
            Expiry::At(Some(t)) if t > now => format!("deleted in {}", age(t.duration_since(now))),
            Expiry::At(Some(_)) => "deleted at the next reconcile".into(),
            Expiry::At(None) => String::new(),
            Expiry::PolicyGone => format!("{} is gone: the record goes, the copy stays", c.spec.policy),
            Expiry::PolicyInvalid => format!("{} is invalid", c.spec.policy),
        };
        if left.is_empty() {
            "0: unused".to_string()
        } else {
            format!("0: unused, {left}")
        }
    } else {
        let mut names: Vec<String> = st
            .workloads
            .iter()
            .take(named)
            .map(|w| format!("{} {}/{}", w.kind, w.namespace, w.name))
            .collect();
        if count > names.len() {
            names.push(format!("+{} more", count - names.len()));
        }
        format!("{count}: {}", names.join(", "))
    };
    [
        c.spec.source.clone(),
        c.spec.target.clone(),
        format!("{:?}", st.phase),
        digest,
        last_used,
        c.spec.policy.clone(),
        why,
    ]
}

/// A duration as `45s`, `12m`, `5h`, `3d`, rounded down.
fn age(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Rows under their headers, columns two spaces apart (the last one unpadded).
fn table(rows: &[[String; 7]]) -> String {
    let mut widths = HEADERS.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(HEADERS);
    for r in rows {
        out += &line(r.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_in_full_or_without_their_kind() {
        let cluster = "ClusterImageCachePolicy/everything";
        let ns = "ImageCachePolicy/shop/team";
        assert!(policy_matches(cluster, cluster));
        assert!(policy_matches(cluster, "everything"));
        assert!(policy_matches(ns, "shop/team"));
        assert!(policy_matches(ns, ns));
        assert!(!policy_matches(ns, "team"));
        assert!(!policy_matches(cluster, "every"));
    }

    #[test]
    fn ages_round_down_to_their_unit() {
        let a = |s| age(jiff::SignedDuration::from_secs(s));
        assert_eq!(
            [
                a(0),
                a(119),
                a(120),
                a(7199),
                a(7200),
                a(47 * 3600 + 3599),
                a(48 * 3600)
            ],
            ["0s", "119s", "2m", "119m", "2h", "47h", "2d"]
        );
        assert_eq!(a(-5), "0s");
    }
}
