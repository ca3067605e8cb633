//! The admin endpoint (`[admin] listen`, `socket`, `--admin ADDR`): an HTTP/1.1 server on its
//! own thread, off the workers' cores ([`http`]), that reads the workers' published metrics and
//! the running configuration, and hands route changes to the control plane.
//!
//! Every endpoint is one row of [`ENDPOINTS`]: its path (exact, or a prefix such as `/routes/`),
//! its methods, whether it is part of the route API (then it takes the bearer token), and one
//! function `fn(&Request, &State) -> Answer` that answers it. Adding an endpoint is writing that
//! function and its row; the 404 page and the docs test list the rows.
//!
//! - `GET /metrics`, `GET /stats`, `GET /healthz`: what the workers published ([`render`]), with
//!   the routes' and back ends' figures ([`upstream`]);
//! - `GET /status`: an HTML page of every route and back end ([`status`]);
//! - `GET /route?sni=NAME&ip=ADDR&alpn=P`: which route a connection would get, and why;
//! - `GET`, `PUT`, `DELETE /routes/NAME`, `POST /reload`: the route API (changes go to the
//!   control plane, which validates them as `check` does, writes them to `api_dir` and swaps);
//! - `GET`, `PUT /certs/NAME`: the certificate of a route, replaced through the API.
pub mod http;
pub mod render;
pub mod status;
pub mod upstream;

use crate::config::Config;
use crate::metrics::{AdminRefusal, Registry};
use arc_swap::ArcSwap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

pub use http::{MAX_BODY, MAX_HEAD, REQUEST_DEADLINE};

/// What the control plane is asked to do by the route API.
#[derive(Debug)]
pub enum ControlOp {
    /// `PUT /routes/NAME`: the body (TOML, or JSON when `json`).
    Put { name: String, body: String, json: bool },
    /// `DELETE /routes/NAME`.
    Delete { name: String },
    /// `PUT /certs/NAME`: a PEM bundle (the chain, leaf first, and the private key).
    PutCert { name: String, pem: String },
    /// `POST /reload`.
    Reload,
}

/// The control plane's answer: an HTTP status and a JSON body.
pub type ControlReply = (u16, serde_json::Value);

/// The control plane, as the admin endpoint sees it (the server implements it).
pub trait Control: Send + Sync {
    /// Queues `op`; the answer comes on `reply` once it is applied or refused.
    fn submit(&self, op: ControlOp, reply: oneshot::Sender<ControlReply>);
}

/// What the endpoint reads.
pub struct State {
    pub registry: Registry,
    /// False once the server stopped accepting (draining).
    pub accepting: Arc<AtomicBool>,
    pub started: Instant,
    /// The running configuration (for `GET /route`, `GET /routes/NAME`, the token, and the
    /// routes' back ends' state).
    pub config: Arc<ArcSwap<Config>>,
    /// Where route changes go; `None`: the route API answers 503.
    pub control: Option<Arc<dyn Control>>,
    /// Connections served at once (`admin.max_connections`).
    pub max_connections: usize,
    /// `/status`'s earlier samples, for rates.
    pub rates: Arc<Mutex<status::Rates>>,
}

impl State {
    fn refused(&self, why: AdminRefusal) {
        self.registry.control(|c| c.counters.admin_refused.bump(why));
    }
}

/// One request, read whole.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// From a unix socket or a loopback address.
    pub local: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| decode(v))
    }
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response to send.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The `Allow` header (405).
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn text(status: u16, body: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), allow: None }
    }

    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        let mut body = v.to_string().into_bytes();
        body.push(b'\n');
        Self { status, content_type: "application/json", body, allow: None }
    }
}

/// How an endpoint answers: at once, or when the control plane has applied the change.
pub enum Answer {
    Now(Response),
    Later(oneshot::Receiver<ControlReply>),
}

/// One endpoint: see the module docs.
pub struct Endpoint {
    pub path: &'static str,
    /// Whether `path` is a prefix (`/routes/` + a name).
    pub prefix: bool,
    pub methods: &'static str,
    /// Part of the route API: the bearer token is required (when configured), and without one
    /// only local clients (loopback, the unix socket) may use it.
    pub api: bool,
    pub handler: fn(&Request, &State) -> Answer,
}

/// Every endpoint.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint { path: "/metrics", prefix: false, methods: "GET, HEAD", api: false, handler: metrics },
    Endpoint { path: "/stats", prefix: false, methods: "GET, HEAD", api: false, handler: stats },
    Endpoint { path: "/healthz", prefix: false, methods: "GET, HEAD", api: false, handler: healthz },
    Endpoint { path: "/status", prefix: false, methods: "GET, HEAD", api: false, handler: status_page },
    Endpoint { path: "/route", prefix: false, methods: "GET", api: true, handler: explain },
    Endpoint { path: "/routes/", prefix: true, methods: "GET, PUT, DELETE", api: true, handler: routes },
    Endpoint { path: "/certs/", prefix: true, methods: "GET, PUT", api: true, handler: certs },
    Endpoint { path: "/reload", prefix: false, methods: "POST", api: true, handler: reload },
];

fn now(r: Response) -> Answer {
    Answer::Now(r)
}

fn metrics(_: &Request, s: &State) -> Answer {
    now(Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: {
            let mut body = render::prometheus(&s.registry, s.accepting.load(Ordering::SeqCst));
            upstream::prometheus(&s.config.load(), &mut body);
            body.into_bytes()
        },
        allow: None,
    })
}

fn stats(_: &Request, s: &State) -> Answer {
    now(Response {
        status: 200,
        content_type: "application/json",
        body: render::stats_json_with(
            &s.registry,
            s.accepting.load(Ordering::SeqCst),
            s.started.elapsed(),
            Some(&s.config.load()),
        )
        .into_bytes(),
        allow: None,
    })
}

/// `GET /status`: an HTML page of every route and back end ([`status`]).
fn status_page(_: &Request, s: &State) -> Answer {
    let accepting = s.accepting.load(Ordering::SeqCst);
    now(Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: status::page(&s.config.load(), &s.registry, accepting, s.started.elapsed(), &s.rates).into_bytes(),
        allow: None,
    })
}

fn healthz(_: &Request, s: &State) -> Answer {
    now(if s.accepting.load(Ordering::SeqCst) {
        Response::text(200, "ok\n")
    } else {
        Response::text(503, "draining\n")
    })
}

/// `GET /route?sni=NAME&ip=ADDR&alpn=P`: [`explain_json`] from the running table.
fn explain(r: &Request, s: &State) -> Answer {
    let ip = match r.param("ip").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match v.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                return now(Response::json(
                    400,
                    &serde_json::json!({ "error": format!("ip: {v:?} is not an IP address") }),
                ))
            }
        },
    };
    let config = s.config.load();
    let sni = r.param("sni").filter(|v| !v.is_empty());
    let alpn = r.param("alpn").filter(|v| !v.is_empty());
    now(Response::json(200, &explain_json(&config, ip, sni.as_deref(), alpn.as_deref())))
}

/// Which route a connection that dialed `ip` (default: the first listener's address) with `sni`
/// and `alpn` would get, by which rule, and what would happen to it (for `sni-dispatch route`
/// and `GET /route`).
pub fn explain_json(config: &Config, ip: Option<IpAddr>, sni: Option<&str>, alpn: Option<&str>) -> serde_json::Value {
    use crate::route::Action;
    let ip = ip.unwrap_or_else(|| config.listeners.first().map_or(IpAddr::from([127, 0, 0, 1]), |l| l.address.ip()));
    // As the hello parser normalises a client's SNI: lowercase, one trailing dot dropped; an
    // invalid name counts as none.
    let normalised = sni.and_then(|n| crate::route::normalize_pattern(n).ok()).filter(|n| !n.starts_with("*."));
    // An ALPN route comes first, within its scope, when the protocol asked about is one of its.
    let alpn_route = alpn.filter(|_| config.table.has_alpn_routes()).and_then(|p| {
        config.table.lookup_alpn(ip, normalised.as_deref(), |want| want == p.as_bytes()).map(|id| (id, p))
    });
    let e = match alpn_route {
        Some((id, p)) => crate::route::Explained {
            route: Some(id),
            how: Ok(crate::route::Match::Alpn),
            pattern: Some(format!("alpn_match {p}")),
        },
        None => config.table.explain(ip, normalised.as_deref()),
    };
    let rule = match e.how {
        Ok(m) => m.as_str(),
        Err(_) => "drop",
    };
    let mut v = serde_json::json!({
        "ip": ip.to_string(),
        "sni": sni,
        "sni_as_routed": normalised,
        "rule": rule,
        "matched": e.pattern,
        "route": null,
        "generation": config.generation,
    });
    if let Err(m) = e.how {
        v["drop_reason"] = m.as_str().into();
    }
    if let Some(route) = e.route.and_then(|id| config.table.get(id)) {
        v["route"] = route.name.clone().into();
        v["action"] = route.action.as_str().into();
        v["backends"] = route.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().into();
        if let (Action::Terminate(m), Some(p)) = (&route.action, alpn) {
            let offered = &m.server_config.alpn_protocols;
            v["alpn"] = if offered.is_empty() {
                "no ALPN configured: the handshake goes on without one".into()
            } else if offered.iter().any(|o| o.as_slice() == p.as_bytes()) {
                format!("{p}: accepted").into()
            } else {
                "no common protocol: the handshake fails (no_application_protocol)".into()
            };
        }
    }
    v
}

fn routes(r: &Request, s: &State) -> Answer {
    let name = decode(r.path.strip_prefix("/routes/").unwrap_or_default());
    if name.is_empty() {
        return now(Response::json(404, &serde_json::json!({ "error": "GET, PUT or DELETE /routes/NAME" })));
    }
    let op = match r.method.as_str() {
        "GET" => {
            let config = s.config.load();
            return now(match config.route_json(&name) {
                Some(v) => Response::json(200, &v),
                None => Response::json(404, &serde_json::json!({ "error": format!("no route {name:?}") })),
            });
        }
        "PUT" => {
            let json = r.header("content-type").is_some_and(|t| t.contains("json"));
            match String::from_utf8(r.body.clone()) {
                Ok(body) => ControlOp::Put { name, body, json },
                Err(_) => return now(Response::json(400, &serde_json::json!({ "error": "the body is not UTF-8" }))),
            }
        }
        _ => ControlOp::Delete { name },
    };
    submit(s, op)
}

/// `GET /certs/NAME`: the certificate the route serves (never its key); `PUT /certs/NAME`: a
/// new chain and key for a route the API added.
fn certs(r: &Request, s: &State) -> Answer {
    let name = decode(r.path.strip_prefix("/certs/").unwrap_or_default());
    if name.is_empty() {
        return now(Response::json(404, &serde_json::json!({ "error": "GET or PUT /certs/NAME" })));
    }
    match r.method.as_str() {
        "GET" => {
            let config = s.config.load();
            now(match config.cert_json(&name) {
                Some(v) => Response::json(200, &v),
                None => Response::json(404, &serde_json::json!({ "error": format!("no route {name:?}") })),
            })
        }
        _ => match String::from_utf8(r.body.clone()) {
            Ok(pem) => submit(s, ControlOp::PutCert { name, pem }),
            Err(_) => now(Response::json(400, &serde_json::json!({ "error": "the body is not UTF-8 (PEM text)" }))),
        },
    }
}

fn reload(_: &Request, s: &State) -> Answer {
    submit(s, ControlOp::Reload)
}

fn submit(s: &State, op: ControlOp) -> Answer {
    match &s.control {
        None => now(Response::json(503, &serde_json::json!({ "error": "no control plane in this process" }))),
        Some(c) => {
            let (tx, rx) = oneshot::channel();
            c.submit(op, tx);
            Answer::Later(rx)
        }
    }
}

/// Compares without an early exit, so that timing does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Answers a parsed request.
pub async fn dispatch(r: Request, s: &State) -> Response {
    let Some(e) = ENDPOINTS.iter().find(|e| if e.prefix { r.path.starts_with(e.path) } else { r.path == e.path })
    else {
        let list: Vec<String> =
            ENDPOINTS.iter().map(|e| if e.prefix { format!("{}NAME", e.path) } else { e.path.to_owned() }).collect();
        return Response::text(404, &format!("not found; try {}\n", list.join(", ")));
    };
    if !e.methods.split(", ").any(|m| m == r.method) {
        s.refused(AdminRefusal::BadRequest);
        return Response { allow: Some(e.methods), ..Response::text(405, "method not allowed\n") };
    }
    if e.api {
        let token = s.config.load().admin_settings.token.clone();
        let allowed = match &token {
            Some(t) => r
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|given| same_secret(given.trim().as_bytes(), t.as_bytes())),
            None => r.local,
        };
        if !allowed {
            s.refused(AdminRefusal::Unauthorized);
            return Response::json(
                401,
                &serde_json::json!({ "error": "the route API needs Authorization: Bearer TOKEN (admin.token_file)" }),
            );
        }
    }
    match (e.handler)(&r, s) {
        Answer::Now(resp) => resp,
        Answer::Later(rx) => match rx.await {
            Ok((status, v)) => Response::json(status, &v),
            Err(_) => Response::json(503, &serde_json::json!({ "error": "the control plane stopped" })),
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A running admin endpoint; stopped (and its thread joined) by [`Admin::stop`] or on drop.
pub struct Admin {
    addr: Option<SocketAddr>,
    socket: Option<PathBuf>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("addr", &self.addr).field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl Admin {
    /// Binds `addr` and/or the unix socket `socket` (a stale socket file is replaced; the new
    /// one is made `0660`) and serves on a thread named `sni-admin`, pinned to `cpu` if given.
    pub fn start(
        addr: Option<SocketAddr>,
        socket: Option<PathBuf>,
        state: State,
        cpu: Option<usize>,
    ) -> io::Result<Self> {
        let tcp = addr.map(std::net::TcpListener::bind).transpose()?;
        Self::start_on(tcp, socket, state, cpu)
    }

    /// As [`Admin::start`], serving TCP on a listener already bound (`tcp`): one that a binary
    /// upgrade handed over, which may still be shared with the old process until it stops.
    pub fn start_on(
        tcp: Option<std::net::TcpListener>,
        socket: Option<PathBuf>,
        state: State,
        cpu: Option<usize>,
    ) -> io::Result<Self> {
        let addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        let unix = match &socket {
            Some(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                let l = std::os::unix::net::UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(path)?);
                Some((l, path.clone(), ino))
            }
            None => None,
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(state);
        let thread = std::thread::Builder::new().name("sni-admin".into()).spawn(move || {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            http::run(http::Listeners { tcp, unix }, state, stop_rx);
        })?;
        Ok(Self { addr, socket, stop, thread: Some(thread) })
    }

    /// The bound TCP address (port 0 resolved), if it listens on TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The unix socket, if it listens on one.
    pub fn socket(&self) -> Option<&PathBuf> {
        self.socket.as_ref()
    }

    /// Stops accepting, lets the requests already accepted be answered (up to
    /// [`REQUEST_DEADLINE`], so that a process exiting right after does not cut them off), and
    /// joins the thread. Connections still queued on the listening socket are not taken: on a
    /// socket shared with a new process (an upgrade) they are that process's to answer.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let r = Request {
            method: "GET".into(),
            path: "/route".into(),
            query: "sni=A.Example.COM&ip=127.0.0.2&alpn=h2&x=%2Fa%20b".into(),
            headers: vec![],
            body: vec![],
            local: true,
        };
        assert_eq!(r.param("sni").as_deref(), Some("A.Example.COM"));
        assert_eq!(r.param("ip").as_deref(), Some("127.0.0.2"));
        assert_eq!(r.param("x").as_deref(), Some("/a b"));
        assert_eq!(r.param("nope"), None);
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdef", b"abcdef"));
        assert!(!same_secret(b"abcdef", b"abcdeg"));
        assert!(!same_secret(b"abc", b"abcdef"));
        assert!(!same_secret(b"", b"a"));
    }
}
