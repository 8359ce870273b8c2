//! From `ido import`'s flags to its source: which flags apply to which source and content
//! type, and the source's TLS, credentials and retries.

use anyhow::Context as _;
use ido_disk::source::s3;
use ido_disk::{BasicAuth, RetryPolicy, SourceSpec};

use super::{ContentType, ImportArgs, PASSWORD_ENV};

/// Refuses flags that do not apply to `source` or to the content type: they are errors,
/// not silently ignored.
pub(super) fn check_flags(source: &SourceSpec, a: &ImportArgs) -> anyhow::Result<()> {
    let m = &*a.more;
    let (http_like, is_s3, is_registry) = match source {
        SourceSpec::Http(_) => (true, false, false),
        SourceSpec::S3(_) => (true, true, false),
        SourceSpec::Registry(_) => (false, false, true),
        _ => (false, false, false),
    };
    // Flags that do not apply to this source are errors, not silently ignored.
    let misplaced = [
        (!a.headers.is_empty(), "--header", http_like, "http(s) and s3"),
        (a.username.is_some(), "--username", http_like && !is_s3, "http(s)"),
        (
            a.username_file.is_some(),
            "--username-file",
            http_like && !is_s3,
            "http(s)",
        ),
        (
            a.ca_dir.is_some(),
            "--ca-dir",
            http_like || is_registry,
            "http(s), s3 and docker",
        ),
        (
            a.password_file.is_some(),
            "--password-file",
            http_like && !is_s3,
            "http(s)",
        ),
        (
            a.ca_file.is_some(),
            "--ca-file",
            http_like || is_registry,
            "http(s), s3 and docker",
        ),
        (
            a.insecure,
            "--insecure",
            http_like || is_registry,
            "http(s), s3 and docker",
        ),
        (
            a.connections.is_some(),
            "--connections",
            http_like,
            "http(s) and s3",
        ),
        (m.s3_endpoint.is_some(), "--s3-endpoint", is_s3, "s3"),
        (m.s3_region.is_some(), "--s3-region", is_s3, "s3"),
        (
            m.s3_credentials_file.is_some(),
            "--s3-credentials-file",
            is_s3,
            "s3",
        ),
        (m.s3_anonymous, "--s3-anonymous", is_s3, "s3"),
        (
            m.s3_access_key_file.is_some(),
            "--s3-access-key-file",
            is_s3,
            "s3",
        ),
        (m.authfile.is_some(), "--authfile", is_registry, "docker"),
        (m.platform.is_some(), "--platform", is_registry, "docker"),
        (
            m.src_tls_verify.is_some(),
            "--src-tls-verify",
            is_registry,
            "docker",
        ),
        (m.src_cert_dir.is_some(), "--src-cert-dir", is_registry, "docker"),
    ];
    if let Some((_, flag, _, kinds)) = misplaced.iter().find(|(set, _, ok, _)| *set && !*ok) {
        anyhow::bail!("{flag} applies to {kinds} sources only");
    }
    check_content_type_flags(a)
}

/// Refuses flags of the other content type.
fn check_content_type_flags(a: &ImportArgs) -> anyhow::Result<()> {
    let archive = a.content_type == ContentType::Archive;
    // Flags of one content type only.
    let misplaced = [
        (a.format.is_some(), "--format", false),
        (a.disk.is_some(), "--disk", false),
        (a.size.is_some(), "--size", false),
        (a.preallocate, "--preallocate", false),
        (a.resume, "--resume", false),
        (a.force, "--force", false),
        (a.skip_special_files, "--skip-special-files", true),
    ];
    if let Some((_, flag, for_archive)) = misplaced.iter().find(|(set, _, a)| *set && *a != archive) {
        let kind = if *for_archive {
            "archive"
        } else {
            "kubevirt (a disk image)"
        };
        anyhow::bail!("{flag} applies to --content-type {kind} only");
    }
    Ok(())
}

/// Sets up `source` from the flags: CA bundle, TLS, headers, retries, and credentials
/// (read from files or the environment, never from arguments).
pub(super) fn configure(source: &mut SourceSpec, args: &ImportArgs) -> anyhow::Result<()> {
    let ca_bundle = ca_bundle(args)?;
    let retry = RetryPolicy {
        attempts: args.retries.max(1),
        ..RetryPolicy::default()
    };
    let http_settings = |http: &mut ido_disk::HttpOptions| -> anyhow::Result<()> {
        for h in &args.headers {
            http.add_header_line(h)?;
        }
        http.tls.ca_bundle = ca_bundle.clone();
        http.tls.insecure = args.insecure;
        http.retry = retry.clone();
        if let Some(n) = args.connections {
            http.connections = n;
        }
        Ok(())
    };
    match source {
        SourceSpec::Http(http) => {
            http_settings(http)?;
            http_credentials(http, args)?;
        }
        SourceSpec::S3(o) => {
            http_settings(&mut o.http)?;
            configure_s3(o, args)?;
        }
        SourceSpec::Registry(o) => configure_registry(o, args, ca_bundle.as_deref(), retry)?,
        _ => {}
    }
    Ok(())
}

/// The CA certificates of `--ca-file` and `--ca-dir`, if any.
fn ca_bundle(args: &ImportArgs) -> anyhow::Result<Option<String>> {
    let mut pem = String::new();
    if let Some(p) = &args.ca_file {
        pem += &std::fs::read_to_string(p).with_context(|| format!("reading --ca-file {}", p.display()))?;
    }
    if let Some(d) = &args.ca_dir {
        // A mounted ConfigMap: every key a file, beside hidden `..data` links.
        let visible = |p: &std::path::Path| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        };
        pem += &crate::sync::read_pem_dir(d, "--ca-dir", visible)?;
    }
    Ok((!pem.is_empty()).then_some(pem))
}

/// Basic auth of an HTTP source: the user name from `--username(-file)`, the password from
/// `--password-file` or the environment.
fn http_credentials(http: &mut ido_disk::HttpOptions, args: &ImportArgs) -> anyhow::Result<()> {
    let username = match &args.username_file {
        Some(f) => Some(read_secret_file(f, "--username-file")?),
        None => args.username.clone(),
    };
    if let Some(username) = username {
        let password = match &args.password_file {
            Some(p) => read_secret_file(p, "--password-file")?,
            None => std::env::var(PASSWORD_ENV).unwrap_or_default(),
        };
        http.basic_auth = Some(BasicAuth { username, password });
    }
    Ok(())
}

/// An S3 source's endpoint, region and keys (anonymous, key files, a credentials file, or
/// the environment).
fn configure_s3(o: &mut ido_disk::source::S3Options, args: &ImportArgs) -> anyhow::Result<()> {
    let m = &*args.more;
    o.endpoint = m.s3_endpoint.clone();
    if let Some(r) = m.s3_region.clone() {
        o.region = r;
    }
    o.credentials = if m.s3_anonymous {
        None
    } else if let (Some(a), Some(k)) = (&m.s3_access_key_file, &m.s3_secret_key_file) {
        Some(ido_io::s3::S3Credentials {
            access_key_id: read_secret_file(a, "--s3-access-key-file")?,
            secret_access_key: read_secret_file(k, "--s3-secret-key-file")?,
        })
    } else if let Some(f) = &m.s3_credentials_file {
        let profile = m.s3_profile.clone().or_else(|| std::env::var("AWS_PROFILE").ok());
        Some(s3::credentials_from_file(f, profile.as_deref())?)
    } else {
        s3::credentials_from_env()?
    };
    Ok(())
}

/// A registry source's credentials, platform, TLS and CA certificates (`--src-cert-dir`,
/// then `--ca-file`/`--ca-dir`), and retries.
fn configure_registry(
    o: &mut ido_disk::source::RegistryOptions,
    args: &ImportArgs,
    ca_bundle: Option<&str>,
    retry: RetryPolicy,
) -> anyhow::Result<()> {
    let m = &*args.more;
    o.auth = crate::sync::load_authfile(m.authfile.as_deref())?;
    o.platform = m.platform.clone();
    o.tls_verify = m.src_tls_verify.unwrap_or(true) && !args.insecure;
    let mut pem = m
        .src_cert_dir
        .as_deref()
        .map(crate::sync::read_cert_dir)
        .transpose()?
        .unwrap_or_default();
    if let Some(extra) = ca_bundle {
        pem.push_str(extra);
    }
    o.ca_bundle = (!pem.is_empty()).then_some(pem);
    o.retry = retry;
    Ok(())
}

/// A one-line secret file (a mounted Secret key), trailing newline removed.
pub(super) fn read_secret_file(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?
        .trim_end_matches(['\r', '\n'])
        .to_string())
}
