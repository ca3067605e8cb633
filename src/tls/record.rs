//! The TLS record layer of an established connection: rustls does the handshake, then hands
//! over the traffic secrets (`UnbufferedServerConnection::dangerous_into_kernel_connection`,
//! the interface kernel TLS uses), and the records are protected here, in the relay's own
//! buffers, with aws-lc-rs's AEADs: no copy into or out of rustls, no allocation per record.
//!
//! The same protocol rules as rustls's record layer (RFC 8446 §5, RFC 5246 §6.2), with the same
//! alerts: records above 2^14 bytes of plaintext (`record_overflow`), a bad tag
//! (`bad_record_mac`), a TLS 1.3 record without a content type or an outer type other than
//! application data, a change_cipher_spec or a handshake message other than KeyUpdate after the
//! handshake, handshake bytes interleaved with other records (`unexpected_message`), a malformed
//! alert or KeyUpdate (`decode_error`, `illegal_parameter`), TLS 1.3 warning alerts other than
//! user_canceled (`decode_error`); BoringSSL's and rustls's limits on warning alerts (4), empty
//! records in a row (32) and KeyUpdates without data in between (32). The peer's KeyUpdate turns
//! its keys over (RFC 8446 §7.2: the next traffic secret is HKDF-Expand-Label(secret,
//! "traffic upd"), through the suite's own HKDF; [`TrafficSecrets`]) and, when it asks, ours too,
//! after a KeyUpdate of our own; so does a key that nears its confidentiality limit (TLS 1.3; a
//! TLS 1.2 connection is closed there, as rustls does).
//!
//! Nonces are rustls's: the write IV XORed with the sequence number, continuing from the
//! sequence numbers rustls used during the handshake (TLS 1.2 AES-GCM sends the low 8 bytes of
//! that nonce as its explicit part), so no nonce is used twice under one key.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::crypto::tls13::{HkdfExpander, OkmBlock};
use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite, Tls13CipherSuite};
use std::fmt;

/// A record header: type, version, length.
pub(crate) const HEADER: usize = 5;
/// The most plaintext one record carries (2^14).
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// The longest record a peer may send: TLS 1.2's 2^14 + 2048 bytes of ciphertext, header included.
pub(crate) const MAX_RECORD: usize = HEADER + MAX_PLAINTEXT + 2048;
const TAG: usize = 16;
/// TLS 1.3's limit on a record's ciphertext (RFC 8446 §5.2).
const MAX_CIPHERTEXT_13: usize = MAX_PLAINTEXT + 256;
/// rustls's soft limit on sequence numbers: far from wrapping.
const SEQ_SOFT_LIMIT: u64 = 0xffff_ffff_ffff_0000;

/// Record content types.
pub(crate) mod content {
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;
    pub const APPLICATION_DATA: u8 = 23;
}

/// Alert descriptions this layer sends.
pub(crate) mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const USER_CANCELED: u8 = 90;
}

const WARNING: u8 = 1;
const FATAL: u8 = 2;
const KEY_UPDATE: u8 = 24;
/// Our KeyUpdate: handshake type 24, length 1, update_not_requested.
pub(crate) const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

/// An alert record's payload: level (warning for close_notify, else fatal) and description.
pub(crate) fn alert_payload(desc: u8) -> [u8; 2] {
    [if desc == alert::CLOSE_NOTIFY { WARNING } else { FATAL }, desc]
}

/// The protocol version of an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Tls12,
    Tls13,
}

/// The AEAD of the negotiated cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Aead {
    fn of(secrets: &ConnectionTrafficSecrets) -> Option<Self> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Some(Self::Aes128Gcm),
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Some(Self::Aes256Gcm),
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Some(Self::Chacha20Poly1305),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// The key material of one direction: key and IV (for kernel TLS as for this layer).
pub(crate) fn key_and_iv(secrets: &ConnectionTrafficSecrets) -> Option<(&[u8], &[u8])> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Some((key.as_ref(), iv.as_ref())),
        _ => None,
    }
}

/// Why the connection must end: the alert to send first (none when the peer sent a fatal alert,
/// or after our close_notify), and a short reason for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fatal {
    pub alert: Option<u8>,
    pub why: &'static str,
}

impl Fatal {
    const fn alert(alert: u8, why: &'static str) -> Self {
        Self { alert: Some(alert), why }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.why)
    }
}

/// One direction's protection: key, IV, next sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(aead: Aead, secrets: &ConnectionTrafficSecrets, seq: u64) -> Result<Self, Fatal> {
        let bad = Fatal::alert(alert::INTERNAL_ERROR, "unusable traffic secrets");
        if Aead::of(secrets) != Some(aead) {
            return Err(bad);
        }
        let (key, iv) = key_and_iv(secrets).ok_or(bad)?;
        Self::from_raw(aead, key, iv, seq)
    }

    fn from_raw(aead: Aead, key: &[u8], iv: &[u8], seq: u64) -> Result<Self, Fatal> {
        let bad = Fatal::alert(alert::INTERNAL_ERROR, "unusable traffic secrets");
        let key = UnboundKey::new(aead.algorithm(), key).map_err(|_| bad)?;
        let iv: [u8; 12] = iv.try_into().map_err(|_| bad)?;
        Ok(Self { key: LessSafeKey::new(key), iv, seq })
    }

    /// The IV XORed with the sequence number (RFC 8446 §5.3, and rustls's TLS 1.2 nonces).
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// What TLS 1.3 KeyUpdates need: both directions' current application traffic secrets, and the
/// suite (its HKDF and AEAD). rustls hands them over during the handshake
/// (`CLIENT_TRAFFIC_SECRET_0`, `SERVER_TRAFFIC_SECRET_0`, see `handshake`).
pub(crate) struct TrafficSecrets {
    pub(crate) suite: &'static Tls13CipherSuite,
    pub(crate) client: OkmBlock,
    pub(crate) server: OkmBlock,
}

/// One direction's next key and IV, after a KeyUpdate (sequence numbers start again at 0).
pub(crate) struct NextKeys {
    key: [u8; 32],
    key_len: usize,
    iv: [u8; 12],
}

impl NextKeys {
    pub(crate) fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    pub(crate) fn iv(&self) -> &[u8] {
        &self.iv
    }
}

impl Drop for NextKeys {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
fn expand_label(expander: &dyn HkdfExpander, label: &[u8], out: &mut [u8]) -> Result<(), Fatal> {
    const PREFIX: &[u8] = b"tls13 ";
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, PREFIX, label, &[0]];
    expander.expand_slice(&info, out).map_err(|_| Fatal::alert(alert::INTERNAL_ERROR, "key update failed"))
}

impl TrafficSecrets {
    /// Turns the client's (`client`) or our traffic secret over; the new key and IV.
    fn next(&mut self, client: bool) -> Result<NextKeys, Fatal> {
        let hkdf = self.suite.hkdf_provider;
        let current = if client { &mut self.client } else { &mut self.server };
        let expander = hkdf.expander_for_okm(current);
        let mut next = [0u8; OkmBlock::MAX_LEN];
        let n = expander.hash_len().min(next.len());
        expand_label(&*expander, b"traffic upd", &mut next[..n])?;
        *current = OkmBlock::new(&next[..n]);
        next.fill(0);
        let expander = hkdf.expander_for_okm(current);
        let key_len = self.suite.aead_alg.key_len().min(32);
        let mut keys = NextKeys { key: [0; 32], key_len, iv: [0; 12] };
        expand_label(&*expander, b"key", &mut keys.key[..key_len])?;
        expand_label(&*expander, b"iv", &mut keys.iv)?;
        Ok(keys)
    }
}

/// What one record from the peer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Application data at this range of the record's bytes (possibly empty).
    Data(std::ops::Range<usize>),
    /// The peer's close_notify: nothing more will come.
    Closed,
    /// Nothing for the application (a KeyUpdate, a warning alert, part of a handshake message).
    Nothing,
}

/// What a decrypted record is, by the protocol's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Data,
    Closed,
    Nothing,
    /// The peer's keys change from the next record on; `requested`: ours must too.
    KeyUpdate {
        requested: bool,
    },
}

/// The record layer of one established connection, both directions.
pub(crate) struct Session {
    version: Version,
    aead: Aead,
    tx: Keys,
    rx: Keys,
    /// The traffic secrets a KeyUpdate turns over (TLS 1.3).
    secrets: Option<TrafficSecrets>,
    /// Records one key may protect (the suite's confidentiality limit).
    limit: u64,
    /// A TLS 1.3 handshake message begun in an earlier record (only a KeyUpdate is legal, 5 bytes).
    partial: [u8; 4],
    partial_len: u8,
    warnings_left: u8,
    empty_left: u8,
    key_updates_left: u8,
    peer_closed: bool,
    /// close_notify or a fatal alert went out: nothing more may be sealed.
    closed: bool,
    /// A KeyUpdate happened (either way).
    rekeyed: bool,
    /// The client asked for our KeyUpdate; it goes before our next data record.
    tx_update_requested: bool,
}

impl fmt::Debug for Session {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("version", &self.version)
            .field("aead", &self.aead)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish_non_exhaustive()
    }
}

const WARNINGS: u8 = 4;
const EMPTY_RECORDS: u8 = 32;
const KEY_UPDATES: u8 = 32;

impl Session {
    /// The record layer for the keys rustls extracted: `tx`/`rx` with the sequence number of
    /// the next record each way; `secrets` for KeyUpdates (TLS 1.3; required there).
    pub(crate) fn new(
        suite: SupportedCipherSuite,
        tx: (u64, &ConnectionTrafficSecrets),
        rx: (u64, &ConnectionTrafficSecrets),
        secrets: Option<TrafficSecrets>,
    ) -> Result<Self, Fatal> {
        let (version, limit) = match suite {
            SupportedCipherSuite::Tls13(s) => (Version::Tls13, s.common.confidentiality_limit),
            SupportedCipherSuite::Tls12(s) => (Version::Tls12, s.common.confidentiality_limit),
        };
        if version == Version::Tls13 && secrets.is_none() {
            return Err(Fatal::alert(alert::INTERNAL_ERROR, "no traffic secrets for TLS 1.3"));
        }
        let aead = Aead::of(tx.1).ok_or(Fatal::alert(alert::INTERNAL_ERROR, "unsupported AEAD"))?;
        Ok(Self {
            version,
            aead,
            tx: Keys::new(aead, tx.1, tx.0)?,
            rx: Keys::new(aead, rx.1, rx.0)?,
            secrets: if version == Version::Tls13 { secrets } else { None },
            limit: limit.min(SEQ_SOFT_LIMIT),
            partial: [0; 4],
            partial_len: 0,
            warnings_left: WARNINGS,
            empty_left: EMPTY_RECORDS,
            key_updates_left: KEY_UPDATES,
            peer_closed: false,
            closed: false,
            rekeyed: false,
            tx_update_requested: false,
        })
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    pub(crate) fn aead(&self) -> Aead {
        self.aead
    }

    /// The sequence numbers of the next record each way (for kernel TLS).
    pub(crate) fn seqs(&self) -> (u64, u64) {
        (self.tx.seq, self.rx.seq)
    }

    /// Bytes in front of a record's plaintext: the header and TLS 1.2 AES-GCM's explicit nonce.
    pub(crate) fn prefix(&self) -> usize {
        match (self.version, self.aead) {
            (Version::Tls12, Aead::Aes128Gcm | Aead::Aes256Gcm) => HEADER + 8,
            _ => HEADER,
        }
    }

    /// Bytes after a record's plaintext: the tag, and TLS 1.3's content type.
    pub(crate) fn suffix(&self) -> usize {
        match self.version {
            Version::Tls13 => 1 + TAG,
            Version::Tls12 => TAG,
        }
    }

    /// Lowers the confidentiality limit (tests of what happens at it).
    #[cfg(test)]
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Whether the client's close_notify has been read.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a KeyUpdate changed the client's keys (the extracted secrets are stale then).
    pub(crate) fn rekeyed(&self) -> bool {
        self.rekeyed
    }

    /// Whether close_notify or a fatal alert has been sealed (nothing more may be).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Notes that an alert went out by other means (kernel TLS): nothing more may be sent.
    pub(crate) fn mark_closed(&mut self) {
        self.closed = true;
    }

    /// Prepares to seal `records` data records: a KeyUpdate the client asked for goes first
    /// (sealed into `out`, our keys turned over), and so does one at the confidentiality limit
    /// (TLS 1.3; a TLS 1.2 connection cannot update its keys and must close).
    pub(crate) fn reserve(&mut self, records: u64, out: &mut Vec<u8>) -> Result<(), Fatal> {
        if self.closed {
            return Err(Fatal { alert: None, why: "write after close" });
        }
        if std::mem::take(&mut self.tx_update_requested) {
            return self.update_tx(out);
        }
        // One sequence number stays free for the KeyUpdate or a closing alert.
        if self.tx.seq.saturating_add(records) < self.limit {
            return Ok(());
        }
        match self.version {
            Version::Tls13 => self.update_tx(out),
            Version::Tls12 => Err(Fatal::alert(alert::CLOSE_NOTIFY, "TLS 1.2 keys at their confidentiality limit")),
        }
    }

    /// Seals one record in place: `rec[prefix()..prefix() + len]` holds the plaintext; the
    /// header, nonce, content type and tag are written around it. Returns the record's length.
    /// `rec` must hold `prefix() + len + suffix()` bytes and `len` be at most [`MAX_PLAINTEXT`].
    pub(crate) fn seal(&mut self, typ: u8, rec: &mut [u8], len: usize) -> Result<usize, Fatal> {
        let (prefix, suffix) = (self.prefix(), self.suffix());
        let total = prefix + len + suffix;
        if len > MAX_PLAINTEXT || rec.len() < total {
            return Err(Fatal::alert(alert::INTERNAL_ERROR, "record buffer too small"));
        }
        // `reserve` keeps data records below the limit; one more (a KeyUpdate, an alert) may
        // take the last number.
        if self.tx.seq > self.limit || self.tx.seq >= SEQ_SOFT_LIMIT {
            return Err(Fatal::alert(alert::INTERNAL_ERROR, "sequence numbers exhausted"));
        }
        let nonce = self.tx.nonce();
        let body_len = (total - HEADER) as u16;
        // The additional data (the TLS 1.3 record header, or TLS 1.2's 13 bytes) and the range
        // the AEAD seals.
        let (aad, aad_len, sealed) = match self.version {
            Version::Tls13 => {
                rec[..HEADER].copy_from_slice(&[
                    content::APPLICATION_DATA,
                    3,
                    3,
                    (body_len >> 8) as u8,
                    body_len as u8,
                ]);
                rec[HEADER + len] = typ;
                let mut aad = [0u8; 13];
                aad[..HEADER].copy_from_slice(&rec[..HEADER]);
                (aad, HEADER, HEADER..HEADER + len + 1)
            }
            Version::Tls12 => {
                rec[..HEADER].copy_from_slice(&[typ, 3, 3, (body_len >> 8) as u8, body_len as u8]);
                if prefix > HEADER {
                    rec[HEADER..prefix].copy_from_slice(&nonce[4..]);
                }
                (tls12_aad(self.tx.seq, typ, [3, 3], len), 13, prefix..prefix + len)
            }
        };
        let sealed_end = sealed.end;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..aad_len]),
                &mut rec[sealed],
            )
            .map_err(|_| Fatal::alert(alert::INTERNAL_ERROR, "encryption failed"))?;
        rec[sealed_end..sealed_end + TAG].copy_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(total)
    }

    /// Appends one sealed record of type `typ` carrying `payload` (a short control message) to `out`.
    fn seal_into(&mut self, typ: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), Fatal> {
        let (prefix, suffix) = (self.prefix(), self.suffix());
        let at = out.len();
        out.resize(at + prefix + payload.len() + suffix, 0);
        out[at + prefix..at + prefix + payload.len()].copy_from_slice(payload);
        match self.seal(typ, &mut out[at..], payload.len()) {
            Ok(n) => {
                out.truncate(at + n);
                Ok(())
            }
            Err(e) => {
                out.truncate(at);
                Err(e)
            }
        }
    }

    /// Seals an alert into `out`: close_notify as a warning, anything else as fatal. Nothing is
    /// sealed after it (and nothing when an alert already went out).
    pub(crate) fn seal_alert(&mut self, desc: u8, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        // A failure here (the limit reached) leaves only the bare close.
        let _ = self.seal_into(content::ALERT, &alert_payload(desc), out);
        self.closed = true;
    }

    /// Sends our KeyUpdate (sealed into `out` under the old key) and turns our keys over.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Fatal> {
        if self.version != Version::Tls13 {
            return Err(Fatal::alert(alert::INTERNAL_ERROR, "key update outside TLS 1.3"));
        }
        self.seal_into(content::HANDSHAKE, &KEY_UPDATE_NOT_REQUESTED, out)?;
        let next = self.next_tx_keys()?;
        self.tx = Keys::from_raw(self.aead, next.key(), next.iv(), 0)?;
        Ok(())
    }

    /// The length of the record at the front of `buf` once it is complete (`None` while its
    /// header is incomplete), after the header checks rustls makes before decrypting.
    pub(crate) fn record_len(&self, buf: &[u8]) -> Result<Option<usize>, Fatal> {
        let Some(h) = buf.get(..HEADER) else { return Ok(None) };
        if !(content::CHANGE_CIPHER_SPEC..=24).contains(&h[0]) {
            return Err(Fatal::alert(alert::DECODE_ERROR, "unknown record type"));
        }
        if h[1] != 3 {
            return Err(Fatal::alert(alert::DECODE_ERROR, "unknown record version"));
        }
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        if len == 0 && h[0] != content::APPLICATION_DATA {
            return Err(Fatal::alert(alert::DECODE_ERROR, "empty record"));
        }
        let max = match self.version {
            Version::Tls13 => MAX_CIPHERTEXT_13,
            Version::Tls12 => MAX_RECORD - HEADER,
        };
        if len > max {
            return Err(Fatal::alert(alert::RECORD_OVERFLOW, "record too large"));
        }
        Ok(Some(HEADER + len))
    }

    /// Opens one complete record in place (`rec`: header and body, as [`record_len`](Self::record_len)
    /// measured it) and says what it was.
    pub(crate) fn open(&mut self, rec: &mut [u8]) -> Result<Event, Fatal> {
        if self.peer_closed {
            // rustls ignores whatever follows close_notify.
            return Ok(Event::Nothing);
        }
        if self.rx.seq >= SEQ_SOFT_LIMIT {
            return Err(Fatal::alert(alert::CLOSE_NOTIFY, "peer sequence numbers exhausted"));
        }
        let bad_mac = Fatal::alert(alert::BAD_RECORD_MAC, "bad record MAC");
        let nonce = self.rx.nonce();
        let (header, body) = rec.split_at_mut(HEADER);
        let (typ, range) = match self.version {
            Version::Tls13 => {
                if header[0] != content::APPLICATION_DATA {
                    return Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "TLS 1.3 record not protected"));
                }
                if body.len() < TAG {
                    return Err(bad_mac);
                }
                let aad = [content::APPLICATION_DATA, 3, 3, header[3], header[4]];
                let plain = self
                    .rx
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
                    .map_err(|_| bad_mac)?;
                // TLSInnerPlaintext: content, type, zero padding.
                let Some(at) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "record without a content type"));
                };
                (plain[at], HEADER..HEADER + at)
            }
            Version::Tls12 => {
                let explicit = if self.aead == Aead::Chacha20Poly1305 { 0 } else { 8 };
                if body.len() < explicit + TAG {
                    return Err(bad_mac);
                }
                let mut n = nonce;
                if explicit > 0 {
                    n[4..].copy_from_slice(&body[..8]);
                }
                let plain_len = body.len() - explicit - TAG;
                let aad = tls12_aad(self.rx.seq, header[0], [header[1], header[2]], plain_len);
                self.rx
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(aad), &mut body[explicit..])
                    .map_err(|_| bad_mac)?;
                (header[0], HEADER + explicit..HEADER + explicit + plain_len)
            }
        };
        self.rx.seq += 1;
        if range.len() > MAX_PLAINTEXT {
            return Err(Fatal::alert(alert::RECORD_OVERFLOW, "record plaintext above 2^14 bytes"));
        }
        match self.classify(typ, &rec[range.clone()])? {
            Message::Data => Ok(Event::Data(range)),
            Message::Closed => Ok(Event::Closed),
            Message::Nothing => Ok(Event::Nothing),
            Message::KeyUpdate { requested } => {
                // Ours goes out before our next data record (`reserve`): one for any number of
                // requests in between, as rustls does, so that a client sending many never
                // gets more KeyUpdates in a row than it allows (32, like BoringSSL).
                self.tx_update_requested |= requested;
                let next = self.next_rx_keys()?;
                self.rx = Keys::from_raw(self.aead, next.key(), next.iv(), 0)?;
                Ok(Event::Nothing)
            }
        }
    }

    /// The client's next key and IV, after its KeyUpdate.
    pub(crate) fn next_rx_keys(&mut self) -> Result<NextKeys, Fatal> {
        self.rekeyed = true;
        self.secrets.as_mut().ok_or(Fatal::alert(alert::INTERNAL_ERROR, "key update outside TLS 1.3"))?.next(true)
    }

    /// Our next key and IV, for our KeyUpdate.
    pub(crate) fn next_tx_keys(&mut self) -> Result<NextKeys, Fatal> {
        self.rekeyed = true;
        self.secrets.as_mut().ok_or(Fatal::alert(alert::INTERNAL_ERROR, "key update outside TLS 1.3"))?.next(false)
    }

    /// The limit on records under one key (the suite's confidentiality limit).
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// What the decrypted record `plain` of type `typ` means, by the rules above (shared with
    /// kernel TLS, which decrypts but leaves the rules to us).
    pub(crate) fn classify(&mut self, typ: u8, plain: &[u8]) -> Result<Message, Fatal> {
        if self.partial_len > 0 && typ != content::HANDSHAKE {
            return Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "record interleaved with a handshake message"));
        }
        match typ {
            content::APPLICATION_DATA => {
                if plain.is_empty() {
                    self.empty_left = self
                        .empty_left
                        .checked_sub(1)
                        .ok_or(Fatal::alert(alert::UNEXPECTED_MESSAGE, "too many empty records"))?;
                } else {
                    self.empty_left = EMPTY_RECORDS;
                    self.key_updates_left = KEY_UPDATES;
                }
                Ok(Message::Data)
            }
            content::ALERT => self.on_alert(plain),
            content::HANDSHAKE if self.version == Version::Tls13 => {
                let (mut msg, n) = ([0u8; 9], plain.len());
                if n == 0 || n > 5 {
                    // Only a KeyUpdate (5 bytes, possibly split over records) is legal here.
                    return self.not_key_update(plain);
                }
                let have = self.partial_len as usize;
                msg[..have].copy_from_slice(&self.partial[..have]);
                msg[have..have + n].copy_from_slice(plain);
                self.on_handshake(&msg[..have + n])
            }
            _ => Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "unexpected record after the handshake")),
        }
    }

    fn not_key_update(&self, plain: &[u8]) -> Result<Message, Fatal> {
        let first = if self.partial_len > 0 { self.partial[0] } else { plain.first().copied().unwrap_or(0) };
        if plain.is_empty() {
            Err(Fatal::alert(alert::DECODE_ERROR, "empty handshake record"))
        } else if first != KEY_UPDATE {
            Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "handshake message after the handshake"))
        } else {
            Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "key update not alone in its record"))
        }
    }

    /// Handshake bytes after the handshake: `msg` is what has arrived of the next message.
    fn on_handshake(&mut self, msg: &[u8]) -> Result<Message, Fatal> {
        if msg[0] != KEY_UPDATE {
            return Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "handshake message after the handshake"));
        }
        if msg.len() >= 4 && msg[1..4] != [0, 0, 1] {
            return Err(Fatal::alert(alert::DECODE_ERROR, "malformed key update"));
        }
        if msg.len() < 5 {
            self.partial[..msg.len()].copy_from_slice(msg);
            self.partial_len = msg.len() as u8;
            return Ok(Message::Nothing);
        }
        if msg.len() > 5 {
            return Err(Fatal::alert(alert::UNEXPECTED_MESSAGE, "key update not alone in its record"));
        }
        self.partial_len = 0;
        let requested = match msg[4] {
            0 => false,
            1 => true,
            _ => return Err(Fatal::alert(alert::ILLEGAL_PARAMETER, "bad key update request")),
        };
        self.key_updates_left = self
            .key_updates_left
            .checked_sub(1)
            .ok_or(Fatal::alert(alert::UNEXPECTED_MESSAGE, "too many key updates"))?;
        Ok(Message::KeyUpdate { requested })
    }

    fn on_alert(&mut self, plain: &[u8]) -> Result<Message, Fatal> {
        let &[level, desc] = plain else {
            return Err(Fatal::alert(alert::DECODE_ERROR, "malformed alert"));
        };
        if level != WARNING && level != FATAL {
            return Err(Fatal::alert(alert::ILLEGAL_PARAMETER, "unknown alert level"));
        }
        if desc == alert::CLOSE_NOTIFY {
            self.peer_closed = true;
            return Ok(Message::Closed);
        }
        if level == FATAL {
            return Err(Fatal { alert: None, why: "the client sent a fatal alert" });
        }
        self.warnings_left = self
            .warnings_left
            .checked_sub(1)
            .ok_or(Fatal::alert(alert::UNEXPECTED_MESSAGE, "too many warning alerts"))?;
        if self.version == Version::Tls13 && desc != alert::USER_CANCELED {
            return Err(Fatal::alert(alert::DECODE_ERROR, "warning alert in TLS 1.3"));
        }
        Ok(Message::Nothing)
    }
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}
