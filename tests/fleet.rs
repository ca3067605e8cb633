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

/// `openssl` in `dir` with the words of `args` (split on spaces), a new P-256 key, and `subject`.
fn openssl_req(dir: &Path, args: &str, subject: &str) -> String {
    let mut all: Vec<&str> = args.split_whitespace().collect();
    all.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subject]);
    run_in(dir, "openssl", &all)
}

impl OpensslCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        openssl_req(dir.path(), "req -x509 -keyout ca.key -out ca.pem -days 30", "/CN=fleet test CA");
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
        let crt = format!("{name}.crt");
        std::fs::write(d.join(format!("{name}.ext")), format!("subjectAltName=DNS:{name}\n")).unwrap();
        openssl_req(d, &format!("req -keyout {name}.key -out {name}.csr"), &format!("/CN={name}"));
        let sign = format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial 0x{serial} -extfile {name}.ext -out {crt} -days 10"
        );
        run_in(d, "openssl", &sign.split_whitespace().collect::<Vec<_>>());
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

/// A labelled counter of `/stats` (merged over the workers and the process).
fn stats_counter(admin: SocketAddr, counter: &str, label: &str) -> u64 {
    // The admin endpoint is bound just after the listeners that spawn_binary waited for.
    assert!(wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(admin).is_ok()), "no admin on {admin}");
    let (status, _, body) = http_raw(admin, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["merged"]["counters"][counter][label].as_u64().unwrap_or(0)
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
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = config_file(&format!(
        "{RUNTIME}[admin]\nlisten = \"{admin}\"\n[[listener]]\naddress = \"{addr}\"\n{}{}{}",
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
    let ocsp_gauge = |state: &str| stats_counter(admin, "tls_ocsp_responses", state);
    assert!(wait_until(Duration::from_secs(20), || ocsp_gauge("stapled") == 1 && ocsp_gauge("refused") == 2));
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
    assert_eq!((ocsp_gauge("stapled"), ocsp_gauge("refused")), (2, 1));
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
        stats_counter(self.admin, counter, label)
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
    // Counters are published every 100 ms.
    assert!(wait_until(Duration::from_secs(10), || b.stat("tls_tickets", "decrypted") >= 2), "B decrypted A's tickets");
    assert!(wait_until(Duration::from_secs(10), || stranger.stat("tls_tickets", "unknown_key") >= 2));

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
    assert_eq!((a.stat("tls_ticket_keys", "configured"), a.stat("tls_ticket_keys", "retired")), (3, 2), "keys 1 and 2");
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

// ---- binary upgrade -----------------------------------------------------------------------

const REPLY: &[u8] = b"served by the back end";

/// One short passthrough connection: hello in, the back end's reply out, EOF.
fn one_client(addr: SocketAddr, t: &mut Tally) {
    short_client(addr, OPENSSL_SNI, REPLY, t)
}

/// The status of `GET /healthz`, or `None` when the request failed (refused, reset, timed out).
fn healthz(admin: SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut c =
        std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    c.read_to_end(&mut got).map_err(|e| format!("read: {e} after {} bytes", got.len()))?;
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("answer: {text:?}"))
}

/// A `run` of the real binary on `cfg` with `args`, not waiting for anything.
fn spawn_raw(cfg: &ConfigFile, log: &str, args: &[&str]) -> Proc {
    let stderr_path = cfg.dir.path().join(log);
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sni-dispatch"))
        .args(["run", "--config"])
        .arg(&cfg.path)
        .args(args)
        .env("SNI_DISPATCH_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sni-dispatch");
    Proc { child, stderr_path }
}

/// Waits (bounded) for `p` to exit; its status.
fn exit_of(p: &mut Proc, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = p.child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Four clients connect one after another while the binary is replaced twice (2 workers → 1 →
/// 2, so sockets are shared out unevenly both ways), each new process taking the sockets of the
/// running one; a fifth polls `/healthz`, whose socket is handed over too. Not one connection
/// may be refused, reset or fail, and every process must exit 0 after its drain.
#[test]
fn a_binary_upgrade_under_load_refuses_resets_and_fails_no_connection() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let backend = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let (addr, admin) =
        (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let toml = |workers: usize| {
        format!(
            "[runtime]\nworkers = {workers}\ndrain_timeout_ms = 20000\n[admin]\nlisten = \"{admin}\"\n\
             [[listener]]\naddress = \"{addr}\"\n[[route]]\nname = \"r\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\n\
             sni = [\"www.example.com\"]\nbackends = [\"{}\"]\n",
            backend.addr
        )
    };
    let (c1, c2, c3) = (config_file(&toml(2)), config_file(&toml(1)), config_file(&toml(2)));
    let sock = c1.dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().unwrap();
    let mut old = spawn_binary(&c1, &["--upgrade-socket", sock_arg], addr);
    assert!(wait_until(Duration::from_secs(20), || sock.exists()), "no upgrade socket: {}", old.stderr());

    // The admin endpoint is bound just after the listeners: wait for it too.
    assert!(wait_until(Duration::from_secs(20), || healthz(admin) == Ok(200)), "no admin endpoint");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = Clients::start(4, addr, OPENSSL_SNI, REPLY);
    let health_bad = Arc::new(Mutex::new(Vec::new()));
    let health = {
        let (stop, bad) = (Arc::clone(&stop), Arc::clone(&health_bad));
        std::thread::spawn(move || {
            let mut polls = 0u64;
            while !stop.load(Ordering::SeqCst) && polls < 100_000 {
                polls += 1;
                match healthz(admin) {
                    Ok(200) => {}
                    other => bad.lock().unwrap().push(other),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            polls
        })
    };
    let served_now = || clients.tally().ok;
    // Some load before the first upgrade.
    std::thread::sleep(Duration::from_millis(500));

    for (i, cfg) in [&c2, &c3].into_iter().enumerate() {
        let mut new =
            spawn_raw(cfg, &format!("upgrade-{i}.log"), &["--upgrade-from", sock_arg, "--upgrade-socket", sock_arg]);
        assert!(
            wait_until(Duration::from_secs(30), || new.stderr().contains("the previous process stopped accepting")),
            "upgrade {i} did not complete:\n{}\nold:\n{}",
            new.stderr(),
            old.stderr()
        );
        let status = exit_of(&mut old, Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "the old process must drain and exit 0 ({status:?}):\n{}",
            old.stderr()
        );
        assert!(old.stderr().contains("binary upgrade: the new process accepts on our listeners"), "{}", old.stderr());
        assert!(
            wait_until(Duration::from_secs(20), || sock.exists()),
            "the new process offers in turn: {}",
            new.stderr()
        );
        // The new process serves on its own for a while.
        let before = served_now();
        assert!(
            wait_until(Duration::from_secs(20), || served_now() > before + 50),
            "no progress after upgrade {i} ({:?}, running: {:?}):\n{}",
            clients.tally(),
            new.child.try_wait(),
            new.stderr()
        );
        old = new;
    }
    stop.store(true, Ordering::SeqCst);
    let t = clients.stop();
    let polls = health.join().unwrap();
    eprintln!("across two upgrades: {t:?}, {polls} /healthz polls");
    assert_eq!((t.refused, t.reset, t.failed), (0, 0, 0), "{t:?}");
    assert!(t.ok > 100, "{t:?}");
    assert!(health_bad.lock().unwrap().is_empty(), "/healthz answered otherwise: {:?}", health_bad.lock().unwrap());
    assert!(old.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).is_some_and(|s| s.success()));
    assert!(!sock.exists(), "the last process removes its upgrade socket when it stops");
}

#[test]
fn only_the_same_user_may_take_the_listeners_and_a_failed_successor_changes_nothing() {
    use std::sync::Arc;
    let backend = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = config_file(&format!(
        "{RUNTIME}[admin]\nlisten = \"{admin}\"\n[[listener]]\naddress = \"{addr}\"\n[[route]]\nname = \"r\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\n\
         sni = [\"www.example.com\"]\nbackends = [\"{}\"]\n",
        backend.addr
    ));
    let sock = cfg.dir.path().join("upgrade.sock");
    let sock_arg = sock.to_str().unwrap();
    let mut p = spawn_binary(&cfg, &["--upgrade-socket", sock_arg], addr);
    assert!(wait_until(Duration::from_secs(20), || sock.exists()));
    // A second process cannot offer on the same socket.
    let mut twin = spawn_raw(&cfg, "twin.log", &["--upgrade-socket", sock_arg]);
    assert_eq!(exit_of(&mut twin, Duration::from_secs(20)).and_then(|s| s.code()), Some(1));
    assert!(twin.stderr().contains("another process offers its listeners there"), "{}", twin.stderr());

    // A successor whose configuration does not load never connects: the running one goes on.
    let broken = config_file("[[listener]]\naddress = \"nowhere\"\n");
    let mut bad = spawn_raw(&broken, "bad.log", &["--upgrade-from", sock_arg]);
    assert_eq!(exit_of(&mut bad, Duration::from_secs(20)).and_then(|s| s.code()), Some(1));

    // Another user is refused, by the file mode of the socket and, were it reachable, by its
    // credentials (SO_PEERCRED); when the test can run a process as another user (root).
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 && Path::new("/usr/bin/setpriv").exists() {
        use std::os::unix::fs::PermissionsExt;
        let as_nobody = || {
            // Bounded: were it let in, it would serve until killed.
            let out = Command::new("timeout")
                .args(["-s", "KILL", "20", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_sni-dispatch"))
                .args(["run", "--config"])
                .arg(&cfg.path)
                .args(["--upgrade-from", sock_arg])
                .output()
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let dir = cfg.dir.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (code, text) = as_nobody();
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("Permission denied"), "the socket is 0600:\n{text}");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (code, text) = as_nobody();
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains("the running process refused") && text.contains("only uid 0 may take the listeners"),
            "{text}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || p.stderr().contains("runs as uid 65534")),
            "the running one logs the refusal: {}",
            p.stderr()
        );
        assert_eq!(stats_counter(admin, "upgrade_takers", "refused"), 1, "and counts it");
    }
    let mut t = Tally::default();
    for _ in 0..20 {
        one_client(addr, &mut t);
    }
    assert_eq!(t, Tally { ok: 20, ..Tally::default() }, "still serving");
    assert!(p.child.try_wait().unwrap().is_none(), "still running: {}", p.stderr());
    assert!(p.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).is_some_and(|s| s.success()));
}
