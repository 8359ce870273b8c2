//! `ido import SOURCE TARGET`: stream a disk image (file, stdin, HTTP(S), S3 or a
//! containerDisk image in a registry; gzip, xz, zstd, bzip2, tar; raw, ISO, qcow2, …) into
//! a raw file or block device, sparse, with no scratch file; with `--content-type archive`,
//! unpack a tar (maybe compressed) into an existing directory instead. See
//! `docs/disk-import.md`.
//! Secrets never come from arguments: passwords and S3 keys from the environment or files,
//! registry credentials from a docker config file.

mod display;
mod source;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::progress::ProgressMode;
use ido_disk::{
    ArchiveOptions, Checksum, DiskFormat, ImportOptions, ImportReport, SourceSpec, SpecialFiles, TargetSpec,
    import, unpack,
};
use ido_io::progress::human;

/// Environment variable holding the basic-auth password (never a flag: flags show in `ps`).
const PASSWORD_ENV: &str = "IDO_IMPORT_PASSWORD";

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The image: a path, `-` for stdin, an http:// or https:// URL, s3://BUCKET/KEY,
    /// docker://REGISTRY/REPO[:TAG|@DIGEST] (a KubeVirt containerDisk: the one file under
    /// /disk/), or `blank:` (a disk of --size zero bytes: sparse, or allocated with
    /// --preallocate).
    pub(crate) source: String,
    /// Where the raw image goes: a file (created or truncated, written sparsely) or a
    /// block device. With --content-type archive: the existing directory to unpack into.
    pub(crate) target: PathBuf,
    /// What SOURCE holds: kubevirt (a disk image, converted to raw; the default) or archive
    /// (a tar, plain or gzip/xz/zstd/bzip2-compressed, unpacked into TARGET, an existing
    /// directory; members that would land outside it, links leading out of it, device
    /// nodes and names TARGET holds already are refused, and a failed unpack leaves TARGET
    /// as it was).
    #[arg(long, value_enum, value_name = "TYPE", default_value_t = ContentType::Kubevirt)]
    pub(crate) content_type: ContentType,
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
    /// Copy SOURCE byte for byte as a raw disk: nothing detected, nothing peeled (not even
    /// a compression or a tar). What a clone of a volume's disk does.
    #[arg(long, conflicts_with_all = ["format", "disk", "content_type"])]
    pub(crate) verbatim: bool,
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
    match run_import(args).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failed::Permanent(message)) => {
            eprintln!("error: {message}");
            Ok(ExitCode::from(EXIT_PERMANENT))
        }
        Err(Failed::Other(e)) => Err(e),
    }
}

/// How an import failed: for good (a bad or refused image, a checksum mismatch, a target
/// too small: [`EXIT_PERMANENT`]), or otherwise (another try may get through: exit 1).
#[derive(Debug)]
pub(crate) enum Failed {
    Permanent(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failed {
    fn from(e: anyhow::Error) -> Self {
        Failed::Other(e)
    }
}

impl From<ido_disk::Error> for Failed {
    fn from(e: ido_disk::Error) -> Self {
        Failed::Other(e.into())
    }
}

/// `ido import` without the exit code: what the command and `ido run`'s local importer
/// (crate::kubelet) both run.
pub(crate) async fn run_import(args: ImportArgs) -> Result<(), Failed> {
    if args.source == BLANK {
        return blank_cmd(&args);
    }
    let mut source = SourceSpec::parse(&args.source)?;
    source::check_flags(&source, &args)?;
    source::configure(&mut source, &args)?;
    run_import_from(source, args).await
}

/// The import of `source` (made from the flags, or an upload's stream) as the flags say.
pub(crate) async fn run_import_from(source: SourceSpec, args: ImportArgs) -> Result<(), Failed> {
    if args.content_type == ContentType::Archive {
        let special = if args.skip_special_files {
            SpecialFiles::Skip
        } else {
            SpecialFiles::Refuse
        };
        return unpack_cmd(
            source,
            args.target,
            args.checksum,
            args.zstd_window_log,
            special,
            args.progress,
        )
        .await;
    }
    let shown = source.to_string();
    let target = args.target.clone();
    let progress = args.progress;
    let mut opts = import_options(source, args);
    let (display, callback) = display::display(progress);
    opts.progress = callback;

    let result = import(opts).await;
    display.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => return failed(e, &shown, &target),
    };
    print_imported(&report);
    Ok(())
}

/// The options of a disk image import of `source` from the flags.
fn import_options(source: SourceSpec, args: ImportArgs) -> ImportOptions {
    let mut opts = ImportOptions::new(
        source,
        TargetSpec {
            path: args.target,
            capacity: args.size,
        },
    );
    opts.checksum = args.checksum;
    opts.format = args.format;
    opts.verbatim = args.verbatim;
    opts.disk = args.disk;
    opts.preallocate = args.preallocate;
    opts.resume = args.resume;
    opts.overwrite = args.force;
    opts.checkpoint_every = args.checkpoint_every;
    opts.decompress.zstd_window_log_max = args.zstd_window_log;
    opts.decompress.xz_memlimit_threading = args.xz_memory;
    opts.reorder_budget = args.reorder_buffer;
    opts
}

/// The line an import that succeeded ends with.
fn print_imported(report: &ImportReport) {
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
            .as_ref()
            .map(|c| format!("; checksum {c} verified"))
            .unwrap_or_default()
    );
}

/// How a failed import ends: transport trouble may pass on a retry (exit 1); anything else
/// will not (exit 2).
fn failed(e: ido_disk::Error, shown: &str, target: &std::path::Path) -> Result<(), Failed> {
    if !e.is_transient() {
        return Err(Failed::Permanent(format!(
            "importing {shown} into {}: {e}",
            target.display()
        )));
    }
    Err(Failed::Other(
        anyhow::Error::new(e).context(format!("importing {shown} into {}", target.display())),
    ))
}

/// The SOURCE of a blank disk.
const BLANK: &str = "blank:";

/// `ido import blank: TARGET --size N [--preallocate] [--force]`: a disk of N zero bytes.
fn blank_cmd(args: &ImportArgs) -> Result<(), Failed> {
    let Some(size) = args.size else {
        return Err(Failed::Other(anyhow::anyhow!(
            "import blank: needs --size (the disk's size)"
        )));
    };
    if args.content_type != ContentType::Kubevirt {
        return Err(Failed::Other(anyhow::anyhow!(
            "import blank: makes a disk; --content-type archive does not apply"
        )));
    }
    let spec = TargetSpec {
        path: args.target.clone(),
        capacity: None,
    };
    match ido_disk::blank(&spec, size, args.preallocate, args.force) {
        Ok(()) => {
            eprintln!(
                "made a blank disk of {} at {}{}",
                human(size),
                args.target.display(),
                if args.preallocate { ", preallocated" } else { "" }
            );
            Ok(())
        }
        Err(e) => failed(e, "a blank disk", &args.target),
    }
}

/// `--content-type archive`: the source unpacked into the directory `target`.
async fn unpack_cmd(
    source: SourceSpec,
    target: PathBuf,
    checksum: Option<Checksum>,
    zstd_window_log: u32,
    special: SpecialFiles,
    progress: ProgressMode,
) -> Result<(), Failed> {
    let shown = source.to_string();
    let mut opts = ArchiveOptions::new(source, target.clone());
    opts.checksum = checksum;
    opts.decompress.zstd_window_log_max = zstd_window_log;
    opts.special_files = special;
    let (display, callback) = display::display(progress);
    opts.progress = callback;
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
    Ok(())
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

#[cfg(test)]
mod tests;
