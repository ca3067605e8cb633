//! HAProxy and nginx as the tests start them: in front of sni-dispatch (PROXY protocol senders)
//! or beside it. Each is killed on drop; `None` (and a note) when it is not installed, unless
//! `CI` is set, where .ci/run installs both.
#![allow(dead_code)]

use super::{free_port, wait_until};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running peer, killed on drop.
pub struct Peer {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Peer {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(bin: &str) -> bool {
    let found =
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].iter().any(|d| Path::new(d).join(bin).exists());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{bin} is required in CI (.ci/run installs it)");
        eprintln!("skipped: {bin} is not installed");
    }
    found
}

fn spawn(name: &'static str, mut cmd: Command, addr: SocketAddr, dir: tempfile::TempDir, log: PathBuf) -> Peer {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut p = Peer { name, addr, child, _dir: dir, log };
    let up = wait_until(Duration::from_secs(20), || {
        matches!(p.child.try_wait(), Ok(Some(_)))
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    assert!(up && matches!(p.child.try_wait(), Ok(None)), "{name} did not start: {}", p.log());
    p
}

/// HAProxy in TCP mode on `ip`:(a free port), forwarding every connection to `to` with
/// `server_opts` (e.g. `send-proxy-v2`).
pub fn haproxy(ip: &str, to: SocketAddr, server_opts: &str) -> Option<Peer> {
    if !installed("haproxy") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind {addr}\n  default_backend b\nbackend b\n  server s1 {to} {server_opts}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("haproxy.log");
    let mut c = Command::new("haproxy");
    c.arg("-db").arg("-f").arg(&cfg);
    Some(spawn("haproxy", c, addr, dir, log))
}

/// nginx's stream module on `ip`:(a free port), forwarding every connection to `to`, with
/// `extra` in the server block (e.g. `proxy_protocol on;`).
pub fn nginx(ip: &str, to: SocketAddr, extra: &str) -> Option<Peer> {
    if !installed("nginx") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let cfg = dir.path().join("nginx.conf");
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    let load = if Path::new(module).exists() { format!("load_module {module};\n") } else { String::new() };
    std::fs::write(
        &cfg,
        format!(
            "{load}daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             stream {{\n  server {{ listen {addr}; proxy_pass {to}; {extra} }}\n}}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut c = Command::new("nginx");
    c.arg("-p").arg(dir.path()).arg("-e").arg(dir.path().join("error.log")).arg("-c").arg(&cfg);
    Some(spawn("nginx", c, addr, dir, log))
}
