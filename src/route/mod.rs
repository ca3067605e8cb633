//! The routing table: which route serves a new connection.
//!
//! Precedence (the spec's): the dedicated IP of the local address, then the exact SNI, then the
//! wildcard SNI, then the `fallback` routes, then drop. Wildcards have certificate semantics:
//! `*.example.com` matches exactly one extra label, so at most one wildcard can match a name and
//! "most specific" needs no search.
//!
//! The table is generic over what a terminating route carries (`T`: the configuration layer
//! puts the route's TLS material there), so this module knows nothing of rustls and a
//! terminating route without its certificate cannot be built.
//!
//! The table is built once (on start and on reload), never mutated, and shared by every worker
//! behind an `Arc`. It is made for a million names: names live in one byte arena and the index is
//! a set of open-addressing shards of 12-byte slots, so a lookup is one hash, one or two cache
//! lines of probing and one memcmp, with no allocation and no lock.

mod names;
mod upstream;

use std::fmt;
use std::net::IpAddr;

pub use names::{NameIndex, NameIndexBuilder};
pub use upstream::{Backend, Balance, CheckKind, Eject, HealthCheck, Target, TargetError, Upstream, MAX_UNIX_PATH};

/// Index of a route in [`Table::routes`]. Small and `Copy` so that a lookup returns no borrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId(pub u32);

/// What to do with a routed connection. A terminating route carries what terminating needs
/// (`T`, its TLS material), so "terminate without a certificate" cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<T> {
    /// Handshake with the route's certificate; plaintext to the back end.
    Terminate(T),
    /// Relay the raw bytes, the ClientHello already read included.
    Passthrough,
}

impl<T> Action<T> {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Terminate(_) => "terminate",
            Self::Passthrough => "passthrough",
        }
    }

    pub fn is_terminate(&self) -> bool {
        matches!(self, Self::Terminate(_))
    }
}

/// PROXY protocol header written to the back end before any payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    None,
    V1,
    V2,
}

/// Minimum TLS version a route serves, as the wire value (0x0301 = TLS 1.0 … 0x0304 = TLS 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TlsVersion(pub u16);

impl TlsVersion {
    pub const TLS10: Self = Self(0x0301);
    pub const TLS11: Self = Self(0x0302);
    pub const TLS12: Self = Self(0x0303);
    pub const TLS13: Self = Self(0x0304);

    /// Parses the config spelling ("1.0" … "1.3").
    pub fn from_config(s: &str) -> Option<Self> {
        match s {
            "1.0" => Some(Self::TLS10),
            "1.1" => Some(Self::TLS11),
            "1.2" => Some(Self::TLS12),
            "1.3" => Some(Self::TLS13),
            _ => None,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0x0301..=0x0304 => write!(f, "TLS 1.{}", self.0 - 0x0301),
            v => write!(f, "0x{v:04x}"),
        }
    }
}

/// One `[[route]]` of the configuration, validated.
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub name: String,
    pub action: Action<T>,
    /// Normalised (lowercase, no trailing dot) exact names and `*.` wildcards, as configured.
    /// [`Table::build`] moves them into its index (a million names are not kept twice), so in a
    /// built table this is empty: ask the table ([`Table::names`]).
    pub sni: Vec<String>,
    pub dedicated_ips: Vec<IpAddr>,
    pub min_tls: TlsVersion,
    pub backends: Vec<Backend>,
    pub proxy_protocol: ProxyProtocol,
    /// Balancing, health checks and ejection of `backends`.
    pub upstream: Upstream,
    /// ALPN protocols of which the ClientHello must offer one for this route to take it (an
    /// ALPN route: see [`Table::lookup_alpn`]); empty for an ordinary route.
    pub alpn_match: Vec<Vec<u8>>,
}

/// How a connection found its route; also the `how` label of the routed counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    DedicatedIp,
    ExactSni,
    WildcardSni,
    /// `fallback.no_sni`: no (valid) SNI on a shared address.
    NoSniFallback,
    /// `fallback.unknown_sni`: an SNI that no route names.
    UnknownSniFallback,
    /// An ALPN route: the hello offered one of its `alpn_match` protocols, within its scope.
    Alpn,
}

impl Match {
    pub const ALL: [Self; 6] = [
        Self::DedicatedIp,
        Self::ExactSni,
        Self::WildcardSni,
        Self::NoSniFallback,
        Self::UnknownSniFallback,
        Self::Alpn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DedicatedIp => "dedicated_ip",
            Self::ExactSni => "sni",
            Self::WildcardSni => "wildcard",
            Self::NoSniFallback => "fallback_no_sni",
            Self::UnknownSniFallback => "fallback_unknown_sni",
            Self::Alpn => "alpn",
        }
    }
}

/// Why no route was found; also the drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NoSni,
    UnknownSni,
}

impl Miss {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSni => "no_sni",
            Self::UnknownSni => "unknown_sni",
        }
    }
}

/// The immutable routing snapshot.
#[derive(Debug)]
pub struct Table<T> {
    routes: Vec<Route<T>>,
    /// Dedicated IPs, sorted for binary search: an edge host has at most thousands of them.
    by_ip: Vec<(IpAddr, RouteId)>,
    /// Exact names.
    exact: NameIndex,
    /// Wildcards, keyed by the parent domain: `*.example.com` is stored as `example.com`.
    wildcard: NameIndex,
    no_sni: Option<RouteId>,
    unknown_sni: Option<RouteId>,
    /// ALPN routes, in configuration order: outside the name and IP indexes.
    alpn: Vec<AlpnRoute>,
}

/// An ALPN route's scope: its names and dedicated IPs (none of either: every connection).
#[derive(Debug)]
struct AlpnRoute {
    id: RouteId,
    protocols: Vec<Vec<u8>>,
    exact: Vec<String>,
    /// `*.example.com` as `example.com`.
    wildcard: Vec<String>,
    ips: Vec<IpAddr>,
}

impl AlpnRoute {
    fn covers(&self, local: IpAddr, sni: Option<&str>) -> bool {
        if self.exact.is_empty() && self.wildcard.is_empty() && self.ips.is_empty() {
            return true;
        }
        if self.ips.contains(&local) {
            return true;
        }
        let Some(name) = sni else { return false };
        self.exact.iter().any(|n| n == name)
            || name.split_once('.').is_some_and(|(_, parent)| self.wildcard.iter().any(|w| w == parent))
    }
}

/// Why a table could not be built. The config layer turns these into errors naming the file and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("name {name:?} is claimed by routes {first:?} and {second:?}")]
    DuplicateName { name: String, first: String, second: String },
    #[error("dedicated IP {ip} is claimed by routes {first:?} and {second:?}")]
    DuplicateIp { ip: IpAddr, first: String, second: String },
    #[error("too many routes")]
    TooManyRoutes,
}

impl<T> Table<T> {
    /// Builds the table. `sni` entries must already be validated and normalised
    /// (see [`normalize_pattern`]); fallbacks are indices into `routes`.
    pub fn build(
        mut routes: Vec<Route<T>>,
        no_sni: Option<RouteId>,
        unknown_sni: Option<RouteId>,
    ) -> Result<Self, BuildError> {
        if routes.len() >= u32::MAX as usize {
            return Err(BuildError::TooManyRoutes);
        }
        let total: usize = routes.iter().map(|r| r.sni.len()).sum();
        let mut exact = NameIndexBuilder::with_capacity(total);
        let mut wildcard = NameIndexBuilder::with_capacity(0);
        let mut by_ip = Vec::new();
        let mut alpn = Vec::new();
        for (i, route) in routes.iter_mut().enumerate() {
            let id = RouteId(i as u32);
            if !route.alpn_match.is_empty() {
                alpn.push(AlpnRoute::of(id, route));
                continue;
            }
            for pattern in std::mem::take(&mut route.sni) {
                let (index, key) = match pattern.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, pattern.as_str()),
                };
                index.push(key, id);
            }
            for ip in &route.dedicated_ips {
                by_ip.push((canonical_ip(*ip), id));
            }
        }
        let name_of = |id: RouteId| routes[id.0 as usize].name.clone();
        let exact = exact.build().map_err(|(name, a, b)| BuildError::DuplicateName {
            name,
            first: name_of(a),
            second: name_of(b),
        })?;
        let wildcard = wildcard.build().map_err(|(name, a, b)| BuildError::DuplicateName {
            name: format!("*.{name}"),
            first: name_of(a),
            second: name_of(b),
        })?;
        by_ip.sort_by_key(|(ip, _)| *ip);
        if let Some(w) = by_ip.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BuildError::DuplicateIp { ip: w[0].0, first: name_of(w[0].1), second: name_of(w[1].1) });
        }
        Ok(Self { routes, by_ip, exact, wildcard, no_sni, unknown_sni, alpn })
    }

    /// Whether any route has `alpn_match` (when none does, [`Table::lookup_alpn`] need not run).
    #[inline]
    pub fn has_alpn_routes(&self) -> bool {
        !self.alpn.is_empty()
    }

    /// The first ALPN route (in configuration order) whose scope covers a connection that dialed
    /// `local` with `sni` and one of whose protocols the hello offers (`offers(protocol)`). ALPN
    /// routes come before every other rule: within their scope they are the more specific match.
    #[inline]
    pub fn lookup_alpn(&self, local: IpAddr, sni: Option<&str>, offers: impl Fn(&[u8]) -> bool) -> Option<RouteId> {
        let local = canonical_ip(local);
        self.alpn.iter().find(|r| r.protocols.iter().any(|p| offers(p)) && r.covers(local, sni)).map(|r| r.id)
    }

    /// Finds the route for a connection that dialed `local` and sent `sni`
    /// (already normalised by the hello parser; `None` when absent or invalid).
    #[inline]
    pub fn lookup(&self, local: IpAddr, sni: Option<&str>) -> Result<(RouteId, Match), Miss> {
        if !self.by_ip.is_empty() {
            let local = canonical_ip(local);
            if let Ok(i) = self.by_ip.binary_search_by_key(&local, |(ip, _)| *ip) {
                return Ok((self.by_ip[i].1, Match::DedicatedIp));
            }
        }
        let Some(name) = sni else {
            return self.no_sni.map(|id| (id, Match::NoSniFallback)).ok_or(Miss::NoSni);
        };
        if let Some(id) = self.exact.get(name) {
            return Ok((id, Match::ExactSni));
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(id) = self.wildcard.get(parent) {
                return Ok((id, Match::WildcardSni));
            }
        }
        self.unknown_sni.map(|id| (id, Match::UnknownSniFallback)).ok_or(Miss::UnknownSni)
    }

    /// The route `id` names; ids come from [`Table::lookup`] or the fallbacks of this table.
    #[inline]
    pub fn route(&self, id: RouteId) -> &Route<T> {
        &self.routes[id.0 as usize]
    }

    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }

    pub fn no_sni(&self) -> Option<RouteId> {
        self.no_sni
    }

    pub fn unknown_sni(&self) -> Option<RouteId> {
        self.unknown_sni
    }

    /// Number of exact and wildcard names.
    pub fn name_count(&self) -> (usize, usize) {
        (self.exact.len(), self.wildcard.len())
    }

    /// Every configured name and wildcard with its route, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = (String, RouteId)> + '_ {
        let exact = self.exact.iter().map(|(n, id)| (n.to_owned(), id));
        exact.chain(self.wildcard.iter().map(|(n, id)| (format!("*.{n}"), id)))
    }

    pub fn dedicated_ips(&self) -> impl Iterator<Item = (IpAddr, RouteId)> + '_ {
        self.by_ip.iter().copied()
    }
}

impl AlpnRoute {
    /// Takes the route's names (an ALPN route's names are kept out of the name index, so they
    /// may also belong to an ordinary route).
    fn of<T>(id: RouteId, route: &mut Route<T>) -> Self {
        let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
        for pattern in std::mem::take(&mut route.sni) {
            match pattern.strip_prefix("*.") {
                Some(parent) => wildcard.push(parent.to_owned()),
                None => exact.push(pattern),
            }
        }
        let ips = route.dedicated_ips.iter().map(|ip| canonical_ip(*ip)).collect();
        Self { id, protocols: route.alpn_match.clone(), exact, wildcard, ips }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.2`, what a dual-stack listener reports) are the
/// IPv4 address they carry.
#[inline]
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a configured SNI pattern is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty name")]
    Empty,
    #[error("longer than 253 bytes")]
    TooLong,
    #[error("empty label")]
    EmptyLabel,
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    #[error("bad character {0:?} (allowed: letters, digits, '-', '_' and '.')")]
    BadChar(char),
    #[error("'*' is allowed only as the whole first label, as in \"*.example.com\"")]
    BadWildcard,
    #[error("a wildcard needs a parent domain (\"*.com\" is the shortest)")]
    BareWildcard,
    #[error("an IP address is not a host name (use dedicated_ips)")]
    IpLiteral,
}

/// Validates and normalises a configured name or wildcard: ASCII-lowercase, one trailing dot
/// removed, the same rules as the hello parser applies to a client's SNI.
pub fn normalize_pattern(raw: &str) -> Result<String, PatternError> {
    let s = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if s.is_empty() {
        return Err(PatternError::Empty);
    }
    if s.len() > 253 {
        return Err(PatternError::TooLong);
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err(PatternError::IpLiteral);
    }
    let (wild, rest) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None if s == "*" => return Err(PatternError::BareWildcard),
        None => (false, s.as_str()),
    };
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(PatternError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(PatternError::LabelTooLong);
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(if c == '*' { PatternError::BadWildcard } else { PatternError::BadChar(c) });
        }
    }
    if !wild && rest.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        // "1.2.3" is no host name either; a full dotted quad was caught above.
        return Err(PatternError::IpLiteral);
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
