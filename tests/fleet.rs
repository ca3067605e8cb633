//! TLS at fleet scale, end to end through the real binary with real programs: OCSP responses
//! made by `openssl ocsp` stapled (checked with `openssl s_client -status`) or, expired or for
//! another certificate, reported and withheld; session tickets issued by one process resumed by
//! another that shares the key file (`openssl s_client -sess_out` / `-sess_in`), through a key
//! rotation; and a binary upgrade under load that refuses, resets and fails no connection.
mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `program args` in `dir`; panics with its output if it fails.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (.ci/run installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// A CA made by `openssl` (its key on disk, for `openssl ocsp -rsigner`), its leaves and an
/// OCSP index of them, in a temporary directory.
struct OpensslCa {
    dir: tempfile::TempDir,
}

impl OpensslCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run_in(
            dir.path(),
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=fleet test CA",
                "-days",
                "30",
            ],
        );
        std::fs::write(dir.path().join("index.txt"), "").unwrap();
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A leaf for `name` with `serial` (hex): `NAME.crt` (the leaf), `NAME.pem` (leaf and CA),
    /// `NAME.key`; listed as valid in the OCSP index.
    fn leaf(&self, name: &str, serial: &str) {
        let d = self.dir.path();
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        std::fs::write(d.join(&ext), format!("subjectAltName=DNS:{name}\n")).unwrap();
        run_in(
            d,
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        run_in(
            d,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &format!("0x{serial}"),
                "-extfile",
                &ext,
                "-out",
                &crt,
                "-days",
                "10",
            ],
        );
        let chain =
            std::fs::read_to_string(d.join(&crt)).unwrap() + &std::fs::read_to_string(d.join("ca.pem")).unwrap();
        std::fs::write(d.join(format!("{name}.pem")), chain).unwrap();
        let mut index = std::fs::read_to_string(d.join("index.txt")).unwrap();
        index += &format!("V\t351231235959Z\t\t{}\tunknown\t/CN={name}\n", serial.to_uppercase());
        std::fs::write(d.join("index.txt"), index).unwrap();
    }

    /// `openssl ocsp` answers a request for `name`'s certificate into `out`: valid one day from
    /// now, or, with `days_ago`, made that many days ago by a responder whose clock says so
    /// (`faketime`), hence expired.
    fn respond(&self, name: &str, out: &str, days_ago: Option<u32>) {
        let d = self.dir.path();
        let req = format!("{name}.req");
        run_in(
            d,
            "openssl",
            &["ocsp", "-issuer", "ca.pem", "-cert", &format!("{name}.crt"), "-reqout", &req, "-no_nonce"],
        );
        let responder =
            ["ocsp", "-index", "index.txt", "-rsigner", "ca.pem", "-rkey", "ca.key", "-CA", "ca.pem", "-reqin", &req];
        let tail = ["-respout", out, "-ndays", "1"];
        match days_ago {
            None => run_in(d, "openssl", &[&responder[..], &tail[..]].concat()),
            Some(n) => {
                let ago = format!("-{n}d");
                run_in(d, "faketime", &[&["-f", ago.as_str(), "openssl"][..], &responder[..], &tail[..]].concat())
            }
        };
    }

    /// The `[[route]]` of a terminating site `name` with its `ocsp` file.
    fn route(&self, name: &str, ocsp: Option<&str>, origin: SocketAddr) -> String {
        let ocsp = ocsp.map(|o| format!("ocsp = {:?}\n", self.path(o))).unwrap_or_default();
        format!(
            "[[route]]\nname = {name:?}\nsni = [{name:?}]\naction = \"terminate\"\ncert = {:?}\nkey = {:?}\n{ocsp}backends = [\"{origin}\"]\n",
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }
}

fn stapled(out: &str) -> bool {
    out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good")
}

fn check_binary(config: &Path) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sni-dispatch")).args(["check", "--config"]).arg(config).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn ocsp_responses_are_stapled_when_current_and_withheld_when_expired_or_for_another_certificate() {
    let ca = OpensslCa::new();
    for (name, serial) in [("good.example", "a1"), ("stale.example", "a2"), ("wrong.example", "a3")] {
        ca.leaf(name, serial);
    }
    ca.respond("good.example", "good.ocsp", None);
    ca.respond("stale.example", "stale.ocsp", Some(3));
    let origin = http_origin("site");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = config_file(&format!(
        "{RUNTIME}[[listener]]\naddress = \"{addr}\"\n{}{}{}",
        ca.route("good.example", Some("good.ocsp"), origin),
        ca.route("stale.example", Some("stale.ocsp"), origin),
        // good.example's response, for another certificate.
        ca.route("wrong.example", Some("good.ocsp"), origin),
    ));

    // `check` loads it, with a warning for each response it will not staple.
    let (ok, out) = check_binary(&cfg.path);
    assert!(ok, "{out}");
    assert!(out.contains("warning: route \"stale.example\".ocsp:") && out.contains("expired: nextUpdate"), "{out}");
    assert!(
        out.contains("warning: route \"wrong.example\".ocsp:") && out.contains("not this certificate's serial A3"),
        "{out}"
    );
    assert!(!out.contains("route \"good.example\".ocsp"), "{out}");

    let mut p = spawn_binary(&cfg, &[], addr);
    let log = p.stderr();
    assert!(log.contains("route \"stale.example\".ocsp") && log.contains("not stapled"), "the load logs it:\n{log}");
    let status = |name: &str| s_client(addr, Some(name), &["-status", "-CAfile", ca.path("ca.pem").to_str().unwrap()]);
    let out = status("good.example");
    assert!(stapled(&out), "a current response is stapled:\n{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    for name in ["stale.example", "wrong.example"] {
        let out = status(name);
        assert!(out.contains("OCSP response: no response sent"), "{name}: not stapled:\n{out}");
        assert!(
            out.contains(&format!("CN={name}")) || out.contains(&format!("CN = {name}")),
            "{name} still served:\n{out}"
        );
    }

    // The responder's cron job replaces the stale file (rename, as it should); a reload re-reads
    // it with the certificate, and it is stapled.
    ca.respond("stale.example", "stale.ocsp.new", None);
    std::fs::rename(ca.path("stale.ocsp.new"), ca.path("stale.ocsp")).unwrap();
    let reloads = p.stderr().matches("configuration reloaded").count();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(20), || p.stderr().matches("configuration reloaded").count() > reloads));
    let out = status("stale.example");
    assert!(stapled(&out), "stapled after the reload:\n{out}");
    assert!(!stapled(&status("wrong.example")));
    assert!(p.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).is_some_and(|s| s.success()));
}

#[test]
fn an_unreadable_ocsp_file_is_a_configuration_error() {
    let ca = OpensslCa::new();
    ca.leaf("site.example", "b1");
    let cfg = config_file(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n{}",
        ca.route("site.example", Some("missing.ocsp"), "127.0.0.1:1".parse().unwrap())
    ));
    let (ok, out) = check_binary(&cfg.path);
    assert!(!ok, "{out}");
    assert!(out.contains("route \"site.example\".ocsp:") && out.contains("missing.ocsp: cannot read"), "{out}");
}

// ---- session tickets ----------------------------------------------------------------------

/// A key-file line: base64 of 80 bytes, all `seed` (distinct seeds, distinct key names).
fn key_line(seed: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([seed; 80])
}

/// One `sni-dispatch run` terminating `shop.example` with the key file `keys`, its admin on a
/// free port.
struct Host {
    p: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    _cfg: ConfigFile,
}

fn host(ca: &OpensslCa, keys: Option<&Path>, origin: SocketAddr) -> Host {
    let (addr, admin) =
        (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let tls = keys.map(|k| format!("[tls]\nticket_keys = {k:?}\n")).unwrap_or_default();
    let cfg = config_file(&format!(
        "{RUNTIME}{tls}[admin]\nlisten = \"{admin}\"\n[[listener]]\naddress = \"{addr}\"\n{}",
        ca.route("shop.example", None, origin)
    ));
    let p = spawn_binary(&cfg, &[], addr);
    Host { p, addr, admin, _cfg: cfg }
}

impl Host {
    fn reload(&self) {
        let before = self.p.stderr().matches("configuration reloaded").count();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.p.pid() as i32, libc::SIGHUP) };
        assert!(
            wait_until(Duration::from_secs(20), || self.p.stderr().matches("configuration reloaded").count() > before),
            "no reload: {}",
            self.p.stderr()
        );
    }

    /// A counter of `/stats` (merged), e.g. `tls_tickets` → `decrypted_retired`.
    fn stat(&self, counter: &str, label: &str) -> u64 {
        let (status, _, body) = http_raw(self.admin, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["merged"]["counters"][counter][label].as_u64().unwrap_or(0)
    }
}

/// A full handshake to `addr` saving the session to `sess`, with a request so that s_client
/// stays until the answer (and the TLS 1.3 ticket after the handshake) arrived.
fn new_session(addr: SocketAddr, flag: &str, sess: &Path) -> String {
    let out = s_client_with(addr, Some("shop.example"), &[flag, "-sess_out", sess.to_str().unwrap()], GET);
    assert!(out.contains("New, "), "{out}");
    out
}

fn resume(addr: SocketAddr, flag: &str, sess: &Path) -> String {
    s_client_with(addr, Some("shop.example"), &[flag, "-sess_in", sess.to_str().unwrap()], GET)
}

const GET: &[u8] = b"GET /resume HTTP/1.1\r\nHost: shop.example\r\n\r\n";

#[test]
fn a_ticket_issued_by_one_host_resumes_on_another_sharing_the_key_file_through_a_rotation() {
    let ca = OpensslCa::new();
    ca.leaf("shop.example", "c1");
    let origin = http_origin("shop");
    let keys = ca.path("ticket.keys");
    std::fs::write(&keys, format!("# previous, current, next\n{}\n{}\n{}\n", key_line(1), key_line(2), key_line(3)))
        .unwrap();
    let (a, b) = (host(&ca, Some(&keys), origin), host(&ca, Some(&keys), origin));
    let other_keys = ca.path("other.keys");
    std::fs::write(&other_keys, key_line(9)).unwrap();
    let stranger = host(&ca, Some(&other_keys), origin);
    let no_file = host(&ca, None, origin);

    for (version, flag) in [("TLSv1.3", "-tls1_3"), ("TLSv1.2", "-tls1_2")] {
        let sess = ca.path(&format!("{version}.sess"));
        new_session(a.addr, flag, &sess);
        let out = resume(b.addr, flag, &sess);
        assert!(out.contains(&format!("Reused, {version}")), "host B resumes host A's ticket:\n{out}");
        // Hosts without the file: a full handshake.
        for h in [&stranger, &no_file] {
            let out = resume(h.addr, flag, &sess);
            assert!(out.contains("New, ") && !out.contains("Reused"), "{out}");
        }
    }
    assert!(b.stat("tls_tickets", "decrypted") >= 2, "B decrypted A's tickets");
    assert!(stranger.stat("tls_tickets", "unknown_key") >= 2);

    // Rotation: key 1 dropped, key 4 appended; key 3 (known to both for a rotation) encrypts.
    // Tickets of key 2 still resume (key 2 is still in the file).
    let sess = ca.path("rotation.sess");
    new_session(a.addr, "-tls1_3", &sess);
    std::fs::write(&keys, format!("{}\n{}\n{}\n", key_line(2), key_line(3), key_line(4))).unwrap();
    a.reload();
    b.reload();
    assert!(resume(b.addr, "-tls1_3", &sess).contains("Reused, TLSv1.3"));
    // Another rotation drops key 2: within the window, the hosts that had it still decrypt it
    // (decrypted_retired); a host started after it left the file does not.
    std::fs::write(&keys, format!("{}\n{}\n{}\n", key_line(3), key_line(4), key_line(5))).unwrap();
    a.reload();
    let out = resume(a.addr, "-tls1_3", &sess);
    assert!(out.contains("Reused, TLSv1.3"), "a dropped key decrypts within its window:\n{out}");
    assert!(wait_until(Duration::from_secs(10), || a.stat("tls_tickets", "decrypted_retired") >= 1));
    let late = host(&ca, Some(&keys), origin);
    let out = resume(late.addr, "-tls1_3", &sess);
    assert!(out.contains("New, "), "a host that never had key 2 cannot resume it:\n{out}");

    // A broken key file fails the reload and keeps the running keys.
    std::fs::write(&keys, "not base64 !\n").unwrap();
    let before = a.p.stderr().matches("reload failed").count();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(a.p.pid() as i32, libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(20), || a.p.stderr().matches("reload failed").count() > before));
    assert!(a.p.stderr().contains("tls.ticket_keys:"), "{}", a.p.stderr());
    assert!(resume(a.addr, "-tls1_3", &sess).contains("Reused, TLSv1.3"), "still the old keys");
}
