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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    pub(super) address: String,
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
    pub(super) min_tls: Option<String>,
    #[serde(default)]
    pub(super) alpn: Vec<String>,
    #[serde(default)]
    pub(super) backends: Vec<String>,
    pub(super) proxy_protocol: Option<String>,
}
