//! Session tickets that any host of a fleet can decrypt: keys from a file (`[tls] ticket_keys`)
//! that every host behind one anycast address shares, rotated by rewriting the file and
//! reloading.
//!
//! ## The key file
//! One key per line, base64 of 80 bytes (or 48), as HAProxy's `tls-ticket-keys` reads it
//! (`openssl rand 80 | openssl base64 -A`); blank lines and lines starting with `#` are skipped.
//! A file holding exactly 80 (or 48) raw bytes, nginx's `ssl_session_ticket_key` format, is one
//! key. The first 16 bytes of a key are its name (sent in clear at the start of each ticket); the
//! rest is the secret, from which an AES-256-GCM-SIV key is derived with HKDF-SHA256 (so the
//! layout of the secret bytes, which nginx and HAProxy order differently, does not matter).
//!
//! **Which key encrypts**: the last but one (the only one, in a file of one). The last key is the
//! next one: hosts learn it one reload before any host encrypts with it, so a ticket issued by a
//! host that rotated early is already understood by hosts that have not rotated yet. Rotate by
//! appending a new key, dropping the first, and reloading every host.
//!
//! **The window**: every key of the file decrypts. A key dropped from the file on a reload keeps
//! decrypting for `ticket_lifetime_s` after that reload (a ticket it encrypted just before can
//! be that old), then is forgotten; the window is kept across reloads, not across restarts.
//!
//! ## The ticket
//! `name (16) ‖ nonce (12) ‖ AES-256-GCM-SIV(state) ‖ tag (16)`, the name as additional data.
//! Nonces are random: GCM-SIV stays safe when random nonces collide, which matters when a
//! whole fleet encrypts under one key. The format is ours: tickets are not interchangeable with
//! HAProxy's or nginx's (their sessions are OpenSSL's), only key files are.
//!
//! Without a key file, tickets use one process-wide rustls ticketer (random keys, rotated every
//! 6 hours): resumption works across the workers and reloads of one process.

use super::store::read_with_id;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV, NONCE_LEN};
use rustls::server::ProducesTickets;
use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The default `ticket_lifetime_s`: 6 hours, rustls's own rotation period.
pub const DEFAULT_LIFETIME_S: u32 = 6 * 3600;
/// The longest a TLS 1.3 ticket may live (RFC 8446, 4.6.1).
pub const MAX_LIFETIME_S: u32 = 7 * 24 * 3600;
/// Most keys a file may hold.
pub const MAX_KEYS: usize = 64;
const MAX_FILE_BYTES: u64 = 64 * 1024;
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Tickets longer than this are refused before any work (rustls's are a few hundred bytes).
const MAX_TICKET: usize = 16 * 1024;
const HKDF_SALT: &[u8] = b"sni-dispatch session ticket key v1";

/// One ticket key, ready to seal and open.
struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

impl fmt::Debug for Key {
    // The name only: it is public (it leads every ticket); the secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", hex(&self.name))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Key {
    fn from_raw(raw: &[u8]) -> Option<Self> {
        use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
        let (name, secret) = raw.split_at_checked(NAME_LEN)?;
        let prk = Salt::new(HKDF_SHA256, HKDF_SALT).extract(secret);
        let okm = prk.expand(&[b"aes-256-gcm-siv"], &AES_256_GCM_SIV).ok()?;
        Some(Self { name: name.try_into().ok()?, aead: LessSafeKey::new(UnboundKey::from(okm)) })
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.name),
                &mut out[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// `ticket` without its name.
    fn open(&self, rest: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        if sealed.len() < TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let n = self.aead.open_in_place(nonce, Aad::from(&self.name), &mut buf).ok()?.len();
        buf.truncate(n);
        Some(buf)
    }
}

/// Reads and checks a key file: its keys in file order, or why not (a message for
/// `FILE: KEY: REASON`).
/// With a digest of the raw keys (what tells that a file read again holds the same keys).
fn read_keys(path: &Path) -> Result<(Vec<Arc<Key>>, [u8; 32]), String> {
    let (bytes, _) = read_with_id(path, MAX_FILE_BYTES).map_err(|e| format!("cannot read: {e}"))?;
    let raw = parse_keys(&bytes)?;
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for k in &raw {
        digest.update(k);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    let keys = raw
        .iter()
        .map(|raw| Key::from_raw(raw).map(Arc::new).ok_or_else(|| "cannot derive a key (aws-lc)".to_owned()))
        .collect::<Result<_, _>>()?;
    Ok((keys, out))
}

fn parse_keys(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine;
    let textual = bytes.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if matches!(bytes.len(), 48 | 80) && !textual {
        return Ok(vec![bytes.to_vec()]); // nginx's binary key file
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "neither base64 lines nor one binary key of 48 or 80 bytes".to_owned())?;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| format!("line {}: not base64 ({e})", i + 1))?;
        if !matches!(raw.len(), 48 | 80) {
            return Err(format!(
                "line {}: decodes to {} bytes; a key is 80 (or 48) bytes of base64 on one line: openssl rand 80 | openssl base64 -A",
                i + 1,
                raw.len()
            ));
        }
        if let Some(j) = keys.iter().position(|k| k[..NAME_LEN] == raw[..NAME_LEN]) {
            return Err(format!("line {}: the same key name (first 16 bytes) as key {}", i + 1, j + 1));
        }
        keys.push(raw);
    }
    if keys.is_empty() {
        return Err("holds no key: add one line of base64 (openssl rand 80 | openssl base64 -A)".into());
    }
    if keys.len() > MAX_KEYS {
        return Err(format!("holds {} keys; at most {MAX_KEYS}", keys.len()));
    }
    Ok(keys)
}

/// The configured key file, read and checked: what `[tls] ticket_keys` becomes.
#[derive(Debug, Clone)]
pub struct KeyFile {
    pub path: PathBuf,
    keys: Vec<Arc<Key>>,
    /// SHA-256 of the raw keys, in file order.
    digest: [u8; 32],
}

impl KeyFile {
    /// Reads `path`; the error is the reason, for `FILE: tls.ticket_keys: REASON`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let (keys, digest) = read_keys(path)?;
        Ok(Self { path: path.to_owned(), keys, digest })
    }

    /// Whether `other` is the same file with the same keys in the same order.
    pub fn same_keys(&self, other: &Self) -> bool {
        self.path == other.path && self.digest == other.digest
    }

    /// Keys in the file.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name (hex) of the key that encrypts: the last but one.
    pub fn encrypting(&self) -> String {
        hex(&self.keys[self.encrypt_index()].name)
    }

    fn encrypt_index(&self) -> usize {
        self.keys.len().saturating_sub(2)
    }
}

/// What a ticket event was, for `sni_dispatch_tls_tickets_total{result}`.
pub use crate::metrics::TicketResult;

thread_local! {
    /// This worker's ticket events since its last publish (drained by [`super::drain_counts`]).
    pub(super) static EVENTS: Cell<[u64; TicketResult::COUNT]> = const { Cell::new([0; TicketResult::COUNT]) };
}

fn count(r: TicketResult) {
    EVENTS.with(|e| {
        let mut v = e.get();
        v[r as usize] += 1;
        e.set(v);
    });
}

/// The process-wide random ticketer used without a key file.
fn random() -> Arc<dyn ProducesTickets> {
    static SHARED: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // Fails only if the system RNG does; then resumption by ticket is off, not the process down.
            rustls::crypto::aws_lc_rs::Ticketer::new().unwrap_or_else(|e| {
                tracing::error!("TLS ticketer unavailable, resumption by ticket disabled: {e}");
                Arc::new(NoTickets)
            })
        })
        .clone()
}

#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[derive(Debug)]
enum Mode {
    /// No key file: the process-wide random ticketer.
    Random(Arc<dyn ProducesTickets>),
    File {
        keys: Vec<Arc<Key>>,
        encrypt: usize,
        lifetime: u32,
    },
}

/// Keys that decrypt only, until a Unix time: dropped from the file, or the random ticketer a
/// key file replaced.
#[derive(Debug, Default)]
struct Retired {
    keys: Vec<(Arc<Key>, i64)>,
    random: Option<(Arc<dyn ProducesTickets>, i64)>,
}

/// The ticketer of one configuration: every terminating route's `ServerConfig` shares it.
#[derive(Debug)]
pub struct Tickets {
    /// Set once: at once by [`Tickets::new`], or by [`Tickets::configure`] once the `[tls]`
    /// table is read (a configuration's routes are resolved while its files are parsed, before
    /// that table may have been seen); the random ticketer if neither happened.
    mode: OnceLock<Mode>,
    retired: OnceLock<Retired>,
}

impl Tickets {
    /// From the configured key file, or the process-wide random ticketer without one.
    pub fn new(file: Option<&KeyFile>, lifetime_s: u32) -> Arc<Self> {
        let mode = match file {
            None => Mode::Random(random()),
            Some(f) => Mode::File { keys: f.keys.clone(), encrypt: f.encrypt_index(), lifetime: lifetime_s },
        };
        Arc::new(Self { mode: OnceLock::from(mode), retired: OnceLock::new() })
    }

    /// A ticketer whose keys are given later by [`Tickets::configure`].
    pub fn pending() -> Arc<Self> {
        Arc::new(Self { mode: OnceLock::new(), retired: OnceLock::new() })
    }

    /// Gives a [`Tickets::pending`] ticketer its keys; before it serves. A second call (or a
    /// call on a ticketer made by `new`) changes nothing.
    pub fn configure(&self, file: Option<&KeyFile>, lifetime_s: u32) {
        let _ = self.mode.set(match file {
            None => Mode::Random(random()),
            Some(f) => Mode::File { keys: f.keys.clone(), encrypt: f.encrypt_index(), lifetime: lifetime_s },
        });
    }

    fn mode(&self) -> &Mode {
        self.mode.get_or_init(|| Mode::Random(random()))
    }

    /// Carries over from the configuration this one replaces what must keep decrypting: keys
    /// `old` had that this one lacks, for `old`'s ticket lifetime from now, and what `old` had
    /// retired itself and is still within its window. Call before this configuration serves;
    /// a second call changes nothing.
    pub fn inherit(&self, old: &Self) {
        if std::ptr::eq(self, old) {
            return;
        }
        let now = super::ocsp::now();
        let mut retired = Retired::default();
        let known = |name: &[u8; NAME_LEN]| match self.mode() {
            Mode::File { keys, .. } => keys.iter().any(|k| &k.name == name),
            Mode::Random(_) => false,
        };
        if let Some(prev) = old.retired.get() {
            retired.keys.extend(prev.keys.iter().filter(|(k, until)| *until > now && !known(&k.name)).cloned());
            if matches!(self.mode(), Mode::File { .. }) {
                retired.random = prev.random.clone().filter(|(_, until)| *until > now);
            }
        }
        match old.mode() {
            Mode::File { keys, lifetime, .. } => {
                let until = now + i64::from(*lifetime);
                for k in keys.iter().filter(|k| !known(&k.name)) {
                    retired.keys.retain(|(r, _)| r.name != k.name);
                    retired.keys.push((Arc::clone(k), until));
                }
            }
            Mode::Random(r) if matches!(self.mode(), Mode::File { .. }) => {
                retired.random = Some((Arc::clone(r), now + 2 * i64::from(r.lifetime())));
            }
            Mode::Random(_) => {}
        }
        if !retired.keys.is_empty() || retired.random.is_some() {
            tracing::info!(
                keys = retired.keys.len(),
                random = retired.random.is_some(),
                "session-ticket keys no longer configured keep decrypting for their ticket lifetime"
            );
        }
        let _ = self.retired.set(retired);
    }

    /// Names (hex) of the keys that still decrypt though no longer configured.
    pub fn retired_names(&self) -> Vec<String> {
        self.retired.get().map_or_else(Vec::new, |r| r.keys.iter().map(|(k, _)| hex(&k.name)).collect())
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        match self.mode() {
            Mode::Random(r) => r.enabled(),
            Mode::File { .. } => true,
        }
    }

    fn lifetime(&self) -> u32 {
        match self.mode() {
            Mode::Random(r) => r.lifetime(),
            Mode::File { lifetime, .. } => *lifetime,
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let out = match self.mode() {
            Mode::Random(r) => r.encrypt(plain),
            Mode::File { keys, encrypt, .. } => keys.get(*encrypt)?.seal(plain),
        };
        if out.is_some() {
            count(TicketResult::Issued);
        }
        out
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET {
            count(TicketResult::Invalid);
            return None;
        }
        let keys = match self.mode() {
            Mode::File { keys, .. } => keys.as_slice(),
            Mode::Random(r) => {
                let out = r.decrypt(ticket);
                count(if out.is_some() { TicketResult::Decrypted } else { TicketResult::UnknownKey });
                return out;
            }
        };
        let Some((name, rest)) = ticket.split_at_checked(NAME_LEN) else {
            count(TicketResult::Invalid);
            return None;
        };
        let (key, result) = match keys.iter().find(|k| k.name == name) {
            Some(k) => (Some(k), TicketResult::Decrypted),
            None => {
                let now = super::ocsp::now();
                let retired = self.retired.get();
                let old = retired.and_then(|r| r.keys.iter().find(|(k, until)| k.name == name && *until > now));
                match old {
                    Some((k, _)) => (Some(k), TicketResult::DecryptedRetired),
                    None => {
                        // A ticket of the random ticketer this file replaced, within its window.
                        if let Some((r, until)) = retired.and_then(|r| r.random.as_ref()) {
                            if *until > now {
                                if let Some(out) = r.decrypt(ticket) {
                                    count(TicketResult::DecryptedRetired);
                                    return Some(out);
                                }
                            }
                        }
                        (None, TicketResult::UnknownKey)
                    }
                }
            }
        };
        let out = key.and_then(|k| k.open(rest));
        count(match (&out, result) {
            (Some(_), r) => r,
            (None, TicketResult::UnknownKey) => TicketResult::UnknownKey,
            (None, _) => TicketResult::Invalid,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn line(seed: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([seed; 80])
    }

    fn file(dir: &Path, name: &str, text: &str) -> KeyFile {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        KeyFile::read(&p).unwrap()
    }

    fn events() -> [u64; TicketResult::COUNT] {
        EVENTS.with(|e| e.replace([0; TicketResult::COUNT]))
    }

    #[test]
    fn the_last_but_one_encrypts_every_key_decrypts() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "k", &format!("# fleet keys\n{}\n\n{}\n{}\n", line(1), line(2), line(3)));
        assert_eq!((f.len(), f.encrypting()), (3, hex(&[2; 16])));
        let t = Tickets::new(Some(&f), 3600);
        assert_eq!(t.lifetime(), 3600);
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(&ticket[..16], &[2; 16]);
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        // Another process with the same file decrypts it.
        let other =
            Tickets::new(Some(&file(dir.path(), "k2", &format!("{}\n{}\n{}\n", line(1), line(2), line(3)))), 60);
        assert_eq!(other.decrypt(&ticket).unwrap(), b"session state");
        // Tampering, truncation and a foreign key fail, never panic.
        let mut bad = ticket.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(t.decrypt(&bad).is_none());
        for n in 0..ticket.len() {
            assert!(t.decrypt(&ticket[..n]).is_none());
        }
        let foreign = Tickets::new(Some(&file(dir.path(), "k3", &line(9))), 60);
        assert!(foreign.decrypt(&ticket).is_none());
        let e = events();
        assert_eq!(e[TicketResult::Issued as usize], 1);
        assert_eq!(e[TicketResult::Decrypted as usize], 2);
        assert_eq!(e[TicketResult::UnknownKey as usize], 1, "the foreign key");
        assert_eq!(
            e[TicketResult::Invalid as usize],
            ticket.len() as u64 + 1,
            "every truncation, and the tampered one"
        );
    }

    #[test]
    fn a_dropped_key_decrypts_for_the_window_then_not() {
        let dir = tempfile::tempdir().unwrap();
        let old = Tickets::new(Some(&file(dir.path(), "a", &format!("{}\n{}\n", line(1), line(2)))), 3600);
        let ticket = old.encrypt(b"s").unwrap();
        assert_eq!(&ticket[..16], &[1; 16]);
        // Rotated: key 1 dropped, key 3 appended.
        let new = Tickets::new(Some(&file(dir.path(), "b", &format!("{}\n{}\n", line(2), line(3)))), 3600);
        assert!(new.decrypt(&ticket).is_none(), "not yet inherited");
        let new = Tickets::new(Some(&file(dir.path(), "b", &format!("{}\n{}\n", line(2), line(3)))), 3600);
        new.inherit(&old);
        assert_eq!(new.retired_names(), vec![hex(&[1; 16])]);
        assert_eq!(new.decrypt(&ticket).unwrap(), b"s");
        // Still known two reloads later, within the window.
        let newer = Tickets::new(Some(&file(dir.path(), "c", &format!("{}\n{}\n", line(3), line(4)))), 3600);
        newer.inherit(&new);
        assert_eq!(newer.decrypt(&ticket).unwrap(), b"s");
        // A window of 0 s: gone at once.
        let short = Tickets::new(Some(&file(dir.path(), "d", &format!("{}\n{}\n", line(1), line(2)))), 0);
        let t2 = short.encrypt(b"s").unwrap();
        let after = Tickets::new(Some(&file(dir.path(), "e", &line(2))), 0);
        after.inherit(&short);
        assert!(after.decrypt(&t2).is_none());
    }

    #[test]
    fn from_random_to_a_file_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let random = Tickets::new(None, DEFAULT_LIFETIME_S);
        let ticket = random.encrypt(b"s").unwrap();
        let filed = Tickets::new(Some(&file(dir.path(), "a", &line(1))), 60);
        filed.inherit(&random);
        assert_eq!(filed.decrypt(&ticket).unwrap(), b"s", "the random ticketer's tickets stay valid");
        let t2 = filed.encrypt(b"t").unwrap();
        let back = Tickets::new(None, DEFAULT_LIFETIME_S);
        back.inherit(&filed);
        assert_eq!(back.retired_names(), vec![hex(&[1; 16])]);
        // Random mode delegates to rustls's ticketer, which does not know key 1.
        assert!(back.decrypt(&t2).is_none());
    }

    #[test]
    fn key_files_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bad = |text: &[u8]| {
            let p = dir.path().join("bad");
            std::fs::write(&p, text).unwrap();
            KeyFile::read(&p).unwrap_err()
        };
        assert!(bad(b"").contains("holds no key"));
        assert!(bad(b"# only a comment\n").contains("holds no key"));
        assert!(bad(b"not base64 !!!\n").contains("line 1: not base64"));
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 60]);
        assert!(bad(short.as_bytes()).contains("line 1: decodes to 60 bytes"), "{}", bad(short.as_bytes()));
        assert!(bad(format!("{}\n{}\n", line(1), line(1)).as_bytes()).contains("line 2: the same key name"));
        assert!(KeyFile::read(&dir.path().join("missing")).unwrap_err().starts_with("cannot read"));
        // nginx's binary key file: one key.
        let mut raw = [0u8; 80];
        raw[0] = 0xff;
        let p = dir.path().join("nginx.key");
        std::fs::write(&p, raw).unwrap();
        assert_eq!(KeyFile::read(&p).unwrap().len(), 1);
        // A 48-byte key from base64.
        let p = dir.path().join("48");
        std::fs::write(&p, base64::engine::general_purpose::STANDARD.encode([7u8; 48])).unwrap();
        assert_eq!(KeyFile::read(&p).unwrap().len(), 1);
    }
}
