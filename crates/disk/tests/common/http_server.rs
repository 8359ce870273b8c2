//! A small HTTP/1.1 file server for import tests, with Range support and fault injection:
//! cut the connection at a byte offset, answer 503 a number of times, hide
//! `Accept-Ranges` (and ignore Range), require basic auth or a header. It records every
//! request it sees. One request per connection (`Connection: close`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server misbehaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Honour Range and advertise `Accept-Ranges: bytes`. Without it, every GET gets the
    /// whole file with 200.
    pub ranges: bool,
    /// Close the connection once the body has reached this absolute offset (once).
    pub cut_at: Option<u64>,
    /// Answer this many first requests with 503.
    pub fail_first: u32,
    /// Expected `Authorization` header value (401 otherwise).
    pub authorization: Option<String>,
    /// A header that must be present with this value (403 otherwise).
    pub required_header: Option<(String, String)>,
    /// An ETag to send.
    pub etag: Option<String>,
    /// From this request on (0-based count), the ETag is this other value: the object
    /// "changed" (`If-Range` with the old one then gets the whole object with 200).
    pub etag_after: Option<(u32, String)>,
    /// Sends at most this many body bytes per second (per response).
    pub rate: Option<u64>,
}

/// One request as seen by the server.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line's path.
    pub path: String,
    /// Lower-cased header names with their values.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The end (inclusive) of a `Range: bytes=N-M` header.
    pub fn range_end(&self) -> Option<u64> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .split('-')
            .nth(1)?
            .parse()
            .ok()
    }

    /// The start of a `Range: bytes=N-` header.
    pub fn range_start(&self) -> Option<u64> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
}

/// A running server; stops when dropped.
pub struct FileServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    data: Vec<u8>,
    b: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: AtomicU32,
    cut_done: AtomicBool,
}

impl FileServer {
    /// Serves `data` at `/image` on a loopback port.
    pub async fn start(data: Vec<u8>, b: Behaviour) -> Self {
        // The clients of the tests are built by the library, which expects the program to
        // have chosen a TLS crypto provider.
        ido_testkit::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            data,
            b,
            seen: seen.clone(),
            count: AtomicU32::new(0),
            cut_done: AtomicBool::new(false),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = state.clone();
                tokio::spawn(async move {
                    let _ = handle(sock, st).await;
                });
            }
        });
        FileServer { addr, seen, task }
    }

    /// The URL of the file.
    pub fn url(&self) -> String {
        format!("http://{}/image", self.addr)
    }

    /// A URL that answers 404.
    pub fn missing_url(&self) -> String {
        format!("http://{}/missing", self.addr)
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(mut sock: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await?;
        if n == 0 || buf.len() > 64 << 10 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = Seen { path, headers };
    st.seen.lock().unwrap().push(req.clone());
    let n = st.count.fetch_add(1, Ordering::SeqCst);

    let simple =
        |status: &str| format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if n < st.b.fail_first {
        let r = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        return sock.write_all(r.as_bytes()).await;
    }
    if let Some(auth) = &st.b.authorization
        && req.header("authorization") != Some(auth.as_str())
    {
        return sock.write_all(simple("401 Unauthorized").as_bytes()).await;
    }
    if let Some((name, value)) = &st.b.required_header
        && req.header(&name.to_ascii_lowercase()) != Some(value.as_str())
    {
        return sock.write_all(simple("403 Forbidden").as_bytes()).await;
    }
    if req.path != "/image" {
        return sock.write_all(simple("404 Not Found").as_bytes()).await;
    }
    let len = st.data.len() as u64;
    let etag = match &st.b.etag_after {
        Some((from, e)) if n >= *from => Some(e.clone()),
        _ => st.b.etag.clone(),
    };
    // `If-Range` with another validator: the whole (current) object, as RFC 9110 says.
    let if_range_ok = match (req.header("if-range"), &etag) {
        (Some(v), Some(e)) => v == e,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let ranged = st.b.ranges && req.header("range").is_some() && if_range_ok;
    let start = if ranged { req.range_start().unwrap_or(0) } else { 0 };
    let stop = if ranged {
        req.range_end().map_or(len, |e| (e + 1).min(len))
    } else {
        len
    };
    let mut head = if ranged {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n",
            stop.saturating_sub(1)
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n",
        stop - start
    ));
    if st.b.ranges {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if let Some(e) = &etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    // The cut happens in the first response that actually reaches it (a client may drop a
    // response early: a parallel download's first GET serves only the first chunk).
    let cut = st.b.cut_at.filter(|c| *c > start && *c < stop);
    let first_end = cut.unwrap_or(stop);
    const CHUNK: usize = 64 << 10;
    let pace =
        st.b.rate
            .map(|r| std::time::Duration::from_secs_f64(CHUNK as f64 / r.max(1) as f64));
    for chunk in st.data[start as usize..first_end as usize].chunks(CHUNK) {
        sock.write_all(chunk).await?;
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    if cut.is_some() && !st.cut_done.swap(true, Ordering::SeqCst) {
        sock.flush().await?;
        return Ok(()); // dropping the socket closes it early
    }
    for chunk in st.data[first_end as usize..stop as usize].chunks(CHUNK) {
        sock.write_all(chunk).await?;
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    sock.flush().await?;
    Ok(())
}
