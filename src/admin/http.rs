//! The admin endpoint's HTTP/1.1 server: one thread, one single-threaded tokio runtime (epoll),
//! so a thousand idle or slow clients cost a task and a small buffer each and never a thread,
//! and a scraper is answered while they wait.
//!
//! One request per connection (`Connection: close`). The head is bounded ([`MAX_HEAD`], else 431)
//! and, with its body (`Content-Length` only, at most [`MAX_BODY`], else 413; chunked bodies get
//! 411), must arrive within [`REQUEST_DEADLINE`] (else 408). Beyond `admin.max_connections`
//! connections at once, a client still has its request read (within one second), then gets
//! `503 busy`, so it sees an answer instead of a reset. Listens on TCP, a unix socket, or both.

use super::{dispatch, Request, Response, State};
use crate::metrics::AdminRefusal;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (a route's table).
pub const MAX_BODY: usize = 1024 * 1024;
/// The whole request (head and body) must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client beyond `max_connections` has to send its request before its 503.
const BUSY_DEADLINE: Duration = Duration::from_secs(1);

/// Where the server listens.
pub(super) struct Listeners {
    pub(super) tcp: Option<std::net::TcpListener>,
    /// The socket, its path and the inode it was bound as (the file is removed at the end only
    /// if it is still that one: after a binary upgrade it is the new process's).
    pub(super) unix: Option<(std::os::unix::net::UnixListener, PathBuf, u64)>,
}

/// Runs the server until `stop` fires, then until the connections it accepted are answered.
pub(super) fn run(listeners: Listeners, state: Arc<State>, stop: tokio::sync::watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "admin: cannot start its runtime; no admin endpoint");
            return;
        }
    };
    rt.block_on(async move {
        let active = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        if let Some(l) = listeners.tcp {
            match l.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(l)) {
                Ok(l) => tasks.push(tokio::spawn(accept_tcp(l, Arc::clone(&state), Arc::clone(&active), stop.clone()))),
                Err(e) => tracing::error!(error = %e, "admin: cannot serve its TCP listener"),
            }
        }
        if let Some((l, path, ino)) = listeners.unix {
            match l.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(l)) {
                Ok(l) => tasks.push(tokio::spawn(accept_unix(
                    l,
                    path,
                    ino,
                    Arc::clone(&state),
                    Arc::clone(&active),
                    stop.clone(),
                ))),
                Err(e) => tracing::error!(error = %e, "admin: cannot serve its unix socket"),
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        // Stopped accepting: the requests already accepted are answered (each has its deadline).
        let end = tokio::time::Instant::now() + REQUEST_DEADLINE + BUSY_DEADLINE;
        while active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// Counts a connection open for its life (and in the gauge).
struct Open(Arc<AtomicUsize>, Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        self.1.registry.control(|c| c.counters.admin_connections = n as u64);
    }
}

fn open(active: &Arc<AtomicUsize>, state: &Arc<State>) -> (Open, bool) {
    let n = active.fetch_add(1, Ordering::Relaxed) + 1;
    state.registry.control(|c| c.counters.admin_connections = n as u64);
    (Open(Arc::clone(active), Arc::clone(state)), n > state.max_connections)
}

/// Backs off after an accept failure (EMFILE and friends) so that the loop cannot spin.
async fn accept_failed(e: &io::Error) {
    crate::warn_every_second!(error = %e, "admin: accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serves one accepted connection on its own task, counted open for its life.
fn spawn_conn<S>(s: S, peer: Option<SocketAddr>, local: bool, active: &Arc<AtomicUsize>, state: &Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (guard, busy) = open(active, state);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let _guard = guard;
        serve(s, peer, local, busy, &state).await;
    });
}

async fn accept_tcp(
    l: tokio::net::TcpListener,
    state: Arc<State>,
    active: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((s, peer)) => spawn_conn(s, Some(peer), peer.ip().is_loopback(), &active, &state),
            Err(e) => accept_failed(&e).await,
        }
    }
}

async fn accept_unix(
    l: tokio::net::UnixListener,
    path: PathBuf,
    ino: u64,
    state: Arc<State>,
    active: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = l.accept() => r,
            _ = stop.changed() => break,
        };
        match accepted {
            // A unix socket's clients are local: who may connect is who may write the socket.
            Ok((s, _)) => spawn_conn(s, None, true, &active, &state),
            Err(e) => accept_failed(&e).await,
        }
    }
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino) {
        let _ = std::fs::remove_file(&path);
    }
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The client went away without a request: nothing to answer.
    Closed,
    Status(u16, AdminRefusal),
}

/// Serves one connection: reads the request, answers it (or 503 when `busy`), closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    peer: Option<SocketAddr>,
    local: bool,
    busy: bool,
    state: &State,
) {
    let deadline = if busy { BUSY_DEADLINE } else { REQUEST_DEADLINE };
    let read = tokio::time::timeout(deadline, read_request(&mut s, local)).await;
    let (resp, head_only) = match read {
        Err(_) => {
            state.refused(AdminRefusal::Timeout);
            (Response::text(408, "request timeout\n"), false)
        }
        Ok(Err(ReadError::Closed)) => return,
        Ok(Err(ReadError::Status(status, why))) => {
            state.refused(why);
            (Response::text(status, &format!("{}\n", super::reason(status))), false)
        }
        Ok(Ok(_)) if busy => {
            state.refused(AdminRefusal::Busy);
            crate::debug_every_second!(peer = ?peer, "admin: busy (admin.max_connections); answered 503");
            (Response::text(503, "busy\n"), false)
        }
        Ok(Ok(req)) => {
            let head = req.method == "HEAD";
            (dispatch(req, state).await, head)
        }
    };
    state.registry.control(|c| c.counters.admin_requests += 1);
    let _ = tokio::time::timeout(REQUEST_DEADLINE, write_response(&mut s, head_only, &resp)).await;
    let _ = s.shutdown().await;
    // Read (and discard) briefly what the client may still send, so that closing does not reset
    // the connection before it has read the response.
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(100), drain).await;
}

async fn write_response<S: AsyncWrite + Unpin>(s: &mut S, head_only: bool, r: &Response) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        super::reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if let Some(allow) = r.allow {
        out.extend_from_slice(format!("Allow: {allow}\r\n").as_bytes());
    }
    if r.status == 401 {
        out.extend_from_slice(b"WWW-Authenticate: Bearer realm=\"sni-dispatch\"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    s.write_all(&out).await?;
    s.flush().await
}

/// Reads one request: the head (up to the blank line) and a `Content-Length` body.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S, local: bool) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::Status(431, AdminRefusal::TooLarge));
        }
        let want = chunk.len().min(MAX_HEAD + 4 - buf.len());
        match s.read(&mut chunk[..want]).await {
            Ok(0) if buf.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Status(400, AdminRefusal::BadRequest)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Closed),
        }
    };
    if end > MAX_HEAD {
        return Err(ReadError::Status(431, AdminRefusal::TooLarge));
    }
    let mut req = parse_head(&buf[..end], local).map_err(|s| ReadError::Status(s, AdminRefusal::BadRequest))?;
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Status(411, AdminRefusal::BadRequest));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v.trim().parse::<usize>().map_err(|_| ReadError::Status(400, AdminRefusal::BadRequest))?,
    };
    if len > MAX_BODY {
        return Err(ReadError::Status(413, AdminRefusal::TooLarge));
    }
    let mut body = buf.split_off(end);
    body.truncate(len);
    while body.len() < len {
        let want = chunk.len().min(len - body.len());
        match s.read(&mut chunk[..want]).await {
            Ok(0) => return Err(ReadError::Status(400, AdminRefusal::BadRequest)),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
    req.body = body;
    Ok(req)
}

/// The length of the head if `buf` holds a complete one (ends with CRLF CRLF, or LF LF).
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `METHOD SP target SP HTTP/1.x`, then `Name: value` lines; 400 for anything else.
pub(super) fn parse_head(head: &[u8], local: bool) -> Result<Request, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token(method) || !version.starts_with("HTTP/1.") || version.len() != 8 || !target.starts_with('/') {
        return Err(400);
    }
    if target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(400);
    }
    let target = target.split('#').next().unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (name, value) = l.split_once(':').ok_or(400u16)?;
        if !token(name) {
            return Err(400);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
        local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let r = parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", true).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
        let r = parse_head(b"GET /route?sni=a.example&ip=127.0.0.2 HTTP/1.0\n\n", true).unwrap();
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/route", "sni=a.example&ip=127.0.0.2"));
        let r = parse_head(b"PUT /routes/x HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Bearer t\r\n\r\n", true)
            .unwrap();
        assert_eq!(r.header("content-length"), Some("5"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad, true).map(|_| ()), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn head_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
