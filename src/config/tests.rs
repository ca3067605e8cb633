use super::*;
use crate::route::ProxyProtocol;
use std::net::IpAddr;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("/etc/sni/edge.toml"), &RuntimeOverrides::default())
}

fn errors(text: &str) -> String {
    load(text).expect_err("config should be rejected").to_string()
}

const GOOD: &str = r#"
[runtime]
workers = 2
cpus = "0-1"

[admin]
listen = "127.0.0.1:9900"

[[listener]]
address = "127.0.0.1:8443"

[fallback]
no_sni = "default"

[[route]]
name = "shop"
sni = ["Shop.Example.com", "*.shop.example.com"]
dedicated_ips = ["127.0.0.2"]
action = "passthrough"
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
proxy_protocol = "v2"

[[route]]
name = "default"
action = "passthrough"
backends = ["127.0.0.1:9003"]
"#;

#[test]
fn good_config() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.runtime.workers, 2);
    assert_eq!(c.runtime.cpus, Some(vec![0, 1]));
    assert_eq!(c.runtime.hello_timeout_ms, 5000);
    assert_eq!(c.admin, Some("127.0.0.1:9900".parse().unwrap()));
    let shop = c.table.route(RouteId(0));
    let mut names: Vec<_> = c.table.names().collect();
    names.sort();
    assert_eq!(names, [("*.shop.example.com".to_owned(), RouteId(0)), ("shop.example.com".to_owned(), RouteId(0))]);
    assert_eq!(shop.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(shop.min_tls, TlsVersion::TLS12);
    assert_eq!(c.table.no_sni(), Some(RouteId(1)));
    let s = c.summary();
    assert!(s.contains("routes: 2 (0 terminate, 2 passthrough)"), "{s}");
    assert!(s.contains("names: 1 exact, 1 wildcard"), "{s}");
}

#[test]
fn flags_override_the_file() {
    let o = RuntimeOverrides { workers: Some(1), splice: Some(false), cpus: Some("1".into()), ..Default::default() };
    let c = Config::from_str(GOOD, Path::new("x.toml"), &o).unwrap();
    assert_eq!((c.runtime.workers, c.runtime.splice, c.runtime.cpus), (1, false, Some(vec![1])));
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = errors("[runtime]\nworkers = = 2\n");
    assert!(e.starts_with("/etc/sni/edge.toml: "), "{e}");
    assert!(e.contains("line 2, column"), "{e}");
}

#[test]
fn unknown_keys_are_rejected() {
    let e = errors(&GOOD.replace("workers = 2", "wrokers = 2"));
    assert!(e.contains("unknown field `wrokers`"), "{e}");
}

#[test]
fn every_problem_is_named() {
    let bad = r#"
[[listener]]
address = "nowhere"
[fallback]
no_sni = "ghost"
[[route]]
name = "a"
sni = ["a.*.example.com", "*", "ok.example.com"]
dedicated_ips = ["127.0.0.300"]
action = "bounce"
min_tls = "1.4"
proxy_protocol = "v3"
backends = ["localhost"]
[[route]]
name = "b"
action = "terminate"
backends = ["127.0.0.1:1"]
cert = "missing.pem"
key = "missing.key"
"#;
    let e = errors(bad);
    for needle in [
        "/etc/sni/edge.toml: listener[0].address: \"nowhere\" is not an address",
        "fallback.no_sni: names no route: \"ghost\"",
        "route \"a\".sni: \"a.*.example.com\": '*' is allowed only",
        "route \"a\".sni: \"*\": a wildcard needs a parent domain",
        "route \"a\".dedicated_ips: \"127.0.0.300\" is not an IP address",
        "route \"a\".action: \"bounce\" is not",
        "route \"a\".min_tls: \"1.4\" is not one of",
        "route \"a\".proxy_protocol: \"v3\" is not",
        "route \"a\".backends: \"localhost\" is not an address",
        "route \"b\".cert: /etc/sni/missing.pem: cannot read",
        "route \"b\".key: /etc/sni/missing.key: cannot read",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

#[test]
fn duplicates_across_routes() {
    let e =
        errors(&GOOD.replace(
            "backends = [\"127.0.0.1:9003\"]",
            "backends = [\"127.0.0.1:9003\"]\nsni = [\"SHOP.example.com.\"]",
        ));
    assert!(
        e.contains("route \"default\".sni: name \"shop.example.com\" is claimed by routes \"shop\" and \"default\""),
        "{e}"
    );
    let e = errors(&GOOD.replace(
        "backends = [\"127.0.0.1:9003\"]",
        "backends = [\"127.0.0.1:9003\"]\ndedicated_ips = [\"127.0.0.2\"]",
    ));
    assert!(e.contains("dedicated IP 127.0.0.2 is claimed by routes \"shop\" and \"default\""), "{e}");
    let e = errors(&GOOD.replace("name = \"default\"", "name = \"shop\""));
    assert!(e.contains("route \"shop\".name: also used by route[0]"), "{e}");
}

#[test]
fn runtime_limits() {
    let e = errors(&GOOD.replace("cpus = \"0-1\"", "ring_entries = 1000\ncpus = \"3-1\"\nhello_timeout_ms = 0"));
    assert!(e.contains("runtime.ring_entries: must be a power of two"), "{e}");
    assert!(e.contains("runtime.cpus: \"3-1\" is not a CPU"), "{e}");
    assert!(e.contains("runtime.hello_timeout_ms: must be greater than 0"), "{e}");
}

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list(""), Ok(None));
    assert_eq!(parse_cpu_list("0-3,8, 2"), Ok(Some(vec![0, 1, 2, 3, 8])));
    assert!(parse_cpu_list("a").is_err());
    assert!(parse_cpu_list("1-").is_err());
}

/// Writes an ECDSA certificate and its key (`shop.pem`, `shop.key`), and another site's key
/// (`other.key`).
fn cert_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use crate::pki::Leaf;
    let shop = Leaf::self_signed(&["shop.example.com"]).unwrap().write(dir, "shop").unwrap();
    let other = Leaf::self_signed(&["other.example.com"]).unwrap().write(dir, "other").unwrap();
    (shop.cert, shop.key, other.key)
}

#[test]
fn terminate_routes_check_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, other) = cert_files(dir.path());
    let cfg = |cert: &Path, key: &Path| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:8443\"\n[[route]]\nname = \"shop\"\nsni = [\"shop.example.com\"]\naction = \"terminate\"\ncert = {:?}\nkey = {:?}\nmin_tls = \"1.3\"\nalpn = [\"h2\"]\nbackends = [\"127.0.0.1:80\"]\n",
            cert, key
        )
    };
    let c = load(&cfg(&cert, &key)).unwrap();
    assert!(c.table.route(RouteId(0)).action.is_terminate());
    let e = errors(&cfg(&cert, &other));
    assert!(e.contains("route \"shop\".key:") && e.contains("does not match the certificate"), "{e}");
    let e = errors(&cfg(&key, &key));
    assert!(e.contains("route \"shop\".cert:") && e.contains("holds no CERTIFICATE"), "{e}");
    let e = errors(&cfg(&cert, &cert));
    assert!(e.contains("route \"shop\".key:") && e.contains("holds no private key"), "{e}");
    // Relative paths are resolved against the config file's directory.
    let rel = Config::from_str(
        &cfg(Path::new("shop.pem"), Path::new("shop.key")),
        &dir.path().join("edge.toml"),
        &RuntimeOverrides::default(),
    );
    assert!(rel.is_ok(), "{:?}", rel.err().map(|e| e.to_string()));
}

#[test]
fn profiles_sit_between_the_file_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("latency.toml");
    std::fs::write(&profile, "[runtime]\nring_entries = 256\nworkers = 3\n").unwrap();
    let p = RuntimeOverrides::from_profile(&profile).unwrap();
    let flags = RuntimeOverrides { workers: Some(1), ..Default::default() };
    let c = Config::from_str(GOOD, Path::new("x.toml"), &p.then(&flags)).unwrap();
    // workers: file 2, profile 3, flag 1; ring_entries only in the profile.
    assert_eq!((c.runtime.workers, c.runtime.ring_entries), (1, 256));
    std::fs::write(&profile, "[runtime]\nring_entrys = 256\n").unwrap();
    let e = RuntimeOverrides::from_profile(&profile).unwrap_err().to_string();
    assert!(e.contains("latency.toml") && e.contains("unknown field `ring_entrys`"), "{e}");
    std::fs::write(&profile, "[[route]]\nname = \"x\"\n").unwrap();
    assert!(RuntimeOverrides::from_profile(&profile).is_err());
}

#[test]
fn a_name_listed_twice_in_one_route() {
    let e = errors(&GOOD.replace("\"*.shop.example.com\"]", "\"*.shop.example.com\", \"shop.example.com.\"]"));
    assert!(e.contains("route \"shop\".sni: \"shop.example.com\" is listed twice"), "{e}");
}

/// Every one of a hundred thousand names loads and routes. How the load time grows with the
/// name count is measured by `cargo bench --bench route_lookup -- config_load`.
#[test]
fn a_hundred_thousand_names_load_and_each_is_found() {
    let n = 100_000;
    let name = |i: usize| format!("n{i}.example.com");
    let names: Vec<String> = (0..n).map(|i| format!("\"{}\"", name(i).to_uppercase())).collect();
    let text = format!("[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nname = \"many\"\naction = \"passthrough\"\nbackends = [\"127.0.0.1:2\"]\nsni = [{}]\n", names.join(","));
    let c = load(&text).unwrap();
    assert_eq!(c.table.name_count(), (n, 0));
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    for i in 0..n {
        let found = c.table.lookup(local, Some(&name(i)));
        assert_eq!(found, Ok((RouteId(0), route::Match::ExactSni)), "{}", name(i));
    }
    assert_eq!(c.table.lookup(local, Some(&name(n))), Err(route::Miss::UnknownSni));
}

#[test]
fn quic_listeners_and_limits() {
    let c = load(&GOOD.replace("address = \"127.0.0.1:8443\"", "address = \"127.0.0.1:8443\"\nquic = true")).unwrap();
    assert!(c.listeners[0].quic);
    assert_eq!((c.runtime.quic_pending_max, c.runtime.quic_pending_bytes), (1024, 65536));
    assert_eq!((c.runtime.quic_pending_timeout_ms, c.runtime.quic_idle_timeout_ms), (1000, 30_000));
    assert!(c.summary().contains("127.0.0.1:8443 (+ QUIC)"), "{}", c.summary());
    assert!(!load(GOOD).unwrap().listeners[0].quic);
    let e = errors(&GOOD.replace(
        "cpus = \"0-1\"",
        "quic_pending_bytes = 100\nquic_pending_max = 0\nquic_idle_timeout_ms = 0\nquic_pending_timeout_ms = 0",
    ));
    assert!(e.contains("edge.toml: runtime.quic_pending_bytes: must be between 1200"), "{e}");
    assert!(e.contains("runtime.quic_pending_max: must be greater than 0"), "{e}");
    assert!(e.contains("runtime.quic_idle_timeout_ms: must be greater than 0"), "{e}");
    assert!(e.contains("runtime.quic_pending_timeout_ms: must be greater than 0"), "{e}");
    let e = errors(&GOOD.replace("address = \"127.0.0.1:8443\"", "address = \"127.0.0.1:8443\"\nquic = \"yes\""));
    assert!(e.contains("quic"), "{e}");
}

/// `[tls] ticket_keys` is read again on every reload, also one whose main file did not change
/// (its terminating routes in an included file), and the new routes use the new keys; a route
/// API change keeps the running TLS state (keys and retired window).
#[test]
fn ticket_keys_follow_every_reload_and_api_changes_keep_them() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = cert_files(dir.path());
    let line = |seed: u8| base64::engine::general_purpose::STANDARD.encode([seed; 80]);
    let keys = dir.path().join("ticket.keys");
    std::fs::write(&keys, format!("{}\n", line(1))).unwrap();
    std::fs::create_dir(dir.path().join("routes.d")).unwrap();
    std::fs::create_dir(dir.path().join("api")).unwrap();
    let main = dir.path().join("edge.toml");
    std::fs::write(
        &main,
        "include = [\"routes.d/*.toml\", \"api/*.toml\"]\n[admin]\napi_dir = \"api\"\n[tls]\nticket_keys = \"ticket.keys\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("routes.d/shop.toml"),
        format!(
            "[[route]]\nname = \"shop\"\nsni = [\"shop.example.com\"]\naction = \"terminate\"\ncert = {cert:?}\nkey = {key:?}\nbackends = [\"127.0.0.1:80\"]\n"
        ),
    )
    .unwrap();
    let old = Config::load(&main, &RuntimeOverrides::default()).unwrap();
    let encrypting = |c: &Config| c.tls.ticket_file().map(|f| f.encrypting());
    let first = encrypting(&old);
    assert!(first.is_some());
    // The key file rotated, the main file untouched.
    std::fs::write(&keys, format!("{}\n{}\n", line(2), line(3))).unwrap();
    let (new, _) = old.reload().unwrap();
    assert_ne!(encrypting(&new), first, "the key file was not read again");
    assert_eq!(new.tls.ticket_file().map(|f| f.len()), Some(2));
    // The terminating route was built with the new configuration's ticketer.
    let id = new.table.id_of("shop").unwrap();
    let crate::route::Action::Terminate(m) = &new.table.get(id).unwrap().action else { panic!("terminate") };
    let ticketer = Arc::as_ptr(&m.server_config.ticketer).cast::<()>();
    assert_eq!(ticketer, Arc::as_ptr(&new.tls.tickets).cast::<()>(), "the route kept the old ticketer");
    // What the swap does: the dropped key keeps decrypting for its window.
    new.tls.tickets.inherit(&old.tls.tickets);
    assert_eq!(new.tls.tickets.retired_names().len(), 1);
    // A route added through the API shares the running TLS state, window included.
    let (api, _, _) = new
        .put_route(
            "extra",
            "sni = [\"extra.example.com\"]\naction = \"passthrough\"\nbackends = [\"127.0.0.1:81\"]\n",
            false,
        )
        .unwrap();
    assert!(Arc::ptr_eq(&api.tls, &new.tls));
    assert_eq!(api.tls.tickets.retired_names().len(), 1);
    // A key file that no longer reads fails the reload, naming the key.
    std::fs::write(&keys, "not base64\n").unwrap();
    let e = new.reload().unwrap_err().to_string();
    assert!(e.contains("tls.ticket_keys:"), "{e}");
}

/// An API change keeps the warnings of the routes it did not touch and gives the touched ones
/// their own (the warnings are carried over, not computed over the whole table again).
#[test]
fn api_changes_keep_the_other_routes_warnings_and_renew_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = cert_files(dir.path());
    std::fs::create_dir(dir.path().join("api")).unwrap();
    let main = dir.path().join("edge.toml");
    let terminate = |name: &str, min_tls: &str| {
        format!("[[route]]\nname = {name:?}\nsni = [\"{name}.example.com\"]\naction = \"terminate\"\ncert = {cert:?}\nkey = {key:?}\nmin_tls = {min_tls:?}\nbackends = [\"127.0.0.1:80\"]\n")
    };
    std::fs::write(
        &main,
        format!(
            "include = [\"api/*.toml\"]\n[admin]\napi_dir = \"api\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\n{}{}",
            terminate("old", "1.0"),
            terminate("fine", "1.2")
        ),
    )
    .unwrap();
    let c = Config::load(&main, &RuntimeOverrides::default()).unwrap();
    let about =
        |c: &Config, name: &str| c.warnings.iter().filter(|w| w.starts_with(&format!("route {name:?}."))).count();
    assert_eq!((about(&c, "old"), about(&c, "fine")), (1, 0), "{:?}", c.warnings);
    let body = |min_tls: &str| {
        format!("sni = [\"new.example.com\"]\naction = \"terminate\"\ncert = {cert:?}\nkey = {key:?}\nmin_tls = {min_tls:?}\nbackends = [\"127.0.0.1:81\"]\n")
    };
    let (c, _, _) = c.put_route("new", &body("1.1"), false).unwrap();
    assert_eq!((about(&c, "old"), about(&c, "new")), (1, 1), "{:?}", c.warnings);
    let (c, _, _) = c.put_route("new", &body("1.3"), false).unwrap();
    assert_eq!((about(&c, "old"), about(&c, "new")), (1, 0), "{:?}", c.warnings);
    assert_eq!(c.warnings, Config::table_warnings(&c.table), "the same as computed over the whole table");
}

/// A reload sorts out which changed file defines which route by the old table's ids: a route
/// moving between two changed files, one defined twice, one that a file that did not change
/// holds, a new name in two changed files, a route removed (and later defined elsewhere).
#[test]
fn a_reload_tells_who_defines_each_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("routes.d")).unwrap();
    let main = dir.path().join("edge.toml");
    std::fs::write(&main, "include = [\"routes.d/*.toml\"]\n[[listener]]\naddress = \"127.0.0.1:8443\"\n").unwrap();
    let route = |name: &str| {
        format!("[[route]]\nname = {name:?}\nsni = [\"{name}.example.com\"]\naction = \"passthrough\"\nbackends = [\"127.0.0.1:80\"]\n")
    };
    let write = |file: &str, names: &[&str]| {
        std::fs::write(dir.path().join("routes.d").join(file), names.iter().map(|n| route(n)).collect::<String>())
            .unwrap();
    };
    write("a.toml", &["a1", "a2"]);
    write("b.toml", &["b1", "b2"]);
    write("c.toml", &["c1"]);
    let c = Config::load(&main, &RuntimeOverrides::default()).unwrap();
    let file = |f: &str| dir.path().join("routes.d").join(f).display().to_string();
    // A route of a file that did not change.
    write("a.toml", &["a1", "a2", "c1"]);
    let e = c.reload().unwrap_err().to_string();
    assert!(e.contains(&format!("{}: route \"c1\".name: also defined in {}", file("a.toml"), file("c.toml"))), "{e}");
    // Twice in one file, unchanged or new.
    write("a.toml", &["a1", "a2", "a1"]);
    let e = c.reload().unwrap_err().to_string();
    assert!(e.contains(&format!("{}: route \"a1\".name: used twice in this file", file("a.toml"))), "{e}");
    write("a.toml", &["a1", "a2", "x", "x"]);
    let e = c.reload().unwrap_err().to_string();
    assert!(e.contains(&format!("{}: route \"x\".name: used twice in this file", file("a.toml"))), "{e}");
    // A new name in two changed files.
    write("a.toml", &["a1", "a2", "x"]);
    write("b.toml", &["b1", "b2", "x"]);
    let e = c.reload().unwrap_err().to_string();
    assert!(e.contains(&format!("{}: route \"x\".name: also defined in {}", file("b.toml"), file("a.toml"))), "{e}");
    // A route moving from a to b, one removed from b, one added to a: the rest kept as they were.
    write("a.toml", &["a1", "y"]);
    write("b.toml", &["b1", "a2"]);
    let (c2, report) = c.reload().unwrap();
    assert_eq!((report.routes_added, report.routes_changed, report.routes_removed), (1, 0, 1), "{report:?}");
    assert!(c2.table.id_of("b2").is_none());
    assert_eq!(c2.table.id_of("a2"), c.table.id_of("a2"), "a route that moved keeps its id");
    assert!(Arc::ptr_eq(
        c2.table.get(c2.table.id_of("a2").unwrap()).unwrap(),
        c.table.get(c.table.id_of("a2").unwrap()).unwrap()
    ));
    let owner = |c: &Config, name: &str| c.sources.owner(c.table.id_of(name).unwrap()).map(|p| p.display().to_string());
    assert_eq!(owner(&c2, "a2"), Some(file("b.toml")));
    assert_eq!(owner(&c2, "y"), Some(file("a.toml")));
    assert_eq!(owner(&c2, "c1"), Some(file("c.toml")));
    // The removed route may now be defined by the file that did not change before.
    write("c.toml", &["c1", "b2"]);
    let (c3, report) = c2.reload().unwrap();
    assert_eq!((report.routes_added, report.routes_removed), (1, 0), "{report:?}");
    assert_eq!(owner(&c3, "b2"), Some(file("c.toml")));
    assert_eq!(c3.table.len(), 6);
}

/// A reload keeps a terminating route whose certificate, key and ticket keys did not change as
/// the running route (not a second copy of its TLS configuration), and replaces the one whose
/// certificate was rewritten.
#[test]
fn a_reload_keeps_the_terminating_routes_that_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = cert_files(dir.path());
    let (cert2, key2) = (dir.path().join("b.pem"), dir.path().join("b.key"));
    std::fs::copy(&cert, &cert2).unwrap();
    std::fs::copy(&key, &key2).unwrap();
    let main = dir.path().join("edge.toml");
    let terminate = |name: &str, cert: &Path, key: &Path| {
        format!("[[route]]\nname = {name:?}\nsni = [\"{name}.example.com\"]\naction = \"terminate\"\ncert = {cert:?}\nkey = {key:?}\nbackends = [\"127.0.0.1:80\"]\n")
    };
    std::fs::write(
        &main,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:8443\"\n{}{}",
            terminate("a", &cert, &key),
            terminate("b", &cert2, &key2)
        ),
    )
    .unwrap();
    // Certificates written just now are parsed again on the next load (the cache trusts only
    // files that settled): let them settle.
    std::thread::sleep(crate::tls::store::SETTLE * 2);
    let c = Config::load(&main, &RuntimeOverrides::default()).unwrap();
    let route = |c: &Config, name: &str| Arc::clone(c.table.get(c.table.id_of(name).unwrap()).unwrap());
    let (c2, report) = c.reload().unwrap();
    assert_eq!((report.routes_changed, report.files_parsed), (0, 1), "{report:?}");
    assert!(Arc::ptr_eq(&route(&c, "a"), &route(&c2, "a")), "an unchanged terminating route was built again");
    assert!(Arc::ptr_eq(&c.tls, &c2.tls));
    assert_eq!(c2.tls.loads(), (0, 2));
    // b's certificate rewritten (the same bytes: a new file all the same): b only is new.
    std::fs::write(&cert2, std::fs::read(&cert).unwrap()).unwrap();
    let (c3, report) = c2.reload().unwrap();
    assert_eq!(report.routes_changed, 1, "{report:?}");
    assert!(Arc::ptr_eq(&route(&c2, "a"), &route(&c3, "a")));
    assert!(!Arc::ptr_eq(&route(&c2, "b"), &route(&c3, "b")));
    // The file is still read again on every reload (its certificates may change).
    assert_eq!(c3.reload().unwrap().1.files_parsed, 1);
}

#[test]
fn shunning_is_on_with_the_limits_and_off_behind_a_balancer() {
    let c = load(GOOD).unwrap();
    assert!(c.listeners[0].admission.shun);
    assert_eq!(c.listeners[0].admission.shun_max, listeners::DEFAULT_SHUN_MAX);
    let l = "address = \"127.0.0.1:8443\"";
    let c = load(&GOOD.replace(l, &format!("{l}\nshun = false\nshun_max = 640"))).unwrap();
    assert!(!c.listeners[0].admission.shun);
    assert_eq!(c.listeners[0].admission.shun_max, 640);
    // Behind accept_proxy the kernel sees the balancer: off unless asked, refused if asked.
    let behind = format!("{l}\naccept_proxy = \"v2\"\ntrusted_sources = [\"10.0.0.0/8\"]");
    assert!(!load(&GOOD.replace(l, &behind)).unwrap().listeners[0].admission.shun);
    let e = errors(&GOOD.replace(l, &format!("{behind}\nshun = true")));
    assert!(e.contains("edge.toml: listener[0].shun: cannot apply with accept_proxy"), "{e}");
    for n in [0, 641] {
        let e = errors(&GOOD.replace(l, &format!("{l}\nshun_max = {n}")));
        assert!(e.contains("listener[0].shun_max: must be 1 to 640"), "{e}");
    }
}

#[test]
fn quic_health_checks_take_udp_addresses_only() {
    let quic = "health_check = { type = \"quic\", interval_ms = 500 }";
    let cfg =
        load(&GOOD.replace("backends = [\"127.0.0.1:9003\"]", &format!("backends = [\"127.0.0.1:9003\"]\n{quic}")))
            .unwrap();
    let id = cfg.table.id_of("default").unwrap();
    let h = cfg.table.route(id).upstream.health.clone().unwrap();
    assert_eq!((h.kind, h.interval_ms), (crate::route::CheckKind::Quic, 500));
    let e =
        errors(&GOOD.replace("backends = [\"127.0.0.1:9003\"]", &format!("backends = [\"unix:/run/a.sock\"]\n{quic}")));
    assert!(e.contains("route \"default\".health_check.type: type = \"quic\" checks host:port back ends"), "{e}");
    let e = errors(&GOOD.replace(
        "backends = [\"127.0.0.1:9003\"]",
        "backends = [\"127.0.0.1:9003\"]\nhealth_check = { type = \"udp\" }",
    ));
    assert!(e.contains("\"udp\" is not \"connect\", \"tls\" or \"quic\""), "{e}");
}
