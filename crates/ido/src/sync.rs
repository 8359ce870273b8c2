//! `ido tags` (list a repository's tags, optionally matching a pattern) and `ido sync`
//! (one pass of ImageSync and image-operator Image manifests, in-process, over a file-backed
//! store).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::{StreamExt, stream};
use ido_api::{ConditionStatus, ImageSync, condition::find, image_operator::Image, imagesync::conditions};
use ido_controllers::{
    Context, Settings,
    file_store::FileStore,
    imagesync::{self, SyncKind, sort_tags},
    run::{Manifest, apply, load_manifests},
    store::Store,
};
use ido_oci::{
    auth::AuthStore,
    registry::{DEFAULT_CONCURRENCY, Registry, TlsSettings},
    tags::{TagPattern, list_tags},
};

/// `ido tags`: skopeo's flag names where they mean the same.
#[derive(Args)]
pub(crate) struct TagsArgs {
    /// Repository, e.g. `quay.io/argoproj/argocd` (the `docker://` prefix is optional; no tag).
    repo: String,
    /// Only tags matching: a tag, `2.13.x`, a semver range (`>=2.13, <2.14`) or `regex:<expr>`.
    #[arg(long)]
    pattern: Option<String>,
    /// Let the pattern match release candidates (`-rc.N`, `-rcN`).
    #[arg(long)]
    rc: bool,
    /// Docker config file with credentials (default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Verify the registry's TLS certificate; false allows plain HTTP or unverified TLS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// Directory of CA certificates (`*.crt`) for the registry.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

/// Prints the repository's tags (matching `--pattern`), lowest version first, one per line.
pub(crate) async fn tags_cmd(args: TagsArgs) -> anyhow::Result<ExitCode> {
    let repo = parse_repository(&args.repo)?;
    let pattern = args.pattern.as_deref().map(TagPattern::parse).transpose()?;
    let tls = TlsSettings {
        verify: args.tls_verify,
        ca_bundle: args.cert_dir.as_deref().map(read_cert_dir).transpose()?,
    };
    let auths = Arc::new(load_authfile(args.authfile.as_deref())?);
    let reg = Registry::connect(repo.resolve_registry(), &tls, auths, DEFAULT_CONCURRENCY).await?;
    let mut tags: Vec<String> = list_tags(&reg, &repo)
        .await?
        .into_iter()
        .filter(|t| pattern.as_ref().is_none_or(|p| p.matches(t, args.rc)))
        .collect();
    sort_tags(&mut tags);
    if tags.is_empty() {
        eprintln!("no tag of {}/{} matches", repo.registry(), repo.repository());
    }
    for t in &tags {
        crate::cli::out(format_args!("{t}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ido sync`.
#[derive(Args)]
pub(crate) struct SyncArgs {
    /// ImageSync manifests and the Secrets and ConfigMaps they reference (files, or directories of
    /// `*.yaml`/`*.yml`; multi-document YAML).
    #[arg(long = "file", short = 'f', required = true)]
    files: Vec<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// State directory kept between runs (status: OnceByTag then skips tags it copied).
    /// Default: a temporary directory, removed afterwards.
    #[arg(long)]
    state: Option<PathBuf>,
    /// ImageSyncs synced at once (each copies its `spec.concurrency` tags at once).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Wait for another ido using the same state directory to finish, instead of failing.
    #[arg(long)]
    wait_lock: bool,
}

/// One pass of every ImageSync given, whatever its mode and schedule; prints a table per
/// tag; exits 1 unless every ImageSync ends Ready.
pub(crate) async fn sync_cmd(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let manifests = load_manifests(&args.files, &args.namespace)?;
    // (is an Image, namespace, name)
    let mut names = vec![];
    let of = |m: &kube::api::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    for m in &manifests {
        match m {
            Manifest::ImageSync(is) => names.push((false, of(&is.metadata))),
            Manifest::Image(i) => names.push((true, of(&i.metadata))),
            Manifest::Secret(_) | Manifest::ConfigMap(_) => {}
            Manifest::Release(_)
            | Manifest::NodeImage(_)
            | Manifest::DiskImport(_)
            | Manifest::DiskSource(_)
            | Manifest::DiskImportCron(_)
            | Manifest::DataVolume(_)
            | Manifest::Claim(_) => {
                bail!(
                    "ido sync takes ImageSync, Image (skopeo.io), Secret and ConfigMap manifests; use `ido run` for Releases, NodeImages, DiskImports, DataVolumes and claims"
                )
            }
        }
    }
    if names.is_empty() {
        bail!("no ImageSync or Image in the manifests given");
    }
    let temp;
    let state = match &args.state {
        Some(s) => s.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("ido-sync-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let _lock = ido_controllers::file_store::StateLock::acquire(&state, args.wait_lock).await?;
    let store = FileStore::open(&state).with_context(|| format!("opening state {}", state.display()))?;
    apply(&store, &manifests).await?;
    let ctx = Context::new(store, Settings::default());
    let ctx = &ctx;
    let results: Vec<anyhow::Result<(bool, String)>> = stream::iter(&names)
        .map(|(image, (ns, name))| async move {
            if *image {
                one::<Image>(ctx, ns, name).await
            } else {
                one::<ImageSync>(ctx, ns, name).await
            }
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    let mut ok = true;
    for ((_, (ns, name)), r) in names.iter().zip(results) {
        match r {
            Ok((ready, table)) => {
                ok &= ready;
                crate::cli::out(table)?;
            }
            Err(e) => {
                ok = false;
                crate::cli::out(format_args!("{ns}/{name}: error: {e:#}\n"))?;
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One pass of the ImageSync or Image `ns/name`: whether it ended Ready, and its table.
async fn one<K: SyncKind>(ctx: &Context<FileStore>, ns: &str, name: &str) -> anyhow::Result<(bool, String)> {
    let kind = K::kind(&());
    let is = ctx
        .store
        .get::<K>(Some(ns), name)
        .await?
        .with_context(|| format!("{kind} {ns}/{name} vanished"))?;
    let done = imagesync::sync(&is, ctx)
        .await?
        .with_context(|| format!("{kind} {ns}/{name} vanished"))?;
    Ok((is_ready(&done), table(&done)))
}

fn is_ready<K: SyncKind>(is: &K) -> bool {
    is.sync_status()
        .and_then(|s| find(&s.conditions, conditions::READY))
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// An ImageSync's outcome: a line with its Ready condition, then one row per tag.
fn table<K: SyncKind>(is: &K) -> String {
    let st = is.sync_status().cloned().unwrap_or_default();
    let spec = is.sync_spec();
    let ready = find(&st.conditions, conditions::READY);
    let mut out = format!(
        "{}/{} ({} {} {} -> {}): {} {}: {}\n",
        is.meta().namespace.as_deref().unwrap_or_default(),
        is.meta().name.as_deref().unwrap_or_default(),
        spec.mode,
        spec.source.name,
        spec.source.version.as_deref().unwrap_or_default(),
        spec.destination.name,
        if is_ready(is) { "Ready" } else { "NotReady" },
        ready.map(|c| c.reason.as_str()).unwrap_or("Pending"),
        ready.map(|c| c.message.as_str()).unwrap_or_default(),
    );
    if st.tags.is_empty() {
        return out;
    }
    let tag = |t: &ido_api::TagStatus| match &t.destination_tag {
        Some(d) => format!("{} -> {d}", t.tag),
        None => t.tag.clone(),
    };
    let tag_w = st.tags.iter().map(|t| tag(t).len()).max().unwrap_or(0).max(3);
    let digest_w = st
        .tags
        .iter()
        .map(|t| t.destination_digest.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(0)
        .max(6);
    out += &format!(
        "  {:<tag_w$}  {:<9}  {:<digest_w$}  {:>10}  MESSAGE\n",
        "TAG", "RESULT", "DIGEST", "BYTES"
    );
    for t in &st.tags {
        out += &format!(
            "  {:<tag_w$}  {:<9}  {:<digest_w$}  {:>10}  {}\n",
            tag(t),
            t.result.as_str(),
            t.destination_digest.as_deref().unwrap_or("-"),
            t.bytes,
            t.message
        );
    }
    out
}

/// A repository reference without tag or digest; `docker://` optional.
pub(crate) fn parse_repository(s: &str) -> anyhow::Result<ido_oci::Reference> {
    let bare = s.strip_prefix("docker://").unwrap_or(s);
    let last = bare.rsplit('/').next().unwrap_or_default();
    if !bare.contains("://") && (last.contains(':') || last.contains('@')) {
        bail!(
            "REPO \"{}\": give the repository without tag or digest (use --pattern to select tags)",
            ido_io::redact::text(&ido_io::redact::userinfo(s))
        );
    }
    crate::cli::parse_reference(&format!("{s}:latest"), "REPO")
}

/// Credentials from `path`, else `$REGISTRY_AUTH_FILE`, else `~/.docker/config.json` (if
/// it exists), else none.
pub(crate) fn load_authfile(path: Option<&Path>) -> anyhow::Result<AuthStore> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os("REGISTRY_AUTH_FILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
            .filter(|p| p.exists()),
    };
    match path {
        Some(p) => {
            let data = std::fs::read(&p).with_context(|| format!("reading --authfile {}", p.display()))?;
            Ok(AuthStore::from_docker_config(&data, &p.display().to_string())?)
        }
        None => Ok(AuthStore::default()),
    }
}

/// The `*.crt` files of a directory, concatenated (skopeo's `--cert-dir`).
pub(crate) fn read_cert_dir(dir: &Path) -> anyhow::Result<String> {
    read_pem_dir(dir, "cert dir", |p| {
        p.extension().and_then(|x| x.to_str()) == Some("crt")
    })
}

/// The PEM files of `dir` that `select` keeps (links followed, sorted by name),
/// concatenated; `what` names the directory in errors. Every file must hold a certificate,
/// and at least one must be there.
pub(crate) fn read_pem_dir(dir: &Path, what: &str, select: impl Fn(&Path) -> bool) -> anyhow::Result<String> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {what} {}", dir.display()))? {
        let p = e
            .with_context(|| format!("reading {what} {}", dir.display()))?
            .path();
        if p.is_file() && select(&p) {
            files.push(p);
        }
    }
    files.sort();
    let mut pem = String::new();
    for p in files {
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            bail!("{what}: {} holds no PEM certificate", p.display());
        }
        pem += &text;
        pem.push('\n');
    }
    if pem.is_empty() {
        bail!("{what} {}: no certificate file", dir.display());
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_with_or_without_docker_prefix() {
        let r = parse_repository("docker://quay.io/argoproj/argocd").unwrap();
        assert_eq!((r.registry(), r.repository()), ("quay.io", "argoproj/argocd"));
        let r = parse_repository("nginx").unwrap();
        assert_eq!((r.registry(), r.repository()), ("docker.io", "library/nginx"));
        let r = parse_repository("127.0.0.1:5000/app").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert!(parse_repository("quay.io/a/b:1.0").is_err());
        assert!(parse_repository("oci-archive://x").is_err());
    }
}
