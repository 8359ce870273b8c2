//! `ido upload-server TARGET`: the upload pod of a DiskImport whose source is `upload`. It
//! takes one upload over HTTP and streams it through `ido import`'s pipeline into TARGET
//! (converted as it arrives, checksum checked, no scratch copy), then exits: 0 when the
//! disk is in, 2 when the upload can never make one (a bad image, a checksum mismatch),
//! 1 otherwise (the Job starts a new pod for a new upload).
//!
//! ```text
//!   POST /v1beta1/upload[-async|-form|-form-async|-archive] (and /v1alpha1/…)
//!     Authorization: Bearer <token of an UploadTokenRequest>   (checked with the pod key)
//!     body ─▶ channel (8 chunks) ─▶ StreamSource ─▶ ido import's pipeline ─▶ TARGET
//!   HEAD  same paths ─▶ 200, Upload-Offset: bytes taken so far
//!   GET   /healthz   ─▶ 200 (the readiness probe)
//! ```
//!
//! One upload at a time: another while one runs gets 503, one after the disk is in 409.
//! A connection cut in the middle does not end the upload: the pipeline waits (up to
//! `--idle-timeout`) for a request carrying `Upload-Offset: N`, N the bytes taken so far
//! (`HEAD` says), that goes on from there; a request without it while an upload waits gets
//! 409. An upload sent with `Upload-Length` is complete only when that many bytes came; one
//! without it, when its body ends. `Upload-Id`, when the first request gave one, must be
//! given again to go on.
//!
//! The sync paths answer once the disk is in (200), or with why it is not (400 `Saving
//! stream failed: …`); the async ones once the bytes are in, the conversion still
//! finishing.

use std::{
    io::{self, Read},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{FromRequest, Multipart, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use clap::{Args, Parser};
use futures::{Stream, StreamExt};
use ido_controllers::diskimport::upload::UploadKey;
use ido_disk::{SourceSpec, StreamSource};
use tokio::sync::{mpsc, watch};

use crate::import::{ContentType, Failed, ImportArgs, run_import_from};
use crate::progress::ProgressMode;

/// Bytes taken so far (HEAD's answer; a resumed request starts there).
pub const OFFSET: &str = "upload-offset";
/// The whole upload's length, when the client knows it.
pub const LENGTH: &str = "upload-length";
/// The client's name for its upload (a resumed request must give the same).
pub const ID: &str = "upload-id";

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Where the disk goes (a file, created; a block device), or with --content-type
    /// archive the existing directory to unpack into.
    target: PathBuf,
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// File with the pod key (hex) that upload tokens are checked with.
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// The DiskImport the tokens must name: NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    disk_import: String,
    /// How long an upload cut in the middle waits to be continued before it fails.
    #[arg(long, default_value = "10m", value_parser = crate::cli::parse_duration)]
    idle_timeout: Duration,
    /// Target capacity (as `ido import --size`).
    #[arg(long, value_name = "S")]
    size: Option<String>,
    /// Expected checksum of the bytes as sent: sha256:HEX, sha512:, sha1:, md5:.
    #[arg(long, value_name = "ALG:HEX")]
    checksum: Option<String>,
    /// kubevirt (a disk image, converted to raw) or archive (a tar unpacked into TARGET).
    #[arg(long, value_enum, default_value_t = ContentType::Kubevirt)]
    content_type: ContentType,
    /// The upload is a raw disk to take byte for byte (a cross-namespace clone's): nothing
    /// detected, nothing peeled.
    #[arg(long, conflicts_with_all = ["checksum", "content_type"])]
    verbatim: bool,
    /// Write every block of the disk.
    #[arg(long)]
    preallocate: bool,
    /// Replace TARGET if it exists (the claim is the DiskImport's own).
    #[arg(long)]
    force: bool,
    /// Progress display (plain lines are what the DiskImport controller reads).
    #[arg(long, value_enum, default_value_t = ProgressMode::Plain)]
    progress: ProgressMode,
}

/// `ido upload-token`: a token for an upload server started by hand with `--key-file`.
#[derive(Args, Debug)]
pub(crate) struct TokenArgs {
    /// The upload server's key file (64 hex digits).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// The DiskImport the server was started for: NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    disk_import: String,
    /// How long the token is good for.
    #[arg(long, default_value = "5m", value_parser = crate::cli::parse_duration)]
    ttl: Duration,
}

pub(crate) fn token_cmd(a: TokenArgs) -> anyhow::Result<ExitCode> {
    let key = UploadKey::read(&a.key_file).map_err(|e| anyhow::anyhow!("--key-file {e}"))?;
    let (ns, name) = a
        .disk_import
        .split_once('/')
        .with_context(|| format!("--disk-import {:?}: expected NAMESPACE/NAME", a.disk_import))?;
    let claims = ido_controllers::diskimport::upload::Claims {
        ns: ns.into(),
        name: name.into(),
        uid: String::new(),
        exp: (jiff::Timestamp::now() + a.ttl).as_second(),
    };
    println!("{}", key.token(&claims));
    Ok(ExitCode::SUCCESS)
}

/// `ido import`'s flags for this upload: SOURCE is the upload.
pub(crate) fn import_args(a: &ServerArgs) -> anyhow::Result<ImportArgs> {
    #[derive(Parser)]
    struct Wrapped {
        #[command(flatten)]
        import: ImportArgs,
    }
    let mut argv: Vec<String> = vec!["import".into(), "-".into(), a.target.display().to_string()];
    // kubevirt is the default (and --verbatim takes no --content-type).
    if a.content_type == ContentType::Archive {
        argv.extend(["--content-type".into(), "archive".into()]);
    }
    if let Some(s) = &a.size {
        argv.extend(["--size".into(), s.clone()]);
    }
    if let Some(c) = &a.checksum {
        argv.extend(["--checksum".into(), c.clone()]);
    }
    if a.verbatim {
        argv.push("--verbatim".into());
    }
    if a.preallocate {
        argv.push("--preallocate".into());
    }
    if a.force {
        argv.push("--force".into());
    }
    let progress = match a.progress {
        ProgressMode::Auto => "auto",
        ProgressMode::Bar => "bar",
        ProgressMode::Plain => "plain",
        ProgressMode::None => "none",
    };
    argv.extend(["--progress".into(), progress.into()]);
    Ok(Wrapped::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?
        .import)
}

pub(crate) async fn server_cmd(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let key = UploadKey::read(&a.key_file).map_err(|e| anyhow::anyhow!("--key-file {e}"))?;
    let (ns, name) = a
        .disk_import
        .split_once('/')
        .with_context(|| format!("--disk-import {:?}: expected NAMESPACE/NAME", a.disk_import))?;
    let import = import_args(&a)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let server = Uploads::new(key, (ns.into(), name.into()), import, a.idle_timeout);
    eprintln!(
        "upload-server: waiting for the upload of DiskImport {ns}/{name} on {}",
        listener.local_addr()?
    );
    let outcome = server.serve(listener).await?;
    Ok(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, permanent)) => {
            eprintln!("error: {message}");
            ExitCode::from(if permanent {
                ido_controllers::diskimport::PERMANENT_EXIT_CODE as u8
            } else {
                1
            })
        }
    })
}

/// How the upload ended: `Err((message, permanent))`.
pub(crate) type Outcome = Result<(), (String, bool)>;

/// Where the upload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No byte yet.
    Idle,
    /// A request is sending.
    Receiving,
    /// The last request was cut; the pipeline waits for the rest since then.
    Suspended(Instant),
    /// Every byte is in; the pipeline finishes.
    Converting,
    /// The pipeline ended (see `outcome`).
    Ended,
}

struct Upload {
    phase: Phase,
    /// Bytes handed to the pipeline.
    offset: u64,
    /// The whole length (`Upload-Length`), if the client said.
    length: Option<u64>,
    /// The client's `Upload-Id`.
    id: Option<String>,
    /// The pipeline's input while it takes bytes.
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
}

/// The upload server: one upload, its state, and how it ended.
#[derive(Clone)]
pub(crate) struct Uploads {
    inner: Arc<Inner>,
}

struct Inner {
    key: UploadKey,
    disk_import: (String, String),
    idle_timeout: Duration,
    import: Mutex<Option<ImportArgs>>,
    upload: Mutex<Upload>,
    outcome: watch::Sender<Option<Outcome>>,
}

/// How long, after the upload ended, later requests still get their answer (409) before
/// the server exits.
const LINGER: Duration = Duration::from_secs(3);

impl Uploads {
    pub(crate) fn new(
        key: UploadKey,
        disk_import: (String, String),
        import: ImportArgs,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                key,
                disk_import,
                idle_timeout,
                import: Mutex::new(Some(import)),
                upload: Mutex::new(Upload {
                    phase: Phase::Idle,
                    offset: 0,
                    length: None,
                    id: None,
                    tx: None,
                }),
                outcome: watch::channel(None).0,
            }),
        }
    }

    /// Serves until the upload ended (and [`LINGER`] after), and says how it ended.
    pub(crate) async fn serve(self, listener: tokio::net::TcpListener) -> anyhow::Result<Outcome> {
        let mut ended = self.inner.outcome.subscribe();
        let watchdog = tokio::spawn(self.clone().watchdog());
        let app = router(self.clone());
        let shutdown = async move {
            let _ = ended.wait_for(Option::is_some).await;
            tokio::time::sleep(LINGER).await;
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving uploads")?;
        watchdog.abort();
        let outcome = self.inner.outcome.borrow().clone();
        Ok(outcome.unwrap_or(Err(("the server stopped before the upload ended".into(), false))))
    }

    fn upload(&self) -> std::sync::MutexGuard<'_, Upload> {
        self.inner
            .upload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails an upload that was cut and not continued within the idle timeout.
    async fn watchdog(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1).min(self.inner.idle_timeout)).await;
            let mut u = self.upload();
            if let Phase::Suspended(since) = u.phase
                && since.elapsed() >= self.inner.idle_timeout
                && let Some(tx) = u.tx.take()
            {
                let message = format!(
                    "the upload was cut at byte {} and not continued within {:?}",
                    u.offset, self.inner.idle_timeout
                );
                // The pipeline reads this error next and fails with it.
                let _ = tx.try_send(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
                u.phase = Phase::Converting;
            }
        }
    }

    /// `Ok` when the request bears a token for this DiskImport.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "an upload token is required (Authorization: Bearer; ido upload, or an UploadTokenRequest)",
                )
            })?;
        let claims = self
            .inner
            .key
            .verify(token.trim(), jiff::Timestamp::now())
            .map_err(|e| refuse(StatusCode::UNAUTHORIZED, &e.to_string()))?;
        let (ns, name) = &self.inner.disk_import;
        if (&claims.ns, &claims.name) != (ns, name) {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "the upload token is for DiskImport {}/{}, not {ns}/{name}",
                    claims.ns, claims.name
                ),
            ));
        }
        Ok(())
    }

    /// Starts or continues the upload for a request with these headers: the pipeline's
    /// input (a continued request's body starts at the offset it named).
    fn begin(&self, headers: &HeaderMap) -> Result<mpsc::Sender<io::Result<Bytes>>, Refusal> {
        let number = |name: &str| -> Result<Option<u64>, Refusal> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or_else(|| {
                            refuse(
                                StatusCode::BAD_REQUEST,
                                &format!("header {name}: {v:?} is not a number of bytes"),
                            )
                        })
                })
                .transpose()
        };
        let offset = number(OFFSET)?;
        let length = number(LENGTH)?;
        let id = headers.get(ID).and_then(|v| v.to_str().ok()).map(String::from);
        let mut u = self.upload();
        match u.phase {
            Phase::Ended | Phase::Converting => {
                if let Some(Err((m, _))) = self.inner.outcome.borrow().as_ref() {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        &format!("the upload failed: {m}"),
                    ));
                }
                return Err(refuse(StatusCode::CONFLICT, "the upload is complete"));
            }
            Phase::Receiving => {
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "an upload is in progress",
                ));
            }
            Phase::Suspended(_) => {
                if offset != Some(u.offset) || (u.id.is_some() && id != u.id) {
                    return Err(refuse(
                        StatusCode::CONFLICT,
                        &format!(
                            "an upload was cut at byte {}: continue it with {OFFSET}: {}{} (HEAD tells), or wait for it to time out",
                            u.offset,
                            u.offset,
                            if u.id.is_some() { " and its upload-id" } else { "" }
                        ),
                    )
                    .at(u.offset));
                }
                u.phase = Phase::Receiving;
                let tx = u.tx.clone().expect("a suspended upload keeps its input");
                return Ok(tx);
            }
            Phase::Idle => {}
        }
        if offset.is_some_and(|o| o != 0) {
            return Err(refuse(StatusCode::CONFLICT, "no upload to continue: start at byte 0").at(0));
        }
        let Some(args) = self
            .inner
            .import
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Err(refuse(StatusCode::CONFLICT, "the upload is complete"));
        };
        let (tx, rx) = mpsc::channel(8);
        let source = SourceSpec::Stream(StreamSource::new(
            "the upload",
            length,
            Box::new(ChannelReader {
                rx,
                chunk: Bytes::new(),
            }),
        ));
        let outcome = self.inner.outcome.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let result = match run_import_from(source, args).await {
                Ok(()) => Ok(()),
                Err(Failed::Permanent(m)) => Err((m, true)),
                Err(Failed::Other(e)) => Err((format!("{e:#}"), false)),
            };
            {
                let mut u = me.upload();
                u.phase = Phase::Ended;
                u.tx = None;
            }
            outcome.send_replace(Some(result));
        });
        u.phase = Phase::Receiving;
        u.length = length;
        u.id = id;
        u.tx = Some(tx.clone());
        Ok(tx)
    }

    /// Feeds `body` to the pipeline from `offset`; then answers as `sync` says.
    async fn take<S, E>(&self, body: S, tx: mpsc::Sender<io::Result<Bytes>>, sync: bool) -> Response
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let cut = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The pipeline stopped taking bytes: it failed.
                        return self.answer_when_ended().await;
                    }
                    self.upload().offset += n;
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break None,
            }
        };
        drop(tx);
        match self.body_ended(cut) {
            Err(r) => r.into_response(),
            Ok(_) if sync => self.answer_when_ended().await,
            Ok(offset) => (StatusCode::OK, format!("received {offset} bytes; converting\n")).into_response(),
        }
    }

    /// After a request's body: every byte in (the pipeline's input ends; `Ok(bytes)`), or
    /// the upload cut and waiting to go on (`Err`: the answer).
    fn body_ended(&self, cut: Option<String>) -> Result<u64, Refusal> {
        let mut u = self.upload();
        let short = u.length.is_some_and(|l| u.offset < l);
        if cut.is_some() || short {
            // The rest may come in a later request.
            if u.phase == Phase::Receiving {
                u.phase = Phase::Suspended(Instant::now());
            }
            let why = cut.unwrap_or_else(|| "the body ended early".into());
            tracing::warn!(offset = u.offset, "upload cut: {why}");
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the upload stopped at byte {} ({why}); continue with {OFFSET}: {}",
                    u.offset, u.offset
                ),
            )
            .at(u.offset));
        }
        if u.length.is_some_and(|l| u.offset > l) {
            tracing::warn!(offset = u.offset, "more bytes than {LENGTH}");
        }
        // Every byte is in: the pipeline's input ends here.
        if u.phase == Phase::Receiving {
            u.phase = Phase::Converting;
        }
        u.tx = None;
        Ok(u.offset)
    }

    /// 200 once the disk is in, else 400 with why.
    async fn answer_when_ended(&self) -> Response {
        let mut rx = self.inner.outcome.subscribe();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(o) => o.clone().expect("waited for it"),
            Err(_) => Err(("the upload server stopped".into(), false)),
        };
        match outcome {
            Ok(()) => (StatusCode::OK, "the disk is in\n").into_response(),
            Err((m, _)) => {
                refuse(StatusCode::BAD_REQUEST, &format!("Saving stream failed: {m}")).into_response()
            }
        }
    }
}

/// A refusal: its status, a plain-text message (newline-terminated, for curl users), and
/// where the upload stands when that helps the client go on.
struct Refusal {
    code: StatusCode,
    message: String,
    offset: Option<u64>,
}

fn refuse(code: StatusCode, message: &str) -> Refusal {
    Refusal {
        code,
        message: format!("{message}\n"),
        offset: None,
    }
}

impl Refusal {
    /// With the offset the upload stands at.
    fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.code, self.message).into_response();
        if let Some(o) = self.offset {
            r.headers_mut().insert(OFFSET, HeaderValue::from(o));
        }
        r
    }
}

/// The routes: CDI's upload paths (v1beta1 and v1alpha1), and /healthz.
fn router(s: Uploads) -> Router {
    let mut r: Router<Uploads> = Router::new().route("/healthz", get(|| async { "ok\n" }));
    for v in ["v1beta1", "v1alpha1"] {
        r = r
            .route(&format!("/{v}/upload"), post(raw_sync).head(head))
            .route(&format!("/{v}/upload-async"), post(raw_async).head(head))
            .route(&format!("/{v}/upload-archive"), post(archive).head(head))
            .route(&format!("/{v}/upload-form"), post(form_sync).head(head))
            .route(&format!("/{v}/upload-form-async"), post(form_async).head(head));
    }
    // Uploads are streamed: no limit on a body's size (a form's parts included).
    r.layer(axum::extract::DefaultBodyLimit::disable()).with_state(s)
}

async fn head(State(s): State<Uploads>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers) {
        return r.into_response();
    }
    let u = s.upload();
    let mut r = StatusCode::OK.into_response();
    r.headers_mut().insert(OFFSET, HeaderValue::from(u.offset));
    if let Some(l) = u.length {
        r.headers_mut().insert(LENGTH, HeaderValue::from(l));
    }
    r
}

async fn raw(s: Uploads, headers: HeaderMap, body: Body, sync: bool) -> Response {
    if let Err(r) = s.authorize(&headers) {
        return r.into_response();
    }
    let tx = match s.begin(&headers) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    s.take(body.into_data_stream(), tx, sync).await
}

async fn raw_sync(State(s): State<Uploads>, headers: HeaderMap, body: Body) -> Response {
    raw(s, headers, body, true).await
}

async fn raw_async(State(s): State<Uploads>, headers: HeaderMap, body: Body) -> Response {
    raw(s, headers, body, false).await
}

/// CDI's archive path: the same as `upload` for a DiskImport whose content is an archive.
async fn archive(State(s): State<Uploads>, headers: HeaderMap, body: Body) -> Response {
    let is_archive = s
        .inner
        .import
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_none_or(|a| a.content_type == ContentType::Archive);
    if !is_archive {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this DiskImport's contentType is kubevirt: upload the disk to /v1beta1/upload",
        )
        .into_response();
    }
    raw(s, headers, body, true).await
}

async fn form(s: Uploads, req: Request, sync: bool) -> Response {
    if let Err(r) = s.authorize(req.headers()) {
        return r.into_response();
    }
    let headers = req.headers().clone();
    let mut multipart = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, &format!("not a multipart form: {e}")).into_response();
        }
    };
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("file") => {
                let tx = match s.begin(&headers) {
                    Ok(x) => x,
                    Err(r) => return r.into_response(),
                };
                let chunks = futures::stream::unfold(field, |mut f| async move {
                    match f.chunk().await {
                        Ok(Some(c)) => Some((Ok(c), f)),
                        Ok(None) => None,
                        Err(e) => Some((Err(e), f)),
                    }
                });
                return s.take(chunks, tx, sync).await;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                return refuse(StatusCode::BAD_REQUEST, "the form has no part named \"file\"")
                    .into_response();
            }
            Err(e) => {
                return refuse(StatusCode::BAD_REQUEST, &format!("reading the form: {e}")).into_response();
            }
        }
    }
}

async fn form_sync(State(s): State<Uploads>, req: Request) -> Response {
    form(s, req, true).await
}

async fn form_async(State(s): State<Uploads>, req: Request) -> Response {
    form(s, req, false).await
}

/// The pipeline's end of the channel: a blocking reader (the conversion runs on its own
/// thread).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
