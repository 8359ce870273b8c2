//! `ido build [CONTEXT]`: builds an image from a Dockerfile with buildah on this machine,
//! for one or more platforms, one after another.
//!
//! ```text
//!   CONTEXT + Dockerfile ─▶ buildah build --isolation chroot --storage-driver vfs
//!                             --platform OS/ARCH --disable-compression=false -t dir:OUT-OS-ARCH
//!                        ─▶ OUT-OS-ARCH/manifest.json + blobs (its digest: sha256 of manifest.json)
//!   --tag REG/REPO:TAG    ─▶ each pushed by digest (ido-oci, no tag), then the tag names the
//!                            one image, or the index of them all
//! ```
//!
//! buildah is run with an argument vector (no shell); its storage, run and home directories
//! live in the work directory, so nothing outside it is written. A `FROM scratch` image builds
//! for any platform without emulation; a `RUN` step of another platform needs binfmt (qemu).
//! A failed build exits 2 with buildah's error.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Args;
use sha2::Digest as _;

/// `ido build`'s flags.
#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// The build context: the directory COPY and ADD read from.
    #[arg(default_value = ".")]
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(long, short = 'f', value_name = "PATH")]
    file: Option<PathBuf>,
    /// A platform to build for, OS/ARCH[/VARIANT] (repeatable; default: this machine's).
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// A build argument NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    build_args: Vec<(String, String)>,
    /// The stage to build (`--target`).
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// The image format: oci, or docker (v2s2).
    #[arg(long, value_enum, default_value_t = Format::Oci)]
    format: Format,
    /// Where buildah's storage and each platform's image (`dir:` layout) go; kept. Default:
    /// a temporary directory, removed.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Push to `[docker://]REGISTRY/REPO:TAG`: each platform's image by digest, then the tag
    /// (an index for several platforms). Without it, the images are only built.
    #[arg(long, short = 't', value_name = "REF")]
    tag: Option<String>,
    /// Docker config file with credentials (default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Verify the registry's TLS certificate; false allows plain HTTP or unverified TLS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dest_tls_verify: bool,
    /// Directory of CA certificates (`*.crt`) for the registry.
    #[arg(long, value_name = "DIR")]
    dest_cert_dir: Option<PathBuf>,
    /// Write the tag's digest to this file (as skopeo's --digestfile).
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Oci,
    Docker,
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid --build-arg {s:?}: expected NAME=VALUE"))?;
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !ok {
        return Err(format!(
            "invalid --build-arg name {name:?}: letters, digits and _, not starting with a digit"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// One platform's image, built.
#[derive(Debug)]
pub(crate) struct Built {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The `dir:` layout buildah wrote.
    pub dir: PathBuf,
    /// `sha256:` of its manifest.json: the digest it has once pushed.
    pub digest: String,
}

/// Why a build did not happen.
#[derive(Debug)]
pub(crate) enum Failed {
    /// buildah refused the build (its error): trying again changes nothing.
    Build(String),
    /// Anything else (buildah missing, the disk).
    Other(anyhow::Error),
}

/// What one buildah build needs.
pub(crate) struct Plan<'a> {
    pub context: &'a Path,
    pub dockerfile: &'a Path,
    pub platform: &'a str,
    pub build_args: &'a [(String, String)],
    pub target: Option<&'a str>,
    pub docker_format: bool,
    /// buildah's storage, run directory, home and the output live here.
    pub work: &'a Path,
}

/// Builds one platform's image into `WORK/out-OS-ARCH` with buildah (an argument vector,
/// no shell), its stderr passed through; a failure keeps buildah's last lines.
pub(crate) fn build_one(p: &Plan<'_>) -> Result<Built, Failed> {
    let dirs = |name: &str| p.work.join(name);
    for d in ["storage", "run", "home", "xdg", "tmp"] {
        std::fs::create_dir_all(dirs(d))
            .with_context(|| format!("making {}", dirs(d).display()))
            .map_err(Failed::Other)?;
    }
    let out = dirs(&format!("out-{}", p.platform.replace('/', "-")));
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("removing {}", out.display()))
            .map_err(Failed::Other)?;
    }
    let path = |p: &Path| p.display().to_string();
    let mut args: Vec<String> = vec![
        "--root".into(),
        path(&dirs("storage")),
        "--runroot".into(),
        path(&dirs("run")),
        "--storage-driver".into(),
        "vfs".into(),
        "build".into(),
        "--isolation".into(),
        "chroot".into(),
        "--disable-compression=false".into(),
        "--format".into(),
        if p.docker_format { "docker" } else { "oci" }.into(),
        "--platform".into(),
        p.platform.into(),
    ];
    for (k, v) in p.build_args {
        args.extend(["--build-arg".into(), format!("{k}={v}")]);
    }
    if let Some(t) = p.target {
        args.extend(["--target".into(), t.into()]);
    }
    args.extend([
        "-f".into(),
        path(p.dockerfile),
        "-t".into(),
        format!("dir:{}", out.display()),
        path(p.context),
    ]);
    let mut child = std::process::Command::new("buildah")
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dirs("home"))
        .env("XDG_RUNTIME_DIR", dirs("xdg"))
        .env("TMPDIR", dirs("tmp"))
        .env("BUILDAH_ISOLATION", "chroot")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Failed::Other(anyhow::anyhow!(
                "running buildah: {e} (install it: apt-get install buildah)"
            ))
        })?;
    // Its log passes through; the last lines are kept for the error.
    let mut last: VecDeque<String> = VecDeque::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if last.len() == 64 {
                last.pop_front();
            }
            last.push_back(line);
        }
    }
    let status = child
        .wait()
        .context("waiting for buildah")
        .map_err(Failed::Other)?;
    if !status.success() {
        return Err(Failed::Build(build_error(&last, p.platform)));
    }
    let manifest = std::fs::read(out.join("manifest.json"))
        .with_context(|| format!("reading {}/manifest.json", out.display()))
        .map_err(Failed::Other)?;
    Ok(Built {
        platform: p.platform.to_string(),
        dir: out,
        digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest))),
    })
}

/// buildah's account of a failure: from its last `Error:` line (and the few before it, which
/// say which step), at most 3 KiB.
fn build_error(last: &VecDeque<String>, platform: &str) -> String {
    let lines: Vec<&str> = last.iter().map(String::as_str).collect();
    let end = lines
        .iter()
        .rposition(|l| l.starts_with("Error:") || l.contains("error"))
        .map_or(lines.len(), |i| i + 1);
    let start = end.saturating_sub(3);
    let mut m = format!("{platform}: {}", lines[start..end].join("\n"));
    if m.len() > 3072 {
        let mut cut = 3072;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

/// This machine's platform, as buildah names it.
fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

pub(crate) async fn build_cmd(a: BuildArgs) -> anyhow::Result<ExitCode> {
    // The destination first: a bad reference or unreadable credentials fail before a build.
    let dest = match &a.tag {
        Some(t) => {
            let tag = crate::cli::parse_reference(t, "--tag")?;
            if tag.digest().is_some() {
                bail!("--tag {t:?}: a tag is pushed, not a digest");
            }
            let auths = std::sync::Arc::new(crate::sync::load_authfile(a.authfile.as_deref())?);
            let reg = crate::cli::connect(&tag, a.dest_tls_verify, a.dest_cert_dir.as_deref(), auths).await?;
            Some((tag, reg))
        }
        None => None,
    };
    if !a.context.is_dir() {
        bail!("CONTEXT {}: not a directory", a.context.display());
    }
    let dockerfile = a.file.clone().unwrap_or_else(|| a.context.join("Dockerfile"));
    if !dockerfile.is_file() {
        bail!("--file {}: no such file", dockerfile.display());
    }
    let platforms = if a.platforms.is_empty() {
        vec![host_platform()]
    } else {
        a.platforms.clone()
    };
    for p in &platforms {
        let parts: Vec<&str> = p.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
            bail!("invalid --platform {p:?}: expected OS/ARCH[/VARIANT]");
        }
    }
    let temp;
    let work = match &a.work_dir {
        Some(w) => w.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("ido-build-")
                .tempdir()
                .context("making a work directory")?;
            temp.path().to_path_buf()
        }
    };
    let mut images = vec![];
    for platform in &platforms {
        let plan = Plan {
            context: &a.context,
            dockerfile: &dockerfile,
            platform,
            build_args: &a.build_args,
            target: a.target.as_deref(),
            docker_format: a.format == Format::Docker,
            work: &work,
        };
        match tokio::task::block_in_place(|| build_one(&plan)) {
            Ok(b) => {
                let kept = a
                    .work_dir
                    .as_ref()
                    .map(|_| format!(" in {}", b.dir.display()))
                    .unwrap_or_default();
                println!("{} {}{kept}", b.platform, b.digest);
                if let Some((tag, reg)) = &dest {
                    let image = ido_oci::push::push_dir(&b.dir, reg, tag).await.with_context(|| {
                        format!("pushing the {} image to {}", b.platform, tag.repository())
                    })?;
                    images.push(image);
                }
            }
            Err(Failed::Build(m)) => {
                eprintln!("error: the build failed: {m}");
                return Ok(ExitCode::from(
                    ido_controllers::diskimport::PERMANENT_EXIT_CODE as u8,
                ));
            }
            Err(Failed::Other(e)) => return Err(e),
        }
    }
    if let Some((tag, reg)) = &dest {
        let digest = ido_oci::push::publish(reg, tag, &images)
            .await
            .with_context(|| format!("publishing {}", tag.whole()))?;
        println!("{}@{digest}", tag.whole());
        if let Some(f) = &a.digest_file {
            std::fs::write(f, &digest).with_context(|| format!("--digest-file {}", f.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
