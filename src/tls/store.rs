//! Certificates and keys as loaded from files, shared and cached so that an edge with 100,000
//! certificates starts in seconds and reloads without parsing what did not change.
//!
//! - [`load`] reads a PEM chain and key, parses the key with the loader of its own type (an
//!   ECDSA key is not first tried as RSA, which halves the cost of a P-256 key), and checks that
//!   key and certificate belong together.
//! - Each result is cached by the pair of paths with the files' identity ([`FileId`]: device,
//!   inode, size, mtime and ctime): a reload that finds the same identity reuses the parsed key
//!   instead of reading and parsing again, and every route naming the same files shares one
//!   [`LoadedCert`]. File times tick coarsely (a kernel tick), so a file changed less than
//!   [`SETTLE`] before it was read is parsed again next time rather than trusted (git's "racily
//!   clean" rule): a second write in the same tick cannot go unnoticed. The cache holds `Weak` references: a certificate lives as long as a
//!   configuration uses it, and no longer.
//! - Certificates after the leaf (intermediates, shared by most routes) are interned: one copy
//!   per distinct certificate in the process, up to [`MAX_INTERNED`] of them.
//!
//! Everything here runs where configurations are loaded (never on a worker), so the cache's
//! `Mutex` is off the hot path.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Distinct non-leaf certificates kept as one shared copy; beyond this, chains keep their own.
pub const MAX_INTERNED: usize = 4096;

/// A file whose ctime is at least this much older than the moment it was read cannot change
/// again without its ctime changing (file times tick at most every 10 ms).
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// The identity of a file's contents as the file system reports it: a digest of its device,
/// inode, size, mtime and ctime (if none of these changed, the contents did not: ctime changes on
/// every write and cannot be set by a user), and the ctime itself for [`FileId::settled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    digest: u64,
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        // A fixed-key SipHash: the same file gives the same digest in every process.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()).hash(&mut h);
        Self { digest: h.finish(), ctime: (m.ctime(), m.ctime_nsec()) }
    }

    /// Whether a change after `read_at` must change this identity (see [`SETTLE`]).
    pub fn settled(&self, read_at: std::time::SystemTime) -> bool {
        let ctime = std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
            self.ctime.0.max(0) as u64,
            self.ctime.1.clamp(0, 999_999_999) as u32,
        ));
        match (ctime, read_at.checked_sub(SETTLE)) {
            (Some(c), Some(limit)) => c < limit,
            _ => false,
        }
    }

    /// The identity of the file at `path` now (following symbolic links, as reading does).
    pub fn at(path: &Path) -> io::Result<Self> {
        std::fs::metadata(path).map(|m| Self::of(&m))
    }
}

/// Reads a whole file, with the identity of what was read (taken from the open file, so a
/// rename between the two cannot pair new contents with an old identity).
pub fn read_with_id(path: &Path, limit: u64) -> io::Result<(Vec<u8>, FileId)> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let id = FileId::of(&meta);
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes")));
    }
    Ok((bytes, id))
}

/// Certificate and key files larger than this are refused (a chain is a few KiB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// A chain and its key, parsed and checked; shared by every route that names the same files.
pub struct LoadedCert {
    /// The chain and key, without an OCSP response (a route with one has its own copy).
    pub certified_key: Arc<CertifiedKey>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    ids: (FileId, FileId),
    /// Both files had settled when read: an unchanged identity means unchanged contents.
    settled: bool,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert").field("chain", &self.certified_key.cert.len()).finish_non_exhaustive()
    }
}

/// Why a chain and key could not be loaded; `Cert*` are the certificate file's fault, `Key*`
/// the key file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    CertRead(String),
    CertPem(String),
    NoCert,
    KeyRead(String),
    KeyPem(String),
    NoKey,
    /// The key is not the certificate's.
    Mismatch,
    /// The key parsed as PEM but no signer takes it (an unsupported curve or type).
    KeyUnusable(String),
    /// The leaf is not a certificate rustls can use.
    CertUnusable(String),
}

impl LoadError {
    /// Whether the certificate file (rather than the key file) is at fault.
    pub fn is_cert(&self) -> bool {
        matches!(self, Self::CertRead(_) | Self::CertPem(_) | Self::NoCert | Self::CertUnusable(_))
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CertRead(e) | Self::KeyRead(e) => write!(f, "cannot read: {e}"),
            Self::CertPem(e) | Self::KeyPem(e) => write!(f, "bad PEM: {e}"),
            Self::NoCert => f.write_str("holds no CERTIFICATE block"),
            Self::NoKey => f.write_str("holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)"),
            Self::Mismatch => f.write_str("does not match the certificate"),
            Self::KeyUnusable(e) => write!(f, "unusable: {e}"),
            Self::CertUnusable(e) => write!(f, "unusable with rustls: {e}"),
        }
    }
}

struct Cache {
    /// By a digest of the two paths (checked against the entry's own paths on a hit, so a
    /// collision is a miss, never a wrong certificate).
    entries: HashMap<u64, Weak<LoadedCert>>,
    ocsp: HashMap<PathBuf, Weak<LoadedOcsp>>,
    /// Entries count after the last sweep of dead ones; the next sweep runs at twice that.
    swept_at: usize,
    /// Interned non-leaf certificates, by content.
    interned: HashMap<&'static [u8], ()>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(Cache { entries: HashMap::new(), ocsp: HashMap::new(), swept_at: 1024, interned: HashMap::new() })
    })
}

/// What [`load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Read and parsed.
    Parsed,
    /// The files had not changed: the parsed chain and key were reused.
    Reused,
}

/// Loads `cert` (a PEM chain, leaf first) and `key`, from the cache when both files are
/// unchanged. Every problem is reported: a bad certificate and a bad key give two errors.
pub fn load(cert: &Path, key: &Path) -> Result<(Arc<LoadedCert>, Loaded), Vec<LoadError>> {
    let slot = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (cert, key).hash(&mut h);
        h.finish()
    };
    let cached = lock().entries.get(&slot).and_then(Weak::upgrade);
    if let Some(hit) = cached.filter(|c| c.settled && c.cert_path == cert && c.key_path == key) {
        if FileId::at(cert).ok() == Some(hit.ids.0) && FileId::at(key).ok() == Some(hit.ids.1) {
            return Ok((hit, Loaded::Reused));
        }
    }
    let loaded = Arc::new(parse(cert, key)?);
    let mut c = lock();
    c.entries.insert(slot, Arc::downgrade(&loaded));
    if c.entries.len() + c.ocsp.len() >= c.swept_at.saturating_mul(2) {
        c.entries.retain(|_, w| w.strong_count() > 0);
        c.ocsp.retain(|_, w| w.strong_count() > 0);
        c.swept_at = (c.entries.len() + c.ocsp.len()).max(1024);
    }
    Ok((loaded, Loaded::Parsed))
}

/// A route's OCSP response file, read and checked against the chain it is for; cached like
/// chains (by path, file identity and the chain it was checked against), so a reload does not
/// verify 100,000 signatures again. Its time window is checked again at each use
/// ([`LoadedOcsp::stapling`]).
pub struct LoadedOcsp {
    id: FileId,
    settled: bool,
    cert: Arc<LoadedCert>,
    verdict: Result<super::ocsp::Checked, super::ocsp::Problem>,
    /// The chain with the response, when it may be stapled.
    pub stapled: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for LoadedOcsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedOcsp").field("verdict", &self.verdict).finish_non_exhaustive()
    }
}

impl LoadedOcsp {
    /// Whether the response may be stapled at `now`.
    pub fn stapling(&self, now: i64) -> super::Stapling {
        use super::ocsp::Problem;
        match &self.verdict {
            Ok(c) => match c.next_update {
                Some(t) if t <= now => super::Stapling::Refused(Problem::Expired { next_update: t }),
                _ => super::Stapling::Stapled(c.clone()),
            },
            Err(p) => super::Stapling::Refused(p.clone()),
        }
    }
}

/// Loads the OCSP response at `path` for `cert`. Only an unreadable file is an error; a
/// response that must not be stapled is a verdict ([`LoadedOcsp::stapling`]).
pub fn load_ocsp(path: &Path, cert: &Arc<LoadedCert>) -> Result<Arc<LoadedOcsp>, String> {
    use super::ocsp;
    let cached = lock().ocsp.get(path).and_then(Weak::upgrade);
    if let Some(hit) = cached.filter(|c| c.settled && Arc::ptr_eq(&c.cert, cert)) {
        if FileId::at(path).ok() == Some(hit.id) {
            return Ok(hit);
        }
    }
    let read_at = std::time::SystemTime::now();
    let (der, id) = read_with_id(path, ocsp::MAX_RESPONSE_BYTES as u64).map_err(|e| format!("cannot read: {e}"))?;
    let verdict = ocsp::check(&der, &cert.certified_key.cert, ocsp::now());
    let stapled = verdict.is_ok().then(|| {
        let plain = &cert.certified_key;
        Arc::new(CertifiedKey { cert: plain.cert.clone(), key: Arc::clone(&plain.key), ocsp: Some(der) })
    });
    let loaded = Arc::new(LoadedOcsp { id, settled: id.settled(read_at), cert: Arc::clone(cert), verdict, stapled });
    lock().ocsp.insert(path.to_owned(), Arc::downgrade(&loaded));
    Ok(loaded)
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // A panic while holding it cannot leave the map inconsistent (inserts are single calls).
    cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_chain(cert: &Path) -> Result<(Vec<CertificateDer<'static>>, FileId), LoadError> {
    use rustls::pki_types::pem::PemObject;
    let (pem, id) = read_with_id(cert, MAX_PEM_BYTES).map_err(|e| LoadError::CertRead(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::CertPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(LoadError::NoCert);
    }
    Ok((chain, id))
}

fn read_key(key: &Path) -> Result<(Arc<dyn SigningKey>, FileId), LoadError> {
    use rustls::pki_types::pem::PemObject;
    let (pem, id) = read_with_id(key, MAX_PEM_BYTES).map_err(|e| LoadError::KeyRead(e.to_string()))?;
    let private_key = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(LoadError::NoKey),
        Err(e) => return Err(LoadError::KeyPem(e.to_string())),
    };
    let signing_key = signing_key(&private_key).map_err(|e| LoadError::KeyUnusable(e.to_string()))?;
    Ok((signing_key, id))
}

fn parse(cert: &Path, key: &Path) -> Result<LoadedCert, Vec<LoadError>> {
    let read_at = std::time::SystemTime::now();
    let ((chain, cert_id), (signing_key, key_id)) = match (read_chain(cert), read_key(key)) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => return Err(c.err().into_iter().chain(k.err()).collect()),
    };
    let certified_key = CertifiedKey::new(intern_chain(chain), signing_key);
    match certified_key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(vec![LoadError::Mismatch]),
        Err(e) => return Err(vec![LoadError::CertUnusable(e.to_string())]),
    }
    let settled = cert_id.settled(read_at) && key_id.settled(read_at);
    Ok(LoadedCert {
        certified_key: Arc::new(certified_key),
        cert_path: cert.to_owned(),
        key_path: key.to_owned(),
        ids: (cert_id, key_id),
        settled,
    })
}

/// Parses a private key with the loader of its type: a PKCS#8 key says its algorithm, and
/// trying RSA first on an EC key costs as much as parsing it (aws-lc computes the public point).
pub fn signing_key(der: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
    use rustls::crypto::aws_lc_rs::sign;
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    match der {
        PrivateKeyDer::Sec1(_) => sign::any_ecdsa_type(der),
        PrivateKeyDer::Pkcs8(p) => match pkcs8_algorithm(p.secret_pkcs8_der()) {
            Some(EC_PUBLIC_KEY) => sign::any_ecdsa_type(der),
            Some(ED25519) => sign::any_eddsa_type(p),
            _ => sign::any_supported_type(der),
        },
        _ => sign::any_supported_type(der),
    }
}

/// The algorithm OID of a PKCS#8 `PrivateKeyInfo`.
fn pkcs8_algorithm(der: &[u8]) -> Option<&[u8]> {
    use super::der::{Der, INTEGER, OID, SEQUENCE};
    let mut info = Der::new(der).nested(SEQUENCE, "PrivateKeyInfo").ok()?;
    info.read(INTEGER, "version").ok()?;
    info.nested(SEQUENCE, "privateKeyAlgorithm").ok()?.read(OID, "algorithm").ok()
}

/// The leaf as read; every later certificate replaced by the process's one copy of it.
fn intern_chain(chain: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    if chain.len() < 2 {
        return chain;
    }
    let mut c = lock();
    chain
        .into_iter()
        .enumerate()
        .map(|(i, der)| {
            if i == 0 {
                return der;
            }
            if let Some((&shared, ())) = c.interned.get_key_value(der.as_ref()) {
                return CertificateDer::from(shared);
            }
            if c.interned.len() >= MAX_INTERNED {
                return der;
            }
            // Leaked on purpose: at most MAX_INTERNED distinct certificates, each kept once for
            // the life of the process (a CA rotates its intermediates every few years).
            let shared: &'static [u8] = Box::leak(der.as_ref().to_vec().into_boxed_slice());
            c.interned.insert(shared, ());
            CertificateDer::from(shared)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a leaf for `name`, then waits until the files have settled (see [`SETTLE`]).
    fn site(dir: &Path, ca: &crate::pki::Ca, name: &str) -> crate::pki::Files {
        let files = ca.issue(&[name]).unwrap().write(dir, name).unwrap();
        std::thread::sleep(SETTLE * 2);
        files
    }

    #[test]
    fn reused_while_unchanged_parsed_again_when_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::new("store CA").unwrap();
        let f = site(dir.path(), &ca, "a.example");
        let (first, how) = load(&f.cert, &f.key).unwrap();
        assert_eq!(how, Loaded::Parsed);
        let (again, how) = load(&f.cert, &f.key).unwrap();
        assert_eq!(how, Loaded::Reused);
        assert!(Arc::ptr_eq(&first, &again));
        // Rewritten with a new key: parsed again, and a different certificate.
        let g = site(dir.path(), &ca, "a.example");
        assert_eq!(g, f);
        let (new, how) = load(&f.cert, &f.key).unwrap();
        assert_eq!(how, Loaded::Parsed);
        assert_ne!(new.certified_key.cert[0], first.certified_key.cert[0]);
        // The CA certificate after each leaf is one shared copy.
        assert_eq!(new.certified_key.cert[1].as_ref().as_ptr(), first.certified_key.cert[1].as_ref().as_ptr());
    }

    #[test]
    fn a_file_read_within_a_tick_of_its_change_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let id = FileId::at(&path).unwrap();
        let changed = std::time::UNIX_EPOCH + std::time::Duration::new(id.ctime.0 as u64, id.ctime.1 as u32);
        assert!(!id.settled(changed));
        assert!(!id.settled(changed + SETTLE / 2));
        assert!(id.settled(changed + SETTLE * 2));
    }

    #[test]
    fn dropped_when_no_configuration_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::new("store CA").unwrap();
        let f = site(dir.path(), &ca, "b.example");
        let (first, _) = load(&f.cert, &f.key).unwrap();
        drop(first);
        assert_eq!(load(&f.cert, &f.key).unwrap().1, Loaded::Parsed);
    }

    #[test]
    fn errors_say_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::new("store CA").unwrap();
        let a = site(dir.path(), &ca, "c.example");
        let b = site(dir.path(), &ca, "d.example");
        assert_eq!(load(&a.cert, &b.key).unwrap_err(), vec![LoadError::Mismatch]);
        assert!(load(&dir.path().join("none.pem"), &a.key).unwrap_err()[0].is_cert());
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        assert_eq!(load(&dir.path().join("empty.pem"), &a.key).unwrap_err(), vec![LoadError::NoCert]);
        assert_eq!(load(&a.cert, &a.cert).unwrap_err(), vec![LoadError::NoKey]);
        assert!(!load(&a.cert, &dir.path().join("none.key")).unwrap_err()[0].is_cert());
        let both = load(&dir.path().join("none.pem"), &dir.path().join("none.key")).unwrap_err();
        assert_eq!((both.len(), both[0].is_cert(), both[1].is_cert()), (2, true, false));
    }

    #[test]
    fn key_types_by_their_own_loader() {
        let k = rcgen::KeyPair::generate().unwrap();
        let der = PrivateKeyDer::Pkcs8(k.serialize_der().into());
        assert_eq!(
            pkcs8_algorithm(match &der {
                PrivateKeyDer::Pkcs8(p) => p.secret_pkcs8_der(),
                _ => unreachable!(),
            }),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..])
        );
        assert_eq!(signing_key(&der).unwrap().algorithm(), rustls::SignatureAlgorithm::ECDSA);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = PrivateKeyDer::Pkcs8(ed.serialize_der().into());
        assert_eq!(signing_key(&der).unwrap().algorithm(), rustls::SignatureAlgorithm::ED25519);
    }
}
