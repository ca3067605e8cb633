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
