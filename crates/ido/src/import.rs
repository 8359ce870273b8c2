//! `ido import SOURCE TARGET`: stream a disk image (file, stdin or HTTP(S); gzip, xz,
//! zstd, bzip2, tar; raw, ISO or qcow2) into a raw file or block device, sparse, with no
//! scratch file. See `docs/disk-import.md`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use ido_disk::{
    BasicAuth, Checksum, DiskFormat, ImportOptions, Progress, ProgressFn, RetryPolicy, SourceSpec,
    TargetSpec, import,
};

/// Environment variable holding the basic-auth password (never a flag: flags show in `ps`).
const PASSWORD_ENV: &str = "IDO_IMPORT_PASSWORD";

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The image: a path, `-` for stdin, or an http:// or https:// URL.
    source: String,
    /// Where the raw image goes: a file (created or truncated, written sparsely) or a
    /// block device.
    target: PathBuf,
    /// Expected checksum of the source bytes as fetched: sha256:HEX, sha512:HEX,
    /// sha1:HEX or md5:HEX. On a mismatch the import fails and the target file is removed.
    #[arg(long, value_name = "ALG:HEX")]
    checksum: Option<Checksum>,
    /// The disk format (raw, iso, qcow2) instead of detecting it. Compressions and tar are
    /// still peeled.
    #[arg(long, value_name = "F")]
    format: Option<DiskFormat>,
    /// Target capacity: the image's virtual size must fit (checked before writing when
    /// the format tells the size). Units: Ki, Mi, Gi, Ti (1024) or K, M, G, T (1000).
    #[arg(long, value_name = "S", value_parser = parse_size)]
    size: Option<u64>,
    /// Extra HTTP request header, `Name: value`. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Basic-auth user name for HTTP. The password is read from $IDO_IMPORT_PASSWORD or
    /// from --password-file.
    #[arg(long)]
    username: Option<String>,
    /// File holding the basic-auth password (trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM bundle) for HTTPS.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Do not verify the server's TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// HTTP failures in a row (no byte received in between) before giving up.
    #[arg(long, default_value_t = 8, value_name = "N")]
    retries: u32,
    /// Progress display: auto (a bar on a terminal, plain lines otherwise), bar, plain,
    /// none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    Auto,
    Bar,
    Plain,
    None,
}

pub(crate) async fn import_cmd(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let ImportArgs {
        source,
        target,
        checksum,
        format,
        size,
        headers,
        username,
        password_file,
        ca_file,
        insecure,
        retries,
        progress,
    } = args;
    let mut source = SourceSpec::parse(&source)?;
    match &mut source {
        SourceSpec::Http(http) => {
            for h in &headers {
                http.add_header_line(h)?;
            }
            if let Some(username) = username {
                let password = match &password_file {
                    Some(p) => std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                    None => std::env::var(PASSWORD_ENV).unwrap_or_default(),
                };
                http.basic_auth = Some(BasicAuth { username, password });
            }
            if let Some(p) = &ca_file {
                http.tls.ca_bundle =
                    Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?);
            }
            http.tls.insecure = insecure;
            http.retry = RetryPolicy {
                attempts: retries.max(1),
                ..RetryPolicy::default()
            };
        }
        _ => {
            let http_only = [
                (!headers.is_empty(), "--header"),
                (username.is_some(), "--username"),
                (password_file.is_some(), "--password-file"),
                (ca_file.is_some(), "--ca-file"),
                (insecure, "--insecure"),
            ];
            if let Some((_, flag)) = http_only.iter().find(|(set, _)| *set) {
                anyhow::bail!("{flag} applies to http(s) sources only");
            }
        }
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
    let display = Display::new(progress);
    opts.progress = display.callback();

    let result = import(opts).await;
    display.finish();
    let report = result.with_context(|| format!("importing {shown} into {}", target.display()))?;
    let layers = if report.layers.is_empty() {
        String::new()
    } else {
        format!(" ({})", report.layers.join(", "))
    };
    eprintln!(
        "imported {}{layers}: {} virtual from {} read in {:.1?}{}",
        report.format,
        human(report.virtual_size),
        human(report.source_bytes),
        report.elapsed,
        report
            .checksum
            .map(|c| format!("; checksum {c} verified"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
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

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The progress display: an indicatif bar, plain lines every few seconds, or nothing.
enum Display {
    Bar(indicatif::ProgressBar),
    Plain(Arc<Mutex<Option<Instant>>>),
    None,
}

/// Least time between two plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Display {
    fn new(mode: ProgressMode) -> Self {
        let terminal = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::Bar | ProgressMode::Auto if terminal || mode == ProgressMode::Bar => {
                let bar = indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr_with_hz(4),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.enable_steady_tick(Duration::from_millis(250));
                Display::Bar(bar)
            }
            ProgressMode::None => Display::None,
            _ => Display::Plain(Arc::new(Mutex::new(None))),
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

        let args = parse(&[s, o, "--size", "2Mi", "--progress", "none"]).unwrap();
        let e = import_cmd(args).await.unwrap_err();
        assert!(format!("{e:#}").contains("image needs"), "{e:#}");
        assert!(!out.exists());

        let args = parse(&[s, o, "--header", "A: b"]).unwrap();
        let e = import_cmd(args).await.unwrap_err();
        assert!(
            e.to_string().contains("--header applies to http(s) sources only"),
            "{e}"
        );

        assert!(parse(&[s, o, "--checksum", "sha256:zz"]).is_err());
        assert!(parse(&[s, o, "--format", "vhd"]).is_err());
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
            eta: Some(Duration::from_secs(5)),
            ..Progress::default()
        };
        assert_eq!(
            plain_line(&p),
            "import: 50.0% 50.0 MiB of 100.0 MiB read, 10.0 MiB/s, 1.0 GiB written, ETA 5s"
        );
    }
}
