//! The TLS handshake of a terminating route, with rustls's unbuffered API over a ring [`Socket`]:
//! rustls reads the records where they already are (the ClientHello bytes the dispatcher read
//! first, never copied or read twice) and writes its flights into one buffer of ours, sent with
//! io_uring sends. On a TLS error the alert rustls prepared is sent before returning.
//!
//! Records go to rustls one at a time, so that it stops at the record that completes the
//! handshake: whatever the client sent after its Finished (application data, often in the same
//! segment) stays ciphertext in our buffer for the record layer ([`super::record`]), which
//! takes over the connection with the secrets rustls hands out
//! (`dangerous_into_kernel_connection`).

use super::record::{self, alert, Session, TrafficSecrets};
use crate::metrics::DropReason;
use crate::sys::Socket;
use rustls::crypto::tls13::OkmBlock;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ExtractedSecrets, HandshakeKind, ServerConfig, SupportedCipherSuite};
use std::cell::RefCell;
use std::io;
use std::sync::Arc;

/// The most handshake bytes held at once: a ClientHello of up to `max_hello_bytes` arrives
/// before this is read, and a client's second flight is small (no client certificates here).
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client closed during the handshake")]
    Eof,
    #[error("socket error during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl HandshakeError {
    /// A short name for logs: the drop reason's label.
    pub fn as_str(&self) -> &'static str {
        self.drop_reason().as_str()
    }

    /// The drop reason: what rustls refused, in its own terms.
    pub fn drop_reason(&self) -> DropReason {
        use rustls::{AlertDescription as A, Error as E, InvalidMessage as M, PeerIncompatible as P};
        match self {
            Self::Eof | Self::Io(_) => DropReason::TlsClientClosed,
            Self::Tls(e) => match e {
                E::PeerIncompatible(p) => match p {
                    P::NoCipherSuitesInCommon => DropReason::TlsNoCommonCipher,
                    P::NoKxGroupsInCommon
                    | P::NamedGroupsExtensionRequired
                    | P::KeyShareExtensionRequired
                    | P::EcPointsExtensionRequired
                    | P::NoEcPointFormatsInCommon
                    | P::UncompressedEcPointsRequired => DropReason::TlsNoCommonGroup,
                    P::NoSignatureSchemesInCommon | P::SignatureAlgorithmsExtensionRequired => {
                        DropReason::TlsNoCommonSignature
                    }
                    P::SupportedVersionsExtensionRequired
                    | P::Tls12NotOffered
                    | P::Tls12NotOfferedOrEnabled
                    | P::ServerDoesNotSupportTls12Or13
                    | P::ServerTlsVersionIsDisabledByOurConfig => DropReason::TlsVersion,
                    _ => DropReason::TlsIncompatible,
                },
                E::NoApplicationProtocol => DropReason::TlsNoAlpn,
                E::InvalidMessage(M::HandshakePayloadTooLarge | M::MessageTooLarge) => DropReason::TlsHelloTooLarge,
                E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
                    DropReason::TlsBadMessage
                }
                E::PeerMisbehaved(_) | E::DecryptError | E::PeerSentOversizedRecord | E::UnsupportedNameType => {
                    DropReason::TlsProtocolViolation
                }
                E::AlertReceived(A::CloseNotify) => DropReason::TlsClientClosed,
                E::AlertReceived(
                    A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::BadCertificateStatusResponse
                    | A::CertificateRequired,
                ) => DropReason::TlsCertRejected,
                E::AlertReceived(_) => DropReason::TlsClientAlert,
                _ => DropReason::TlsHandshake,
            },
        }
    }
}

/// A completed handshake: the record layer that carries the connection on, and what the
/// handshake decided.
pub struct Established {
    /// On the heap: the connection's future moves this struct (through the relay) without
    /// copying, and holds 8 bytes for it rather than the session's size in each of its states.
    pub(super) session: Box<Session>,
    /// Ciphertext the client sent after its Finished, already read (whole records and maybe the
    /// start of one).
    pub(super) leftover: Vec<u8>,
    /// The traffic secrets, kept only for kernel TLS (see [`super::ktls`]).
    pub(super) secrets: Option<Box<ExtractedSecrets>>,
    /// Our last flight, not sent yet: a TLS 1.3 session ticket, held back when the client's
    /// first request came with its Finished, to leave with the answer (one send and one
    /// segment fewer). Sealed by rustls: it goes before any record of ours.
    pub(super) pending: Vec<u8>,
    resumed: bool,
    /// The negotiated protocol, as its index in the route's `alpn` list.
    alpn: Option<usize>,
}

impl std::fmt::Debug for Established {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("session", &self.session)
            .field("resumed", &self.resumed)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl Established {
    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The negotiated ALPN protocol, from the route's configuration.
    pub fn alpn<'c>(&self, config: &'c ServerConfig) -> Option<&'c [u8]> {
        config.alpn_protocols.get(self.alpn?).map(Vec::as_slice)
    }

    /// The handshake's buffer, when the client sent nothing after its Finished (for reuse).
    pub fn take_spare_buffer(&mut self) -> Option<Vec<u8>> {
        self.leftover.is_empty().then(|| std::mem::take(&mut self.leftover))
    }

    /// Ends the session before any data: `out` with what is still to send (a held-back
    /// ticket) and a close_notify record appended.
    pub fn close_notify(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        out.append(&mut self.pending);
        self.session.seal_alert(alert::CLOSE_NOTIFY, &mut out);
        out
    }

    /// "TLSv1_3", "TLSv1_2": for logs.
    pub fn version(&self) -> &'static str {
        match self.session.version() {
            record::Version::Tls13 => "TLSv1_3",
            record::Version::Tls12 => "TLSv1_2",
        }
    }
}

/// The route configurations' key log: it takes nothing but the two TLS 1.3 application traffic
/// secrets (`CLIENT_TRAFFIC_SECRET_0`, `SERVER_TRAFFIC_SECRET_0`), which KeyUpdates turn over
/// (`record::TrafficSecrets`), and holds them for the handshake that is running on this
/// thread: rustls logs them inside `process_tls_records`, which [`Handshaker::advance`] calls
/// and then collects them from, before any other connection's handshake can run. Nothing is
/// written anywhere. (rustls's `KernelConnection` would turn them over too, but holds 560 bytes
/// per connection, most of them for QUIC.)
#[derive(Debug)]
pub(super) struct TrafficSecretsLog;

/// Secrets logged during the current `process_tls_records` call of this thread.
#[derive(Default)]
struct Logged {
    client: Option<OkmBlock>,
    server: Option<OkmBlock>,
}

thread_local! {
    static LOGGED: RefCell<Logged> = RefCell::new(Logged::default());
}

const CLIENT_TRAFFIC: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC: &str = "SERVER_TRAFFIC_SECRET_0";

impl rustls::KeyLog for TrafficSecretsLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let _ = LOGGED.try_with(|l| {
            let mut l = l.borrow_mut();
            match label {
                CLIENT_TRAFFIC => l.client = Some(OkmBlock::new(secret)),
                SERVER_TRAFFIC => l.server = Some(OkmBlock::new(secret)),
                _ => {}
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC || label == SERVER_TRAFFIC
    }
}

/// Takes what the key log collected on this thread since the last call.
fn take_logged() -> Logged {
    LOGGED.try_with(|l| std::mem::take(&mut *l.borrow_mut())).unwrap_or_default()
}

/// What the handshake needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// More bytes from the client, appended to the incoming buffer.
    Read,
    /// Send the outgoing buffer, then advance again.
    Send,
    /// Complete.
    Done,
}

/// The handshake as a state machine over two buffers, without I/O (the tests drive it in
/// memory against a rustls client).
pub(super) struct Handshaker {
    /// Boxed: about 1 KiB that the connection's future would otherwise reserve for as long as
    /// it lives (idle relays included), for a state it passes through once.
    conn: Box<UnbufferedServerConnection>,
    /// Bytes at the front of the incoming buffer given to rustls so far (whole records).
    fed: usize,
    /// rustls has processed all it was given and waits for the next record.
    blocked: bool,
    /// The TLS 1.3 application traffic secrets, once rustls derived them.
    client_secret: Option<OkmBlock>,
    server_secret: Option<OkmBlock>,
}

/// The end of the record that starts at `from`, if `buf` holds all of it; a header that
/// declares more than any record may hold counts as complete, so that rustls sees it and
/// refuses it (rather than waiting for bytes that must never be buffered).
fn record_end(buf: &[u8], from: usize) -> Option<usize> {
    let h = buf.get(from..from + record::HEADER)?;
    let end = from + record::HEADER + u16::from_be_bytes([h[3], h[4]]) as usize;
    (end <= buf.len() || end - from > record::MAX_RECORD).then_some(end.min(buf.len()))
}

impl Handshaker {
    pub(super) fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: Box::new(UnbufferedServerConnection::new(config)?),
            fed: 0,
            blocked: true,
            client_secret: None,
            server_secret: None,
        })
    }

    /// Runs rustls over `incoming` (the client's bytes; what it consumed is removed from the
    /// front) until it needs more bytes, has a flight to send (appended to `out`), or is done.
    /// On an error, the alert rustls prepared is in `out`.
    pub(super) fn advance(&mut self, incoming: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Step, rustls::Error> {
        if self.blocked {
            // rustls took everything it was given: offer it the next record, if it is all here.
            match record_end(incoming, self.fed) {
                Some(end) if end > self.fed => {
                    self.fed = end;
                    self.blocked = false;
                }
                _ => return Ok(Step::Read),
            }
        }
        loop {
            let fed = self.fed;
            // Whatever a handshake before this one left unclaimed is not ours.
            take_logged();
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut incoming[..fed]);
            let logged = take_logged();
            self.client_secret = logged.client.or(self.client_secret.take());
            self.server_secret = logged.server.or(self.server_secret.take());
            let step = match state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let at = out.len();
                    loop {
                        match enc.encode(&mut out[at..]) {
                            Ok(n) => {
                                out.truncate(at + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(s)) => out.resize(at + s.required_size, 0),
                            Err(EncodeError::AlreadyEncoded) => break,
                        }
                    }
                    None
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // The flight is ours now (in `out`); rustls need not keep it.
                    t.done();
                    Some(Ok(Step::Send))
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Ok(Step::Read)),
                Ok(ConnectionState::WriteTraffic(_)) => {
                    Some(Ok(if self.conn.is_handshaking() { Step::Read } else { Step::Done }))
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    Some(Err(rustls::Error::AlertReceived(rustls::AlertDescription::CloseNotify)))
                }
                // Records go to rustls one at a time and it stops at the end of the handshake,
                // so application data never reaches it (and early data is off).
                Ok(other) => {
                    Some(Err(rustls::Error::General(format!("unexpected state during the handshake: {other:?}"))))
                }
                Err(e) => Some(Err(e)),
            };
            incoming.drain(..discard);
            self.fed -= discard.min(self.fed);
            match step {
                None => continue,
                Some(Ok(Step::Read)) => match record_end(incoming, self.fed) {
                    Some(end) if end > self.fed => self.fed = end,
                    _ => {
                        self.blocked = true;
                        return Ok(Step::Read);
                    }
                },
                Some(Err(e)) => {
                    self.take_alert(incoming, out);
                    return Err(e);
                }
                Some(Ok(step)) => return Ok(step),
            }
        }
    }

    /// After an error: the alert rustls queued, encoded into `out`. rustls is called with the
    /// same bytes as before (it may hold positions into them: a handshake message it was
    /// joining from several records), and only once: the alert comes before it would look at
    /// them again.
    fn take_alert(&mut self, incoming: &mut [u8], out: &mut Vec<u8>) {
        let fed = self.fed.min(incoming.len());
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut incoming[..fed]);
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
            let at = out.len();
            out.resize(at + 64, 0);
            match enc.encode(&mut out[at..]) {
                Ok(n) => out.truncate(at + n),
                Err(_) => out.truncate(at),
            }
        }
    }

    /// Whether the flight about to be sent may wait for the relay: the handshake is over and it
    /// is TLS 1.3's (session tickets only: the client waits for nothing more), and the client
    /// sent a request with its Finished (an answer will carry the ticket; with nothing sent
    /// the ticket goes at once, see `relay`).
    pub(super) fn holds_back(&self, incoming: &[u8]) -> bool {
        !self.conn.is_handshaking()
            && self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
            && incoming.len() > self.fed
    }

    /// The completed handshake, with the client's bytes past it (`incoming[fed..]`, moved to
    /// the front). `alpn` is the route's list, for the negotiated protocol's index.
    pub(super) fn finish(
        self,
        mut incoming: Vec<u8>,
        alpn: &[Vec<u8>],
        keep_secrets: bool,
    ) -> Result<Established, rustls::Error> {
        let resumed = self.conn.handshake_kind() == Some(HandshakeKind::Resumed);
        let alpn = self.conn.alpn_protocol().and_then(|p| alpn.iter().position(|a| a == p));
        let suite = self.conn.negotiated_cipher_suite().ok_or(rustls::Error::HandshakeNotComplete)?;
        let traffic = match (suite, self.client_secret, self.server_secret) {
            (SupportedCipherSuite::Tls13(suite), Some(client), Some(server)) => {
                Some(TrafficSecrets { suite, client, server })
            }
            _ => None,
        };
        // rustls's own connection state goes (its key schedule included): the keys, their
        // sequence numbers and the traffic secrets are all the record layer needs.
        let (secrets, _) = (*self.conn).dangerous_into_kernel_connection()?;
        incoming.drain(..self.fed);
        let session = Session::new(suite, (secrets.tx.0, &secrets.tx.1), (secrets.rx.0, &secrets.rx.1), traffic)
            .map_err(|f| rustls::Error::General(f.why.into()))?;
        Ok(Established {
            session: Box::new(session),
            leftover: incoming,
            secrets: keep_secrets.then(|| Box::new(secrets)),
            pending: Vec::new(),
            resumed,
            alpn,
        })
    }
}

/// Runs the handshake on `client`, starting with the `hello` bytes the dispatcher already read
/// (never read twice). The hello's buffer takes the client's next flight too, and comes back in
/// [`Established::leftover`] holding whatever the client sent after its Finished. On a TLS
/// error the alert rustls prepared is sent before returning. `keep_secrets`: keep a copy of
/// the traffic secrets for kernel TLS.
pub async fn handshake(
    client: &Socket,
    config: &Arc<ServerConfig>,
    hello: Vec<u8>,
    keep_secrets: bool,
) -> Result<Box<Established>, HandshakeError> {
    let mut hs = Handshaker::new(config.clone())?;
    let mut incoming = hello;
    let mut out = Vec::with_capacity(4096);
    let mut held = Vec::new();
    loop {
        match hs.advance(&mut incoming, &mut out) {
            Ok(Step::Done) => break,
            Ok(Step::Send) if hs.holds_back(&incoming) => {
                // The ticket waits for the answer to the request that came with the Finished.
                held = std::mem::take(&mut out);
            }
            Ok(Step::Send) => {
                let (res, o) = client.send_all(out, 0).await;
                out = o;
                out.clear();
                res?;
            }
            Ok(Step::Read) => {
                if incoming.len() == incoming.capacity() {
                    if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge).into());
                    }
                    incoming.reserve(incoming.len().max(4096));
                }
                let (res, b) = client.recv(incoming).await;
                incoming = b;
                if res? == 0 {
                    return Err(HandshakeError::Eof);
                }
            }
            Err(e) => {
                if !out.is_empty() {
                    // Best effort: the peer may already be gone.
                    let _ = client.send_all(out, 0).await;
                }
                return Err(e.into());
            }
        }
    }
    let mut est = hs.finish(incoming, &config.alpn_protocols, keep_secrets)?;
    est.pending = held;
    // Boxed: it moves through the connection's future (handshake, connect, relay) as a pointer.
    Ok(Box::new(est))
}
