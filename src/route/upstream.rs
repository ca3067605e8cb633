//! What a route says about its back ends, as plain data: where each one is ([`Target`]: TCP, a
//! unix socket, or a hand-off to a local terminator), its weight and whether it is a backup, how
//! connections are spread over them ([`Balance`]), how they are checked ([`HealthCheck`]) and
//! when a failing one is set aside ([`Eject`]). The state behind these (health, per-worker
//! counts, the balancers' cursors) lives in [`crate::backend`]'s pools, built from the table.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a back end is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `IP:port`.
    Tcp(SocketAddr),
    /// `unix:/path`: a unix stream socket.
    Unix(PathBuf),
    /// `handoff:/path`: the client's socket itself goes to a local sni-dispatch over this unix
    /// socket (SCM_RIGHTS), with the ClientHello bytes already read.
    Handoff(PathBuf),
}

impl Target {
    /// Whether connections to it carry bytes (a hand-off hands the connection over instead).
    pub fn is_handoff(&self) -> bool {
        matches!(self, Self::Handoff(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Handoff(p) => write!(f, "handoff:{}", p.display()),
        }
    }
}

/// Why a back-end address does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("is not an address like \"127.0.0.1:8080\", \"unix:/run/app.sock\" or \"handoff:/run/term.sock\"")]
    Syntax,
    #[error("needs an absolute path after the prefix")]
    RelativePath,
    #[error("a unix socket path is at most 107 bytes")]
    PathTooLong,
}

/// Longest unix socket path (`sun_path` holds 108 bytes with its NUL).
pub const MAX_UNIX_PATH: usize = 107;

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        let path = |p: &str| {
            if !p.starts_with('/') {
                Err(TargetError::RelativePath)
            } else if p.len() > MAX_UNIX_PATH {
                Err(TargetError::PathTooLong)
            } else {
                Ok(PathBuf::from(p))
            }
        };
        if let Some(p) = s.strip_prefix("unix:") {
            return path(p).map(Self::Unix);
        }
        if let Some(p) = s.strip_prefix("handoff:") {
            return path(p).map(Self::Handoff);
        }
        s.parse().map(Self::Tcp).map_err(|_| TargetError::Syntax)
    }
}

/// One back end of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub target: Target,
    /// Relative share of the connections (1 to 1000); 1 by default.
    pub weight: u32,
    /// Used only when every other back end of the route is down.
    pub backup: bool,
}

impl Backend {
    /// A back end of weight 1, not a backup.
    pub fn new(target: Target) -> Self {
        Self { target, weight: 1, backup: false }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.target.fmt(f)
    }
}

impl FromStr for Backend {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        s.parse().map(Self::new)
    }
}

/// How a route spreads its connections over its back ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Balance {
    /// The first back end that is up, in configuration order (the others are failover).
    #[default]
    First,
    /// Weighted round robin (per worker).
    RoundRobin,
    /// Fewest open connections relative to weight (per worker: the worker's own connections).
    LeastConn,
    /// Two back ends drawn at random (by weight), the one with fewer open connections wins.
    RandomTwo,
    /// Weighted rendezvous hashing of the client address (IPv4 address, IPv6 /64).
    HashClient,
    /// Weighted rendezvous hashing of the SNI.
    HashSni,
}

impl Balance {
    pub const ALL: [Self; 6] =
        [Self::First, Self::RoundRobin, Self::LeastConn, Self::RandomTwo, Self::HashClient, Self::HashSni];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::RoundRobin => "round_robin",
            Self::LeastConn => "least_conn",
            Self::RandomTwo => "random_two",
            Self::HashClient => "hash_client",
            Self::HashSni => "hash_sni",
        }
    }

    pub fn from_config(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// What an active health check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP (or unix-socket) connect.
    Connect,
    /// A TLS handshake with this SNI (certificates are not verified: the check asks "does it
    /// answer TLS", not "do I trust it").
    Tls { sni: String },
    /// A QUIC liveness probe over UDP: a 1,200-byte long-header packet of a reserved version
    /// (`0x?a?a?a?a`, RFC 9000 §15), which every QUIC server must answer with Version
    /// Negotiation; answered means up. No keys, no handshake: it asks "does a QUIC server
    /// listen on this UDP address".
    Quic,
}

/// An active health check, with HAProxy's names: every `interval_ms` a check within
/// `timeout_ms`; `fall` failures in a row mark the back end down, `rise` successes up again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self { kind: CheckKind::Connect, interval_ms: 2000, timeout_ms: 1000, rise: 2, fall: 3 }
    }
}

/// Passive ejection: after `after` failed connects in a row (0: never) a worker sets the back
/// end aside for `base_ms`, doubled at each ejection in a row up to `max_ms`; a success ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Eject {
    pub after: u32,
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Eject {
    fn default() -> Self {
        Self { after: 3, base_ms: 1000, max_ms: 30_000 }
    }
}

/// A route's back ends and how they are used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Upstream {
    pub balance: Balance,
    pub health: Option<HealthCheck>,
    pub eject: Eject,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for s in ["127.0.0.1:443", "[::1]:8443", "unix:/run/app.sock", "handoff:/run/sni/term.sock"] {
            let t: Target = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        assert_eq!("unix:run/app.sock".parse::<Target>(), Err(TargetError::RelativePath));
        assert_eq!("localhost:80".parse::<Target>(), Err(TargetError::Syntax));
        let long = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH));
        assert_eq!(long.parse::<Target>(), Err(TargetError::PathTooLong));
        let b: Backend = "127.0.0.1:1".parse().unwrap();
        assert_eq!((b.weight, b.backup), (1, false));
        for b in Balance::ALL {
            assert_eq!(Balance::from_config(b.as_str()), Some(b));
        }
    }
}
