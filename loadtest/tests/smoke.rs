//! CI's load-test gate: the `smoke` suite against the dispatcher built by the same
//! `cargo test --workspace` run. It checks correctness (zero errors), never speed.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/sni-dispatch`, beside this test's own `deps/` directory.
fn dispatcher() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    dir.join("sni-dispatch")
}

#[test]
fn smoke_suite_has_no_errors() {
    let dispatcher = dispatcher();
    assert!(
        dispatcher.exists(),
        "{} is missing: run `cargo test --workspace` (it builds the dispatcher too)",
        dispatcher.display()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_sni-loadtest"))
        .current_dir(&root)
        .args(["suite", "loadtest/suites/smoke.toml", "--quiet", "--dispatcher"])
        .arg(&dispatcher)
        .output()
        .expect("run sni-loadtest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "smoke suite failed:\n{text}");
}

/// `sni-loadtest quic` with tiny counts: quinn through the dispatcher and nginx's UDP proxy,
/// every workload, no error (correctness only).
#[test]
fn quic_workloads_have_no_errors() {
    let dispatcher = dispatcher();
    assert!(dispatcher.exists(), "{} is missing", dispatcher.display());
    let nginx = std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sni-loadtest"));
    cmd.args(["quic", "--handshakes", "24", "--concurrency", "4", "--bulk-mib", "4", "--bulk-streams", "2"])
        .args(["--idle-flows", "10", "--flood", "300", "--dispatcher"])
        .arg(&dispatcher);
    if nginx {
        cmd.args(["--compare", "nginx"]);
    }
    let out = cmd.output().expect("run sni-loadtest quic");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sni-loadtest quic failed:\n{text}");
    assert!(text.contains("| handshakes | sni-dispatch | 24 | 0 |"), "{text}");
}
