//! `deploy/` stays valid: the systemd unit passes `systemd-analyze verify` (where the tool exists)
//! and says what the hardening promises; the Kubernetes manifests parse, hold the fields that
//! matter (host network, the ConfigMaps mounted as directories, `watch = true`, the probes, the
//! capabilities), and the configuration they carry passes `sni-dispatch check` once its
//! ConfigMaps and Secret are laid out as the kubelet would.
use std::path::Path;
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn bin() -> String {
    std::env::var("SNI_DISPATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sni-dispatch").to_string())
}

/// The `Key=value` lines of a unit file.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/sni-dispatch.service")).unwrap();
    let d = directives(&unit);
    let get = |k: &str| d.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("User"), ["sni-dispatch"]);
    assert_eq!(get("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(get("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert!(get("LimitNOFILE").first().and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n >= 65536));
    assert_eq!(get("ProtectSystem"), ["strict"]);
    assert!(get("SystemCallFilter").iter().any(|f| f.contains("io_uring_setup") && f.contains("io_uring_enter")));
    let config = get("ExecStart").first().and_then(|s| s.split("--config ").nth(1)).unwrap_or_default().to_owned();
    assert_eq!(config, "/etc/sni-dispatch/edge.toml");
    assert!(std::fs::read_to_string(repo("deploy/systemd/sni-dispatch.sysusers")).unwrap().contains("u sni-dispatch "));

    // The configuration it ships with loads (its directories laid out in a scratch root).
    let root = tempfile::tempdir().unwrap();
    let edge = std::fs::read_to_string(repo("deploy/systemd/edge.toml")).unwrap();
    let mut edge = edge.replace("/etc/", &format!("{}/etc/", root.path().display()));
    for dir in ["/var/lib/", "/run/", "/var/log/"] {
        edge = edge.replace(dir, &format!("{}{dir}", root.path().display()));
    }
    std::fs::create_dir_all(root.path().join("etc/sni-dispatch/routes.d")).unwrap();
    let path = root.path().join("edge.toml");
    std::fs::write(&path, &edge).unwrap();
    let out = Command::new(bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}\n{edge}", String::from_utf8_lossy(&out.stderr));

    // systemd-analyze verify, with ExecStart pointing at this build (verify checks that the
    // program exists). Where the tool is missing (a minimal CI image), say so and stop here.
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not installed: skipping `systemd-analyze verify`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace("/usr/local/bin/sni-dispatch", &bin());
    let copy = dir.path().join("sni-dispatch.service");
    std::fs::write(&copy, local).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Lines about the unit itself; verify also reports unrelated units of the host.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("sni-dispatch.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {text}");
}

fn docs(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_kubernetes_daemonset_holds_what_matters_and_its_config_checks() {
    let docs = docs("deploy/kubernetes/daemonset.yaml");
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).expect("a DaemonSet");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"],
        "the selector must match the pod's labels"
    );
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args[..2], ["run", "--config"]);
    let config_path = args[2];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["add"][0].as_str(), Some("NET_BIND_SERVICE"));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();

    // Each mount: a whole volume (no subPath, which would not follow ConfigMap updates), from a
    // ConfigMap or Secret of this file.
    let root = tempfile::tempdir().unwrap();
    let volumes = pod["volumes"].as_vec().unwrap();
    for m in c["volumeMounts"].as_vec().unwrap() {
        assert!(m["subPath"].is_badvalue(), "a subPath mount does not follow updates: {m:?}");
        let name = m["name"].as_str().unwrap();
        let mount = m["mountPath"].as_str().unwrap();
        let v = volumes.iter().find(|v| v["name"].as_str() == Some(name)).expect("the mount's volume");
        // Lay the ConfigMap or Secret out as the kubelet does (files under the mount path).
        let (data, source) = if let Some(cm) = v["configMap"]["name"].as_str() {
            (find(&docs, "ConfigMap", cm)["data"].clone(), cm)
        } else {
            let s = v["secret"]["secretName"].as_str().expect("a configMap or secret volume");
            (find(&docs, "Secret", s)["stringData"].clone(), s)
        };
        let dir = root.path().join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in data.as_hash().unwrap_or_else(|| panic!("{source} has no data")) {
            std::fs::write(dir.join(k.as_str().unwrap()), v.as_str().unwrap()).unwrap();
        }
    }
    // The configuration: watch on, includes in a mounted directory, a drain shorter than the
    // grace period; and `check` passes on it as mounted.
    let main = root.path().join(config_path.trim_start_matches('/'));
    let text = std::fs::read_to_string(&main).expect("the --config file is in a mounted ConfigMap");
    assert!(text.contains("watch = true"), "{text}");
    let drain: i64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_timeout_ms = "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    assert!(grace * 1000 > drain, "terminationGracePeriodSeconds {grace} must exceed drain_timeout_ms {drain}");
    let rooted = text.replace("\"/etc/", &format!("\"{}/etc/", root.path().display()));
    std::fs::write(&main, &rooted).unwrap();
    let out = Command::new(bin()).args(["check", "--config"]).arg(&main).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{rooted}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("included files: 2"), "{stdout}");
}
