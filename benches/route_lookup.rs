//! Routing-table benches: lookups (exact hit, wildcard hit, miss, dedicated IP) at 1k, 100k and
//! 1M names, and building the 1M-name table. Also prints the table's memory per name, from the
//! process's RSS before and after the build. `config_load` reads, validates and builds a config
//! of 10k, 100k and 400k names: its throughput (names per second) stays flat while loading is
//! linear in the name count (the unit test `a_hundred_thousand_names_load_and_each_is_found`
//! checks that they load and route, and this bench how long it takes).
//!
//! `cargo bench --bench route_lookup [-- config_load]`

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sni_dispatch::config::{Config, RuntimeOverrides};
use sni_dispatch::route::{Action, ProxyProtocol, Route, RouteId, Table, TlsVersion};
use std::net::IpAddr;
use std::path::Path;

/// Names per route: a large edge has many customers with a few names each.
const NAMES_PER_ROUTE: usize = 4;

fn name(i: usize) -> String {
    format!("www{}.customer-{}.example", i % 7, i)
}

fn routes(names: usize) -> Vec<Route<()>> {
    (0..names.div_ceil(NAMES_PER_ROUTE)).map(|r| route(r, names)).collect()
}

/// Route `r` of a table of `names` names.
fn route(r: usize, names: usize) -> Route<()> {
    let mut sni: Vec<String> = (r * NAMES_PER_ROUTE..((r + 1) * NAMES_PER_ROUTE).min(names)).map(name).collect();
    // One wildcard per route, over its own parent domain.
    sni.push(format!("*.wild-{r}.example"));
    Route {
        name: format!("r{r}"),
        action: Action::Passthrough,
        sni,
        dedicated_ips: vec![],
        min_tls: TlsVersion::TLS12,
        backends: vec!["127.0.0.1:8080".parse().unwrap()],
        proxy_protocol: ProxyProtocol::None,
        upstream: Default::default(),
        alpn_match: vec![],
        half_close: true,
    }
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
}

fn lookups(c: &mut Criterion) {
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    for n in [1_000, 100_000, 1_000_000] {
        let table = Table::build(routes(n), Some(RouteId(0)), None).unwrap();
        let queries: Vec<String> = (0..4096).map(|i| name((i * 7919) % n)).collect();
        let wild: Vec<String> =
            (0..4096).map(|i| format!("a.wild-{}.example", (i * 7919) % (n / NAMES_PER_ROUTE))).collect();
        let miss: Vec<String> = (0..4096).map(|i| format!("nobody-{i}.example.org")).collect();
        let mut g = c.benchmark_group(format!("lookup/{n}"));
        // Each query list against `t`, named with `suffix`.
        let mut bench = |t: &Table<()>, suffix: &str| {
            for (what, qs) in [("exact_hit", &queries), ("wildcard_hit", &wild), ("miss", &miss)] {
                let mut i = 0;
                g.bench_function(format!("{what}{suffix}"), |b| {
                    b.iter(|| {
                        i = (i + 1) & 4095;
                        black_box(t.lookup(local, Some(black_box(qs[i].as_str()))))
                    })
                });
            }
        };
        bench(&table, "");
        if n == 1_000_000 {
            // The same lookups while 64 route changes wait in the delta (before the fold).
            let mut changed = table.clone();
            for r in 0..64 {
                let mut route = route(r * 997, n);
                route.sni.push(format!("extra-{r}.example"));
                let mut ch = changed.change();
                ch.upsert(route);
                changed = ch.finish().unwrap().0;
            }
            assert_eq!(changed.delta_len(), 64);
            bench(&changed, "_delta");
        }
        g.finish();
    }
}

fn build(c: &mut Criterion) {
    let n = 1_000_000;
    let before = rss_bytes();
    let table = Table::build(routes(n), None, None).unwrap();
    let after = rss_bytes();
    let name_bytes: usize = (0..n).map(|i| name(i).len()).sum();
    let (exact, wild) = table.name_count();
    eprintln!(
        "route table with {exact} exact + {wild} wildcard names: RSS +{:.1} MiB = {:.0} bytes/name; names' own bytes {:.0}/name",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / (exact + wild) as f64,
        name_bytes as f64 / n as f64,
    );
    drop(table);
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.bench_function("1M_names", |b| {
        b.iter_batched(|| routes(n), |r| Table::build(r, None, None).unwrap(), BatchSize::PerIteration)
    });
    g.finish();
}

/// A config with one passthrough route of `n` names.
fn config_text(n: usize) -> String {
    let names: Vec<String> = (0..n).map(|i| format!("\"{}\"", name(i))).collect();
    format!(
        "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nname = \"many\"\naction = \"passthrough\"\nbackends = [\"127.0.0.1:2\"]\nsni = [{}]\n",
        names.join(",")
    )
}

fn config_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_load");
    g.sample_size(10);
    for n in [10_000, 100_000, 400_000] {
        let text = config_text(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_names"), |b| {
            b.iter(|| {
                let c = Config::from_str(black_box(&text), Path::new("bench.toml"), &RuntimeOverrides::default());
                c.map(|c| c.table.name_count()).unwrap()
            })
        });
    }
    g.finish();
}

/// One route replaced (a name added, one dropped), one added and one removed at 1M names: the
/// copy-on-write change and the new table, the work a single-route API call does.
fn change(c: &mut Criterion) {
    let n = 1_000_000;
    let table = Table::build(routes(n), None, None).unwrap();
    let mut g = c.benchmark_group("change/1000000");
    g.sample_size(20);
    let mut i = 0usize;
    g.bench_function("replace_one_route", |b| {
        b.iter(|| {
            i = (i + 1) % (n / NAMES_PER_ROUTE);
            let mut r = route(i, n);
            r.sni.push(format!("extra-{i}.example"));
            let mut ch = table.change();
            ch.upsert(r);
            black_box(ch.finish().unwrap())
        })
    });
    g.bench_function("add_one_route", |b| {
        b.iter(|| {
            let mut ch = table.change();
            ch.upsert(Route {
                name: "brand-new".into(),
                action: Action::Passthrough,
                sni: vec!["brand-new.example".into(), "*.brand-new.example".into()],
                dedicated_ips: vec![],
                min_tls: TlsVersion::TLS12,
                backends: vec!["127.0.0.1:8080".parse().unwrap()],
                proxy_protocol: ProxyProtocol::None,
                upstream: Default::default(),
                alpn_match: vec![],
                half_close: true,
            });
            black_box(ch.finish().unwrap())
        })
    });
    g.bench_function("remove_one_route", |b| {
        b.iter(|| {
            let mut ch = table.change();
            ch.remove("r12345");
            black_box(ch.finish().unwrap())
        })
    });
    // What the control thread's helper does once changes pause: one replaced route's delta
    // folded into the shards (copying the shards it touches).
    let mut ch = table.change();
    let mut r = route(777, n);
    r.sni.push("extra-777.example".into());
    ch.upsert(r);
    let one = ch.finish().unwrap().0;
    g.bench_function("fold_one_route", |b| b.iter(|| black_box(one.folded().unwrap())));
    g.finish();
}

criterion_group!(benches, lookups, build, config_load, change);
criterion_main!(benches);
