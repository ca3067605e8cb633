//! Runs `tuning/test.sh` (sysctl keys exist, irq-affinity.sh dry runs and a fake NIC, every
//! profile accepted by `run --profile`) against the binary this `cargo test` built.

use std::process::Command;

#[test]
fn tuning_scripts_and_profiles() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/tuning/test.sh"))
        .env("SNI_DISPATCH", env!("CARGO_BIN_EXE_sni-dispatch"))
        .output()
        .expect("bash tuning/test.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tuning/test.sh failed:\n{text}");
    assert!(!text.contains("skip profiles"), "the profiles were not run through the binary:\n{text}");
}
