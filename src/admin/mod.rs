//! The admin endpoint (`[admin] listen`, `--admin ADDR`): a minimal HTTP/1.1 server on its own
//! threads, off the workers' cores, that reads the workers' published metrics.
//!
//! - `GET /metrics`: Prometheus text exposition ([`render::prometheus`]);
//! - `GET /stats`: the same as JSON, per worker and merged ([`render::stats_json`]);
//! - `GET /healthz`: `200 ok` while accepting connections, `503 draining` after SIGTERM;
//! - `GET /status`: an HTML page of every route and back end ([`status`]).
//!
//! One request per connection, answered with `Connection: close`. The request head is bounded
//! ([`MAX_REQUEST`] bytes, else 431) and must arrive within [`REQUEST_DEADLINE`] (else 408);
//! malformed request lines get 400, other methods than GET and HEAD 405, other paths 404. At most
//! [`MAX_CLIENTS`] requests are served at once (each on a short-lived thread); beyond that a
//! client gets 503 at once, so slow clients cannot starve a scraper for long.
pub mod render;
pub mod status;
pub mod upstream;

use crate::config::Config;
use crate::metrics::Registry;
use arc_swap::ArcSwap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// The whole request head must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Requests served at once.
pub const MAX_CLIENTS: usize = 16;
/// How often the accept loop looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct State {
    pub registry: Registry,
    /// False once the server stopped accepting (draining).
    pub accepting: Arc<AtomicBool>,
    pub started: Instant,
    /// The configuration serving (its routes and their back ends' state).
    pub config: Arc<ArcSwap<Config>>,
    /// `/status`'s earlier samples, for rates.
    pub rates: Arc<Mutex<status::Rates>>,
}

/// A running admin endpoint; stopped (and its thread joined) by [`Admin::stop`] or on drop.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests being answered now (each on its own thread).
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Binds `addr` and serves on a thread named `sni-admin`, pinned to `cpu` if given.
    pub fn start(addr: SocketAddr, state: State, cpu: Option<usize>) -> io::Result<Self> {
        Self::start_on(TcpListener::bind(addr)?, state, cpu)
    }

    /// Serves on a listener already bound (one a binary upgrade handed over; it may still be
    /// shared with the old process until that one stops).
    pub fn start_on(listener: TcpListener, state: State, cpu: Option<usize>) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        // accept() wakes up this often to see `stop`: stopping must not depend on a connection
        // reaching this thread (on a shared socket it may reach the other process).
        listener.set_nonblocking(false)?;
        socket2::SockRef::from(&listener).set_read_timeout(Some(STOP_CHECK))?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let (stop2, active2) = (Arc::clone(&stop), Arc::clone(&active));
        let thread = std::thread::Builder::new().name("sni-admin".into()).spawn(move || {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            accept_loop(&listener, &state, &stop2, &active2);
        })?;
        Ok(Self { addr, stop, active, thread: Some(thread) })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread (requests in progress finish on their own threads).
    pub fn stop(mut self) {
        self.halt();
    }

    /// Stops accepting, then lets the requests already accepted be answered (up to
    /// [`REQUEST_DEADLINE`]), so that a process exiting right after does not cut them off.
    fn halt(&mut self) {
        // The accept loop sees the flag within STOP_CHECK.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let end = Instant::now() + REQUEST_DEADLINE;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.halt();
        }
    }
}

/// Accepts until `stop`; a connection accepted as the flag was set is still answered (dropping
/// it unread would reset a client that, on a socket shared with a new process during an
/// upgrade, had every right to an answer).
fn accept_loop(listener: &TcpListener, state: &State, stop: &AtomicBool, active: &Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "admin: accept failed");
                // EMFILE and friends: don't spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = respond(&mut s, false, &Response::text(503, "busy\n"));
            continue;
        }
        let state = state.clone();
        let guard = ActiveGuard(Arc::clone(active));
        let spawned = std::thread::Builder::new().name("sni-admin-req".into()).spawn(move || {
            let _guard = guard;
            serve(s, &state);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "admin: cannot start a request thread");
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response to send.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), allow: false }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn serve(mut s: TcpStream, state: &State) {
    let _ = s.set_write_timeout(Some(REQUEST_DEADLINE));
    let (resp, head_only) = match read_head(&mut s) {
        Ok(head) => match parse_request_line(&head) {
            Ok((method, path)) => (route(method, path, state), method == "HEAD"),
            Err(status) => (Response::text(status, "bad request\n"), false),
        },
        Err(ReadError::Closed) => return,
        Err(ReadError::Status(status)) => (Response::text(status, &format!("{}\n", reason(status))), false),
    };
    let _ = respond(&mut s, head_only, &resp);
    // Read (and discard) briefly what the client may still send, so closing does not reset the
    // connection before it has read the response.
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Answers a parsed request.
pub fn route(method: &str, path: &str, state: &State) -> Response {
    let known = matches!(path, "/metrics" | "/stats" | "/healthz" | "/status");
    if !known {
        return Response::text(404, "not found; try /metrics, /stats, /healthz or /status\n");
    }
    if method != "GET" && method != "HEAD" {
        return Response { allow: true, ..Response::text(405, "method not allowed\n") };
    }
    let accepting = state.accepting.load(Ordering::SeqCst);
    match path {
        "/metrics" => {
            let mut body = render::prometheus(&state.registry, accepting);
            upstream::prometheus(&state.config.load(), &mut body);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: body.into_bytes(),
                allow: false,
            }
        }
        "/stats" => Response {
            status: 200,
            content_type: "application/json",
            body: render::stats_json_with(
                &state.registry,
                accepting,
                state.started.elapsed(),
                Some(&state.config.load()),
            )
            .into_bytes(),
            allow: false,
        },
        "/status" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: status::page(&state.config.load(), &state.registry, accepting, state.started.elapsed(), &state.rates)
                .into_bytes(),
            allow: false,
        },
        _ if accepting => Response::text(200, "ok\n"),
        _ => Response::text(503, "draining\n"),
    }
}

fn respond(s: &mut TcpStream, head_only: bool, r: &Response) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if r.allow {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    s.write_all(&out)?;
    s.flush()
}

#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The client went away without a request: nothing to answer.
    Closed,
    Status(u16),
}

/// Reads the request head (up to the blank line), within the size and time bounds.
fn read_head(s: &mut TcpStream) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Status(408));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf[len..]) {
            Ok(0) if len == 0 => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Status(400)),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadError::Status(408))
            }
            Err(_) => return Err(ReadError::Closed),
        }
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Ok(buf);
        }
        if len == buf.len() {
            return Err(ReadError::Status(431));
        }
    }
}

/// The length of the head if `buf` holds a complete one (ends with CRLF CRLF, or LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `METHOD SP target SP HTTP/1.x`: the method and the path (query string removed), or 400.
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), u16> {
    let line_end = head.iter().position(|&b| b == b'\n').ok_or(400u16)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| 400u16)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
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
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(parse_request_line(b"GET /metrics HTTP/1.1\r\n\r\n"), Ok(("GET", "/metrics")));
        assert_eq!(parse_request_line(b"GET /stats?x=1 HTTP/1.0\n\n"), Ok(("GET", "/stats")));
        assert_eq!(parse_request_line(b"POST /healthz HTTP/1.1\r\n\r\n"), Ok(("POST", "/healthz")));
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"no newline",
        ] {
            assert_eq!(parse_request_line(bad), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn head_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
