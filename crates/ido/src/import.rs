//! `ido import SOURCE TARGET`: stream a disk image (file, stdin, HTTP(S), S3 or a
//! containerDisk image in a registry; gzip, xz, zstd, bzip2, tar; raw, ISO, qcow2, …) into
//! a raw file or block device, sparse, with no scratch file; with `--content-type archive`,
//! unpack a tar (maybe compressed) into an existing directory instead. See
//! `docs/disk-import.md`.
//! Secrets never come from arguments: passwords and S3 keys from the environment or files,
//! registry credentials from a docker config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use crate::progress::{PLAIN_EVERY, ProgressMode, Shown, bytes_bar, human};
use ido_disk::source::s3;
use ido_disk::{
    ArchiveOptions, BasicAuth, Checksum, DiskFormat, ImportOptions, Progress, ProgressFn, RetryPolicy,
    SourceSpec, SpecialFiles, TargetSpec, import, unpack,
};

/// Environment variable holding the basic-auth password (never a flag: flags show in `ps`).
const PASSWORD_ENV: &str = "IDO_IMPORT_PASSWORD";

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The image: a path, `-` for stdin, an http:// or https:// URL, s3://BUCKET/KEY, or
    /// docker://REGISTRY/REPO[:TAG|@DIGEST] (a KubeVirt containerDisk: the one file under
    /// /disk/).
    source: String,
    /// Where the raw image goes: a file (created or truncated, written sparsely) or a
    /// block device. With --content-type archive: the existing directory to unpack into.
    target: PathBuf,
    /// What SOURCE holds: kubevirt (a disk image, converted to raw; the default) or archive
    /// (a tar, plain or gzip/xz/zstd/bzip2-compressed, unpacked into TARGET, an existing
    /// directory; members that would land outside it, links leading out of it, device
    /// nodes and names TARGET holds already are refused, and a failed unpack leaves TARGET
    /// as it was).
    #[arg(long, value_enum, value_name = "TYPE", default_value_t = ContentType::Kubevirt)]
    content_type: ContentType,
    /// With --content-type archive: skip device nodes and FIFOs, each with a warning,
    /// instead of refusing the archive.
    #[arg(long)]
    skip_special_files: bool,
    /// Expected checksum of the source bytes as fetched: sha256:HEX, sha512:HEX,
    /// sha1:HEX or md5:HEX. On a mismatch the import fails and the target file is removed.
    #[arg(long, value_name = "ALG:HEX")]
    checksum: Option<Checksum>,
    /// The disk format (raw, iso, qcow2, vmdk, vhd, vhdx, vdi) instead of detecting it. Compressions and tar are
    /// still peeled.
    #[arg(long, value_name = "F")]
    format: Option<DiskFormat>,
    /// The disk to import from an OVA that holds several: its file name, its ovf:id or
    /// ovf:diskId, or its position in the OVF from 1. Without it such an OVA is refused,
    /// naming its disks.
    #[arg(long, value_name = "NAME|INDEX")]
    disk: Option<String>,
    /// Target capacity: the image's virtual size must fit (checked before writing when
    /// the format tells the size). Units: Ki, Mi, Gi, Ti (1024) or K, M, G, T (1000).
    #[arg(long, value_name = "S", value_parser = parse_size)]
    size: Option<u64>,
    /// Extra HTTP request header, `Name: value`. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Basic-auth user name for HTTP. The password is read from $IDO_IMPORT_PASSWORD or
    /// from --password-file.
    #[arg(long, conflicts_with = "username_file")]
    username: Option<String>,
    /// File holding the basic-auth user name (a mounted Secret key; trailing newline
    /// ignored).
    #[arg(long, value_name = "FILE")]
    username_file: Option<PathBuf>,
    /// File holding the basic-auth password (trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM bundle) for HTTPS, S3 or the registry.
    #[arg(long, visible_alias = "ca-bundle", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Directory whose every file is a PEM bundle of extra trusted CAs (a mounted
    /// ConfigMap; hidden entries are skipped).
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Write every byte of the disk, zeros included, so a file target has all its blocks
    /// allocated (holes are kept otherwise).
    #[arg(long)]
    preallocate: bool,
    /// Keep a checkpoint beside the target file (TARGET.ido-resume) and, after a transport
    /// failure or a kill, continue a later run with the same arguments from it instead of
    /// from 0. From HTTP(S) or S3: raw and ISO images, also gzip-compressed (any) or
    /// xz/zstd/bzip2-compressed with several blocks, frames or streams; qcow2 (compressed
    /// clusters too) and streamOptimized VMDK without --preallocate. Other imports start
    /// again (docs/disk-import.md, "Resuming in a later run").
    #[arg(long)]
    resume: bool,
    /// Replace TARGET if it is a file that exists (without it, an existing file is refused
    /// and left as it is).
    #[arg(long)]
    force: bool,
    /// Target bytes between two checkpoints with --resume (each syncs the target).
    #[arg(long, value_name = "S", value_parser = parse_size, default_value = "256Mi", requires = "resume")]
    checkpoint_every: u64,
    /// Do not verify the server's TLS certificate (HTTPS, S3; for a registry as
    /// --src-tls-verify=false).
    #[arg(long)]
    insecure: bool,
    /// Failures in a row (no byte received in between) before giving up.
    #[arg(long, default_value_t = 8, value_name = "N")]
    retries: u32,
    /// Parallel ranged GETs for a large HTTP(S) or S3 object whose server supports ranges
    /// (1: one stream). Default: 4.
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    connections: Option<usize>,
    /// Largest zstd window to decode, as a power of two: 27 (128 MiB, the zstd CLI's
    /// limit) by default, up to 31 (2 GiB) for streams made with `zstd --long=31`. The
    /// decoder holds up to that much memory.
    #[arg(long, value_name = "LOG", default_value_t = ido_disk::decompress::ZSTD_WINDOW_LOG_DEFAULT,
          value_parser = clap::value_parser!(u32).range(10..=ido_disk::decompress::ZSTD_WINDOW_LOG_MAX as i64))]
    zstd_window_log: u32,
    /// Memory for the xz decoder. The default (32Mi) keeps an import within 64 MiB. A
    /// stream written multi-threaded (`xz -T`) decodes one block per core at once when
    /// that many blocks fit (each thread holds a block in and out: 256Mi lets two cores
    /// decode `xz -6`'s 24 MiB blocks, at about 120 MiB of memory).
    #[arg(long, value_name = "S", value_parser = parse_size, default_value = "32Mi")]
    xz_memory: u64,
    /// Reorder buffer: memory for image data stored before the tables that map it
    /// (qcow2, vmdk, vhd, vhdx, vdi read as a stream). A qcow2 from a local file needs
    /// none (it is read again by position), nor one from HTTP(S)/S3 with ranges beyond it.
    #[arg(long, value_name = "S", value_parser = parse_size, default_value = "64Mi")]
    reorder_buffer: u64,
    /// Flags of S3 and registry sources (boxed: the CLI's command enum stays small).
    #[command(flatten)]
    more: Box<SourceArgs>,
    /// Progress display: auto (a bar on a terminal, plain lines otherwise), bar, plain,
    /// none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

/// What an import's source holds (a DiskImport's `contentType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ContentType {
    /// A disk image, converted to raw.
    Kubevirt,
    /// A tar, unpacked into a directory.
    Archive,
}

/// Flags of S3 and registry (containerDisk) sources.
#[derive(Args, Debug)]
pub(crate) struct SourceArgs {
    /// S3-compatible endpoint (path-style URLs), e.g. http://127.0.0.1:8333. Default: AWS.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region (signing; the host name on AWS).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// AWS shared-credentials file with the S3 keys (default: $AWS_ACCESS_KEY_ID and
    /// $AWS_SECRET_ACCESS_KEY; neither: anonymous).
    #[arg(long, value_name = "FILE")]
    s3_credentials_file: Option<PathBuf>,
    /// Profile (section) of --s3-credentials-file. Default: $AWS_PROFILE, else default.
    #[arg(long, value_name = "NAME", requires = "s3_credentials_file")]
    s3_profile: Option<String>,
    /// File holding the S3 access key id (a mounted Secret key).
    #[arg(
        long,
        value_name = "FILE",
        requires = "s3_secret_key_file",
        conflicts_with = "s3_credentials_file"
    )]
    s3_access_key_file: Option<PathBuf>,
    /// File holding the S3 secret access key (a mounted Secret key).
    #[arg(long, value_name = "FILE", requires = "s3_access_key_file")]
    s3_secret_key_file: Option<PathBuf>,
    /// Read the S3 object anonymously even if keys are in the environment.
    #[arg(long, conflicts_with_all = ["s3_credentials_file", "s3_access_key_file"])]
    s3_anonymous: bool,
    /// Docker config file with registry credentials (default: $REGISTRY_AUTH_FILE, else
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Platform to take from a multi-platform image (OS/ARCH[/VARIANT]). Default: this
    /// machine's.
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Verify the registry's TLS certificate; false allows plain HTTP or unverified TLS.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    src_tls_verify: Option<bool>,
    /// Directory of CA certificates (`*.crt`) for the registry.
    #[arg(long, value_name = "DIR")]
    src_cert_dir: Option<PathBuf>,
}

/// Exit code of an import that failed for a reason retrying cannot fix (a bad or refused
/// image, a checksum mismatch, a target too small): an importer Job's pod failure policy
/// fails at once on it instead of retrying. The Job builder's constant, so both agree.
const EXIT_PERMANENT: u8 = ido_controllers::diskimport::PERMANENT_EXIT_CODE as u8;

pub(crate) async fn import_cmd(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let ImportArgs {
        source,
        target,
        content_type,
        skip_special_files,
        checksum,
        format,
        disk,
        size,
        headers,
        username,
        username_file,
        password_file,
        ca_file,
        ca_dir,
        preallocate,
        resume,
        force,
        checkpoint_every,
        insecure,
        retries,
        connections,
        zstd_window_log,
        reorder_buffer,
        xz_memory,
        more,
        progress,
    } = args;
    let SourceArgs {
        s3_endpoint,
        s3_region,
        s3_credentials_file,
        s3_profile,
        s3_access_key_file,
        s3_secret_key_file,
        s3_anonymous,
        authfile,
        platform,
        src_tls_verify,
        src_cert_dir,
    } = *more;
    let mut source = SourceSpec::parse(&source)?;
    let (http_like, is_s3, is_registry) = match &source {
        SourceSpec::Http(_) => (true, false, false),
        SourceSpec::S3(_) => (true, true, false),
        SourceSpec::Registry(_) => (false, false, true),
        _ => (false, false, false),
    };
    // Flags that do not apply to this source are errors, not silently ignored.
    let misplaced = [
        (!headers.is_empty(), "--header", http_like, "http(s) and s3"),
        (username.is_some(), "--username", http_like && !is_s3, "http(s)"),
        (
            username_file.is_some(),
            "--username-file",
            http_like && !is_s3,
            "http(s)",
        ),
        (
            ca_dir.is_some(),
            "--ca-dir",
            http_like || is_registry,
            "http(s), s3 and docker",
        ),
        (
            password_file.is_some(),
            "--password-file",
            http_like && !is_s3,
            "http(s)",
        ),
        (
            ca_file.is_some(),
            "--ca-file",
            http_like || is_registry,
            "http(s), s3 and docker",
        ),
        (
            insecure,
            "--insecure",
            http_like || is_registry,
            "http(s), s3 and docker",
        ),
        (
            connections.is_some(),
            "--connections",
            http_like,
            "http(s) and s3",
        ),
        (s3_endpoint.is_some(), "--s3-endpoint", is_s3, "s3"),
        (s3_region.is_some(), "--s3-region", is_s3, "s3"),
        (
            s3_credentials_file.is_some(),
            "--s3-credentials-file",
            is_s3,
            "s3",
        ),
        (s3_anonymous, "--s3-anonymous", is_s3, "s3"),
        (s3_access_key_file.is_some(), "--s3-access-key-file", is_s3, "s3"),
        (authfile.is_some(), "--authfile", is_registry, "docker"),
        (platform.is_some(), "--platform", is_registry, "docker"),
        (
            src_tls_verify.is_some(),
            "--src-tls-verify",
            is_registry,
            "docker",
        ),
        (src_cert_dir.is_some(), "--src-cert-dir", is_registry, "docker"),
    ];
    if let Some((_, flag, _, kinds)) = misplaced.iter().find(|(set, _, ok, _)| *set && !*ok) {
        anyhow::bail!("{flag} applies to {kinds} sources only");
    }
    let archive = content_type == ContentType::Archive;
    // Flags of one content type only.
    let misplaced = [
        (format.is_some(), "--format", false),
        (disk.is_some(), "--disk", false),
        (size.is_some(), "--size", false),
        (preallocate, "--preallocate", false),
        (resume, "--resume", false),
        (force, "--force", false),
        (skip_special_files, "--skip-special-files", true),
    ];
    if let Some((_, flag, for_archive)) = misplaced.iter().find(|(set, _, a)| *set && *a != archive) {
        let kind = if *for_archive {
            "archive"
        } else {
            "kubevirt (a disk image)"
        };
        anyhow::bail!("{flag} applies to --content-type {kind} only");
    }
    let mut pem = String::new();
    if let Some(p) = &ca_file {
        pem += &std::fs::read_to_string(p).with_context(|| format!("reading --ca-file {}", p.display()))?;
    }
    if let Some(d) = &ca_dir {
        // A mounted ConfigMap: every key a file, beside hidden `..data` links.
        let visible = |p: &std::path::Path| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        };
        pem += &crate::sync::read_pem_dir(d, "--ca-dir", visible)?;
    }
    let ca_bundle = (!pem.is_empty()).then_some(pem);
    let retry = RetryPolicy {
        attempts: retries.max(1),
        ..RetryPolicy::default()
    };
    let http_settings = |http: &mut ido_disk::HttpOptions| -> anyhow::Result<()> {
        for h in &headers {
            http.add_header_line(h)?;
        }
        http.tls.ca_bundle = ca_bundle.clone();
        http.tls.insecure = insecure;
        http.retry = retry.clone();
        if let Some(n) = connections {
            http.connections = n;
        }
        Ok(())
    };
    match &mut source {
        SourceSpec::Http(http) => {
            http_settings(http)?;
            let username = match &username_file {
                Some(f) => Some(read_secret_file(f, "--username-file")?),
                None => username,
            };
            if let Some(username) = username {
                let password = match &password_file {
                    Some(p) => read_secret_file(p, "--password-file")?,
                    None => std::env::var(PASSWORD_ENV).unwrap_or_default(),
                };
                http.basic_auth = Some(BasicAuth { username, password });
            }
        }
        SourceSpec::S3(o) => {
            http_settings(&mut o.http)?;
            o.endpoint = s3_endpoint;
            if let Some(r) = s3_region {
                o.region = r;
            }
            o.credentials = if s3_anonymous {
                None
            } else if let (Some(a), Some(k)) = (&s3_access_key_file, &s3_secret_key_file) {
                Some(ido_engine::s3::S3Credentials {
                    access_key_id: read_secret_file(a, "--s3-access-key-file")?,
                    secret_access_key: read_secret_file(k, "--s3-secret-key-file")?,
                })
            } else if let Some(f) = &s3_credentials_file {
                let profile = s3_profile.or_else(|| std::env::var("AWS_PROFILE").ok());
                Some(s3::credentials_from_file(f, profile.as_deref())?)
            } else {
                s3::credentials_from_env()?
            };
        }
        SourceSpec::Registry(o) => {
            o.auth = crate::sync::load_authfile(authfile.as_deref())?;
            o.platform = platform;
            o.tls_verify = src_tls_verify.unwrap_or(true) && !insecure;
            let mut pem = src_cert_dir
                .as_deref()
                .map(crate::sync::read_cert_dir)
                .transpose()?
                .unwrap_or_default();
            if let Some(extra) = &ca_bundle {
                pem.push_str(extra);
            }
            o.ca_bundle = (!pem.is_empty()).then_some(pem);
            o.retry = retry;
        }
        _ => {}
    }
    if archive {
        let special = if skip_special_files {
            SpecialFiles::Skip
        } else {
            SpecialFiles::Refuse
        };
        return unpack_cmd(source, target, checksum, zstd_window_log, special, progress).await;
    }
    let shown = source.to_string();
    let mut opts = ImportOptions::new(
        source,
        TargetSpec {
            path: target.clone(),
            capacity: size,
        },
    );
    opts.checksum = checksum;
    opts.format = format;
    opts.disk = disk;
    opts.preallocate = preallocate;
    opts.resume = resume;
    opts.overwrite = force;
    opts.checkpoint_every = checkpoint_every;
    opts.decompress.zstd_window_log_max = zstd_window_log;
    opts.decompress.xz_memlimit_threading = xz_memory;
    opts.reorder_budget = reorder_buffer;
    let display = Display::new(progress);
    opts.progress = display.callback();

    let result = import(opts).await;
    display.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => return failed(e, &shown, &target),
    };
    let layers = if report.layers.is_empty() {
        String::new()
    } else {
        format!(" ({})", report.layers.join(", "))
    };
    eprintln!(
        "imported {}{layers}: {} virtual from {} read in {:.1?}{}{}",
        report.format,
        human(report.virtual_size),
        human(report.source_bytes),
        report.elapsed,
        if report.resumed_from > 0 {
            format!(" (resumed at {})", human(report.resumed_from))
        } else {
            String::new()
        },
        report
            .checksum
            .map(|c| format!("; checksum {c} verified"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// How a failed import ends: transport trouble may pass on a retry (exit 1); anything else
/// will not (exit 2).
fn failed(e: ido_disk::Error, shown: &str, target: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !e.is_transient() {
        eprintln!("error: importing {shown} into {}: {e}", target.display());
        return Ok(ExitCode::from(EXIT_PERMANENT));
    }
    Err(anyhow::Error::new(e).context(format!("importing {shown} into {}", target.display())))
}

/// `--content-type archive`: the source unpacked into the directory `target`.
async fn unpack_cmd(
    source: SourceSpec,
    target: PathBuf,
    checksum: Option<Checksum>,
    zstd_window_log: u32,
    special: SpecialFiles,
    progress: ProgressMode,
) -> anyhow::Result<ExitCode> {
    let shown = source.to_string();
    let mut opts = ArchiveOptions::new(source, target.clone());
    opts.checksum = checksum;
    opts.decompress.zstd_window_log_max = zstd_window_log;
    opts.special_files = special;
    let display = Display::new(progress);
    opts.progress = display.callback();
    let result = unpack(opts).await;
    display.finish();
    let r = match result {
        Ok(r) => r,
        Err(e) => return failed(e, &shown, &target),
    };
    let layers = if r.layers.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.layers.join(", "))
    };
    let skipped = if r.skipped > 0 {
        format!(", {} skipped", r.skipped)
    } else {
        String::new()
    };
    eprintln!(
        "unpacked tar{layers} into {}: {} files, {} directories, {} symbolic links, {} hard links{skipped}; {} written \
         from {} read in {:.1?}{}",
        target.display(),
        r.files,
        r.directories,
        r.symlinks,
        r.hard_links,
        human(r.bytes),
        human(r.source_bytes),
        r.elapsed,
        r.checksum
            .map(|c| format!("; checksum {c} verified"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// A one-line secret file (a mounted Secret key), trailing newline removed.
fn read_secret_file(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

/// 1 to 64.
fn parse_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=64) => Ok(n),
        _ => Err(format!("invalid connection count {s:?} (1 to 64)")),
    }
}

/// `10Gi`, `512Mi`, `4G`, `1048576`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" => 1000,
        "M" | "MB" => 1000u64.pow(2),
        "G" | "GB" => 1000u64.pow(3),
        "T" | "TB" => 1000u64.pow(4),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use Ki, Mi, Gi, Ti, K, M, G, T)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// The progress display: an indicatif bar, plain lines every few seconds, or nothing.
enum Display {
    Bar(indicatif::ProgressBar),
    Plain(Arc<Mutex<Option<Instant>>>),
    None,
}

impl Display {
    fn new(mode: ProgressMode) -> Self {
        match mode.resolve() {
            Shown::Bar => Display::Bar(bytes_bar()),
            Shown::Plain => Display::Plain(Arc::new(Mutex::new(None))),
            Shown::None => Display::None,
        }
    }

    fn callback(&self) -> Option<ProgressFn> {
        match self {
            Display::Bar(bar) => {
                let bar = bar.clone();
                Some(Arc::new(move |p: &Progress| {
                    if let Some(t) = p.source_total {
                        bar.set_length(t);
                    }
                    bar.set_position(p.source_done);
                }))
            }
            Display::Plain(last) => {
                let last = last.clone();
                Some(Arc::new(move |p: &Progress| {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    if p.done || last.is_some_and(|l| l.elapsed() < PLAIN_EVERY) {
                        return;
                    }
                    *last = Some(Instant::now());
                    eprintln!("{}", plain_line(p));
                }))
            }
            Display::None => None,
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn plain_line(p: &Progress) -> String {
    let total = p
        .source_total
        .map(|t| format!(" of {}", human(t)))
        .unwrap_or_default();
    let pct = p.percent().map(|x| format!("{x:.1}% ")).unwrap_or_default();
    let eta = p
        .eta
        .map(|e| format!(", ETA {}s", e.as_secs()))
        .unwrap_or_default();
    format!(
        "import: {pct}{}{total} read, {}/s, {} written{eta}",
        human(p.source_done),
        human(p.rate as u64),
        human(p.written)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `ido import`'s arguments, parsed without the rest of the CLI.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn parse(args: &[&str]) -> Result<ImportArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("ido-import").chain(args.iter().copied())).map(|c| c.args)
    }

    #[tokio::test]
    async fn imports_a_gzipped_raw_and_checks_flags() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3u32 << 20))
            .map(|i| if i < (1 << 20) { (i % 253) as u8 } else { 0 })
            .collect();
        std::fs::write(dir.path().join("d.raw"), &data).unwrap();
        let st = std::process::Command::new("gzip")
            .arg(dir.path().join("d.raw"))
            .status()
            .unwrap();
        assert!(st.success());
        let src = dir.path().join("d.raw.gz");
        let out = dir.path().join("out.img");
        let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());

        let args = parse(&[s, o, "--format", "raw", "--size", "3Mi", "--progress", "none"]).unwrap();
        assert_eq!(import_cmd(args).await.unwrap(), ExitCode::SUCCESS);
        assert!(std::fs::read(&out).unwrap() == data);

        // Too large for the target: a permanent failure (exit 2), nothing left behind.
        std::fs::remove_file(&out).unwrap();
        let args = parse(&[s, o, "--size", "2Mi", "--progress", "none"]).unwrap();
        assert_eq!(import_cmd(args).await.unwrap(), ExitCode::from(EXIT_PERMANENT));
        assert!(!out.exists());

        let args = parse(&[s, o, "--header", "A: b"]).unwrap();
        let e = import_cmd(args).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("--header applies to http(s) and s3 sources only"),
            "{e}"
        );

        for (flag, value, kinds) in [
            ("--s3-endpoint", "http://x", "s3"),
            ("--platform", "linux/arm64", "docker"),
            ("--authfile", "/nonexistent", "docker"),
            ("--connections", "2", "http(s) and s3"),
        ] {
            let args = parse(&[s, o, flag, value]).unwrap();
            let e = import_cmd(args).await.unwrap_err().to_string();
            assert_eq!(e, format!("{flag} applies to {kinds} sources only"));
        }
        let args = parse(&["https://example.invalid/d.img", o, "--platform", "linux/amd64"]).unwrap();
        let e = import_cmd(args).await.unwrap_err().to_string();
        assert!(e.contains("--platform applies to docker"), "{e}");
        assert!(parse(&[s, o, "--connections", "0"]).is_err());
        assert!(
            parse(&[s, o, "--s3-profile", "p"]).is_err(),
            "needs --s3-credentials-file"
        );

        assert!(parse(&[s, o, "--checksum", "sha256:zz"]).is_err());
        assert!(parse(&[s, o, "--format", "qcow3"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10Gi").unwrap(), 10 << 30);
        assert_eq!(parse_size("4G").unwrap(), 4_000_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("3X").is_err());
        assert!(parse_size("Gi").is_err());
    }

    #[test]
    fn plain_lines() {
        let p = Progress {
            source_done: 50 << 20,
            source_total: Some(100 << 20),
            written: 1 << 30,
            rate: (10 << 20) as f64,
            eta: Some(std::time::Duration::from_secs(5)),
            ..Progress::default()
        };
        assert_eq!(
            plain_line(&p),
            "import: 50.0% 50.0 MiB of 100.0 MiB read, 10.0 MiB/s, 1.0 GiB written, ETA 5s"
        );
        // The DiskImport controller reads these lines back from the importer's log.
        let log = format!("starting\n{}\n", plain_line(&p));
        assert_eq!(
            ido_controllers::diskimport::progress_of(&log).as_deref(),
            Some("50.0%")
        );
    }

    /// Every importer Job the DiskImport controller builds passes arguments this CLI
    /// accepts (the two sides are separate crates; this keeps them in step).
    #[test]
    fn importer_job_arguments_parse() {
        use ido_api::diskimport::*;
        use ido_controllers::diskimport::{ImporterSettings, importer_job};
        let sources: Vec<serde_json::Value> = vec![
            serde_json::json!({"http": {"url": "https://h.example/d.qcow2", "secretRef": "c", "certConfigMap": "ca",
                               "extraHeaders": ["X-A: b"], "checksum": "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}}),
            serde_json::json!({"s3": {"url": "https://minio.example:9000/images/d.qcow2", "secretRef": "c"}}),
            serde_json::json!({"s3": {"url": "s3://images/d.qcow2"}}),
            serde_json::json!({"registry": {"url": "docker://r.example/disks/fedora:41", "secretRef": "c", "platform": "linux/arm64"}}),
        ];
        for (i, source) in sources.into_iter().enumerate() {
            for (mode, prealloc) in [("Filesystem", true), ("Block", false)] {
                let di: DiskImport = serde_json::from_value(serde_json::json!({
                    "apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
                    "metadata": {"name": format!("d{i}"), "namespace": "vms"},
                    "spec": {"source": source, "storage": {"size": "1Gi", "volumeMode": mode}, "preallocation": prealloc},
                }))
                .unwrap();
                let job = importer_job(&di, &ImporterSettings::default(), 1 << 30).expect("a job");
                let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
                let args = c.args.clone().or(c.command.clone()).unwrap();
                let at = args
                    .iter()
                    .position(|a| a == "import")
                    .expect("import subcommand");
                let rest: Vec<&str> = args[at + 1..].iter().map(String::as_str).collect();
                if let Err(e) = parse(&rest) {
                    panic!("source {i} ({mode}): {rest:?} does not parse: {e}");
                }
            }
        }
        // Archives: unpacked into the claim's root.
        let archives = [
            serde_json::json!({"http": {"url": "https://h.example/root.tar.xz", "secretRef": "c", "certConfigMap": "ca",
                               "extraHeaders": ["X-A: b"], "checksum": "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}}),
            serde_json::json!({"s3": {"url": "https://minio.example:9000/images/root.tar", "secretRef": "c"}}),
        ];
        for (i, source) in archives.into_iter().enumerate() {
            let di: DiskImport = serde_json::from_value(serde_json::json!({
                "apiVersion": "ido.dev/v1alpha1", "kind": "DiskImport",
                "metadata": {"name": format!("a{i}"), "namespace": "vms"},
                "spec": {"source": source, "contentType": "archive", "storage": {"size": "1Gi"}, "preallocation": true},
            }))
            .unwrap();
            let job = importer_job(&di, &ImporterSettings::default(), 1 << 30).expect("a job");
            let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
            let args = c.args.clone().unwrap();
            let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            let parsed = parse(&rest).unwrap_or_else(|e| panic!("archive {i}: {rest:?} does not parse: {e}"));
            assert_eq!(parsed.content_type, super::ContentType::Archive);
            assert_eq!(parsed.target, PathBuf::from("/data"));
        }
    }

    #[tokio::test]
    async fn unpacks_an_archive_and_checks_flags() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/app")).unwrap();
        std::fs::write(tree.join("etc/app/config"), b"key: value\n").unwrap();
        std::os::unix::fs::symlink("app/config", tree.join("etc/config")).unwrap();
        let src = dir.path().join("root.tar.gz");
        let st = std::process::Command::new("tar")
            .args(["-czf", src.to_str().unwrap(), "-C", tree.to_str().unwrap(), "etc"])
            .status()
            .unwrap();
        assert!(st.success());
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());

        let args = parse(&[s, o, "--content-type", "archive", "--progress", "none"]).unwrap();
        assert_eq!(import_cmd(args).await.unwrap(), ExitCode::SUCCESS);
        assert_eq!(std::fs::read(out.join("etc/config")).unwrap(), b"key: value\n");
        assert_eq!(
            std::fs::read_link(out.join("etc/config")).unwrap(),
            PathBuf::from("app/config")
        );

        // Again: `etc` is there now, so the archive is refused for good (exit 2), and the
        // directory holds what it held.
        let args = parse(&[s, o, "--content-type", "archive", "--progress", "none"]).unwrap();
        assert_eq!(import_cmd(args).await.unwrap(), ExitCode::from(EXIT_PERMANENT));
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["etc"]);

        for (flag, value) in [
            ("--format", Some("raw")),
            ("--size", Some("1Gi")),
            ("--resume", None),
            ("--force", None),
        ] {
            let mut a = vec![s, o, "--content-type", "archive", flag];
            a.extend(value);
            let e = import_cmd(parse(&a).unwrap()).await.unwrap_err().to_string();
            assert_eq!(
                e,
                format!("{flag} applies to --content-type kubevirt (a disk image) only")
            );
        }
        let e = import_cmd(parse(&[s, o, "--skip-special-files"]).unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--skip-special-files applies to --content-type archive only");
        assert!(parse(&[s, o, "--content-type", "zip"]).is_err());
    }
}
