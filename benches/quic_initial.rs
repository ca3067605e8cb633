//! The CPU to route one new QUIC flow, in memory: parse the long header, derive the Initial keys
//! from the DCID, remove header protection, decrypt, walk the frames, reassemble the CRYPTO data,
//! parse the ClientHello and look the route up in a 100k-name table. Three cases:
//!
//! - `one_initial`: rustls's ClientHello (270 bytes) in one 1200-byte Initial, what most clients
//!   send today;
//! - `two_initials`: Chromium's post-quantum ClientHello (1,918 bytes) over two Initials;
//! - `undecryptable`: a flood packet that does not decrypt (the keys are derived all the same).
//!
//! The goal is 30 µs per new flow on the 2-core development machine. What this leaves out
//! (the recvmsg, the back-end socket and connect, the sends) is in `sni-loadtest quic`'s flood and
//! handshake figures.
//!
//! `cargo bench --bench quic_initial`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sni_dispatch::hello::Parsed;
use sni_dispatch::quic::initial::{client_initial, crypto_frame};
use sni_dispatch::quic::{packet, Head, Hello};
use sni_dispatch::route::{Action, ProxyProtocol, Route, Table, TlsVersion};
use std::net::IpAddr;

fn table() -> Table<()> {
    let routes = (0..25_000)
        .map(|r| Route {
            name: format!("r{r}"),
            action: Action::Passthrough,
            sni: (0..4)
                .map(|i| format!("www{i}.customer-{r}.example"))
                .chain([format!("www.example.com{r}")])
                .collect(),
            dedicated_ips: vec![],
            min_tls: TlsVersion::TLS12,
            backends: vec!["127.0.0.1:8443".parse().unwrap()],
            proxy_protocol: ProxyProtocol::None,
            upstream: Default::default(),
            alpn_match: vec![],
            half_close: true,
        })
        .chain(std::iter::once(Route {
            name: "www".into(),
            action: Action::Passthrough,
            sni: vec!["www.example.com".into()],
            dedicated_ips: vec![],
            min_tls: TlsVersion::TLS12,
            backends: vec!["127.0.0.1:8443".parse().unwrap()],
            proxy_protocol: ProxyProtocol::None,
            upstream: Default::default(),
            alpn_match: vec![],
            half_close: true,
        }))
        .collect();
    Table::build(routes, None, None).unwrap()
}

/// Routes the flow whose first datagrams are `dgrams`: everything the worker does in memory.
fn route(t: &Table<()>, dgrams: &[Vec<u8>], scratch: &mut Vec<u8>) -> bool {
    let Ok(Head::Long(l)) = packet::parse(&dgrams[0], 0) else { return false };
    let Ok(mut h) = Hello::new(&dgrams[0], &l) else { return false };
    for d in dgrams {
        if h.feed(d, scratch, 16388).is_err() {
            return false;
        }
    }
    let local: IpAddr = [127, 0, 0, 1].into();
    match h.parsed(16384) {
        Parsed::Complete(ch) => t.lookup(local, ch.sni()).is_ok(),
        _ => false,
    }
}

fn bench(c: &mut Criterion) {
    let t = table();
    let rustls = &include_bytes!("../src/hello/testdata/rustls.bin")[5..];
    let pq = &include_bytes!("../src/hello/testdata/chromium-pq.bin")[5..];
    let dcid = [0x42u8; 8];
    let one = vec![client_initial(&dcid, 0, &crypto_frame(0, rustls))];
    let two = vec![
        client_initial(&dcid, 0, &crypto_frame(0, &pq[..1100])),
        client_initial(&dcid, 1, &crypto_frame(1100, &pq[1100..])),
    ];
    let mut bad = client_initial(&[1; 8], 0, &crypto_frame(0, rustls));
    bad[6..14].copy_from_slice(&[2; 8]);
    let bad = vec![bad];
    let mut scratch = Vec::with_capacity(2048);
    assert!(route(&t, &one, &mut scratch) && route(&t, &two, &mut scratch) && !route(&t, &bad, &mut scratch));
    let mut g = c.benchmark_group("quic_new_flow");
    g.bench_function("one_initial", |b| b.iter(|| route(&t, black_box(&one), &mut scratch)));
    g.bench_function("two_initials", |b| b.iter(|| route(&t, black_box(&two), &mut scratch)));
    g.bench_function("undecryptable", |b| b.iter(|| route(&t, black_box(&bad), &mut scratch)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
