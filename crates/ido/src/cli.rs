//! Command-line interface: `ido run`, `ido operator`, `ido crds`.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ido_controllers::{
    config::{Config, parse_go_duration},
    file_store::FileStore,
    run::{RunOptions, apply_desired, default_state_dir, load_manifests, run},
};

#[derive(Parser)]
#[command(name = "ido", version, about = "Gets images to where clusters need them.")]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info,ido_providers=debug`. Default: $IDO_LOG,
    /// else $RUST_LOG, else `info`.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile manifests against real providers without a cluster (file-backed state).
    Run(RunArgs),
    /// Run the controllers in a Kubernetes cluster.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions (YAML).
    Crds,
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
struct RunArgs {
    /// Manifest files or directories (Releases, NodeImages): the desired set.
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
}

#[derive(Args)]
struct OperatorArgs {
    #[command(flatten)]
    config: ConfigArgs,
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).ok_or_else(|| format!("invalid duration {s:?} (e.g. 90s, 30m, 1h)"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli
        .log
        .clone()
        .or_else(|| std::env::var("IDO_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&log).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    ido_engine::http::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Crds => {
            let docs: Vec<String> = ido_api::crds()
                .iter()
                .map(yaml::to_string)
                .collect::<Result<_, _>>()
                .context("serialising CRDs")?;
            print!("{}", docs.iter().map(|d| format!("---\n{d}")).collect::<String>());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_cmd(args).await,
        Command::Operator(args) => operator_cmd(args).await,
    }
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.config.as_deref(), &args.config.merges)?;
    let settings = config.settings()?;
    let manifests = load_manifests(&args.files, &settings.namespace)?;
    let state = args.state.unwrap_or_else(default_state_dir);
    let store = FileStore::open(&state).with_context(|| format!("opening state {}", state.display()))?;
    let ctx = Arc::new(config.context(store.clone())?);
    if ctx.providers.is_empty() {
        tracing::warn!("no provider is enabled: Releases will be skipped");
    }
    apply_desired(&store, &manifests).await?;
    let opts = RunOptions {
        once: args.once,
        image_concurrency: config.concurrency.images,
        timeout: args.timeout,
        ..RunOptions::default()
    };
    let report = run(ctx, opts).await?;
    print!("{}", report.table());
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn operator_cmd(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.config.as_deref(), &args.config.merges)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let parts = ido_operator::ContextParts::from_config(&config)?;
    ido_operator::run(client, parts, ido_operator::OperatorOptions::from_config(&config)).await?;
    Ok(ExitCode::SUCCESS)
}
