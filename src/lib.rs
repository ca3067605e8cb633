//! sni-dispatch: a thread-per-core TLS front door.
//!
//! Each connection is routed before any crypto, by the local address the client dialed
//! (dedicated IP) or by the `server_name` of its ClientHello, and is then either terminated
//! with rustls or passed through as raw bytes.
//!
//! The modules, from the floor up (each imports only modules listed before it; `tests/layers.rs`
//! checks it):
//!
//! | layer | module | owns |
//! |---|---|---|
//! | 0 | [`sys`] | the kernel ABI and every `unsafe`: ring, sockets, pipes and splice, limits |
//! | 0 | [`logs`] | log lines a flood cannot multiply: one per second per call site, with a count |
//! | 1 | [`hello`] | the ClientHello (and ServerHello version) parser: zero-copy, fuzzed |
//! | 1 | [`route`] | the routing table: dedicated IPs, exact and wildcard names, fallbacks |
//! | 1 | [`proxy_protocol`] | PROXY protocol v1/v2 headers |
//! | 1 | [`pki`] | throw-away CAs and certificates, for the demo and the tests |
//! | 2 | [`metrics`] | per-core counters (defined once) and HDR histograms, their labels |
//! | 3 | [`relay`] | moving bytes: splice or buffered, half-close, idle; the one relay outcome |
//! | 3 | [`backend`] | a route's back ends: TCP, unix, hand-off; balancing, health, ejection |
//! | 3 | [`access_log`] | the JSON-lines access log and its writer thread |
//! | 3 | [`quic`] | QUIC Initials: keys, header protection, decryption, CRYPTO reassembly, pending flows |
//! | 4 | [`tls`] | termination with rustls: certificates, handshake, the TLS relay |
//! | 5 | [`config`] | TOML → validated [`config::Config`]; errors name file, key and reason |
//! | 6 | [`conn`] | one connection from accept to close, as states; drop reasons |
//! | 7 | [`worker`] | a worker thread: ring, accept loops, publish tick |
//! | 7 | [`admin`] | the admin HTTP endpoint: `/metrics`, `/stats`, `/healthz`, `/status` |
//! | 8 | [`server`] | start, reload, signals, drain: the process's life |
//! | 9 | [`demo`] | `sni-dispatch demo` |
#![deny(unsafe_code)]

pub mod logs;
pub mod sys;

pub mod hello;
pub mod pki;
pub mod proxy_protocol;
pub mod route;

pub mod metrics;

pub mod access_log;
pub mod backend;
pub mod quic;
pub mod relay;

pub mod tls;

pub mod config;

pub mod conn;

pub mod admin;
pub mod worker;

pub mod server;

pub mod demo;
