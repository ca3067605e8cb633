//! Routing by more than the name: an ALPN route (`alpn_match = ["acme-tls/1"]`) takes the
//! TLS-ALPN-01 challenge of a name that is otherwise terminated here (openssl s_client offering
//! acme-tls/1, and not); the JA4 of each captured ClientHello in the access log, against FoxIO's
//! ja4.py; JA4 deny and allow lists.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::DropReason;
use sni_dispatch::route::Match;
use std::io::Read;
use std::process::{Command, Stdio};

/// `openssl s_client` to `port` for `sni`, offering `alpn` (if any); its stdout.
fn s_client(port: u16, sni: &str, alpn: Option<&str>) -> String {
    let mut c = Command::new("timeout");
    c.args(["20", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", sni]);
    if let Some(a) = alpn {
        c.args(["-alpn", a]);
    }
    let out = c.stdin(Stdio::null()).output().expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_alpn_route_takes_the_acme_challenge_of_a_terminated_name() {
    let acme = backend(Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(b"acme responder".to_vec()) });
    let origin = backend(Mode::Echo);
    let pki = sni_dispatch::pki::Ca::new("alpn test CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.issue(&["shop.example"]).unwrap().write(dir.path(), "shop").unwrap();
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"shop\"\nsni = [\"shop.example\"]\naction = \"terminate\"\ncert = {c:?}\nkey = {k:?}\nbackends = [\"{o}\"]\n\
         [[route]]\nname = \"acme\"\nalpn_match = [\"acme-tls/1\"]\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{a}\"]\n",
        c = files.cert,
        k = files.key,
        o = origin.addr,
        a = acme.addr,
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let port = server.local_addrs()[0].port();
    let plain = s_client(port, "shop.example", Some("h2,http/1.1"));
    assert!(plain.contains("CN=shop.example") || plain.contains("CN = shop.example"), "terminated here: {plain}");
    assert_eq!(acme.connections(), 0);
    let _ = s_client(port, "shop.example", Some("acme-tls/1"));
    let seen = acme.next().bytes;
    assert!(seen.windows(10).any(|w| w == b"acme-tls/1"), "the challenge's hello reached the responder");
    // Any name: the ALPN route has no names of its own.
    let _ = s_client(port, "other.example", Some("acme-tls/1"));
    acme.next();
    let m = wait_metrics(&server, |m| m.routed_total() == 3 && m.open == 0);
    assert_eq!((m.routed_by(Match::Alpn), m.routed_by(Match::ExactSni)), (2, 1), "{m:#?}");
    server.shutdown();
}

const CAPTURES: &[(&str, &[u8], &str)] = &[
    ("chromium-pq", CHROMIUM_PQ, "t13d1517h2_8daaf6152771_cb7bf5808d99"),
    ("curl", CURL, "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"),
    ("openssl-sni", OPENSSL_SNI, "t13d311000_e8f1e7e78f70_1f22a2ca17c4"),
    ("openssl-nosni", OPENSSL_NOSNI, "t13i310900_e8f1e7e78f70_1f22a2ca17c4"),
    ("firefox", include_bytes!("../src/hello/testdata/firefox.bin"), "t13d1617h2_86a278354501_3cbfd9057e0d"),
    ("go", include_bytes!("../src/hello/testdata/go.bin"), "t13d1910h2_9dc949149365_97f8aa674fd9"),
    ("java", include_bytes!("../src/hello/testdata/java.bin"), "t13d3713h2_db35923f8641_7c76daad20ec"),
    ("python", include_bytes!("../src/hello/testdata/python.bin"), "t13d1812h2_85036bcba153_d41ae481755e"),
];

#[test]
fn the_access_log_has_the_ja4_of_each_captured_hello() {
    let b = backend(Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(b"ok".to_vec()) });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n[fallback]\nno_sni = \"all\"\nunknown_sni = \"all\"\n\
         [[route]]\nname = \"all\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{}\"]\n",
        b.addr
    );
    let overrides = RuntimeOverrides { access_log: Some(log.clone()), ..Default::default() };
    let (server, _f) = start(&toml, &overrides);
    for (name, hello, _) in CAPTURES {
        assert_eq!(roundtrip(server.local_addrs()[0], hello), b"ok", "{name}");
    }
    wait_metrics(&server, |m| m.routed_total() == CAPTURES.len() as u64 && m.open == 0);
    assert!(server.shutdown());
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), CAPTURES.len());
    for (line, (name, _, want)) in lines.iter().zip(CAPTURES) {
        assert_eq!(line["ja4"], *want, "{name}");
    }
}

#[test]
fn ja4_deny_and_allow_lists() {
    let b = backend(Mode::ReplyAfter { n: 1, reply: std::sync::Arc::new(b"ok".to_vec()) });
    let listener = |rules: &str| {
        format!(
            "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n{rules}\n[fallback]\nno_sni = \"all\"\nunknown_sni = \"all\"\n\
             [[route]]\nname = \"all\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{}\"]\n",
            b.addr
        )
    };
    // Deny OpenSSL's fingerprint (all three parts), let the rest in.
    let (server, _f) =
        start(&listener("deny_ja4 = [\"t13d311000_e8f1e7e78f70_1f22a2ca17c4\"]"), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    let mut c = connect(addr);
    std::io::Write::write_all(&mut c, OPENSSL_SNI).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_eq!(got, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40], "a handshake_failure alert");
    assert_eq!(roundtrip(addr, CURL), b"ok");
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::DeniedJa4) == 1 && m.routed_total() == 1);
    assert_eq!(m.dropped_total(), 1);
    server.shutdown();
    // Allow only Chromium-like hellos by their first part; the b part as a wildcard.
    let (server, _f) =
        start(&listener("allow_ja4 = [\"t13d1517h2\", \"*_e8f1e7e78f70_b26ce05bbdd6\"]"), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    assert_eq!(roundtrip(addr, CHROMIUM_PQ), b"ok");
    assert_eq!(roundtrip(addr, CURL), b"ok");
    let mut c = connect(addr);
    std::io::Write::write_all(&mut c, OPENSSL_SNI).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_eq!(got.first(), Some(&0x15), "an alert");
    wait_metrics(&server, |m| m.dropped_by(DropReason::DeniedJa4) == 1 && m.routed_total() == 2);
    server.shutdown();
}
