//! The configuration file's syntax, as serde reads it: strict (`deny_unknown_fields`), every
//! value still unchecked. [`super::resolve`] turns it into a [`super::Config`].
//!
//! Every table is an `Option` so that a file parsed in pieces ([`super::load`]) can tell a table
//! given twice (an error, which the whole-file parse then reports in TOML's own words).

use super::RuntimeOverrides;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    /// Files of more `[[route]]` tables: paths or `dir/*.toml` patterns.
    pub(super) include: Option<Vec<String>>,
    pub(super) watch: Option<bool>,
    pub(super) watch_debounce_ms: Option<u64>,
    pub(super) runtime: Option<RuntimeOverrides>,
    pub(super) admin: Option<AdminFile>,
    pub(super) tls: Option<TlsFile>,
    #[serde(default, rename = "listener")]
    pub(super) listeners: Vec<ListenerFile>,
    pub(super) fallback: Option<FallbackFile>,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteFile>,
}

/// An included file: `[[route]]` tables and nothing else.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IncludedFile {
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    pub(super) listen: Option<String>,
    pub(super) socket: Option<PathBuf>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) api_dir: Option<PathBuf>,
    pub(super) max_connections: Option<usize>,
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
    pub(super) shun: Option<bool>,
    pub(super) shun_max: Option<u32>,
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

/// One `[[route]]` as written; also the body of `PUT /routes/NAME` (TOML or JSON).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) sni: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) dedicated_ips: Vec<String>,
    pub(super) action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ocsp: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) min_tls: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) alpn: Vec<String>,
    #[serde(default)]
    pub(super) backends: Vec<BackendFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) proxy_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) half_close: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) balance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) eject_after: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) eject_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) eject_max_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) alpn_match: Vec<String>,
    // Last: a table, which TOML writes after the plain keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) health_check: Option<HealthCheckFile>,
}

/// A back end: `"10.0.0.5:443"`, or `{ address = "10.0.0.5:443", weight = 2, backup = true }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(super) enum BackendFile {
    Address(String),
    Table(BackendTable),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendTable {
    pub(super) address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) weight: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) backup: bool,
}

/// `health_check = { type = "tls", sni = "…", interval_ms = 2000, timeout_ms = 1000, rise = 2, fall = 3 }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckFile {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fall: Option<u32>,
}
