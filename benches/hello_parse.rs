//! ClientHello parsing cost per captured hello (target: the Chromium PQ hello under 1 µs),
//! plus the same hello re-framed into 100-byte records to price the record-crossing path.
//!
//! Before criterion's estimates it prints, per hello, the best of 300 batches of 200 parses: on a
//! shared machine, where criterion's means are noisy, the minimum is the robust figure.
//!
//! `cargo bench --bench hello_parse`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sni_dispatch::hello::{parse, Parsed, DEFAULT_MAX_HELLO_BYTES};
use std::time::Instant;

const CAPTURES: &[(&str, &[u8])] = &[
    ("openssl-sni", include_bytes!("../src/hello/testdata/openssl-sni.bin")),
    ("openssl-nosni", include_bytes!("../src/hello/testdata/openssl-nosni.bin")),
    ("openssl-tls12", include_bytes!("../src/hello/testdata/openssl-tls12.bin")),
    ("curl", include_bytes!("../src/hello/testdata/curl.bin")),
    ("chromium-pq", include_bytes!("../src/hello/testdata/chromium-pq.bin")),
];

/// Re-frames a single-record hello into handshake records of `size` payload bytes.
fn reframe(single: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in single[5..].chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// What a router reads from a hello: keeps the work from being optimised away.
fn route_key(buf: &[u8]) -> usize {
    match parse(black_box(buf), DEFAULT_MAX_HELLO_BYTES) {
        Parsed::Complete(h) => h.len() + h.sni().map_or(0, str::len) + h.alpn().count() + usize::from(h.has_ech()),
        other => panic!("{other:?}"),
    }
}

/// The fastest of 300 batches of 200 parses of `buf`, in ns per parse.
fn best_of_batches(buf: &[u8]) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..300 {
        let t = Instant::now();
        for _ in 0..200 {
            black_box(route_key(buf));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / 200.0);
    }
    best
}

fn bench(c: &mut Criterion) {
    let chromium = CAPTURES.iter().find(|(n, _)| *n == "chromium-pq").map(|(_, b)| *b).unwrap();
    let fragmented = reframe(chromium, 100);
    let mut inputs: Vec<(String, &[u8])> = CAPTURES.iter().map(|(n, b)| (n.to_string(), *b)).collect();
    inputs.push(("chromium-pq-100B-records".into(), &fragmented));

    for (name, buf) in &inputs {
        eprintln!("hello_parse best of 300 batches {name:>26}: {:7.1} ns", best_of_batches(buf));
    }
    let mut g = c.benchmark_group("hello_parse");
    for (name, buf) in &inputs {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name.as_str(), |b| b.iter(|| route_key(buf)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
