//! What the instrumentation adds per connection, measured directly (the CPU-per-connection
//! bench is too noisy on a shared box to resolve a few percent):
//!
//! - `recording_cost/latency`: the five clock reads and six histogram records of a passthrough
//!   connection, and its share of the publish tick (one publish per 1000 connections, as at
//!   10k connections per second per worker);
//! - `recording_cost/access_log_line`: one access-log line at sample rate 1 (timestamp, two
//!   small strings, the JSON line, the buffer handed to the writer thread).
//!
//! `cargo bench --bench recording_cost`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sni_dispatch::access_log::{rfc3339, Entry, Sink};
use sni_dispatch::config::SampleRate;
use sni_dispatch::metrics::{Hist, Local, Registry};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

fn latency(c: &mut Criterion) {
    let reg = Registry::new(1);
    let local = Local::new(reg.slot(0));
    let mut until_publish = 1000;
    c.benchmark_group("recording_cost").bench_function("latency", |b| {
        b.iter(|| {
            let t = [Instant::now(), Instant::now(), Instant::now(), Instant::now(), Instant::now()];
            local.record_duration(Hist::HelloWait, t[1] - t[0]);
            local.record_duration(Hist::RouteLookup, t[2] - t[1]);
            local.record_duration(Hist::BackendConnect, t[3] - t[2]);
            local.record_duration(Hist::FirstByte, t[4] - t[3]);
            local.record_duration(Hist::Lifetime, t[4] - t[0]);
            local.record(Hist::HelloSize, 517);
            until_publish -= 1;
            if until_publish == 0 {
                until_publish = 1000;
                local.publish();
            }
        })
    });
}

fn access_log_line(c: &mut Criterion) {
    let reg = Registry::new(1);
    let local = Local::new(reg.slot(0));
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::open(&dir.path().join("a.log")).unwrap();
    let w = sink.writer(SampleRate::ALL);
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut i = 0u64;
    c.benchmark_group("recording_cost").bench_function("access_log_line", |b| {
        b.iter(|| {
            i += 1;
            if !w.sample() {
                return;
            }
            let sni = String::from("www.example.com");
            let alpn = String::from("h2");
            let time = rfc3339(SystemTime::now());
            let backend = addr.to_string();
            let e = Entry {
                time: &time,
                worker: 0,
                transport: "tcp",
                client: Some(addr),
                local: Some(addr),
                sni: Some(&sni),
                alpn: Some(&alpn),
                ja4: Some("t13d1516h2_8daaf6152771_e5627efa2ab1"),
                route: Some("www"),
                how: Some("sni"),
                action: Some("passthrough"),
                backend: Some(&backend),
                outcome: "closed",
                reason: None,
                bytes_client_to_backend: 517 + black_box(i),
                bytes_backend_to_client: 64,
                hello_bytes: Some(517),
                hello_wait_us: Some(12),
                route_lookup_ns: Some(850),
                backend_connect_us: Some(40),
                tls_handshake_us: None,
                first_byte_us: Some(90),
                lifetime_us: Some(160),
            };
            w.log(&e, &local);
        })
    });
    drop(w);
    sink.close(Duration::from_secs(10));
}

criterion_group!(benches, latency, access_log_line);
criterion_main!(benches);
