//! The hand-off: a front sni-dispatch hands client connections (their ClientHello already read)
//! to a second sni-dispatch process over a unix socket, which terminates TLS by its own routes;
//! curl fetches through it. A sender whose uid the receiver does not allow is refused, and a
//! receiver that is gone fails over; both fall to the route's next back end (here the same
//! terminator on TCP), counted by cause.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::{ConnectCause, RelayKind};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An HTTP origin answering `body` to every request.
fn origin(body: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ =
                    write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    addr
}

struct Terminator {
    proc: Proc,
    socket: PathBuf,
    tcp: SocketAddr,
    admin: SocketAddr,
    ca: PathBuf,
    _cfg: ConfigFile,
}

/// A second sni-dispatch: a hand-off listener (allowing `uids`, or its own uid by default) and
/// a TCP listener, both terminating `shop.example` to an origin.
fn terminator(uids: Option<&str>) -> Terminator {
    terminator_at(uids, None)
}

/// [`terminator`], its hand-off socket at `socket` if given.
fn terminator_at(uids: Option<&str>, socket: Option<&Path>) -> Terminator {
    terminator_with(uids, socket, &[])
}

/// [`terminator_at`], with more arguments for `run`.
fn terminator_with(uids: Option<&str>, socket: Option<&Path>, args: &[&str]) -> Terminator {
    let cfg = config_file("");
    let dir = cfg.dir.path();
    let ca = sni_dispatch::pki::Ca::new("hand-off test CA").unwrap();
    let files = ca.issue(&["shop.example"]).unwrap().write(dir, "shop").unwrap();
    let ca_path = ca.write(dir, "ca.pem").unwrap();
    let socket = socket.map_or_else(|| dir.join("term.sock"), Path::to_path_buf);
    let (tcp, admin) = (free_port(), free_port());
    let uids = uids.map(|u| format!("handoff_uids = [{u}]\n")).unwrap_or_default();
    let toml = format!(
        "{RUNTIME}[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[listener]]\nhandoff = {socket:?}\n{uids}\
         [[listener]]\naddress = \"127.0.0.1:{tcp}\"\n\
         [[route]]\nname = \"shop\"\nsni = [\"shop.example\"]\naction = \"terminate\"\ncert = {c:?}\nkey = {k:?}\nbackends = [\"{o}\"]\n",
        c = files.cert,
        k = files.key,
        o = origin("terminated by the second process"),
    );
    std::fs::write(&cfg.path, toml).unwrap();
    let tcp: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let proc = spawn_binary(&cfg, args, tcp);
    assert!(wait_until(Duration::from_secs(10), || socket.exists()), "no hand-off socket: {}", proc.stderr());
    Terminator { proc, socket, tcp, admin: format!("127.0.0.1:{admin}").parse().unwrap(), ca: ca_path, _cfg: cfg }
}

fn front(handoff: &Path, fallback: SocketAddr, log: &Path) -> (sni_dispatch::server::Server, ConfigFile) {
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"shop\"\nsni = [\"shop.example\"]\naction = \"passthrough\"\n\
         backends = [\"handoff:{}\", \"{fallback}\"]\neject_after = 0\n",
        handoff.display()
    );
    let overrides = RuntimeOverrides { access_log: Some(log.to_owned()), ..Default::default() };
    start(&toml, &overrides)
}

fn curl(port: u16, ca: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("shop.example:{port}:127.0.0.1"), &format!("https://shop.example:{port}/")])
        .output()
        .expect("curl");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn metric(admin: SocketAddr, line: &str) -> bool {
    let (_, _, text) = http_raw(admin, b"GET /metrics HTTP/1.1\r\n\r\n");
    text.lines().any(|l| l == line)
}

#[test]
fn curl_through_a_hand_off_to_a_second_process() {
    let term = terminator(None);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (server, _f) = front(&term.socket, term.tcp, &log);
    let port = server.local_addrs()[0].port();
    for _ in 0..3 {
        assert_eq!(curl(port, &term.ca), "terminated by the second process");
    }
    let m = wait_metrics(&server, |m| m.open == 0 && m.relays.get(RelayKind::Handoff) == 3);
    assert_eq!(m.backend_connect_failures.total(), 0, "{m:#?}");
    assert_eq!(m.relays.total(), 3, "the front relayed nothing itself");
    assert!(
        wait_until(Duration::from_secs(10), || metric(term.admin, "sni_dispatch_handoffs_received_total 3")),
        "{}",
        term.proc.stderr()
    );
    assert!(wait_until(Duration::from_secs(10), || metric(term.admin, "sni_dispatch_tls_handshakes_total 3")));
    assert!(server.shutdown());
    let lines = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["action"], "handoff");
    assert_eq!(first["backend"], format!("handoff:{}", term.socket.display()));
    assert_eq!(first["outcome"], "closed");
}

#[test]
fn a_sender_with_another_uid_is_refused_and_falls_to_the_next_back_end() {
    let term = terminator(Some("4242"));
    let dir = tempfile::tempdir().unwrap();
    let (server, _f) = front(&term.socket, term.tcp, &dir.path().join("access.log"));
    let port = server.local_addrs()[0].port();
    assert_eq!(curl(port, &term.ca), "terminated by the second process");
    assert_eq!(curl(port, &term.ca), "terminated by the second process");
    let m = wait_metrics(&server, |m| m.open == 0 && m.routed_total() == 2);
    assert_eq!(m.backend_connect_failures.get(ConnectCause::HandoffRefused), 2, "{m:#?}");
    assert_eq!(m.relays.get(RelayKind::Handoff), 0);
    assert!(wait_until(Duration::from_secs(10), || metric(
        term.admin,
        "sni_dispatch_handoffs_rejected_total{cause=\"uid\"} 2"
    )));
    assert!(wait_until(Duration::from_secs(10), || metric(term.admin, "sni_dispatch_handoffs_received_total 0")));
    server.shutdown();
}

#[test]
fn a_receiver_that_is_gone_falls_to_the_next_back_end() {
    let term = terminator(None);
    let dir = tempfile::tempdir().unwrap();
    let (server, _f) = front(&dir.path().join("nobody-listens.sock"), term.tcp, &dir.path().join("access.log"));
    let port = server.local_addrs()[0].port();
    assert_eq!(curl(port, &term.ca), "terminated by the second process");
    // The receiver dies between connections: the channel it had is stale.
    let (server2, _f2) = front(&term.socket, term.tcp, &dir.path().join("access2.log"));
    let port2 = server2.local_addrs()[0].port();
    assert_eq!(curl(port2, &term.ca), "terminated by the second process");
    let mut term = term;
    term.proc.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    let m = wait_metrics(&server, |m| m.open == 0 && m.routed_total() == 1);
    assert_eq!(m.backend_connect_failures.get(ConnectCause::HandoffGone), 1, "{m:#?}");
    // With the terminator gone, its TCP listener is gone too: the connection is dropped, and
    // the hand-off failure is counted first.
    let hello = rustls_hello(Some("shop.example"), &[]);
    expect_dropped(server2.local_addrs()[0], &hello);
    let m2 = wait_metrics(&server2, |m| m.open == 0 && m.routed_total() == 2);
    assert_eq!(m2.backend_connect_failures.get(ConnectCause::HandoffGone), 1, "{m2:#?}");
    assert_eq!(m2.backend_connect_failures.get(ConnectCause::Refused), 1, "{m2:#?}");
    server.shutdown();
    server2.shutdown();
}

/// A receiver restarted on the same socket: the front's channel to the old one is stale, and
/// the next hand-off reaches the new one over a fresh channel (nothing counted as failed).
#[test]
fn a_restarted_receiver_is_reached_again() {
    let keep = tempfile::tempdir().unwrap();
    let socket = keep.path().join("term.sock");
    let mut a = terminator_at(None, Some(&socket));
    let dir = tempfile::tempdir().unwrap();
    let (server, _f) = front(&socket, a.tcp, &dir.path().join("access.log"));
    let port = server.local_addrs()[0].port();
    assert_eq!(curl(port, &a.ca), "terminated by the second process");
    a.proc.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    let b = terminator_at(None, Some(&socket));
    assert_eq!(curl(port, &b.ca), "terminated by the second process");
    let m = wait_metrics(&server, |m| m.open == 0 && m.relays.get(RelayKind::Handoff) == 2);
    assert_eq!(m.backend_connect_failures.total(), 0, "the stale channel was replaced, not counted: {m:#?}");
    assert!(wait_until(Duration::from_secs(10), || metric(b.admin, "sni_dispatch_handoffs_received_total 1")));
    server.shutdown();
}

/// A binary upgrade of the receiver takes its hand-off listener over too (no longer refused as
/// "another process listens on it"): the socket file stays, the old process exits, and the
/// front's next hand-off reaches the new process.
#[test]
fn a_binary_upgrade_takes_the_hand_off_listener_over() {
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("upgrade.sock");
    let up_arg = up.to_str().unwrap();
    let mut term = terminator_with(None, None, &["--upgrade-socket", up_arg]);
    assert!(wait_until(Duration::from_secs(10), || up.exists()), "no upgrade socket: {}", term.proc.stderr());
    let log = dir.path().join("access.log");
    let (server, _f) = front(&term.socket, term.tcp, &log);
    let port = server.local_addrs()[0].port();
    assert_eq!(curl(port, &term.ca), "terminated by the second process");
    let new = upgrade(&term._cfg.path, &up, &mut term.proc, dir.path().join("new.log"));
    let text = || new.stderr();
    assert!(term.socket.exists(), "the old process removed the socket file the new one listens on");
    // The admin endpoint came over too: these are the new process's figures.
    assert!(metric(term.admin, "sni_dispatch_handoffs_received_total 0"), "{}", text());
    for _ in 0..2 {
        assert_eq!(curl(port, &term.ca), "terminated by the second process");
    }
    assert!(
        wait_until(Duration::from_secs(10), || metric(term.admin, "sni_dispatch_handoffs_received_total 2")),
        "the front did not hand off to the new process:\n{}",
        text()
    );
    assert!(server.shutdown());
}
