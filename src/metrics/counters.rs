//! The counter set, defined once: [`Counters`] (the struct every worker bumps), its merge, and
//! the series that `/metrics`, `/stats` and the summary render all follow from the one
//! [`counter_set!`] table at the bottom of this file. To add a counter, add a line there (and a
//! line to `docs/metrics.md`: a test checks that every served name is documented).
//!
//! A field is either a plain `u64` (a counter, or a gauge such as `open`) or a [`Tally`]: one
//! count per value of a [`Label`] enum (drop reasons, connect-failure causes, …), indexed by the
//! enum's discriminant, so bumping a labelled counter is an array increment.

use super::labels::{
    AcceptCause, AdminRefusal, ApiResult, ConnectCause, Direction, DropReason, HandoffCause, OcspState, PipeMiss,
    QuicDatagramDrop, QuicFlowDrop, QuicFlowEnd, RelayCause, RelayKind, ReloadResult, ShunCause, ShunSkip,
    TicketKeyState, TicketResult, UpgradeResult,
};
use crate::hello::Alert;
use crate::route::Match;
use std::fmt;
use std::marker::PhantomData;

/// An enum whose values label a counter (`reason="unknown_sni"`).
pub trait Label: Copy + Eq + fmt::Debug + 'static {
    /// Every value, in declaration order (`ALL[v.index()] == v`; a test checks each label).
    const ALL: &'static [Self];
    /// The Prometheus label name (`reason`, `cause`, …).
    const KEY: &'static str;
    /// The label value: stable, lowercase, low-cardinality.
    fn as_str(self) -> &'static str;
    /// The slot of this value in a [`Tally`].
    fn index(self) -> usize;
}

/// One count per value of `L` (`N` is `L::ALL.len()`, which [`counter_set!`] passes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tally<L: Label, const N: usize> {
    n: [u64; N],
    _label: PhantomData<L>,
}

impl<L: Label, const N: usize> Default for Tally<L, N> {
    fn default() -> Self {
        Self { n: [0; N], _label: PhantomData }
    }
}

impl<L: Label, const N: usize> fmt::Debug for Tally<L, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().filter(|(_, n)| *n > 0).map(|(l, n)| (l.as_str(), n))).finish()
    }
}

impl<L: Label, const N: usize> Tally<L, N> {
    #[inline]
    pub fn get(&self, l: L) -> u64 {
        self.n.get(l.index()).copied().unwrap_or(0)
    }

    #[inline]
    pub fn add(&mut self, l: L, by: u64) {
        if let Some(n) = self.n.get_mut(l.index()) {
            *n += by;
        }
    }

    #[inline]
    pub fn bump(&mut self, l: L) {
        self.add(l, 1);
    }

    pub fn total(&self) -> u64 {
        self.n.iter().sum()
    }

    /// Every label value with its count, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (L, u64)> + '_ {
        L::ALL.iter().map(move |&l| (l, self.get(l)))
    }
}

/// Whether a series only goes up or is a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// One metric family as the renderers see it: `sni_dispatch_{name}`, its help, kind and the
/// label name (for a [`Tally`] or a fixed label), with its samples.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The field of [`Counters`] (the JSON key).
    pub field: &'static str,
    /// The Prometheus name after the `sni_dispatch_` prefix.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// The value of one field as the renderers see it: a plain `u64` or a [`Tally`].
pub trait Value {
    /// Each sample: `None` for a plain value, else the label name and value.
    fn samples(&self, out: &mut dyn FnMut(Option<(&'static str, &'static str)>, u64));
}

/// Adding one worker's field into the merged view.
pub trait Merge {
    fn merge(&mut self, other: &Self);
}

impl Merge for u64 {
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
}

impl<L: Label, const N: usize> Merge for Tally<L, N> {
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.n.iter_mut().zip(other.n) {
            *a += b;
        }
    }
}

impl Value for u64 {
    fn samples(&self, out: &mut dyn FnMut(Option<(&'static str, &'static str)>, u64)) {
        out(None, *self);
    }
}

impl<L: Label, const N: usize> Value for Tally<L, N> {
    fn samples(&self, out: &mut dyn FnMut(Option<(&'static str, &'static str)>, u64)) {
        for (l, n) in self.iter() {
            out(Some((L::KEY, l.as_str())), n);
        }
    }
}

/// Generates [`Counters`], its merge and [`Counters::visit`] from one table of
/// `field: type => kind "name" "help";` lines (`tally(L)` for a labelled counter).
macro_rules! counter_set {
    (@ty u64) => { u64 };
    (@ty tally($label:ty)) => { Tally<$label, { <$label as Label>::ALL.len() }> };
    ($(#[$sdoc:meta])* struct $set:ident; $( $(#[$doc:meta])* $field:ident : $ty:tt $(($label:ty))? => $kind:ident $name:literal $help:literal; )*) => {
        $(#[$sdoc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $set {
            $( $(#[$doc])* pub $field: counter_set!(@ty $ty $(($label))?), )*
        }

        impl $set {
            /// Every family, in the order they are rendered.
            pub const FAMILIES: &'static [Family] = &[
                $( Family { field: stringify!($field), name: $name, help: $help, kind: Kind::$kind }, )*
            ];

            /// Adds `other` into `self` (for the merged view).
            pub fn merge(&mut self, other: &Self) {
                $( Merge::merge(&mut self.$field, &other.$field); )*
            }

            /// Calls `f` with each family and its samples.
            pub fn visit(&self, f: &mut dyn FnMut(&Family, &dyn Value)) {
                let mut i = 0;
                $(
                    f(&Self::FAMILIES[i], &self.$field);
                    i += 1;
                )*
                let _ = i;
            }
        }
    };
}

counter_set! {
    /// One worker's counters (or several merged). Plain `Copy` data: bumped without atomics
    /// by its worker, copied out when published.
    struct Counters;
    accepted: u64 => Counter "connections_accepted_total" "Connections accepted.";
    /// Connections open now (a gauge; merged by summing).
    open: u64 => Gauge "connections_open" "Connections open now.";
    routed: tally(Match) => Counter "connections_routed_total" "Connections routed, by how the route was chosen.";
    dropped: tally(DropReason) => Counter "connections_dropped_total"
        "Connections closed before or instead of being relayed, by reason.";
    /// Failed back-end connection attempts, by cause; the next back end is tried.
    backend_connect_failures: tally(ConnectCause) => Counter "backend_connect_failures_total"
        "Back-end connection attempts that failed, by cause (the next back end is tried).";
    bytes: tally(Direction) => Counter "bytes_total"
        "Bytes relayed (plaintext on terminating routes), by direction.";
    relays: tally(RelayKind) => Counter "relays_total" "Relays started, by how they moved bytes.";
    tls_handshakes: u64 => Counter "tls_handshakes_total" "Completed TLS handshakes on terminating routes.";
    tls_resumed: u64 => Counter "tls_resumed_total" "Completed TLS handshakes that resumed a session.";
    /// Session tickets issued, and the tickets clients presented by what became of them.
    tls_tickets: tally(TicketResult) => Counter "tls_tickets_total"
        "Session tickets issued, and tickets presented by clients by what became of them.";
    /// Full handshakes of a route whose OCSP response had expired since it was loaded (sent
    /// without a staple).
    tls_ocsp_withheld: u64 => Counter "tls_ocsp_withheld_total"
        "Handshakes sent without their route's OCSP staple because the response had expired (nextUpdate past).";
    idle_timeouts: u64 => Counter "relay_idle_timeouts_total" "Relayed connections closed by idle_timeout_ms.";
    relay_errors: tally(RelayCause) => Counter "relay_errors_total"
        "Relays ended by an error rather than two clean shutdowns, by cause.";
    accept_errors: tally(AcceptCause) => Counter "accept_errors_total" "accept() failures, by cause.";
    /// Times the accept loop paused because `max_conns_per_worker` connections were open
    /// (connections beyond the cap wait in the listen backlog; none is refused).
    conn_limit_waits: u64 => Counter "connection_limit_waits_total"
        "Times a worker stopped accepting at max_conns_per_worker (later connections wait in the backlog).";
    /// Clients over a per-client limit shunned in the kernel (their SYNs dropped by the
    /// listener's filter), by the limit.
    shuns: tally(ShunCause) => Counter "admission_shuns_total"
        "Clients over a per-client limit added to a listener's kernel filter (their new handshakes dropped before accept), by limit.";
    shun_skipped: tally(ShunSkip) => Counter "admission_shun_skipped_total"
        "Clients over a limit that were not shunned (refused after accept instead), by cause.";
    /// Clients shunned now (a gauge, summed over workers: a client shunned on two workers'
    /// sockets counts twice).
    shunned: u64 => Gauge "admission_shunned" "Clients shunned now: entries in the listeners' kernel filters, summed over workers.";
    /// Spliced bursts copied through a buffer because no pipe could be had, by cause.
    splice_fallbacks: tally(PipeMiss) => Counter "splice_fallbacks_total"
        "Spliced relay bursts copied through a buffer instead because no pipe could be had, by cause.";
    /// Pipes open now (lent to relays and pooled); two descriptors each.
    pipes_open: u64 => Gauge "pipes_open" "Splice pipes open now, lent and pooled (two descriptors each).";
    /// Bytes of free buffers the worker keeps for reuse.
    buffer_pool_bytes: u64 => Gauge "buffer_pool_bytes" "Bytes of free relay buffers kept for reuse.";
    /// Alerts sent before closing a connection whose hello was refused.
    alerts_sent: tally(Alert) => Counter "alerts_sent_total"
        "TLS alerts sent to clients whose ClientHello was refused, by alert.";
    /// Set by the process at start and on every reload, not by a worker.
    tls_ocsp_responses: tally(OcspState) => Gauge "tls_ocsp_responses"
        "OCSP responses of the running configuration's routes, by state (refused ones are not stapled).";
    tls_ticket_keys: tally(TicketKeyState) => Gauge "tls_ticket_keys"
        "Session-ticket keys of the running configuration, by state.";
    /// Counted by the process (the upgrade thread), not by a worker.
    upgrade_takers: tally(UpgradeResult) => Counter "upgrade_takers_total"
        "New processes that asked for the listening sockets (--upgrade-from), by what came of it.";
    access_log_lines: u64 => Counter "access_log_lines_total" "Access-log lines handed to the writer.";
    access_log_dropped: u64 => Counter "access_log_dropped_lines_total"
        "Access-log lines lost because the writer fell behind.";
    /// Connections received on hand-off listeners (each then counted like an accepted one).
    handoffs_received: u64 => Counter "handoffs_received_total"
        "Connections handed over by another sni-dispatch on a hand-off listener.";
    handoffs_rejected: tally(HandoffCause) => Counter "handoffs_rejected_total"
        "Hand-off channels or messages refused by a hand-off listener, by cause.";
    /// Passive ejections: a worker set a back end aside after `eject_after` failures in a row.
    backend_ejections: u64 => Counter "ejections_total"
        "Times a worker set a back end aside after eject_after failed connects in a row.";
    quic_datagrams: tally(Direction) => Counter "quic_datagrams_total"
        "QUIC datagrams forwarded, by direction (a GRO train counts each datagram).";
    quic_bytes: tally(Direction) => Counter "quic_bytes_total" "QUIC datagram payload bytes forwarded, by direction.";
    quic_datagrams_dropped: tally(QuicDatagramDrop) => Counter "quic_datagrams_dropped_total"
        "UDP datagrams on QUIC listeners not forwarded, by reason.";
    quic_routed: tally(Match) => Counter "quic_flows_routed_total" "QUIC flows routed, by how the route was chosen.";
    quic_flows_dropped: tally(QuicFlowDrop) => Counter "quic_flows_dropped_total"
        "QUIC flows given up before they were routed, by reason.";
    quic_flows_closed: tally(QuicFlowEnd) => Counter "quic_flows_closed_total" "Routed QUIC flows ended, by how.";
    /// Routed QUIC flows open now (a gauge).
    quic_flows_open: u64 => Gauge "quic_flows_open" "Routed QUIC flows open now.";
    /// QUIC flows whose ClientHello is not complete yet (a gauge).
    quic_flows_pending: u64 => Gauge "quic_flows_pending" "QUIC flows whose ClientHello is not complete yet.";
    quic_multi_packet_hellos: u64 => Counter "quic_multi_packet_hellos_total"
        "Routed QUIC flows whose ClientHello took more than one datagram.";
    quic_version_negotiations: u64 => Counter "quic_version_negotiations_total"
        "Version Negotiation packets sent for Initials of versions other than 1 and 2.";
    quic_backend_failovers: u64 => Counter "quic_backend_failovers_total"
        "QUIC flows moved to their route's next back end after ICMP unreachable from one.";
    quic_flows_adopted: u64 => Counter "quic_flows_adopted_total"
        "Open QUIC flows taken over from the previous process in a binary upgrade.";
}

counter_set! {
    /// The control plane's counters and gauges (reloads, the route API, the admin endpoint, the
    /// watcher): bumped by the control and admin threads, never by a worker; rendered beside the
    /// workers' counters.
    struct ControlCounters;
    config_generation: u64 => Gauge "config_generation"
        "Configurations applied since start (1 for the first); goes up with every reload or API change that changed something.";
    config_routes: u64 => Gauge "config_routes" "Routes in the running configuration.";
    config_names: u64 => Gauge "config_names" "Names (exact and wildcard) in the running configuration.";
    config_delta_names: u64 => Gauge "config_delta_names"
        "Names (and route names) changed by recent route changes that wait in the table's delta, to be folded into its shards.";
    config_delta_folds: u64 => Counter "config_delta_folds_total"
        "Times the table's delta was folded into its shards and the folded table swapped in.";
    reloads: tally(ReloadResult) => Counter "config_reloads_total"
        "Reloads (SIGHUP, the file watcher, POST /reload), by result.";
    route_changes: tally(ApiResult) => Counter "config_api_changes_total"
        "Route and certificate changes through the admin API (PUT and DELETE /routes/NAME, PUT /certs/NAME), by result.";
    watch_events: u64 => Counter "config_watch_events_total" "File-system events that the watcher acted on (debounced into reloads).";
    watch_errors: u64 => Counter "config_watch_errors_total" "Watcher failures (a directory that cannot be watched, an overflowed event queue).";
    admin_requests: u64 => Counter "admin_requests_total" "Requests the admin endpoint answered.";
    admin_refused: tally(AdminRefusal) => Counter "admin_refused_total" "Admin requests refused, by cause.";
    admin_connections: u64 => Gauge "admin_connections_open" "Connections open to the admin endpoint.";
}

impl Counters {
    /// Routed connections of every kind.
    pub fn routed_total(&self) -> u64 {
        self.routed.total()
    }

    pub fn routed_by(&self, m: Match) -> u64 {
        self.routed.get(m)
    }

    pub fn dropped_by(&self, r: DropReason) -> u64 {
        self.dropped.get(r)
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.total()
    }
}
