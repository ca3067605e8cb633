//! `[[listener]]`: a TCP address (with its PROXY protocol and admission settings) or a hand-off
//! socket, validated; CIDR sets and JA4 patterns.

use super::file::ListenerFile;
use super::Located;
use crate::hello::Ja4;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// Which PROXY protocol header a listener requires in front of every connection.
pub use crate::proxy_protocol::Accept as AcceptProxy;

/// A set of address ranges (`10.0.0.0/8`, `2001:db8::/32`, single addresses), IPv4 held as
/// IPv4-mapped IPv6, merged and sorted so that a lookup is a binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    ranges: Vec<(u128, u128)>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl CidrSet {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address into the set; the reason on error.
    pub fn insert(&mut self, s: &str) -> Result<(), String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr =
            ip.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR like \"10.0.0.0/8\""))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let bits = if ip.is_ipv4() { 96 + len } else { len };
        let start = key(ip);
        let host = if bits >= 128 { 0 } else { u128::MAX >> bits };
        if start & host != 0 {
            return Err(format!(
                "{s:?} has bits set after the prefix (did you mean {}?)",
                Self::show(start & !host, ip.is_ipv4(), len)
            ));
        }
        self.ranges.push((start, start | host));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(self.ranges.len());
        for &(a, b) in &self.ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.ranges = merged;
        Ok(())
    }

    fn show(start: u128, v4: bool, len: u32) -> String {
        let v6 = Ipv6Addr::from(start);
        match (v4, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => format!("{v4}/{len}"),
            _ => format!("{v6}/{len}"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is in the set (IPv4-mapped IPv6 addresses count as IPv4).
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        });
        match self.ranges.binary_search_by(|&(a, _)| a.cmp(&k)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= k,
        }
    }
}

/// A JA4 pattern: three `_`-separated parts, each the fingerprint's part or `*` (any); a bare
/// `a` part (`t13d1516h2`) stands for `t13d1516h2_*_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ja4Pattern {
    parts: [Option<String>; 3],
}

impl Ja4Pattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a JA4 fingerprint (\"t13d1516h2_8daaf6152771_e5627efa2ab1\", parts may be \"*\")");
        let split: Vec<&str> = s.split('_').collect();
        let lens = [10, 12, 12];
        let mut parts = [None, None, None];
        match split.len() {
            1 | 3 => {}
            _ => return Err(bad()),
        }
        for (i, p) in split.iter().enumerate() {
            if *p == "*" {
                continue;
            }
            let ok = p.len() == lens[i] && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err(bad());
            }
            parts[i] = Some((*p).to_owned());
        }
        Ok(Self { parts })
    }

    #[inline]
    pub fn matches(&self, ja4: &Ja4) -> bool {
        let s = ja4.as_str();
        let got = [s.get(0..10), s.get(11..23), s.get(24..36)];
        self.parts.iter().zip(got).all(|(want, got)| match want {
            None => true,
            Some(w) => Some(w.as_str()) == got,
        })
    }
}

impl fmt::Display for Ja4Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |i: usize| self.parts[i].as_deref().unwrap_or("*");
        write!(f, "{}_{}_{}", p(0), p(1), p(2))
    }
}

/// Who a listener lets in (`[[listener]]` admission keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Connections open at once per client address (IPv4 address, IPv6 /64); 0: no limit.
    pub max_conns_per_client: u32,
    /// New connections per second per client address; 0: no limit.
    pub max_conn_rate_per_client: u32,
    /// Only these addresses, when not empty.
    pub allow: CidrSet,
    /// Never these addresses (wins over `allow`).
    pub deny: CidrSet,
    /// Only hellos with a matching JA4, when not empty.
    pub allow_ja4: Vec<Ja4Pattern>,
    /// Never hellos with a matching JA4 (wins over `allow_ja4`).
    pub deny_ja4: Vec<Ja4Pattern>,
    /// A client refused by a limit is shunned in the kernel while the limit would refuse it
    /// (`shun`; off behind `accept_proxy`, where the kernel sees the balancer).
    pub shun: bool,
    /// Clients shunned at most, per worker (`shun_max`).
    pub shun_max: u32,
}

/// `shun_max` unless set.
pub const DEFAULT_SHUN_MAX: u32 = 256;

impl Admission {
    /// Whether anything is checked before the hello (addresses, limits).
    pub fn before_hello(&self) -> bool {
        self.has_limits() || !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// Whether a per-client limit is set.
    pub fn has_limits(&self) -> bool {
        self.max_conns_per_client > 0 || self.max_conn_rate_per_client > 0
    }

    /// Whether the hello's JA4 is checked.
    pub fn checks_ja4(&self) -> bool {
        !self.allow_ja4.is_empty() || !self.deny_ja4.is_empty()
    }

    /// Whether `ip` may connect by the address lists.
    #[inline]
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    /// Whether a hello with `ja4` may go on by the JA4 lists.
    #[inline]
    pub fn ja4_allowed(&self, ja4: &Ja4) -> bool {
        !self.deny_ja4.iter().any(|p| p.matches(ja4))
            && (self.allow_ja4.is_empty() || self.allow_ja4.iter().any(|p| p.matches(ja4)))
    }
}

/// One TCP `[[listener]]`: where each worker binds a socket of its own (`SO_REUSEPORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// A wildcard address serves every local IP (dedicated IPs are read per connection).
    pub address: SocketAddr,
    /// A PROXY protocol header is required first (`accept_proxy`), from `trusted_sources` only.
    pub accept_proxy: Option<AcceptProxy>,
    pub trusted_sources: CidrSet,
    pub admission: Admission,
    /// Also serve QUIC on UDP at the same address (`quic = true`): flows routed by the SNI of
    /// their Initial's ClientHello and passed through to the route's back ends over UDP.
    pub quic: bool,
}

impl Listener {
    /// A plain listener on `address`.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            accept_proxy: None,
            trusted_sources: CidrSet::default(),
            admission: Admission::default(),
            quic: false,
        }
    }
}

/// A hand-off `[[listener]]`: a unix socket on which other sni-dispatch processes (of `uids`)
/// hand over client connections with their ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffListener {
    pub path: PathBuf,
    pub uids: Vec<u32>,
}

/// A listener of the file, resolved: TCP or hand-off.
pub(super) enum Resolved {
    Tcp(Listener),
    Handoff(HandoffListener),
}

pub(super) fn resolve_listener(i: usize, l: &ListenerFile, errors: &mut Vec<Located>) -> Option<Resolved> {
    let before = errors.len();
    let key = |field: &str| format!("listener[{i}].{field}");
    let mut bad = |field: &str, reason: String| errors.push(Located::new(key(field), reason));
    if let Some(path) = &l.handoff {
        if l.address.is_some() {
            bad("handoff", "a listener has either an address or a hand-off socket, not both".into());
        }
        let tcp_only = [
            ("accept_proxy", l.accept_proxy.is_some()),
            ("trusted_sources", !l.trusted_sources.is_empty()),
            ("max_conns_per_client", l.max_conns_per_client.is_some()),
            ("max_conn_rate_per_client", l.max_conn_rate_per_client.is_some()),
            ("shun", l.shun.is_some()),
            ("shun_max", l.shun_max.is_some()),
            ("allow", !l.allow.is_empty()),
            ("deny", !l.deny.is_empty()),
            ("allow_ja4", !l.allow_ja4.is_empty()),
            ("deny_ja4", !l.deny_ja4.is_empty()),
            ("quic", l.quic),
        ];
        for (field, set) in tcp_only {
            if set {
                bad(field, "applies only to a listener with an address (the sender already applied it)".into());
            }
        }
        let text = path.to_string_lossy();
        if !path.is_absolute() {
            bad("handoff", format!("{text:?} must be an absolute path"));
        } else if text.len() > crate::route::MAX_UNIX_PATH {
            bad("handoff", format!("{text:?} is longer than {} bytes", crate::route::MAX_UNIX_PATH));
        }
        let uids = l.handoff_uids.clone().unwrap_or_else(|| vec![crate::sys::unix::uid()]);
        if uids.is_empty() {
            bad("handoff_uids", "lists no uid: no process could hand off".into());
        }
        return (errors.len() == before).then(|| Resolved::Handoff(HandoffListener { path: path.clone(), uids }));
    }
    if l.handoff_uids.is_some() {
        bad("handoff_uids", "applies only to a hand-off listener (handoff = \"/path\")".into());
    }
    let address = match l.address.as_deref().map(str::parse::<SocketAddr>) {
        None => {
            bad("address", "required (or handoff = \"/path\" for a hand-off listener)".into());
            None
        }
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            let raw = l.address.as_deref().unwrap_or_default();
            bad("address", format!("{raw:?} is not an address like \"0.0.0.0:443\""));
            None
        }
    };
    let accept_proxy = match l.accept_proxy.as_deref() {
        None => None,
        Some("v1") => Some(AcceptProxy::V1),
        Some("v2") => Some(AcceptProxy::V2),
        Some("any") => Some(AcceptProxy::Any),
        Some(other) => {
            bad("accept_proxy", format!("{other:?} is not \"v1\", \"v2\" or \"any\""));
            None
        }
    };
    let mut set = |field: &str, list: &[String]| {
        let mut s = CidrSet::default();
        for raw in list {
            if let Err(e) = s.insert(raw) {
                errors.push(Located::new(key(field), e));
            }
        }
        s
    };
    let trusted_sources = set("trusted_sources", &l.trusted_sources);
    let allow = set("allow", &l.allow);
    let deny = set("deny", &l.deny);
    let mut ja4 = |field: &str, list: &[String]| {
        let mut out = Vec::new();
        for raw in list {
            match Ja4Pattern::parse(raw) {
                Ok(p) => out.push(p),
                Err(e) => errors.push(Located::new(key(field), e)),
            }
        }
        out
    };
    let allow_ja4 = ja4("allow_ja4", &l.allow_ja4);
    let deny_ja4 = ja4("deny_ja4", &l.deny_ja4);
    if accept_proxy.is_some() && l.trusted_sources.is_empty() {
        errors.push(Located::new(
            key("trusted_sources"),
            "required with accept_proxy: the balancers' addresses (\"0.0.0.0/0\" and \"::/0\" trust every source)",
        ));
    }
    if accept_proxy.is_none() && !l.trusted_sources.is_empty() {
        errors.push(Located::new(key("trusted_sources"), "applies only with accept_proxy"));
    }
    if accept_proxy.is_some() && l.shun == Some(true) {
        errors.push(Located::new(
            key("shun"),
            "cannot apply with accept_proxy: the kernel sees the balancer's address, not the client's (shunning it would drop everyone behind it)",
        ));
    }
    let max = crate::sys::filter::MAX_SHUNNED as u32;
    if l.shun_max.is_some_and(|n| n == 0 || n > max) {
        errors.push(Located::new(
            key("shun_max"),
            format!(
                "must be 1 to {max} (the kernel's filter holds at most {max} clients); shun = false turns shunning off"
            ),
        ));
    }
    if errors.len() > before {
        return None;
    }
    let admission = Admission {
        shun: l.shun.unwrap_or(accept_proxy.is_none()),
        shun_max: l.shun_max.unwrap_or(DEFAULT_SHUN_MAX),
        max_conns_per_client: l.max_conns_per_client.unwrap_or(0),
        max_conn_rate_per_client: l.max_conn_rate_per_client.unwrap_or(0),
        allow,
        deny,
        allow_ja4,
        deny_ja4,
    };
    Some(Resolved::Tcp(Listener { address: address?, accept_proxy, trusted_sources, admission, quic: l.quic }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> CidrSet {
        let mut s = CidrSet::default();
        for l in list {
            s.insert(l).unwrap();
        }
        s
    }

    #[test]
    fn cidr_sets() {
        let s = set(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.0.0/16"]);
        for yes in ["10.0.0.1", "10.255.255.255", "192.0.2.7", "::ffff:10.2.3.4", "2001:db8:ffff::1"] {
            assert!(s.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.0", "9.255.255.255", "192.0.2.8", "2001:db9::", "::1"] {
            assert!(!s.contains(no.parse().unwrap()), "{no}");
        }
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains("1.2.3.4".parse().unwrap()) && all.contains("fe80::1".parse().unwrap()));
        let v4_all = set(&["0.0.0.0/0"]);
        assert!(!v4_all.contains("2001:db8::1".parse().unwrap()));
        let mut bad = CidrSet::default();
        assert!(bad.insert("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(bad.insert("10.0.0.0/33").is_err());
        assert!(bad.insert("example.com").is_err());
        assert!(CidrSet::default().is_empty());
    }

    #[test]
    fn ja4_patterns() {
        let fp = "t13d1516h2_8daaf6152771_e5627efa2ab1";
        let p = |s: &str| Ja4Pattern::parse(s).unwrap();
        assert_eq!(p(fp).to_string(), fp);
        assert_eq!(p("t13d1516h2").to_string(), "t13d1516h2_*_*");
        assert_eq!(p("*_8daaf6152771_*").to_string(), "*_8daaf6152771_*");
        for bad in ["t13d", "t13d1516h2_8daaf6152771", "T13d1516h2_*_*", "t13d1516h2_8daaf615277_*", ""] {
            assert!(Ja4Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
