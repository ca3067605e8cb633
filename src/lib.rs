//! sni-dispatch: a thread-per-core TLS front door.
//!
//! Each connection is routed before any crypto, by the local address the client dialed
//! (dedicated IP) or by the `server_name` of its ClientHello, and is then either terminated
//! with rustls or passed through as raw bytes. The modules follow the life of a connection:
//!
//! - [`hello`]: the zero-copy, allocation-free ClientHello parser;
//! - [`route`]: the immutable routing table (dedicated IPs, exact and wildcard SNI, fallbacks);
//! - [`config`]: TOML configuration, validation and the `check` summary;
//! - [`worker`]: worker threads, io_uring rings and listeners;
//! - [`relay`]: moving bytes between client and back end (splice or copy);
//! - TLS termination with rustls: [`tls`];
//! - [`metrics`] and [`admin`]: per-core counters and histograms, and the HTTP endpoint that reads them.

pub mod admin;
pub mod config;
pub mod demo;
pub mod hello;
pub mod metrics;
pub mod pki;
pub mod relay;
pub mod route;
pub mod tls;
pub mod worker;
