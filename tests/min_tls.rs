//! `min_tls` on passthrough routes cannot be bypassed: the client's best *known* offer is
//! compared (unknown and GREASE values never count, supported_versions governs), and when the
//! client also offered older versions, the version the back end chose is read from its
//! ServerHello before a byte of it is relayed. The back ends are real `openssl s_server`s, one
//! of which speaks only TLS 1.0.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::DropReason;
use sni_dispatch::pki::Leaf;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn have_openssl() -> bool {
    Command::new("openssl").arg("version").output().is_ok()
}

/// OpenSSL 3 needs security level 0 to speak TLS 1.0 at all.
const LEGACY_CIPHERS: &str = "DEFAULT:@SECLEVEL=0";

struct SServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server -www` on a free port with a fresh certificate for www.example.com.
fn s_server(dir: &std::path::Path, extra: &[&str]) -> SServer {
    let port = free_port();
    let files = Leaf::self_signed(&["www.example.com"]).unwrap().write(dir, &format!("s_server-{port}")).unwrap();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&files.cert)
        .arg("-key")
        .arg(&files.key)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok()));
    SServer { child, addr }
}

/// `openssl s_client` offering TLS 1.0 to 1.3 (security level 0), sending an HTTP request;
/// returns stdout and stderr together.
fn s_client(addr: SocketAddr) -> String {
    let mut c = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(addr.to_string())
        .args(["-servername", "www.example.com", "-ign_eof", "-cipher", LEGACY_CIPHERS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn route(name: &str, sni: &str, min_tls: &str, backend: SocketAddr) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\naction = \"passthrough\"\nsni = [\"{sni}\"]\nmin_tls = \"{min_tls}\"\nbackends = [\"{backend}\"]\n"
    )
}

/// A ClientHello for `name` with `legacy_version` and, if given, a supported_versions
/// extension listing `versions`.
fn crafted_hello(name: &str, legacy: u16, versions: Option<&[u16]>) -> Vec<u8> {
    let mut exts = Vec::new();
    let name = name.as_bytes();
    exts.extend_from_slice(&[0x00, 0x00]);
    exts.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    exts.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    exts.push(0);
    exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
    exts.extend_from_slice(name);
    if let Some(vs) = versions {
        exts.extend_from_slice(&[0x00, 0x2b]);
        exts.extend_from_slice(&((vs.len() * 2 + 1) as u16).to_be_bytes());
        exts.push((vs.len() * 2) as u8);
        for v in vs {
            exts.extend_from_slice(&v.to_be_bytes());
        }
    }
    let mut body = legacy.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x00, 0x2f, 0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Offers that smuggle an old version past the offer check are refused before any back end is
/// dialed: an unknown version above TLS 1.3, and `legacy_version` 0x0304 without
/// supported_versions (which counts as TLS 1.2).
#[test]
fn unknown_versions_never_lift_an_old_offer() {
    let old = backend(Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(b"x".to_vec()) });
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n{}{}",
        route("v12", "www.example.com", "1.2", old.addr),
        route("v13", "strict.example.com", "1.3", old.addr),
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    expect_dropped(addr, &crafted_hello("www.example.com", 0x0303, Some(&[0x0305, 0x0301])));
    expect_dropped(addr, &crafted_hello("www.example.com", 0x0303, Some(&[0x7f1c, 0x3a3a, 0x0302])));
    expect_dropped(addr, &crafted_hello("strict.example.com", 0x0304, None));
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::BelowMinTls) == 3);
    assert_eq!(m.routed_total(), 0, "{m:#?}");
    // Only unknown values: nothing to negotiate.
    expect_dropped(addr, &crafted_hello("www.example.com", 0x0303, Some(&[0x0305])));
    wait_metrics(&server, |m| m.dropped_by(DropReason::NoKnownVersion) == 1);
    assert!(old.seen.try_recv().is_err(), "a refused hello reached the back end");
    server.shutdown();
}

/// A real client offering TLS 1.3 down to 1.0, through a `min_tls = "1.2"` passthrough route:
/// to a back end that speaks only TLS 1.0 it gets a protocol_version alert (never the back
/// end's TLS 1.0 ServerHello), to a modern back end it gets its page, and through a
/// `min_tls = "1.0"` route it reaches the TLS 1.0 back end.
#[test]
fn the_version_a_back_end_chose_is_checked() {
    if !have_openssl() {
        eprintln!("openssl not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls10 = s_server(dir.path(), &["-tls1", "-cipher", LEGACY_CIPHERS]);
    let modern = s_server(dir.path(), &[]);
    let port = free_port();
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    let b = SocketAddr::from(([127, 0, 0, 2], port));
    let c = SocketAddr::from(([127, 0, 0, 3], port));
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[listener]]\naddress = \"127.0.0.2:{port}\"\n\
         [[listener]]\naddress = \"127.0.0.3:{port}\"\n\
         [[route]]\nname = \"old-backend\"\naction = \"passthrough\"\ndedicated_ips = [\"127.0.0.1\"]\nmin_tls = \"1.2\"\nbackends = [\"{}\"]\n\
         [[route]]\nname = \"modern\"\naction = \"passthrough\"\ndedicated_ips = [\"127.0.0.2\"]\nmin_tls = \"1.2\"\nbackends = [\"{}\"]\n\
         [[route]]\nname = \"legacy-ok\"\naction = \"passthrough\"\ndedicated_ips = [\"127.0.0.3\"]\nmin_tls = \"1.0\"\nbackends = [\"{}\"]\n",
        tls10.addr, modern.addr, tls10.addr
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());

    let out = s_client(a);
    assert!(out.contains("alert protocol version"), "expected a protocol_version alert: {out}");
    assert!(!out.contains("s_server"), "the TLS 1.0 back end's page got through: {out}");
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::BackendBelowMinTls) == 1);
    assert_eq!(m.dropped_total(), 1, "{m:#?}");

    let out = s_client(b);
    assert!(out.contains("s_server") && out.contains("TLSv1.3"), "modern back end: {out}");

    let out = s_client(c);
    assert!(out.contains("s_server") && out.contains("Protocol  : TLSv1\n"), "TLS 1.0 route: {out}");
    let m = wait_metrics(&server, |m| m.routed_total() == 3 && m.open == 0);
    assert_eq!(m.dropped_total(), 1, "{m:#?}");
    server.shutdown();
}

/// Where the version must be checked, a back end that does not answer with a ServerHello is
/// not relayed.
#[test]
fn a_back_end_that_is_not_tls_is_refused_where_the_version_matters() {
    let plain = backend(Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()) });
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n{}",
        route("r", "www.example.com", "1.2", plain.addr)
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    // Offers TLS 1.2 and 1.0: the back end's answer is read, and it is not a ServerHello.
    expect_dropped(addr, &crafted_hello("www.example.com", 0x0303, Some(&[0x0303, 0x0301])));
    wait_metrics(&server, |m| m.dropped_by(DropReason::BackendNotTls) == 1);
    // Offers only TLS 1.3 and 1.2: nothing to check, the bytes are relayed as they come.
    assert_eq!(
        roundtrip(addr, &crafted_hello("www.example.com", 0x0303, Some(&[0x0304, 0x0303]))),
        b"HTTP/1.1 200 OK\r\n\r\n"
    );
    server.shutdown();
}
