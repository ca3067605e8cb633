//! `sni-dispatch check` through the real binary: exit codes, summaries, located errors, and
//! every shipped example config.

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sni-dispatch")).args(["check", "--config"]).arg(config).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_example_config_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, stdout, stderr) = check(&path);
            assert_eq!(code, 0, "{}: {stdout}{stderr}", path.display());
            assert!(stdout.contains(": ok\n") && stdout.contains("routes: "), "{stdout}");
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the example configs in {}", dir.display());
}

#[test]
fn broken_config_exits_1_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
[[listener]]
address = "127.0.0.1:8443"
[fallback]
no_sni = "default-site"
[[route]]
name = "shop"
sni = ["a.*.example.com"]
action = "terminate"
cert = "nope.pem"
key = "nope.key"
backends = ["127.0.0.1:8080"]
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let p = path.display();
    for line in [
        format!("sni-dispatch: error: {p}: route \"shop\".sni: \"a.*.example.com\": '*' is allowed only"),
        format!(
            "sni-dispatch: error: {p}: route \"shop\".cert: {}: cannot read",
            dir.path().join("nope.pem").display()
        ),
        format!("sni-dispatch: error: {p}: fallback.no_sni: names no route: \"default-site\""),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
}

#[test]
fn syntax_errors_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syntax.toml");
    std::fs::write(&path, "[[listener]]\naddress = \"127.0.0.1:8443\n").unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 1);
    assert!(stderr.contains("line 2, column"), "{stderr}");
    let (code, _, stderr) = check(&dir.path().join("absent.toml"));
    assert_eq!(code, 1);
    assert!(stderr.contains("absent.toml: cannot read"), "{stderr}");
}

#[test]
fn bad_flags_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_sni-dispatch")).args(["run", "--workers", "many"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
