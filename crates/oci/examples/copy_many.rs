//! Batch copies through [`ido_oci::copy::copy_many`] in one process: the benchmark's ido side
//! for re-syncing a repository's tags and for copying many small images (the `ido` CLI copies
//! one reference per run).
//!
//! ```text
//! copy_many [--all] [--images N] [--src-tls-verify=false] [--dest-tls-verify=false] \
//!           sync SRC_REPO DST_REPO        # every tag of SRC_REPO to the same tag in DST_REPO
//! copy_many [flags] pairs SRC DST [SRC DST ...]
//! ```
//! Anonymous registries only (no `--authfile`); prints one line per copy and exits 1 if any
//! copy failed. `RUST_LOG` (e.g. `debug`) turns logs on, on stderr.

use std::{process::ExitCode, sync::Arc, time::Instant};

use ido_oci::{
    Reference,
    auth::AuthStore,
    copy::{Platforms, copy_many},
    registry::{DEFAULT_CONCURRENCY, Registry, TlsSettings},
    tags::list_tags,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn reference(s: &str) -> Result<Reference, BoxError> {
    Ok(ido_oci::reference::parse(
        s.strip_prefix("docker://").unwrap_or(s),
    )?)
}

#[tokio::main]
async fn main() -> ExitCode {
    // A binary chooses the TLS crypto provider (the library crates never install one).
    ido_testkit::install_crypto_provider();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
        let targets: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_default();
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(targets)
            .init();
    }
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line: flags, then the mode and its arguments.
struct Args {
    platforms: Platforms,
    images: usize,
    src_verify: bool,
    dst_verify: bool,
    rest: Vec<String>,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        platforms: Platforms::Host,
        images: DEFAULT_CONCURRENCY,
        src_verify: true,
        dst_verify: true,
        rest: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--all" => a.platforms = Platforms::All,
            "--images" => a.images = it.next().ok_or("--images needs a number")?.parse()?,
            "--src-tls-verify=false" => a.src_verify = false,
            "--dest-tls-verify=false" => a.dst_verify = false,
            _ => a.rest.push(arg),
        }
    }
    Ok(a)
}

async fn run() -> Result<bool, BoxError> {
    let args = args()?;
    let started = Instant::now();
    let (src, dst, pairs) = connect_pairs(&args).await?;
    let results = copy_many(&src, &dst, &pairs, &args.platforms, args.images).await;
    let (mut copied, mut skipped, mut failed) = (0, 0, 0);
    for ((s, d), r) in pairs.iter().zip(results) {
        match r {
            Ok(rep) if rep.skipped => {
                skipped += 1;
                println!("unchanged {} {}", d.whole(), rep.digest);
            }
            Ok(rep) => {
                copied += 1;
                println!(
                    "copied {} -> {} {} ({} blobs, {} bytes)",
                    s.whole(),
                    d.whole(),
                    rep.digest,
                    rep.blobs_copied,
                    rep.bytes
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("failed {} -> {}: {e}", s.whole(), d.whole());
            }
        }
    }
    println!(
        "{} images: {copied} copied, {skipped} unchanged, {failed} failed in {:.2?}",
        pairs.len(),
        started.elapsed()
    );
    Ok(failed == 0)
}

/// The two registries and the pairs to copy, from the mode: every tag of a repository
/// (`sync`), or the pairs given (`pairs`, all between the same two registries).
async fn connect_pairs(args: &Args) -> Result<(Registry, Registry, Vec<(Reference, Reference)>), BoxError> {
    let (mode, list) = args
        .rest
        .split_first()
        .ok_or("expected `sync` or `pairs` (see the source)")?;
    let tls = |verify| TlsSettings {
        verify,
        ca_bundle: None,
    };
    let auths = Arc::new(AuthStore::default());
    let connect = |r: Reference, verify| {
        let auths = auths.clone();
        async move { Registry::connect(r.resolve_registry(), &tls(verify), auths, DEFAULT_CONCURRENCY).await }
    };
    match (mode.as_str(), list) {
        ("sync", [s, d]) => {
            let (s, d) = (reference(s)?, reference(d)?);
            let src = connect(s.clone(), args.src_verify).await?;
            let dst = connect(d.clone(), args.dst_verify).await?;
            let tags = list_tags(&src, &s).await?;
            let at = |r: &Reference, t: &str| {
                Reference::with_tag(r.registry().into(), r.repository().into(), t.into())
            };
            let pairs = tags.iter().map(|t| (at(&s, t), at(&d, t))).collect::<Vec<_>>();
            Ok((src, dst, pairs))
        }
        ("pairs", list) if !list.is_empty() && list.len() % 2 == 0 => {
            let pairs = list
                .chunks(2)
                .map(|p| Ok((reference(&p[0])?, reference(&p[1])?)))
                .collect::<Result<Vec<_>, BoxError>>()?;
            let src = connect(pairs[0].0.clone(), args.src_verify).await?;
            let dst = connect(pairs[0].1.clone(), args.dst_verify).await?;
            for (s, d) in &pairs {
                if s.resolve_registry() != src.host || d.resolve_registry() != dst.host {
                    return Err(
                        "every pair must have the first pair's source and destination registries".into(),
                    );
                }
            }
            Ok((src, dst, pairs))
        }
        _ => Err("expected `sync SRC_REPO DST_REPO` or `pairs SRC DST [SRC DST ...]`".into()),
    }
}
