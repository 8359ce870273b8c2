//! Command-line interface: `ido run`, `ido operator`, `ido crds`, `ido cache`, …

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::field::MakeExt as _;

use crate::signals::{CLEANUP_LIMIT, Signals, Stop};
use ido_controllers::{
    config::Config,
    file_store::{FileStore, StateLock},
    run::{RunOptions, applied_keys, apply_desired, default_state_dir, load_manifests, run},
};

#[derive(Parser)]
#[command(name = "ido", version, about = "Gets images to where clusters need them.")]
pub(crate) struct Cli {
    /// Log filter: a level, or `target=level` pairs apart by commas, e.g. `info,ido_providers=debug`. Default: $IDO_LOG,
    /// else $RUST_LOG, else `info`.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Reconcile manifests against real providers without a cluster (file-backed state).
    Run(RunArgs),
    /// Run the controllers in a Kubernetes cluster.
    Operator(OperatorArgs),
    /// Copy an image (or a whole index) between registries, byte-exact.
    Copy(CopyArgs),
    /// List a repository's tags (optionally matching a pattern), lowest version first.
    Tags(crate::sync::TagsArgs),
    /// Sync ImageSync manifests (and the Secrets and ConfigMaps they reference) once, in-process.
    Sync(crate::sync::SyncArgs),
    /// Import a disk image (file, `-`, http(s); gzip/xz/zstd/bzip2/tar; raw/ISO/qcow2) into a raw file or block device.
    Import(crate::import::ImportArgs),
    /// Build an image from a Dockerfile with buildah on this machine, for one or more
    /// platforms (`FROM scratch` images cross-build without emulation).
    Build(crate::build::BuildArgs),
    /// Upload a local disk image into a DiskImport of a cluster (its source `upload`),
    /// creating it with --size; resumes after a cut.
    Upload(crate::upload::client::UploadArgs),
    /// Serve one upload into a file or device (the upload pod of a DiskImport).
    UploadServer(crate::upload::server::ServerArgs),
    /// Print a token for an upload server started by hand (its --key-file), for curl.
    UploadToken(crate::upload::server::TokenArgs),
    /// Sends a volume's disk to the upload pod of a DiskImport that clones it from another
    /// namespace (run by the operator's clone Jobs).
    #[command(hide = true)]
    CloneSend(crate::upload::client::SendArgs),
    /// Print the CustomResourceDefinitions (YAML): ido's own; with --compat also the kinds
    /// ido serves for other projects' users (image-operator's Image, CDI's DataVolume), which
    /// must not be applied where those projects run.
    Crds {
        #[arg(long)]
        compat: bool,
    },
    /// List the image cache's copies (CachedImages) of a state directory: where each is, and
    /// which workloads keep it.
    Cache(crate::cache::CacheArgs),
}

/// Configuration shared by `run` and `operator`.
#[derive(Args)]
struct ConfigArgs {
    /// Values file (the Helm values shape: s3, vsphere, imageRetentionPeriod, …).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Merge a YAML file into the configuration at a dotted key, e.g.
    /// `vsphere.credentials=/home/.vsphere/credentials`. Repeatable.
    #[arg(long = "merge", value_name = "KEY=FILE", value_parser = parse_merge)]
    merges: Vec<(String, PathBuf)>,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Manifest files or directories (Releases, NodeImages, ImageSyncs, DiskImports, Secrets, ConfigMaps): the desired set.
    #[arg(long = "file", short = 'f', required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// State directory (objects between runs).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Exit once every object has settled: 0 if all are Ready (or gone), 1 otherwise.
    #[arg(long)]
    once: bool,
    /// With --once, give up after this long (e.g. 30m).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    timeout: Duration,
    /// Let manifests that hold no object delete every object earlier runs applied (without
    /// it, an empty desired set is refused when it would delete anything).
    #[arg(long)]
    prune_empty: bool,
    /// Wait for another ido using the same state directory to finish, instead of failing.
    #[arg(long)]
    wait_lock: bool,
    /// Where a DiskImport's claim lives on this machine: NAMESPACE/CLAIM=PATH, a directory
    /// (Filesystem claim) or a file or block device (Block). Repeatable; claims not named
    /// live under STATE/volumes/NAMESPACE/. The importer Jobs run in this process.
    #[arg(long = "volume", value_name = "NS/CLAIM=PATH", value_parser = crate::kubelet::parse_volume)]
    volumes: Vec<(String, PathBuf)>,
}

#[derive(Args)]
pub(crate) struct OperatorArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address of /metrics: HOST:PORT, :PORT (every interface), or 0 (off).
    #[arg(long, default_value = ":8443", value_parser = ido_operator::http::parse_bind_address)]
    metrics_bind_address: ::std::option::Option<std::net::SocketAddr>,
    /// Serve /metrics over HTTPS, to bearer tokens the API server authenticates and allows
    /// `get` on /metrics (TokenReview, SubjectAccessReview); false: plain HTTP, no auth.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    metrics_secure: bool,
    /// Directory with tls.crt and tls.key for /metrics (reloaded on change); default: a
    /// self-signed certificate made at start.
    #[arg(long)]
    metrics_cert_dir: Option<PathBuf>,
    /// Address of the image cache's admission webhook (HTTPS, POST /mutate-v1-pod):
    /// HOST:PORT, :PORT, or 0 (off, the default).
    #[arg(long, default_value = "0", value_parser = ido_operator::http::parse_bind_address)]
    webhook_bind_address: ::std::option::Option<std::net::SocketAddr>,
    /// Directory with tls.crt and tls.key for the webhook (reloaded on change); default: a
    /// self-signed certificate made at start.
    #[arg(long)]
    webhook_cert_dir: Option<PathBuf>,
    /// Address of the disk upload endpoint (HTTPS, CDI's /v1beta1/upload paths): HOST:PORT,
    /// :PORT, or 0 (off, the default). Needs --upload-key-file.
    #[arg(long, default_value = "0", value_parser = ido_operator::http::parse_bind_address)]
    upload_bind_address: ::std::option::Option<std::net::SocketAddr>,
    /// Directory with tls.crt and tls.key for the upload endpoint (reloaded on change);
    /// default: a self-signed certificate made at start.
    #[arg(long)]
    upload_cert_dir: Option<PathBuf>,
    /// File with the key upload tokens are signed with (64 hex digits; the same for every
    /// replica). With it, DiskImports with an upload source get upload pods and the webhook
    /// answers UploadTokenRequests.
    #[arg(long, value_name = "FILE")]
    upload_key_file: Option<PathBuf>,
    /// Address of /healthz and /readyz (plain HTTP): HOST:PORT, :PORT, or 0 (off).
    #[arg(long, default_value = ":8081", value_parser = ido_operator::http::parse_bind_address)]
    health_probe_bind_address: ::std::option::Option<std::net::SocketAddr>,
    /// Run the controllers only while holding the leader Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else the NodeImage namespace).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ido-leader")]
    leader_election_id: String,
    /// Give up (exit 1) when the API server is not usable within this long (e.g. 60s, 5m);
    /// 0: wait forever. Rejected credentials (401) or missing rights (403) end it at once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    startup_timeout: Duration,
}

fn parse_merge(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=FILE, got {s:?}"))?;
    if k.is_empty() || v.is_empty() {
        return Err(format!("expected KEY=FILE, got {s:?}"));
    }
    Ok((k.to_string(), PathBuf::from(v)))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    ido_api::duration::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli
        .log
        .clone()
        .or_else(|| std::env::var("IDO_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    // `level` or `target=level,…` (no span or field filters: tracing-subscriber's EnvFilter
    // compiles regular expressions for those, ~60 ms at every start).
    let filter: tracing_subscriber::filter::Targets = log.parse().unwrap_or_else(|e| {
        eprintln!("warning: --log {log:?}: {e}; logging at info");
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
    });
    // Colours only for a person at a terminal, and never when NO_COLOR is set.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Field values carry text from outside (a server's error body, a name inside an archive):
    // control characters are escaped, so no value can forge a log line or a terminal escape.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let v = ido_io::redact::escape_controls(&format!("{value:?}"));
        match field.name() {
            "message" => write!(w, "{v}"),
            name => write!(w, "{name}={v}"),
        }
    })
    .delimited(" ");
    {
        use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(fields)
                    .with_writer(std::io::stderr)
                    .with_ansi(colour),
            )
            .with(filter)
            .init();
    }
    // The one place a TLS crypto provider is chosen: libraries only check that there is one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let is_operator = matches!(cli.command, Command::Operator(_));
    let graceful = is_operator || matches!(cli.command, Command::Run(_));
    let (result, stopped) = rt.block_on(supervise(cli.command, graceful));
    if stopped.is_some() {
        // Blocking reads (stdin, a file) may still be parked: do not wait for them.
        rt.shutdown_background();
    }
    let code = match result {
        Ok(code) => code,
        // The reader went away (`ido tags … | head`): stop quietly, as other tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", ido_io::redact::escape_controls(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    };
    match stopped {
        // A clean stop of the operator is a success, as for any controller.
        Some(_) if is_operator && code == ExitCode::SUCCESS => code,
        Some(sig) => ExitCode::from(sig.exit_code()),
        None => code,
    }
}

/// Runs `cmd`; on SIGINT or SIGTERM stops it (see [`crate::signals`]) and waits for the
/// clean-up of what it had started, unless a second signal comes. Returns the command's
/// result and the signal that stopped it.
async fn supervise(cmd: Command, graceful: bool) -> (anyhow::Result<ExitCode>, Option<Stop>) {
    let mut signals = match Signals::listen() {
        Ok(s) => s,
        Err(e) => {
            return (
                Err(anyhow::anyhow!("listening for SIGINT and SIGTERM: {e}")),
                None,
            );
        }
    };
    let stop = CancellationToken::new();
    // Boxed, so that dropping it below really drops the command's future.
    let mut work = Box::pin(dispatch(cmd, stop.clone()));
    let sig = tokio::select! {
        r = &mut work => return (r, None),
        sig = signals.recv() => sig,
    };
    eprintln!(
        "{}: stopping and cleaning up what was started (send it again to exit at once)",
        sig.name()
    );
    stop.cancel();
    let wind_down = async {
        // `run` and `operator` stop their own work; any other command is dropped where it
        // is, its guards handing their clean-up to the tracker.
        let result = if graceful {
            work.await
        } else {
            drop(work);
            Ok(ExitCode::FAILURE)
        };
        let pending = ido_io::cleanup::pending();
        if !ido_io::cleanup::finish(CLEANUP_LIMIT).await {
            eprintln!("clean-up did not end within {CLEANUP_LIMIT:?} ({pending} task(s)); exiting anyway");
        }
        result
    };
    tokio::select! {
        r = wind_down => (r, Some(sig)),
        second = signals.recv() => {
            eprintln!("{}: exiting at once", second.name());
            std::process::exit(sig.exit_code().into());
        }
    }
}

/// Writes `text` to standard output; a closed pipe is an error [`main`] ends quietly on.
pub(crate) fn out(text: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{text}").and_then(|()| stdout.flush())?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn dispatch(cmd: Command, stop: CancellationToken) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Crds { compat } => {
            let docs: Vec<String> = ido_api::crds()
                .iter()
                .filter(|c| compat || !ido_api::FOREIGN_GROUPS.contains(&c.spec.group.as_str()))
                .map(yaml::to_string)
                .collect::<Result<_, _>>()
                .context("serialising CRDs")?;
            out(docs.iter().map(|d| format!("---\n{d}")).collect::<String>())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_cmd(args, stop).await,
        Command::Copy(args) => copy_cmd(args).await,
        Command::Tags(args) => crate::sync::tags_cmd(args).await,
        Command::Sync(args) => crate::sync::sync_cmd(args).await,
        Command::Import(args) => crate::import::import_cmd(args).await,
        Command::Build(args) => crate::build::build_cmd(args).await,
        Command::Upload(args) => crate::upload::client::upload_cmd(args).await,
        Command::UploadServer(args) => crate::upload::server::server_cmd(args).await,
        Command::UploadToken(args) => crate::upload::server::token_cmd(args),
        Command::CloneSend(args) => crate::upload::client::send_cmd(args).await,
        Command::Cache(args) => crate::cache::cache_cmd(args).await,
        Command::Operator(args) => operator_cmd(args, stop).await,
    }
}

async fn run_cmd(args: RunArgs, stop: CancellationToken) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.config.as_deref(), &args.config.merges)?;
    let settings = config.settings()?;
    let manifests = load_manifests(&args.files, &settings.namespace)?;
    let state = args.state.unwrap_or_else(default_state_dir);
    let _lock = StateLock::acquire(&state, args.wait_lock).await?;
    let store = FileStore::open(&state).with_context(|| format!("opening state {}", state.display()))?;
    if manifests.is_empty() && !args.prune_empty {
        let applied = applied_keys(&store).await?;
        if !applied.is_empty() {
            let files: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
            anyhow::bail!(
                "{} hold no object: running would delete all {} objects earlier runs applied in {} (e.g. {}); pass --prune-empty to do that",
                files.join(", "),
                applied.len(),
                state.display(),
                applied[0]
            );
        }
    }
    let ctx = Arc::new(config.context(store.clone())?);
    if ctx.providers.is_empty() {
        tracing::warn!("no provider is enabled: Releases will be skipped");
    }
    apply_desired(&store, &manifests).await?;
    // The importer Jobs of DiskImports run here, their claims as local paths.
    let kubelet_stop = stop.child_token();
    let kubelet = tokio::spawn(crate::kubelet::serve(
        store.clone(),
        crate::kubelet::Volumes {
            root: state.join("volumes"),
            named: args.volumes.into_iter().collect(),
        },
        kubelet_stop.clone(),
    ));
    let opts = RunOptions {
        once: args.once,
        image_concurrency: config.concurrency.images,
        timeout: args.timeout,
        imports_run: true,
        stop,
        ..RunOptions::default()
    };
    let report = run(ctx, opts).await;
    kubelet_stop.cancel();
    let _ = kubelet.await;
    let report = report?;
    out(report.table())?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn operator_cmd(args: OperatorArgs, stop: CancellationToken) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.config.as_deref(), &args.config.merges)?;
    let kube_config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration (in-cluster or kubeconfig)")?;
    let api_server = kube_config.cluster_url.to_string();
    let client = kube::Client::try_from(kube_config)
        .with_context(|| format!("connecting to the Kubernetes API at {api_server}"))?;
    let mut parts = ido_operator::ContextParts::from_config(&config)?;
    if let Some(f) = &args.upload_key_file {
        let key = ido_controllers::diskimport::upload::UploadKey::read(f)
            .map_err(|e| anyhow::anyhow!("--upload-key-file {e}"))?;
        parts.settings.disk_import.upload_key = Some(key);
    }
    let defaults = ido_operator::OperatorOptions::from_config(&config);
    let opts = ido_operator::OperatorOptions {
        metrics_addr: args.metrics_bind_address.unwrap_or(defaults.metrics_addr),
        serve_metrics: args.metrics_bind_address.is_some(),
        metrics_secure: args.metrics_secure,
        metrics_cert_dir: args.metrics_cert_dir,
        webhook_addr: args.webhook_bind_address,
        webhook_cert_dir: args.webhook_cert_dir,
        upload_addr: args.upload_bind_address,
        upload_cert_dir: args.upload_cert_dir,
        health_probe_addr: args.health_probe_bind_address,
        leader_election: args.leader_elect,
        lease_name: args.leader_election_id,
        lease_namespace: args.leader_election_namespace,
        startup_timeout: Some(args.startup_timeout).filter(|t| !t.is_zero()),
        api_server: Some(api_server),
        ..defaults
    };
    ido_operator::run_until(client, parts, opts, stop.cancelled_owned()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `ido copy`: skopeo-compatible flags where they mean the same.
#[derive(Args)]
pub(crate) struct CopyArgs {
    /// Source image, e.g. `docker://quay.io/org/app:1.2` (the `docker://` prefix is optional).
    src: String,
    /// Destination image.
    dst: String,
    /// Copy every image of an index, and the index itself (digests preserved).
    #[arg(long, conflicts_with = "platform")]
    all: bool,
    /// Copy only this platform (OS/ARCH[/VARIANT]); repeatable. Default: this machine's.
    #[arg(long)]
    platform: Vec<String>,
    /// Copy the artifacts that refer to the copied image too (signatures, SBOMs: OCI 1.1
    /// `subject`), found through the referrers API or the `sha256-<hex>` fallback tag.
    #[arg(long)]
    referrers: bool,
    /// Docker config file with credentials (default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Verify the source's TLS certificate; false allows plain HTTP or unverified TLS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    src_tls_verify: bool,
    /// Verify the destination's TLS certificate; false allows plain HTTP or unverified TLS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dest_tls_verify: bool,
    /// Directory of CA certificates (`*.crt`) for the source.
    #[arg(long)]
    src_cert_dir: Option<PathBuf>,
    /// Directory of CA certificates (`*.crt`) for the destination.
    #[arg(long)]
    dest_cert_dir: Option<PathBuf>,
    /// Progress display: auto (a bar on a terminal, plain lines otherwise), bar, plain, none.
    #[arg(long, value_enum, default_value_t = crate::progress::ProgressMode::Auto)]
    progress: crate::progress::ProgressMode,
}

pub(crate) async fn copy_cmd(args: CopyArgs) -> anyhow::Result<ExitCode> {
    use ido_oci::{
        copy::{Platforms, Progress, copy_with_progress},
        media::Platform,
    };
    let auths = Arc::new(crate::sync::load_authfile(args.authfile.as_deref())?);
    let src_ref = parse_reference(&args.src, "SRC")?;
    let dst_ref = parse_reference(&args.dst, "DST")?;
    let src = connect(
        &src_ref,
        args.src_tls_verify,
        args.src_cert_dir.as_deref(),
        auths.clone(),
    )
    .await?;
    let dst = connect(
        &dst_ref,
        args.dest_tls_verify,
        args.dest_cert_dir.as_deref(),
        auths,
    )
    .await?;
    let platforms = if args.all {
        Platforms::All
    } else if args.platform.is_empty() {
        Platforms::Host
    } else {
        Platforms::Only(
            args.platform
                .iter()
                .map(|p| Platform::parse(p))
                .collect::<Result<_, _>>()?,
        )
    };
    let started = std::time::Instant::now();
    let progress = Progress::default();
    let rep = show_progress(
        args.progress,
        &progress,
        copy_with_progress(&src, &src_ref, &dst, &dst_ref, &platforms, &progress),
    )
    .await?;
    if rep.skipped {
        out(format_args!(
            "{} already has {}: nothing to copy\n",
            dst_ref.whole(),
            rep.digest
        ))?;
    } else {
        out(format_args!(
            "copied {} to {} in {:.1?}: {} manifest(s), {} blob(s) copied ({} bytes), {} present, {} mounted; digest {}\n",
            src_ref.whole(),
            dst_ref.whole(),
            started.elapsed(),
            rep.manifests,
            rep.blobs_copied,
            rep.bytes,
            rep.blobs_present,
            rep.blobs_mounted,
            rep.digest
        ))?;
    }
    if args.referrers {
        let n = ido_oci::copy::copy_referrers(&src, &src_ref, &dst, &dst_ref, &rep.digest).await?;
        out(format_args!("{n} referrer(s) of {} copied\n", rep.digest))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `work` while showing `progress`: a bar, a plain line every few seconds, or nothing.
async fn show_progress<T>(
    mode: crate::progress::ProgressMode,
    progress: &ido_oci::copy::Progress,
    work: impl std::future::Future<Output = T>,
) -> T {
    use ido_io::progress::display::{Display, PLAIN_EVERY, Shown};
    use ido_io::progress::human;
    let display = Display::new(mode.resolve(), |r| {
        format!(
            "copy: {} of {} ({}/s)",
            human(r.source_done),
            human(r.source_total.unwrap_or(0)),
            human(r.rate as u64)
        )
    });
    // The display writes a plain line at most every few seconds.
    let every = std::time::Duration::from_millis(250);
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick(), if display.shown() != Shown::None => {
                // Plain lines start after a first interval: a shorter copy writes none.
                if display.shown() == Shown::Bar || started.elapsed() >= PLAIN_EVERY {
                    display.show(&progress.report(started.elapsed()));
                }
            }
        }
    };
    display.finish();
    out
}

/// The registry of `r`, verified unless `verify` is false, trusting the CAs of `cert_dir`
/// (skopeo's `--*-tls-verify` and `--*-cert-dir`).
pub(crate) async fn connect(
    r: &ido_oci::Reference,
    verify: bool,
    cert_dir: Option<&std::path::Path>,
    auths: Arc<ido_oci::auth::AuthStore>,
) -> anyhow::Result<ido_oci::registry::Registry> {
    use ido_oci::registry::{DEFAULT_CONCURRENCY, Registry, TlsSettings};
    let tls = TlsSettings {
        verify,
        ca_bundle: cert_dir.map(crate::sync::read_cert_dir).transpose()?,
    };
    Ok(Registry::connect(r.resolve_registry(), &tls, auths, DEFAULT_CONCURRENCY).await?)
}

/// An image reference, with or without skopeo's `docker://` transport.
pub(crate) fn parse_reference(s: &str, what: &str) -> anyhow::Result<ido_oci::Reference> {
    let bare = s.strip_prefix("docker://").unwrap_or(s);
    let shown = ido_io::redact::text(&ido_io::redact::userinfo(s));
    if let Some((transport, _)) = bare.split_once("://") {
        let transport = ido_io::redact::escape_controls(transport);
        anyhow::bail!("{what} \"{shown}\": transport {transport:?} is not supported (only docker://)");
    }
    if bare.split('/').next().is_some_and(|host| host.contains('@')) {
        anyhow::bail!(
            "{what} \"{shown}\": credentials in a reference are not supported; give them in --authfile"
        );
    }
    ido_oci::reference::parse(bare)
        .map_err(|e| anyhow::anyhow!("{what}: {}", ido_io::redact::text(&e.to_string())))
}
