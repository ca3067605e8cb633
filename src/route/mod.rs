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
//! A table is immutable once built and shared by every worker behind an `Arc`; lookups take no
//! lock and allocate nothing. It is made for a million names that change all day:
//!
//! - names: one sharded index of exact names and wildcard parents ([`names`]): a lookup hashes the
//!   name once and has its exact and wildcard probes in flight together;
//! - routes: stable ids ([`RouteId`]) into chunks of `Arc<Route>`, each chunk behind its own
//!   `Arc`; route names find their id through a second index;
//! - [`Table::change`] makes a new table from an old one for a few routes added, replaced or
//!   removed: only the name shards and route chunks they touch are copied, everything else is
//!   shared with the old table (copy-on-write), which readers may go on using.

mod names;
mod upstream;

use std::fmt;
use std::net::IpAddr;

pub use names::{Found, Kind, NameIndex, NameIndexBuilder};
pub use upstream::{Backend, Balance, CheckKind, Eject, HealthCheck, Target, TargetError, Upstream, MAX_UNIX_PATH};

use std::sync::Arc;

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
    /// Normalised (lowercase, no trailing dot) exact names and `*.` wildcards, as configured
    /// (kept, so that a change knows which names a replaced route gives up).
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
    /// Pass one side's end of stream on and keep relaying the other way until it ends too
    /// (TCP half-close); `false` closes both ways at the first end, as nginx's
    /// `proxy_half_close off`.
    pub half_close: bool,
}

impl<T> Route<T> {
    /// Whether two routes are the same, for a reload that keeps what did not change: every field
    /// equal, and neither terminates (a terminating route's certificate and key are read again).
    /// Every field is named (no `..`), so a field added to `Route` does not compile here until it
    /// is compared too.
    pub fn same_as(&self, other: &Self) -> bool {
        self.same_as_with(other, |_, _| false)
    }

    /// [`Route::same_as`], terminating routes included: the same when `same_terminate` says their
    /// payloads are (the layer that knows what a terminating route carries decides).
    pub fn same_as_with(&self, other: &Self, same_terminate: impl Fn(&T, &T) -> bool) -> bool {
        let Route {
            name,
            action,
            sni,
            dedicated_ips,
            min_tls,
            backends,
            proxy_protocol,
            upstream,
            alpn_match,
            half_close,
        } = self;
        let actions = match (action, &other.action) {
            (Action::Passthrough, Action::Passthrough) => true,
            (Action::Terminate(a), Action::Terminate(b)) => same_terminate(a, b),
            _ => false,
        };
        actions
            && *name == other.name
            && *sni == other.sni
            && *dedicated_ips == other.dedicated_ips
            && *min_tls == other.min_tls
            && *backends == other.backends
            && *proxy_protocol == other.proxy_protocol
            && *upstream == other.upstream
            && *alpn_match == other.alpn_match
            && *half_close == other.half_close
    }

    /// Whether it is an ALPN route (kept out of the name and IP indexes).
    pub fn is_alpn(&self) -> bool {
        !self.alpn_match.is_empty()
    }
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

/// Routes per chunk of the route store (the unit of copy-on-write for routes).
const CHUNK: usize = 1024;

/// One chunk of the route store: `None` for a free id.
type Chunk<T> = Vec<Option<Arc<Route<T>>>>;

/// The immutable routing snapshot (cheap to clone: its parts are shared).
#[derive(Debug)]
pub struct Table<T> {
    /// `chunks[id / CHUNK][id % CHUNK]`; `None` for a free id.
    chunks: Vec<Arc<Chunk<T>>>,
    /// Ids freed by removals, reused first.
    free: Vec<u32>,
    len: usize,
    /// Dedicated IPs, sorted for binary search: an edge host has at most thousands of them.
    by_ip: Arc<Vec<(IpAddr, RouteId)>>,
    /// Exact names and wildcard parents.
    names: NameIndex,
    /// Route names.
    route_names: NameIndex,
    no_sni: Option<RouteId>,
    unknown_sni: Option<RouteId>,
    /// ALPN routes, in configuration order (a change keeps their order and appends the new
    /// ones): outside the name and IP indexes.
    alpn: Arc<Vec<AlpnRoute>>,
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

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
            free: self.free.clone(),
            len: self.len,
            by_ip: Arc::clone(&self.by_ip),
            names: self.names.clone(),
            route_names: self.route_names.clone(),
            no_sni: self.no_sni,
            unknown_sni: self.unknown_sni,
            alpn: Arc::clone(&self.alpn),
        }
    }
}

/// Why a table could not be built or changed. The config layer turns these into errors naming
/// the file and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("name {name:?} is claimed by routes {first:?} and {second:?}")]
    DuplicateName { name: String, first: String, second: String },
    #[error("dedicated IP {ip} is claimed by routes {first:?} and {second:?}")]
    DuplicateIp { ip: IpAddr, first: String, second: String },
    #[error("route name {name:?} is used twice")]
    DuplicateRoute { name: String, first: RouteId, second: RouteId },
    #[error("too many routes")]
    TooManyRoutes,
}

/// The answer to "which route would this connection get, and why" ([`Table::explain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub route: Option<RouteId>,
    /// How it was found ([`Match`]) or why nothing was.
    pub how: Result<Match, Miss>,
    /// The configured pattern that matched: the dedicated IP, the name or `*.parent`.
    pub pattern: Option<String>,
}

impl<T> Table<T> {
    /// Builds the table; route `i` of `routes` gets `RouteId(i)`. `sni` entries must already be
    /// validated and normalised (see [`normalize_pattern`]); fallbacks are indices into `routes`.
    pub fn build(
        routes: Vec<Route<T>>,
        no_sni: Option<RouteId>,
        unknown_sni: Option<RouteId>,
    ) -> Result<Self, BuildError> {
        Self::build_shared(routes.into_iter().map(Arc::new).collect(), no_sni, unknown_sni)
    }

    /// [`Table::build`] from routes that may already be shared (with an older table).
    pub fn build_shared(
        routes: Vec<Arc<Route<T>>>,
        no_sni: Option<RouteId>,
        unknown_sni: Option<RouteId>,
    ) -> Result<Self, BuildError> {
        if routes.len() >= names::MAX_ROUTES {
            return Err(BuildError::TooManyRoutes);
        }
        let total: usize = routes.iter().map(|r| r.sni.len()).sum();
        // Keys borrowed from the routes: a million names are not copied to be indexed.
        let mut index = Vec::with_capacity(total);
        let mut route_names = Vec::with_capacity(routes.len());
        let mut by_ip = Vec::new();
        let mut alpn = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let id = RouteId(i as u32);
            route_names.push((route.name.as_str(), Kind::Exact, id));
            if !route.alpn_match.is_empty() {
                // Outside the name and IP indexes: its names may also be an ordinary route's.
                alpn.push(AlpnRoute::of(id, route));
                continue;
            }
            for pattern in &route.sni {
                let (key, kind) = split_pattern(pattern);
                index.push((key, kind, id));
            }
            for ip in &route.dedicated_ips {
                by_ip.push((canonical_ip(*ip), id));
            }
        }
        let name_of = |id: RouteId| routes[id.0 as usize].name.clone();
        let names = NameIndex::from_borrowed(index).map_err(|(name, a, b)| BuildError::DuplicateName {
            name,
            first: name_of(a),
            second: name_of(b),
        })?;
        let route_names = NameIndex::from_borrowed(route_names)
            .map_err(|(name, first, second)| BuildError::DuplicateRoute { name, first, second })?;
        by_ip.sort_by_key(|(ip, _)| *ip);
        if let Some(w) = by_ip.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BuildError::DuplicateIp { ip: w[0].0, first: name_of(w[0].1), second: name_of(w[1].1) });
        }
        let len = routes.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let mut routes = routes.into_iter();
        loop {
            let chunk: Vec<Option<Arc<Route<T>>>> = routes.by_ref().take(CHUNK).map(Some).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(Arc::new(chunk));
        }
        Ok(Self {
            chunks,
            free: Vec::new(),
            len,
            by_ip: Arc::new(by_ip),
            names,
            route_names,
            no_sni,
            unknown_sni,
            alpn: Arc::new(alpn),
        })
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
        match self.names.lookup(name) {
            Found::Exact(id) => Ok((id, Match::ExactSni)),
            Found::Wildcard(id) => Ok((id, Match::WildcardSni)),
            Found::None => self.unknown_sni.map(|id| (id, Match::UnknownSniFallback)).ok_or(Miss::UnknownSni),
        }
    }

    /// [`Table::lookup`], with the pattern that matched (for `sni-dispatch route` and
    /// `GET /route`).
    pub fn explain(&self, local: IpAddr, sni: Option<&str>) -> Explained {
        match self.lookup(local, sni) {
            Ok((id, how)) => {
                let pattern = match how {
                    Match::DedicatedIp => Some(canonical_ip(local).to_string()),
                    Match::ExactSni => sni.map(str::to_owned),
                    Match::WildcardSni => sni.and_then(|n| n.split_once('.')).map(|(_, p)| format!("*.{p}")),
                    Match::NoSniFallback => Some("fallback.no_sni".to_owned()),
                    Match::UnknownSniFallback => Some("fallback.unknown_sni".to_owned()),
                    // Not an outcome of `lookup` (ALPN routes are looked up apart).
                    Match::Alpn => None,
                };
                Explained { route: Some(id), how: Ok(how), pattern }
            }
            Err(m) => Explained { route: None, how: Err(m), pattern: None },
        }
    }

    /// The route `id` names; ids come from [`Table::lookup`], [`Table::id_of`] or the fallbacks of
    /// this table.
    #[inline]
    pub fn route(&self, id: RouteId) -> &Route<T> {
        self.route_arc(id)
    }

    /// The route `id` names, as the `Arc` a connection may keep (see [`Table::route`]).
    #[inline]
    #[allow(clippy::expect_used)]
    pub fn route_arc(&self, id: RouteId) -> &Arc<Route<T>> {
        let i = id.0 as usize;
        self.chunks
            .get(i / CHUNK)
            .and_then(|c| c.get(i % CHUNK))
            .and_then(Option::as_ref)
            .expect("a RouteId of this table")
    }

    /// The route `id` names, if it is one of this table's.
    pub fn get(&self, id: RouteId) -> Option<&Arc<Route<T>>> {
        let i = id.0 as usize;
        self.chunks.get(i / CHUNK).and_then(|c| c.get(i % CHUNK)).and_then(Option::as_ref)
    }

    /// The id of the route named `name`.
    pub fn id_of(&self, name: &str) -> Option<RouteId> {
        self.route_names.get(name, Kind::Exact)
    }

    /// Every route, by id.
    pub fn routes(&self) -> impl Iterator<Item = (RouteId, &Route<T>)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter_map(move |(i, r)| r.as_deref().map(|r| (RouteId((c * CHUNK + i) as u32), r)))
        })
    }

    /// Routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn no_sni(&self) -> Option<RouteId> {
        self.no_sni
    }

    pub fn unknown_sni(&self) -> Option<RouteId> {
        self.unknown_sni
    }

    /// Number of exact and wildcard names.
    pub fn name_count(&self) -> (usize, usize) {
        (self.names.exact_len(), self.names.wildcard_len())
    }

    /// Every configured name and wildcard with its route, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = (String, RouteId)> + '_ {
        self.names.iter().map(|(k, kind, id)| match kind {
            Kind::Exact => (k.to_owned(), id),
            Kind::Wildcard => (format!("*.{k}"), id),
        })
    }

    pub fn dedicated_ips(&self) -> impl Iterator<Item = (IpAddr, RouteId)> + '_ {
        self.by_ip.iter().copied()
    }

    /// Whether any route has a dedicated IP (else the dialed address never matters).
    #[inline]
    pub fn has_dedicated_ips(&self) -> bool {
        !self.by_ip.is_empty()
    }

    /// Name shards (the unit of copy-on-write of the name index).
    pub fn shard_count(&self) -> usize {
        self.names.shard_count()
    }

    /// Bytes of heap held by the name indexes.
    pub fn index_heap_bytes(&self) -> usize {
        self.names.heap_bytes() + self.route_names.heap_bytes()
    }

    /// Keys (names and route names) changed since the name indexes were last folded: a change
    /// writes them to a small delta probed first, instead of copying shards.
    pub fn delta_len(&self) -> usize {
        self.names.delta_len() + self.route_names.delta_len()
    }

    /// The same table with the name indexes' deltas folded into their shards (only the shards
    /// they touch copied); `None` when there is nothing to fold. Lookups answer the same.
    pub fn folded(&self) -> Option<Self> {
        if self.delta_len() == 0 {
            return None;
        }
        let mut t = self.clone();
        if let Some(n) = self.names.folded() {
            t.names = n;
        }
        if let Some(n) = self.route_names.folded() {
            t.route_names = n;
        }
        Some(t)
    }

    /// Starts a change to this table: routes added, replaced or removed by name, applied by
    /// [`Change::finish`] into a new table that shares everything the change did not touch.
    pub fn change(&self) -> Change<'_, T> {
        Change { base: self, upserts: Vec::new(), removals: Vec::new(), fallbacks: None }
    }
}

/// Routes to add, replace or remove, and new fallbacks, applied together by [`Change::finish`].
pub struct Change<'a, T> {
    base: &'a Table<T>,
    upserts: Vec<Route<T>>,
    removals: Vec<String>,
    fallbacks: Option<(Option<String>, Option<String>)>,
}

/// What a change touched (for the reload log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeStats {
    pub added: usize,
    pub replaced: usize,
    pub removed: usize,
    /// Name shards copied, of how many (0 when the change went to the delta).
    pub shards_touched: usize,
    pub shards: usize,
    /// Keys waiting in the name indexes' deltas after the change (folded later).
    pub delta: usize,
}

impl<'a, T> Change<'a, T> {
    /// Adds `route`, or replaces the route of the same name.
    pub fn upsert(&mut self, route: Route<T>) {
        self.upserts.push(route);
    }

    /// Removes the route named `name` (nothing if there is none).
    pub fn remove(&mut self, name: &str) {
        self.removals.push(name.to_owned());
    }

    /// Sets the fallbacks, by route name (`None`: drop).
    pub fn fallbacks(&mut self, no_sni: Option<String>, unknown_sni: Option<String>) {
        self.fallbacks = Some((no_sni, unknown_sni));
    }

    /// The new table, what the change touched and the fallback route names that name no route
    /// (they resolve to `None`: the caller decides whether that is an error); or every conflict
    /// the change would create (the base is untouched).
    pub fn finish(self) -> Result<(Table<T>, ChangeStats, Vec<String>), Vec<BuildError>> {
        let base = self.base;
        let mut t = base.clone();
        let mut stats = ChangeStats { shards: base.names.shard_count(), ..Default::default() };
        let mut names = base.names.edit();
        let mut route_names = base.route_names.edit();
        let mut errors = Vec::new();
        let mut ips_changed = false;
        let mut alpn_changed = false;
        let mut upserted = std::collections::HashSet::new();
        for r in &self.upserts {
            if !upserted.insert(r.name.as_str()) {
                let id = base.id_of(&r.name).unwrap_or(RouteId(u32::MAX));
                errors.push(BuildError::DuplicateRoute { name: r.name.clone(), first: id, second: id });
            }
        }
        // 1. Everything that goes away first (removed routes and the old names of replaced
        //    ones), so that a name moving between two routes of one change is no conflict.
        let mut slots: Vec<(RouteId, Route<T>)> = Vec::with_capacity(self.upserts.len());
        let mut fresh: Vec<Route<T>> = Vec::new();
        for name in &self.removals {
            if upserted.contains(name.as_str()) {
                continue;
            }
            let Some(id) = base.id_of(name) else { continue };
            let old = base.route_arc(id);
            if old.is_alpn() {
                alpn_changed = true;
            } else {
                for p in &old.sni {
                    let (key, kind) = split_pattern(p);
                    names.remove(key, kind, id);
                }
                ips_changed |= !old.dedicated_ips.is_empty();
            }
            route_names.remove(&old.name, Kind::Exact, id);
            t.set(id, None);
            t.free.push(id.0);
            t.len -= 1;
            stats.removed += 1;
        }
        for r in self.upserts {
            match base.id_of(&r.name) {
                Some(id) => {
                    let old = base.route_arc(id);
                    if !old.is_alpn() {
                        // Names it gives up (all of them when it becomes an ALPN route).
                        for p in old.sni.iter().filter(|p| r.is_alpn() || !r.sni.contains(p)) {
                            let (key, kind) = split_pattern(p);
                            names.remove(key, kind, id);
                        }
                    }
                    alpn_changed |= old.is_alpn() || r.is_alpn();
                    ips_changed |= old.dedicated_ips != r.dedicated_ips
                        || (old.is_alpn() != r.is_alpn()
                            && !(old.dedicated_ips.is_empty() && r.dedicated_ips.is_empty()));
                    slots.push((id, r));
                }
                None => fresh.push(r),
            }
        }
        // 2. Ids for the new routes.
        for r in fresh {
            let id = match t.free.pop() {
                Some(id) => RouteId(id),
                None => {
                    let id = t.chunks.iter().map(|c| c.len()).sum::<usize>();
                    if id >= names::MAX_ROUTES {
                        errors.push(BuildError::TooManyRoutes);
                        continue;
                    }
                    RouteId(id as u32)
                }
            };
            if let Err(first) = route_names.insert(&r.name, Kind::Exact, id) {
                errors.push(BuildError::DuplicateRoute { name: r.name.clone(), first, second: id });
                continue;
            }
            if r.is_alpn() {
                alpn_changed = true;
            } else {
                ips_changed |= !r.dedicated_ips.is_empty();
            }
            t.len += 1;
            stats.added += 1;
            slots.push((id, r));
        }
        // 3. The names of every added or replaced route.
        let name_of = |t: &Table<T>, slots: &[(RouteId, Route<T>)], id: RouteId| -> String {
            slots
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, r)| r.name.clone())
                .unwrap_or_else(|| t.get(id).map(|r| r.name.clone()).unwrap_or_default())
        };
        for (id, r) in slots.iter().filter(|(_, r)| !r.is_alpn()) {
            let old = base.get(*id).filter(|o| o.name == r.name && !o.is_alpn());
            for p in &r.sni {
                if old.is_some_and(|o| o.sni.contains(p)) {
                    continue;
                }
                let (key, kind) = split_pattern(p);
                if let Err(owner) = names.insert(key, kind, *id) {
                    errors.push(BuildError::DuplicateName {
                        name: p.clone(),
                        first: name_of(&t, &slots, owner),
                        second: r.name.clone(),
                    });
                }
            }
        }
        stats.shards_touched = names.touched();
        let replaced = slots.len() - stats.added;
        stats.replaced = replaced;
        for (id, r) in slots {
            t.set(id, Some(Arc::new(r)));
        }
        if ips_changed {
            let mut by_ip: Vec<(IpAddr, RouteId)> = Vec::new();
            for (id, r) in t.routes().filter(|(_, r)| !r.is_alpn()) {
                by_ip.extend(r.dedicated_ips.iter().map(|ip| (canonical_ip(*ip), id)));
            }
            by_ip.sort_by_key(|(ip, _)| *ip);
            for w in by_ip.windows(2).filter(|w| w[0].0 == w[1].0) {
                errors.push(BuildError::DuplicateIp {
                    ip: w[0].0,
                    first: t.route(w[0].1).name.clone(),
                    second: t.route(w[1].1).name.clone(),
                });
            }
            t.by_ip = Arc::new(by_ip);
        }
        if alpn_changed {
            // The ALPN routes that stay keep their place; new ones come last.
            let mut alpn: Vec<AlpnRoute> = Vec::with_capacity(base.alpn.len() + 1);
            for a in base.alpn.iter() {
                if let Some(r) = t.get(a.id).filter(|r| r.is_alpn()) {
                    alpn.push(AlpnRoute::of(a.id, r));
                }
            }
            let fresh: Vec<(RouteId, &Route<T>)> =
                t.routes().filter(|(id, r)| r.is_alpn() && !alpn.iter().any(|a| a.id == *id)).collect();
            for (id, r) in fresh {
                alpn.push(AlpnRoute::of(id, r));
            }
            t.alpn = Arc::new(alpn);
        }
        let mut missing = Vec::new();
        t.names = names.finish();
        t.route_names = route_names.finish();
        stats.delta = t.delta_len();
        let resolve = |t: &Table<T>, name: Option<String>, missing: &mut Vec<String>| {
            let name = name.filter(|n| !n.is_empty())?;
            let id = t.id_of(&name);
            if id.is_none() {
                missing.push(name);
            }
            id
        };
        match self.fallbacks {
            Some((no_sni, unknown)) => {
                let no_sni = resolve(&t, no_sni, &mut missing);
                let unknown = resolve(&t, unknown, &mut missing);
                t.no_sni = no_sni;
                t.unknown_sni = unknown;
            }
            None => {
                // Fallbacks follow their route by name; one that was removed is reported.
                let keep = |id: Option<RouteId>, missing: &mut Vec<String>| {
                    let id = id?;
                    let name = &base.route(id).name;
                    let now = t.id_of(name);
                    if now.is_none() {
                        missing.push(name.clone());
                    }
                    now
                };
                let (no_sni, unknown) = (keep(base.no_sni, &mut missing), keep(base.unknown_sni, &mut missing));
                t.no_sni = no_sni;
                t.unknown_sni = unknown;
            }
        }
        if errors.is_empty() {
            Ok((t, stats, missing))
        } else {
            Err(errors)
        }
    }
}

impl<T> Table<T> {
    fn set(&mut self, id: RouteId, route: Option<Arc<Route<T>>>) {
        let (c, i) = (id.0 as usize / CHUNK, id.0 as usize % CHUNK);
        while self.chunks.len() <= c {
            self.chunks.push(Arc::new(Vec::new()));
        }
        // Cloning a shared chunk clones `Arc` pointers, not routes.
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        if chunk.len() <= i {
            chunk.resize_with(i + 1, || None);
        }
        chunk[i] = route;
    }
}

/// A configured pattern as an index key: `*.example.com` is the wildcard parent `example.com`.
fn split_pattern(p: &str) -> (&str, Kind) {
    match p.strip_prefix("*.") {
        Some(parent) => (parent, Kind::Wildcard),
        None => (p, Kind::Exact),
    }
}

impl AlpnRoute {
    /// The scope of an ALPN route, from its names (an ALPN route's names are kept out of the
    /// name index, so they may also belong to an ordinary route).
    fn of<T>(id: RouteId, route: &Route<T>) -> Self {
        let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
        for pattern in &route.sni {
            match pattern.strip_prefix("*.") {
                Some(parent) => wildcard.push(parent.to_owned()),
                None => exact.push(pattern.clone()),
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
