//! The label values of the labelled counters: why a connection was dropped, why a connect,
//! relay or accept failed, which way bytes went. Each enum is defined once by [`labels!`], which
//! gives it `ALL`, `as_str` (the label value) and the [`Label`] impl, so a new value is one line.
//!
//! The connection code maps what happened (a hello rejection, a route miss, an `io::Error`) to
//! these values; the classification of an OS error lives here, beside the labels it yields
//! ([`ConnectCause::of`], [`RelayCause::of`], [`AcceptCause::of`]).

use super::counters::Label;
use crate::hello::Alert;
use crate::route::Match;
use std::io;

/// Defines a label enum: `labels! { /// doc  pub enum Name: "key" { /// doc  Variant = "value", … } }`.
macro_rules! labels {
    ($(#[$m:meta])* pub enum $name:ident : $key:literal { $( $(#[$vm:meta])* $v:ident = $s:literal, )* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vm])* $v, )* }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$v),*];
            pub const COUNT: usize = Self::ALL.len();

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$v => $s, )* }
            }
        }

        impl Label for $name {
            const ALL: &'static [Self] = $name::ALL;
            const KEY: &'static str = $key;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

labels! {
    /// Why a connection was closed before (or instead of) being relayed.
    pub enum DropReason: "reason" {
        /// The first bytes are not a TLS handshake record (garbage).
        NotTls = "not_tls",
        /// Plain HTTP on the TLS port.
        Http = "http",
        /// An SSL 2.0 ClientHello.
        SslV2 = "sslv2",
        /// A hello offering SSL 3.0 or older only.
        Ssl3OrOlder = "ssl3_or_older",
        /// The best version offered is below the route's `min_tls`.
        BelowMinTls = "below_min_tls",
        /// supported_versions offers no version that exists (only GREASE or unknown values).
        NoKnownVersion = "no_known_version",
        /// The back end chose a version below the route's `min_tls` (a `protocol_version` alert
        /// went to the client).
        BackendBelowMinTls = "backend_below_min_tls",
        /// The back end's first bytes were not a ServerHello where its version had to be checked.
        BackendNotTls = "backend_not_tls",
        /// The ClientHello exceeds `max_hello_bytes`.
        Oversize = "oversize",
        /// The ClientHello is malformed (bad lengths, not a ClientHello, duplicate extensions, ...).
        Malformed = "malformed",
        /// The whole ClientHello did not arrive within `hello_timeout_ms`.
        HelloTimeout = "hello_timeout",
        /// The client closed or reset before its ClientHello was complete.
        ClientClosed = "client_closed",
        /// No SNI on a shared address, and no `fallback.no_sni`.
        NoSni = "no_sni",
        /// SNI names no route, and no `fallback.unknown_sni`.
        UnknownSni = "unknown_sni",
        /// Every back end refused, timed out or was unreachable.
        BackendsDown = "backends_down",
        /// No back end could even be tried for lack of local resources (descriptors, memory,
        /// ephemeral ports): this host's problem, not the back ends'.
        LocalResources = "local_resources",
        /// A terminating route's TLS handshake failed for a reason no other `tls_*` value names
        /// (an internal error; an alert was sent).
        TlsHandshake = "tls_handshake",
        /// No protocol version in common: the client offers none of the route's (a TLS 1.2-only
        /// client on a `min_tls = "1.3"` route); a `protocol_version` alert was sent.
        TlsVersion = "tls_version",
        /// No cipher suite in common (a `handshake_failure` alert was sent).
        TlsNoCommonCipher = "tls_no_common_cipher",
        /// No key-exchange group in common, or no key share or groups where one is required.
        TlsNoCommonGroup = "tls_no_common_group",
        /// No signature scheme the client accepts fits the route's certificate key.
        TlsNoCommonSignature = "tls_no_common_signature",
        /// The client's ALPN list names none of the route's `alpn` protocols
        /// (`no_application_protocol` alert).
        TlsNoAlpn = "tls_no_alpn",
        /// Another incompatibility (extended master secret or null compression missing, …).
        TlsIncompatible = "tls_incompatible",
        /// rustls refused the ClientHello for its size (a handshake message over 64 KiB or a
        /// record over 18 KiB) although it was within `max_hello_bytes`.
        TlsHelloTooLarge = "tls_hello_too_large",
        /// A malformed or unexpected handshake message (`decode_error`, `unexpected_message`).
        TlsBadMessage = "tls_bad_message",
        /// A well-formed message that breaks the protocol: an illegal value, a bad Finished or
        /// binder, a record that does not decrypt (`illegal_parameter`, `decrypt_error`, …).
        TlsProtocolViolation = "tls_protocol_violation",
        /// The client refused our certificate (its alert: `bad_certificate`, `unknown_ca`,
        /// `certificate_expired`, …).
        TlsCertRejected = "tls_cert_rejected",
        /// The client ended the handshake with another alert (`user_canceled`,
        /// `handshake_failure`, …).
        TlsClientAlert = "tls_client_alert",
        /// A terminating route's TLS handshake did not finish within `hello_timeout_ms`.
        TlsTimeout = "tls_timeout",
        /// The client closed or reset during a terminating route's TLS handshake.
        TlsClientClosed = "tls_client_closed",
        /// The PROXY header or ClientHello could not be written to the back end.
        BackendWrite = "backend_write",
        /// A listener with `accept_proxy`: the PROXY header was missing, malformed, of the wrong
        /// version, or not complete within `hello_timeout_ms`.
        ProxyHeader = "proxy_header",
        /// A listener with `accept_proxy`: the connection came from outside `trusted_sources`.
        ProxyUntrusted = "proxy_untrusted",
        /// The client address is in the listener's `deny` list, or not in its `allow` list.
        DeniedAddress = "denied_address",
        /// The hello's JA4 fingerprint is in the listener's `deny_ja4`, or not in its `allow_ja4`.
        DeniedJa4 = "denied_ja4",
        /// The client address already had `max_conns_per_client` connections open.
        ClientConnLimit = "client_conn_limit",
        /// The client address opened more than `max_conn_rate_per_client` connections in the last second.
        ClientRateLimit = "client_rate_limit",
    }
}

labels! {
    /// What became of a session ticket: issued in a handshake, or presented by a client.
    pub enum TicketResult: "result" {
        /// A ticket was issued (TLS 1.3 NewSessionTicket, or TLS 1.2 ticket).
        Issued = "issued",
        /// A presented ticket decrypted with a configured key (or the random ticketer's).
        Decrypted = "decrypted",
        /// A presented ticket decrypted with a key no longer configured, within its window.
        DecryptedRetired = "decrypted_retired",
        /// A presented ticket named a key this host does not have (another fleet, or older than
        /// the window): a full handshake follows.
        UnknownKey = "unknown_key",
        /// A presented ticket named a known key but did not decrypt (forged, corrupted or truncated).
        Invalid = "invalid",
    }
}

labels! {
    /// The state of a terminating route's OCSP response in the running configuration.
    pub enum OcspState: "state" {
        /// Checked and stapled to every handshake (until its nextUpdate).
        Stapled = "stapled",
        /// Stapled, and it says the certificate is revoked.
        Revoked = "revoked",
        /// Not stapled: expired, not yet valid, for another certificate, badly signed or malformed.
        Refused = "refused",
    }
}

labels! {
    /// Session-ticket keys in the running configuration.
    pub enum TicketKeyState: "state" {
        /// In `[tls] ticket_keys` (one of them encrypts, every one decrypts).
        Configured = "configured",
        /// Dropped from the file by a reload, still decrypting within its window.
        Retired = "retired",
    }
}

labels! {
    /// What came of a new process asking for the listening sockets (`--upgrade-from`).
    pub enum UpgradeResult: "result" {
        /// It took them and said it was ready: this process stopped accepting and drained.
        HandedOver = "handed_over",
        /// Refused: another user (by SO_PEERCRED), or a protocol version this build does not speak.
        Refused = "refused",
        /// It took them but left, or never said it was ready: this process went on serving.
        Aborted = "aborted",
    }
}

labels! {
    /// Why one back-end connection attempt failed.
    pub enum ConnectCause: "cause" {
        /// Connection refused (nothing listens, or a RST).
        Refused = "refused",
        /// No answer within `connect_timeout_ms` (or the kernel's own timeout).
        TimedOut = "timed_out",
        /// No route to the network or host.
        Unreachable = "unreachable",
        /// Out of descriptors, memory or local ports on this host.
        LocalResources = "local_resources",
        /// Anything else (reset during the handshake, …).
        Other = "other",
        /// A hand-off back end's queue was full (the receiver is not keeping up).
        HandoffFull = "handoff_full",
        /// A hand-off back end is gone: nothing listens on its socket, or the receiver closed it.
        HandoffGone = "handoff_gone",
        /// A hand-off receiver refused this process's channel (its uid is not in `handoff_uids`).
        HandoffRefused = "handoff_refused",
    }
}

impl ConnectCause {
    /// Classifies a `socket(2)`/`connect(2)` failure.
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Self::Refused,
            Some(libc::ETIMEDOUT) => Self::TimedOut,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN | libc::EHOSTDOWN) => Self::Unreachable,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL | libc::EAGAIN) => {
                Self::LocalResources
            }
            _ if e.kind() == io::ErrorKind::TimedOut => Self::TimedOut,
            _ => Self::Other,
        }
    }
}

labels! {
    /// Why a relay ended with an error rather than two clean shutdowns.
    pub enum RelayCause: "cause" {
        /// A peer reset the connection or the other end was gone (ECONNRESET, EPIPE).
        Reset = "reset",
        /// The TLS client broke the protocol (a bad record or alert) on a terminating route.
        Tls = "tls",
        /// A write made no progress.
        WriteZero = "write_zero",
        /// The kernel refused kernel TLS keys (at set-up, or a TLS 1.3 rekey on a kernel
        /// without rekey support).
        Ktls = "ktls",
        /// Anything else.
        Other = "other",
    }
}

impl RelayCause {
    /// Classifies the error that ended a relay.
    pub fn of(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
                Self::Reset
            }
            io::ErrorKind::InvalidData => Self::Tls,
            io::ErrorKind::WriteZero => Self::WriteZero,
            io::ErrorKind::Unsupported => Self::Ktls,
            _ => Self::Other,
        }
    }
}

labels! {
    /// Why `accept(2)` failed.
    pub enum AcceptCause: "cause" {
        /// Out of descriptors (EMFILE, ENFILE): the worker backs off.
        Descriptors = "descriptors",
        /// Out of kernel memory (ENOBUFS, ENOMEM): the worker backs off.
        Memory = "memory",
        /// The peer gave up while queued, or a signal (ECONNABORTED, EPROTO, EPERM, EINTR).
        Aborted = "aborted",
        /// Anything else.
        Other = "other",
    }
}

impl AcceptCause {
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => Self::Descriptors,
            Some(libc::ENOBUFS | libc::ENOMEM) => Self::Memory,
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => Self::Aborted,
            _ => Self::Other,
        }
    }
}

labels! {
    /// Which way relayed bytes went.
    pub enum Direction: "direction" {
        ClientToBackend = "client_to_backend",
        BackendToClient = "backend_to_client",
    }
}

labels! {
    /// How a relay moved its bytes.
    pub enum RelayKind: "kind" {
        /// Zero-copy through two pipes.
        Splice = "splice",
        /// Through user-space buffers (`--no-splice`, or no pipes free).
        Buffered = "buffered",
        /// Terminating routes: records protected in user space (rustls's keys, our record layer).
        Tls = "tls",
        /// Terminating routes handed to kernel TLS (`[runtime] ktls`).
        Ktls = "ktls",
        /// Not relayed here: the connection itself was handed off to a local terminator.
        Handoff = "handoff",
    }
}

labels! {
    /// Why a hand-off listener refused a sender's channel or one connection handed over.
    pub enum HandoffCause: "cause" {
        /// The sending process's uid is not in `handoff_uids` (SO_PEERCRED).
        Uid = "uid",
        /// A message that is not a hand-off (bad length, magic, version or addresses).
        Malformed = "malformed",
        /// A message without exactly one descriptor, or one that is not a stream socket.
        Descriptor = "descriptor",
    }
}

labels! {
    /// Which limit a client shunned in the kernel was over (the drop reason's name).
    pub enum ShunCause: "reason" {
        /// `max_conns_per_client`.
        ConnLimit = "client_conn_limit",
        /// `max_conn_rate_per_client`.
        RateLimit = "client_rate_limit",
    }
}

labels! {
    /// Why a client over its limit was not shunned (it is refused after accept instead).
    pub enum ShunSkip: "cause" {
        /// `shun_max` clients were shunned on that listener's socket already.
        Full = "full",
        /// The kernel refused the filter.
        Filter = "filter",
    }
}

labels! {
    /// How an active health check came out.
    pub enum CheckResult: "result" {
        Ok = "ok",
        /// Refused, reset or unreachable.
        Refused = "refused",
        /// No answer within `timeout_ms`.
        TimedOut = "timed_out",
        /// Connected, but the TLS handshake failed.
        Tls = "tls",
    }
}

labels! {
    /// Why a spliced relay burst found no pipe (it was copied through a buffer instead).
    pub enum PipeMiss: "cause" {
        /// `pipe_pool` pipes are all moving bytes for other connections at this moment.
        PoolFull = "pool_full",
        /// A new pipe could not be made: out of descriptors (EMFILE, ENFILE).
        Descriptors = "descriptors",
        /// A new pipe could not be made for another reason (memory, pipe limits).
        Other = "other",
    }
}

impl PipeMiss {
    /// Classifies a pipe2(2) failure.
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => Self::Descriptors,
            _ => Self::Other,
        }
    }
}

/// The alert sent to a client whose hello was refused (`alerts_sent_total{alert}`).
impl Label for Alert {
    const ALL: &'static [Self] = &Alert::ALL;
    const KEY: &'static str = "alert";
    fn as_str(self) -> &'static str {
        Alert::as_str(self)
    }
    fn index(self) -> usize {
        match self {
            Alert::UnexpectedMessage => 0,
            Alert::RecordOverflow => 1,
            Alert::HandshakeFailure => 2,
            Alert::IllegalParameter => 3,
            Alert::AccessDenied => 4,
            Alert::DecodeError => 5,
            Alert::ProtocolVersion => 6,
            Alert::InternalError => 7,
            Alert::UnrecognizedName => 8,
            Alert::NoApplicationProtocol => 9,
        }
    }
}

labels! {
    /// Why a UDP datagram on a QUIC listener was not forwarded.
    pub enum QuicDatagramDrop: "reason" {
        /// A long header that does not parse, an Initial with the fixed bit clear, a bad
        /// connection-ID length, frames an Initial may not carry, or CRYPTO data out of bounds.
        BadInitial = "bad_initial",
        /// A new flow's Initial in a datagram under 1200 bytes (RFC 9000 §14.1).
        SmallInitial = "small_initial",
        /// An Initial that does not open with the Initial keys of its Destination Connection ID
        /// (mis-keyed, corrupted, or not QUIC at all).
        Undecryptable = "undecryptable",
        /// A short-header, 0-RTT or Handshake packet from an address with no flow.
        UnknownFlow = "unknown_flow",
        /// A long header of a version other than 1 and 2 (a Version Negotiation packet is sent
        /// when the datagram is at least 1200 bytes).
        UnknownVersion = "unknown_version",
        /// A Version Negotiation or Retry packet from a client (only servers send them).
        ServerOnly = "server_only",
        /// The datagram was larger than the receive buffer (64 KiB).
        Truncated = "truncated",
        /// The kernel refused to send it on (send buffer full, or an error), in either direction.
        SendFailed = "send_failed",
        /// A new flow's first datagram while the worker drains.
        Draining = "draining",
    }
}

labels! {
    /// Why a QUIC flow was given up before it was routed (its datagrams were not forwarded).
    pub enum QuicFlowDrop: "reason" {
        /// The CRYPTO data is not a ClientHello we can route (malformed, not a ClientHello).
        BadHello = "bad_hello",
        /// The ClientHello does not offer TLS 1.3, which QUIC requires (RFC 9001 §4.2).
        NotTls13 = "not_tls13",
        /// The ClientHello is larger than `max_hello_bytes`, or its CRYPTO data is in too many pieces.
        Oversize = "oversize",
        /// The pending table was full (`quic_pending_max`): the oldest pending flow made room.
        PendingFull = "pending_full",
        /// The ClientHello was not complete within `quic_pending_timeout_ms`.
        PendingTimeout = "pending_timeout",
        /// The flow's buffered datagrams passed `quic_pending_bytes` before its hello was complete.
        PendingBytes = "pending_bytes",
        /// The client sent CONNECTION_CLOSE before its ClientHello was complete.
        ClientClosed = "client_closed",
        /// No SNI on a shared address, and no `fallback.no_sni`.
        NoSni = "no_sni",
        /// SNI names no route, and no `fallback.unknown_sni`.
        UnknownSni = "unknown_sni",
        /// The route terminates TLS: QUIC is only passed through (the client falls back to TCP).
        TerminateRoute = "terminate_route",
        /// The flow table was full (`quic_max_flows`).
        FlowsFull = "flows_full",
        /// No back-end socket could be made (descriptors, memory, address), or every back end
        /// answered with ICMP unreachable before its first datagram.
        BackendsDown = "backends_down",
    }
}

labels! {
    /// How a routed QUIC flow ended.
    pub enum QuicFlowEnd: "end" {
        /// No datagram either way for `quic_idle_timeout_ms` (or, before the client's first
        /// short-header packet, `quic_handshake_timeout_ms`).
        Idle = "idle",
        /// Every back end refused (ICMP unreachable) before answering.
        BackendsDown = "backends_down",
        /// The worker stopped (the drain ended).
        Stopped = "stopped",
        /// The client started another connection from the same address and port (an Initial
        /// under a new Source Connection ID): the new one is routed afresh.
        Replaced = "replaced",
        /// A binary upgrade: the new process took the flow over (it goes on there).
        HandedOver = "handed_over",
    }
}

impl Label for Match {
    const ALL: &'static [Self] = &Match::ALL;
    const KEY: &'static str = "how";
    fn as_str(self) -> &'static str {
        Match::as_str(self)
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<L: Label>() {
        let mut seen = std::collections::HashSet::new();
        for (i, l) in L::ALL.iter().enumerate() {
            assert!(seen.insert(l.as_str()), "{} twice", l.as_str());
            assert_eq!(l.index(), i, "{l:?}");
            assert!(
                l.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                l.as_str()
            );
        }
    }

    #[test]
    fn labels_are_unique_and_indexed() {
        check::<DropReason>();
        check::<ConnectCause>();
        check::<RelayCause>();
        check::<AcceptCause>();
        check::<Direction>();
        check::<RelayKind>();
        check::<PipeMiss>();
        check::<Alert>();
        check::<Match>();
        check::<HandoffCause>();
        check::<ShunCause>();
        check::<ShunSkip>();
        check::<CheckResult>();
        check::<QuicDatagramDrop>();
        check::<QuicFlowDrop>();
        check::<QuicFlowEnd>();
    }

    #[test]
    fn os_errors_are_classified() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(ConnectCause::of(&os(libc::ECONNREFUSED)), ConnectCause::Refused);
        assert_eq!(ConnectCause::of(&os(libc::EMFILE)), ConnectCause::LocalResources);
        assert_eq!(ConnectCause::of(&os(libc::EADDRNOTAVAIL)), ConnectCause::LocalResources);
        assert_eq!(ConnectCause::of(&os(libc::EHOSTUNREACH)), ConnectCause::Unreachable);
        assert_eq!(ConnectCause::of(&io::ErrorKind::TimedOut.into()), ConnectCause::TimedOut);
        assert_eq!(RelayCause::of(&os(libc::ECONNRESET)), RelayCause::Reset);
        assert_eq!(RelayCause::of(&os(libc::EPIPE)), RelayCause::Reset);
        assert_eq!(AcceptCause::of(&os(libc::ENFILE)), AcceptCause::Descriptors);
        assert_eq!(AcceptCause::of(&os(libc::ECONNABORTED)), AcceptCause::Aborted);
    }
}

labels! {
    /// How a reload ended (SIGHUP, the watcher, `POST /reload`).
    pub enum ReloadResult: "result" {
        /// A new configuration is serving.
        Applied = "applied",
        /// The files had not changed: the running configuration stays.
        Unchanged = "unchanged",
        /// The files do not load (or change a key that cannot change while running): the
        /// running configuration stays.
        Failed = "failed",
    }
}

labels! {
    /// How a route change through the admin API (`PUT`/`DELETE /routes/NAME`) ended.
    pub enum ApiResult: "result" {
        /// Written to `api_dir` and serving.
        Applied = "applied",
        /// The body does not parse or validate (400).
        Invalid = "invalid",
        /// The route belongs to a file the API does not own (409).
        Conflict = "conflict",
        /// No such route (404), or the API is off.
        NotFound = "not_found",
        /// The route's file could not be written (500).
        Io = "io",
    }
}

labels! {
    /// Why the admin endpoint refused a request.
    pub enum AdminRefusal: "cause" {
        /// More connections than `admin.max_connections`: 503 after the request was read.
        Busy = "busy",
        /// The route API without the bearer token (401).
        Unauthorized = "unauthorized",
        /// A malformed request (400), an unsupported body encoding (411, 501) or method (405).
        BadRequest = "bad_request",
        /// The request (head or body) did not arrive within 5 s (408).
        Timeout = "timeout",
        /// A head over 8 KiB (431) or a body over 1 MiB (413).
        TooLarge = "too_large",
    }
}
