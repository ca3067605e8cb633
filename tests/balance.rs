//! In front of a pool, through the real server: every `balance` policy's distribution, weights
//! and backups, the hashes' stickiness, active health checks taking a killed back end out and
//! its return picked up, passive ejection, every back end down, and unix-socket back ends for
//! both actions.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::{ConnectCause, DropReason};
use sni_dispatch::server::Server;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A back end that answers its name to every connection and can be killed and brought back on
/// the same port.
struct Named {
    name: String,
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Named {
    fn start(name: &str) -> Self {
        let mut n = Self {
            name: name.into(),
            addr: "127.0.0.1:0".parse().unwrap(),
            served: Arc::default(),
            stop: Arc::default(),
            thread: None,
        };
        n.up();
        n
    }

    fn up(&mut self) {
        let l = TcpListener::bind(self.addr).expect("bind (again)");
        self.addr = l.local_addr().unwrap();
        self.stop = Arc::default();
        let (stop, served, name) = (Arc::clone(&self.stop), Arc::clone(&self.served), self.name.clone());
        self.thread = Some(std::thread::spawn(move || {
            for s in l.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                let name = name.clone();
                let served = Arc::clone(&served);
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                    let mut buf = [0u8; 4096];
                    if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                        served.fetch_add(1, Ordering::SeqCst);
                        let _ = s.write_all(name.as_bytes());
                    }
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = s.read(&mut buf);
                });
            }
        }));
    }

    /// Stops listening: new connects are refused.
    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.down();
        }
    }
}

fn route(name: &str, balance: &str, backends: &[String], extra: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nsni = [\"{name}.example\", \"*.{name}.example\"]\naction = \"passthrough\"\nmin_tls = \"1.0\"\n\
         balance = \"{balance}\"\nbackends = [{}]\n{extra}\n",
        backends.join(", ")
    )
}

fn quoted(b: &[&Named]) -> Vec<String> {
    b.iter().map(|n| format!("\"{}\"", n.addr)).collect()
}

/// One connection with `sni` from `source` (if given): which back end answered.
fn ask(server: &Server, sni: &str, source: Option<&str>) -> String {
    let to = server.local_addrs()[0];
    let mut c = match source {
        None => connect(to),
        Some(ip) => {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into()).unwrap();
            s.connect_timeout(&to.into(), IO_TIMEOUT).unwrap();
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s
        }
    };
    c.write_all(&rustls_hello(Some(sni), &[])).unwrap();
    String::from_utf8(read_to_end(&mut c).unwrap()).unwrap()
}

fn tally(server: &Server, n: usize, sni: impl Fn(usize) -> String) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for i in 0..n {
        *out.entry(ask(server, &sni(i), None)).or_default() += 1;
    }
    out
}

#[test]
fn every_policy_spreads_as_it_says() {
    let bs: Vec<Named> = ["a", "b", "c"].iter().map(|n| Named::start(n)).collect();
    let all: Vec<&Named> = bs.iter().collect();
    let weighted = vec![
        format!("{{ address = \"{}\", weight = 1 }}", bs[0].addr),
        format!("{{ address = \"{}\", weight = 2 }}", bs[1].addr),
        format!("{{ address = \"{}\", weight = 3 }}", bs[2].addr),
    ];
    let mut toml = format!("{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n");
    for p in ["first", "round_robin", "least_conn", "random_two", "hash_sni", "hash_client"] {
        toml += &route(p, p, &quoted(&all), "");
    }
    toml += &route("weighted", "round_robin", &weighted, "");
    let (server, _f) = start(&toml, &RuntimeOverrides::default());

    assert_eq!(tally(&server, 30, |_| "first.example".into()), HashMap::from([("a".into(), 30)]));
    // Round robin over 3 equal back ends: exact thirds (the goal: within ±5 % each).
    let rr = tally(&server, 300, |_| "round_robin.example".into());
    assert_eq!(rr, HashMap::from([("a".into(), 100), ("b".into(), 100), ("c".into(), 100)]), "{rr:?}");
    let w = tally(&server, 120, |_| "weighted.example".into());
    assert_eq!(w, HashMap::from([("a".into(), 20), ("b".into(), 40), ("c".into(), 60)]), "{w:?}");
    // One at a time, least connections sees ties and rotates. A loaded machine may
    // not have counted the last connection closed before the next one is routed,
    // so the shares are near a third each, not exactly.
    let lc = tally(&server, 90, |_| "least_conn.example".into());
    assert!(lc.len() == 3 && lc.values().all(|&n| n >= 20), "{lc:?}");
    let r2 = tally(&server, 300, |_| "random_two.example".into());
    assert!(r2.len() == 3 && r2.values().all(|&n| n >= 60), "{r2:?}");
    // hash_sni: a name sticks to one back end; names spread.
    for i in 0..5 {
        let name = format!("n{i}.hash_sni.example");
        let one = tally(&server, 5, |_| name.clone());
        assert_eq!(one.len(), 1, "{name}: {one:?}");
    }
    let spread = tally(&server, 150, |i| format!("n{i}.hash_sni.example"));
    assert!(spread.len() == 3 && spread.values().all(|&n| n >= 25), "{spread:?}");
    // hash_client: a source address sticks; source addresses spread.
    let mut by_source: HashMap<String, usize> = HashMap::new();
    for i in 1..=60 {
        let ip = format!("127.0.3.{i}");
        let first = ask(&server, "hash_client.example", Some(&ip));
        assert_eq!(ask(&server, "hash_client.example", Some(&ip)), first, "{ip}");
        *by_source.entry(first).or_default() += 1;
    }
    assert!(by_source.len() == 3 && by_source.values().all(|&n| n >= 8), "{by_source:?}");
    server.shutdown();
}

#[test]
fn backups_serve_only_when_every_primary_is_down_then_backends_down() {
    let (mut a, b) = (Named::start("a"), Named::start("backup"));
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n{}",
        route(
            "r",
            "round_robin",
            &[format!("\"{}\"", a.addr), format!("{{ address = \"{}\", backup = true }}", b.addr)],
            "health_check = { interval_ms = 100, timeout_ms = 500, rise = 1, fall = 1 }\n"
        )
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    assert_eq!(tally(&server, 10, |_| "r.example".into()), HashMap::from([("a".into(), 10)]));
    a.down();
    let pools = || server.config();
    assert!(wait_until(Duration::from_secs(20), || !pools().pools.backends().next().unwrap().is_up()));
    assert_eq!(tally(&server, 10, |_| "r.example".into()), HashMap::from([("backup".into(), 10)]));
    drop(b);
    let cfg = server.config();
    let backup = cfg.pools.backends().nth(1).unwrap();
    assert!(wait_until(Duration::from_secs(20), || !backup.is_up()));
    expect_dropped(server.local_addrs()[0], &rustls_hello(Some("r.example"), &[]));
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::BackendsDown) == 1);
    assert_eq!(m.backend_connect_failures.total(), 0, "nothing was tried: every back end was down");
    server.shutdown();
}

/// A back end killed under health checks is out after `fall` checks, so no new connection
/// fails on it; back, it is picked up again after `rise` checks.
#[test]
fn a_killed_back_end_is_taken_out_by_its_checks_and_its_return_picked_up() {
    let (a, mut b) = (Named::start("a"), Named::start("b"));
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        route(
            "r",
            "round_robin",
            &quoted(&[&a, &b]),
            "health_check = { interval_ms = 100, timeout_ms = 500, rise = 2, fall = 2 }\neject_after = 0\n"
        )
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let even = tally(&server, 20, |_| "r.example".into());
    assert_eq!(even, HashMap::from([("a".into(), 10), ("b".into(), 10)]));
    b.down();
    let cfg = server.config();
    let b_state = cfg.pools.backends().find(|s| s.target.to_string() == b.addr.to_string()).unwrap();
    assert!(wait_until(Duration::from_secs(20), || !b_state.is_up()), "b never went down");
    let before = server.metrics().merged().backend_connect_failures.total();
    let after_down = tally(&server, 20, |_| "r.example".into());
    assert_eq!(after_down, HashMap::from([("a".into(), 20)]));
    let m = wait_metrics(&server, |m| m.open == 0 && m.routed_total() == 40);
    assert_eq!(m.backend_connect_failures.total(), before, "a new connection tried the dead back end");
    // Its figures say so on /metrics.
    let admin = server.admin_addr().unwrap();
    let (_, _, text) = http_raw(admin, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(text.contains(&format!("sni_dispatch_backend_up{{backend=\"{}\"}} 0", b.addr)), "{text}");
    assert!(text.contains(&format!("sni_dispatch_backend_checks_total{{backend=\"{}\",result=\"refused\"}}", b.addr)));
    // A reload keeps what the checks know: b stays down (a fresh state would start up).
    let f = _f;
    let reloaded = sni_dispatch::config::Config::load(&f.path, &RuntimeOverrides::default()).unwrap();
    server.reload(reloaded).unwrap();
    let cfg = server.config();
    let b_state = cfg.pools.backends().find(|s| s.target.to_string() == b.addr.to_string()).unwrap();
    assert!(!b_state.is_up(), "the reload forgot that b is down");
    // So does an incremental reload (the table shared with the running one, the pools built anew).
    let (incremental, _) = server.config().reload().unwrap();
    server.reload(incremental).unwrap();
    let cfg = server.config();
    let b_state = cfg.pools.backends().find(|s| s.target.to_string() == b.addr.to_string()).unwrap();
    assert!(!b_state.is_up(), "the incremental reload forgot that b is down");
    assert_eq!(tally(&server, 4, |_| "r.example".into()), HashMap::from([("a".into(), 4)]));
    b.up();
    assert!(wait_until(Duration::from_secs(20), || b_state.is_up()), "b never came back");
    let back = tally(&server, 20, |_| "r.example".into());
    assert_eq!(back, HashMap::from([("a".into(), 10), ("b".into(), 10)]));
    assert_eq!(a.served() + b.served(), 64);
    server.shutdown();
}

#[test]
fn passive_ejection_sets_a_failing_back_end_aside() {
    let a = Named::start("a");
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n{}",
        route("r", "first", &[format!("\"{dead}\""), format!("\"{}\"", a.addr)], "eject_after = 2\neject_ms = 60000\n")
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    assert_eq!(tally(&server, 10, |_| "r.example".into()), HashMap::from([("a".into(), 10)]));
    let m = wait_metrics(&server, |m| m.open == 0 && m.routed_total() == 10);
    assert_eq!(m.backend_connect_failures.get(ConnectCause::Refused), 2, "set aside after 2 refusals: {m:#?}");
    assert_eq!(m.backend_ejections, 1);
    let cfg = server.config();
    let snap = cfg.pools.backends().next().unwrap().snapshot();
    assert_eq!((snap.state(), snap.ejections, snap.failures[ConnectCause::Refused as usize]), ("ejected", 1, 2));
    server.shutdown();
}

#[test]
fn unix_socket_back_ends_for_passthrough_and_terminate() {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).unwrap_or(0);
                let reply = if buf[..n].starts_with(b"GET ") {
                    b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nover unix ok".to_vec()
                } else {
                    format!("unix got {n}").into_bytes()
                };
                let _ = s.write_all(&reply);
            });
        }
    });
    let pki = sni_dispatch::pki::Ca::new("unix test CA").unwrap();
    let leaf = pki.issue(&["term.example"]).unwrap();
    let files = leaf.write(dir.path(), "term").unwrap();
    let ca = pki.write(dir.path(), "ca.pem").unwrap();
    let toml = format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"pass\"\nsni = [\"pass.example\"]\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"unix:{p}\"]\n\
         [[route]]\nname = \"term\"\nsni = [\"term.example\"]\naction = \"terminate\"\ncert = {c:?}\nkey = {k:?}\nbackends = [\"unix:{p}\"]\n",
        p = path.display(),
        c = files.cert,
        k = files.key,
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let hello = rustls_hello(Some("pass.example"), &[]);
    let got = roundtrip(server.local_addrs()[0], &hello);
    assert_eq!(String::from_utf8_lossy(&got), format!("unix got {}", hello.len()));
    let port = server.local_addrs()[0].port();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("term.example:{port}:127.0.0.1"), &format!("https://term.example:{port}/")])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over unix ok", "{}", String::from_utf8_lossy(&out.stderr));
    let m = wait_metrics(&server, |m| m.open == 0 && m.routed_total() == 2);
    assert_eq!(m.backend_connect_failures.total(), 0);
    server.shutdown();
}
