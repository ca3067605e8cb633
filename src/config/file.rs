//! The configuration file's syntax, as serde reads it: strict (`deny_unknown_fields`), every
//! value still unchecked. [`super::resolve`] turns it into a [`super::Config`].

use super::RuntimeOverrides;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) runtime: RuntimeOverrides,
    pub(super) admin: Option<AdminFile>,
    #[serde(default)]
    pub(super) tls: TlsFile,
    #[serde(default, rename = "listener")]
    pub(super) listeners: Vec<ListenerFile>,
    #[serde(default)]
    pub(super) fallback: FallbackFile,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    pub(super) listen: Option<String>,
}

/// `[tls]`: what every terminating route shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    pub(super) ticket_keys: Option<PathBuf>,
    pub(super) ticket_lifetime_s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    /// Required unless `handoff` is given.
    #[serde(default)]
    pub(super) address: Option<String>,
    pub(super) accept_proxy: Option<String>,
    #[serde(default)]
    pub(super) trusted_sources: Vec<String>,
    pub(super) max_conns_per_client: Option<u32>,
    pub(super) max_conn_rate_per_client: Option<u32>,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
    #[serde(default)]
    pub(super) allow_ja4: Vec<String>,
    #[serde(default)]
    pub(super) deny_ja4: Vec<String>,
    /// A hand-off listener: the unix socket other sni-dispatch processes hand connections to.
    pub(super) handoff: Option<PathBuf>,
    pub(super) handoff_uids: Option<Vec<u32>>,
    /// Also a UDP socket on the same address for QUIC.
    #[serde(default)]
    pub(super) quic: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FallbackFile {
    pub(super) no_sni: Option<String>,
    pub(super) unknown_sni: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub(super) name: String,
    #[serde(default)]
    pub(super) sni: Vec<String>,
    #[serde(default)]
    pub(super) dedicated_ips: Vec<String>,
    pub(super) action: String,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) ocsp: Option<PathBuf>,
    pub(super) min_tls: Option<String>,
    #[serde(default)]
    pub(super) alpn: Vec<String>,
    #[serde(default)]
    pub(super) backends: Vec<BackendFile>,
    pub(super) proxy_protocol: Option<String>,
    pub(super) balance: Option<String>,
    pub(super) health_check: Option<HealthCheckFile>,
    pub(super) eject_after: Option<u32>,
    pub(super) eject_ms: Option<u64>,
    pub(super) eject_max_ms: Option<u64>,
    #[serde(default)]
    pub(super) alpn_match: Vec<String>,
}

/// A back end: `"10.0.0.5:443"`, or `{ address = "10.0.0.5:443", weight = 2, backup = true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum BackendFile {
    Address(String),
    Table(BackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendTable {
    pub(super) address: String,
    pub(super) weight: Option<u32>,
    #[serde(default)]
    pub(super) backup: bool,
}

/// `health_check = { type = "tls", sni = "…", interval_ms = 2000, timeout_ms = 1000, rise = 2, fall = 3 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckFile {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) sni: Option<String>,
    pub(super) interval_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
}
