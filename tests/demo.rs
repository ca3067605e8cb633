//! `sni-dispatch demo` through the real binary: every printed case works as printed.

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_every_case_it_prints() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sni-dispatch"))
        .args(["demo", "--workers", "1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    // The banner ends with "Ctrl-C stops it."; collect its command lines.
    let mut lines = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        if line.contains("Ctrl-C") {
            break;
        }
        lines.push(line);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "demo never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let curls: Vec<&String> = lines.iter().filter(|l| l.trim_start().starts_with("curl ")).collect();
    assert_eq!(curls.len(), 5, "{lines:#?}");
    let run = |cmd: &str| {
        let cmd = cmd.split('#').next().unwrap().trim();
        let out = Command::new("sh").args(["-c", &format!("{cmd} -sS --max-time 20")]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let expect = [
        ("shop.demo.test", Some("site \"shop\"")),
        ("www.app.demo.test", Some("site \"app-tier\"")),
        ("dedicated.demo.test", Some("site \"dedicated\"")),
        ("-k --resolve shop.demo.test", Some("site \"dedicated\"")),
        ("nobody.demo.test", None),
    ];
    for (needle, body) in expect {
        let cmd = curls.iter().find(|c| c.contains(needle)).unwrap_or_else(|| panic!("no curl line for {needle}"));
        let (ok, out) = run(cmd);
        match body {
            Some(b) => assert!(ok && out.contains(b), "{cmd}: {out}"),
            None => assert!(!ok, "{cmd} should be dropped: {out}"),
        }
    }
    let openssl = lines.iter().find(|l| l.contains("openssl s_client")).unwrap();
    let out = Command::new("sh").args(["-c", openssl.trim()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("default.demo.test"), "{openssl}");
}
