//! `GET /status` in headless Chromium: every route and back end is on the page, and a back end
//! killed and restored (with health checks) flips its row down and up again.
mod common;

use common::*;
use sni_dispatch::config::RuntimeOverrides;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A listener that accepts and closes, stoppable and restartable on its port.
struct Port {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Port {
    fn open(addr: &str) -> Self {
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                drop(c);
            }
        });
        Self { addr, stop, thread: Some(thread) }
    }

    fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.close();
    }
}

fn dump_dom(chromium: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["60", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("<main>"), "no page: {dom}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    dom
}

/// The `data-state` of the row of back end `addr`, as the page's DOM has it.
fn state_of(dom: &str, addr: SocketAddr) -> Option<String> {
    let at = dom.find(&format!("data-backend=\"{addr}\""))?;
    let rest = &dom[at..];
    let s = rest.find("data-state=\"")? + "data-state=\"".len();
    Some(rest[s..].split('"').next()?.to_owned())
}

#[test]
fn a_killed_back_end_flips_its_row_down_and_back_up() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        assert!(std::env::var_os("CI").is_none(), "chromium is required in CI (.ci/run installs it)");
        eprintln!("skipped: chromium not installed");
        return;
    };
    let (a, mut b) = (Port::open("127.0.0.1:0"), Port::open("127.0.0.1:0"));
    let toml = format!(
        "{RUNTIME}[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"shop & co\"\nsni = [\"shop.example\"]\naction = \"passthrough\"\nbalance = \"round_robin\"\n\
         backends = [\"{}\", \"{}\"]\nhealth_check = {{ interval_ms = 100, timeout_ms = 500, rise = 2, fall = 2 }}\n\
         [[route]]\nname = \"other\"\nsni = [\"other.example\"]\naction = \"passthrough\"\nbackends = [\"unix:/run/nothing.sock\"]\n",
        a.addr, b.addr
    );
    let (server, _f) = start(&toml, &RuntimeOverrides::default());
    let url = format!("http://{}/status", server.admin_addr().unwrap());
    let dom = dump_dom(chromium, &url);
    assert!(dom.contains("data-route=\"shop &amp; co\""), "route names are escaped: {dom}");
    assert!(dom.contains("data-backend=\"unix:/run/nothing.sock\""), "{dom}");
    assert!(dom.contains("<script>") && !dom.contains("src=\"http"), "self-refreshing, no external assets");
    assert_eq!(state_of(&dom, a.addr).as_deref(), Some("up"));
    assert_eq!(state_of(&dom, b.addr).as_deref(), Some("up"));
    b.close();
    let cfg = server.config();
    let shared = cfg.pools.backends().find(|s| s.target.to_string() == b.addr.to_string()).unwrap();
    assert!(wait_until(Duration::from_secs(20), || !shared.is_up()));
    let dom = dump_dom(chromium, &url);
    assert_eq!(state_of(&dom, b.addr).as_deref(), Some("down"), "{dom}");
    assert_eq!(state_of(&dom, a.addr).as_deref(), Some("up"));
    let b2 = Port::open(&b.addr.to_string());
    assert!(wait_until(Duration::from_secs(20), || shared.is_up()));
    let dom = dump_dom(chromium, &url);
    assert_eq!(state_of(&dom, b2.addr).as_deref(), Some("up"), "{dom}");
    server.shutdown();
}
