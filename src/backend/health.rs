//! Active health checks: one thread (`sni-health`, off the workers' CPUs) with a small tokio
//! runtime checks every back end whose route has a `health_check`, every `interval_ms`: a
//! connect (TCP, unix socket, or a hand-off socket), a TLS handshake with the configured SNI
//! (certificates are not verified: the check asks whether it answers TLS), or a QUIC probe over
//! UDP that any QUIC server answers with Version Negotiation (`type = "quic"`). `fall` failures in a
//! row mark a back end down, `rise` successes up again (HAProxy's names and meaning); the
//! verdict is published to the workers through one atomic per back end ([`Shared::set_up`]),
//! which they read without a lock. A back end starts up: a process that starts or reloads does
//! not wait `rise` intervals before serving.

use super::pool::Shared;
use super::Pools;
use crate::metrics::CheckResult;
use crate::route::{CheckKind, HealthCheck, Target};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The checker thread, started when a configuration first has back ends to check; stopped
/// (and joined) by [`Checker::stop`] or on drop.
#[derive(Debug)]
pub struct Checker {
    targets: Arc<Mutex<Vec<Arc<Shared>>>>,
    stop: Arc<AtomicBool>,
    cpu: Option<usize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The longest the thread sleeps (how soon it sees a new configuration or the stop).
const TICK: Duration = Duration::from_millis(100);

impl Checker {
    /// A checker whose thread (pinned to `cpu` if given) starts with the first back end to
    /// check.
    pub fn start(cpu: Option<usize>) -> io::Result<Self> {
        Ok(Self { targets: Arc::default(), stop: Arc::default(), cpu, thread: Mutex::new(None) })
    }

    /// Checks the back ends of `pools` from now on (those with a health check); a back end
    /// carried over from the previous configuration keeps its schedule and streaks.
    pub fn watch(&self, pools: &Pools) {
        let list: Vec<Arc<Shared>> = pools.backends().filter(|b| b.health.is_some()).cloned().collect();
        let any = !list.is_empty();
        *lock(&self.targets) = list;
        let mut thread = lock(&self.thread);
        if any && thread.is_none() {
            let (t, s, cpu) = (Arc::clone(&self.targets), Arc::clone(&self.stop), self.cpu);
            let spawned = std::thread::Builder::new().name("sni-health".into()).spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "health checks: cannot start their runtime; no back end will be checked");
                        return;
                    }
                };
                rt.block_on(run(t, s));
            });
            match spawned {
                Ok(h) => *thread = Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "health checks: cannot start their thread; no back end will be checked")
                }
            }
        }
    }

    /// Stops (and joins) the thread; the checks end with it.
    pub fn stop(&self) {
        self.halt();
    }

    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One back end's schedule and streaks (the checker's own).
struct State {
    shared: Arc<Shared>,
    due: Instant,
    running: bool,
    ok_streak: u32,
    fail_streak: u32,
}

async fn run(targets: Arc<Mutex<Vec<Arc<Shared>>>>, stop: Arc<AtomicBool>) {
    let tls = Arc::new(tls_config());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, CheckResult)>();
    let mut states: HashMap<usize, State> = HashMap::new();
    let mut spread = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Follow the configuration: new back ends are checked soon (spread over their first
        // interval so a reload does not check everything at once), removed ones are forgotten.
        let current: Vec<Arc<Shared>> = lock(&targets).clone();
        let now = Instant::now();
        states.retain(|k, _| current.iter().any(|s| Arc::as_ptr(s) as usize == *k));
        for s in current {
            let key = Arc::as_ptr(&s) as usize;
            states.entry(key).or_insert_with(|| {
                let interval = s.health.as_ref().map_or(1000, |h| h.interval_ms).max(1);
                spread = spread.wrapping_add(97);
                State {
                    shared: s,
                    due: now + Duration::from_millis(spread % interval.min(1000)),
                    running: false,
                    ok_streak: 0,
                    fail_streak: 0,
                }
            });
        }
        while let Ok((key, result)) = done_rx.try_recv() {
            if let Some(st) = states.get_mut(&key) {
                st.running = false;
                record(st, result);
            }
        }
        let now = Instant::now();
        for (&key, st) in states.iter_mut() {
            if st.running || st.due > now {
                continue;
            }
            let Some(spec) = st.shared.health.clone() else { continue };
            st.running = true;
            st.due = now + Duration::from_millis(spec.interval_ms.max(1));
            let (target, tls, done) = (st.shared.target.clone(), Arc::clone(&tls), done_tx.clone());
            tokio::spawn(async move {
                let r = check(&target, &spec, &tls).await;
                let _ = done.send((key, r));
            });
        }
        // Sleep until the next check is due (or a result comes in), at most a tick.
        let next = states.values().filter(|s| !s.running).map(|s| s.due).min().unwrap_or(now + TICK).min(now + TICK);
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            got = done_rx.recv() => {
                if let Some((key, result)) = got {
                    if let Some(st) = states.get_mut(&key) {
                        st.running = false;
                        record(st, result);
                    }
                }
            }
        }
    }
}

/// Applies one result: `fall` failures in a row take it down, `rise` successes bring it up.
fn record(st: &mut State, r: CheckResult) {
    let Some(spec) = st.shared.health.as_ref() else { return };
    st.shared.checked(r);
    let up = st.shared.is_up();
    if r == CheckResult::Ok {
        st.ok_streak = st.ok_streak.saturating_add(1);
        st.fail_streak = 0;
        if !up && st.ok_streak >= spec.rise {
            st.shared.set_up(true);
            tracing::info!(backend = %st.shared.target, rise = spec.rise, "back end is up (health checks)");
        }
    } else {
        st.fail_streak = st.fail_streak.saturating_add(1);
        st.ok_streak = 0;
        if up && st.fail_streak >= spec.fall {
            st.shared.set_up(false);
            tracing::warn!(backend = %st.shared.target, fall = spec.fall, result = r.as_str(), "back end is down (health checks)");
        }
    }
}

/// One check of `target`.
pub async fn check(target: &Target, spec: &HealthCheck, tls: &Arc<rustls::ClientConfig>) -> CheckResult {
    let limit = Duration::from_millis(spec.timeout_ms.max(1));
    match tokio::time::timeout(limit, check_inner(target, spec, tls)).await {
        Ok(r) => r,
        Err(_) => CheckResult::TimedOut,
    }
}

async fn check_inner(target: &Target, spec: &HealthCheck, tls: &Arc<rustls::ClientConfig>) -> CheckResult {
    let refused = |_| CheckResult::Refused;
    match (target, &spec.kind) {
        (Target::Tcp(addr), CheckKind::Connect) => {
            tokio::net::TcpStream::connect(addr).await.map_or_else(refused, |_| CheckResult::Ok)
        }
        (Target::Unix(path), CheckKind::Connect) => {
            tokio::net::UnixStream::connect(path).await.map_or_else(refused, |_| CheckResult::Ok)
        }
        (Target::Handoff(path), _) => {
            // A local seqpacket connect is immediate; the receiver sees a channel that closes.
            crate::sys::Socket::seqpacket_connect(path).map_or_else(refused, |_| CheckResult::Ok)
        }
        (Target::Tcp(addr), CheckKind::Tls { sni }) => match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => tls_handshake(s, sni, tls).await,
            Err(_) => CheckResult::Refused,
        },
        (Target::Unix(path), CheckKind::Tls { sni }) => match tokio::net::UnixStream::connect(path).await {
            Ok(s) => tls_handshake(s, sni, tls).await,
            Err(_) => CheckResult::Refused,
        },
        (Target::Tcp(addr), CheckKind::Quic) => quic_probe(*addr).await,
        // Refused by the configuration (a QUIC probe needs a UDP address).
        (Target::Unix(_), CheckKind::Quic) => CheckResult::Refused,
    }
}

/// The version a QUIC probe offers: reserved for forcing Version Negotiation (RFC 9000 §15).
const PROBE_VERSION: [u8; 4] = [0x1a, 0x2a, 0x3a, 0x4a];

/// The probe datagram: a long header of [`PROBE_VERSION`] with 8-byte connection IDs (the
/// source one is `scid`), padded to the 1,200 bytes below which a server need not answer.
fn probe_datagram(scid: [u8; 8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(1200);
    d.push(0xc0);
    d.extend_from_slice(&PROBE_VERSION);
    d.push(8);
    d.extend_from_slice(&crate::backend::pool::mix(u64::from_be_bytes(scid)).to_be_bytes());
    d.push(8);
    d.extend_from_slice(&scid);
    d.resize(1200, 0);
    d
}

/// Whether `reply` is a Version Negotiation packet answering a probe from `scid` (its
/// Destination Connection ID is the probe's Source Connection ID).
fn is_negotiation_for(reply: &[u8], scid: &[u8; 8]) -> bool {
    reply.len() >= 6 + 8
        && reply[0] & 0x80 != 0
        && reply[1..5] == [0, 0, 0, 0]
        && reply[5] == 8
        && reply[6..14] == scid[..]
}

/// A QUIC probe ([`CheckKind::Quic`]): up when a Version Negotiation packet comes back, refused
/// on ICMP unreachable; anything else is ignored until the check's timeout.
async fn quic_probe(addr: std::net::SocketAddr) -> CheckResult {
    let local: std::net::SocketAddr =
        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let Ok(sock) = tokio::net::UdpSocket::bind(local).await else { return CheckResult::Refused };
    if sock.connect(addr).await.is_err() {
        return CheckResult::Refused;
    }
    let scid = super::pool::now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
    if sock.send(&probe_datagram(scid)).await.is_err() {
        return CheckResult::Refused;
    }
    let mut buf = [0u8; 1500];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) if is_negotiation_for(&buf[..n], &scid) => return CheckResult::Ok,
            Ok(_) => {}
            Err(_) => return CheckResult::Refused,
        }
    }
}

/// A stream the TLS check can drive with readiness and non-blocking reads and writes.
trait Io {
    async fn ready_read(&self) -> io::Result<()>;
    async fn ready_write(&self) -> io::Result<()>;
    fn try_read_buf(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write_buf(&self, buf: &[u8]) -> io::Result<usize>;
}

macro_rules! impl_io {
    ($t:ty) => {
        impl Io for $t {
            async fn ready_read(&self) -> io::Result<()> {
                self.readable().await
            }
            async fn ready_write(&self) -> io::Result<()> {
                self.writable().await
            }
            fn try_read_buf(&self, buf: &mut [u8]) -> io::Result<usize> {
                self.try_read(buf)
            }
            fn try_write_buf(&self, buf: &[u8]) -> io::Result<usize> {
                self.try_write(buf)
            }
        }
    };
}
impl_io!(tokio::net::TcpStream);
impl_io!(tokio::net::UnixStream);

/// Drives a rustls client handshake to its end over `s`.
async fn tls_handshake(s: impl Io, sni: &str, config: &Arc<rustls::ClientConfig>) -> CheckResult {
    let Ok(name) = rustls::pki_types::ServerName::try_from(sni.to_owned()) else { return CheckResult::Tls };
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::clone(config), name) else { return CheckResult::Tls };
    let mut out = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while conn.wants_write() {
            out.clear();
            if conn.write_tls(&mut out).is_err() {
                return CheckResult::Tls;
            }
            let mut at = 0;
            while at < out.len() {
                match s.try_write_buf(&out[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if s.ready_write().await.is_err() {
                            return CheckResult::Refused;
                        }
                    }
                    Err(_) => return CheckResult::Refused,
                }
            }
        }
        if !conn.is_handshaking() {
            return CheckResult::Ok;
        }
        let n = match s.try_read_buf(&mut buf) {
            Ok(0) => return CheckResult::Tls,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if s.ready_read().await.is_err() {
                    return CheckResult::Refused;
                }
                continue;
            }
            Err(_) => return CheckResult::Refused,
        };
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            if conn.read_tls(&mut rd).is_err() || conn.process_new_packets().is_err() {
                return CheckResult::Tls;
            }
        }
    }
}

/// A rustls client that accepts any certificate: the check is "does it speak TLS".
pub fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyCert(Arc::clone(&provider)));
    match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth(),
        // The default provider supports the default versions; this branch is never taken.
        Err(_) => rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(
                Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            )))
            .with_no_client_auth(),
    }
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: CheckKind) -> HealthCheck {
        HealthCheck { kind, interval_ms: 100, timeout_ms: 2000, rise: 2, fall: 2 }
    }

    #[test]
    fn checks_see_a_listener_a_closed_port_and_a_tls_server() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tls = Arc::new(tls_config());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let open = Target::Tcp(addr);
        assert_eq!(rt.block_on(check(&open, &spec(CheckKind::Connect), &tls)), CheckResult::Ok);
        drop(l);
        assert_eq!(rt.block_on(check(&open, &spec(CheckKind::Connect), &tls)), CheckResult::Refused);
        // Not TLS: a listener that closes at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let closer = std::thread::spawn(move || drop(l.accept()));
        let sni = CheckKind::Tls { sni: "check.example".into() };
        assert_eq!(rt.block_on(check(&Target::Tcp(addr), &spec(sni.clone()), &tls)), CheckResult::Tls);
        closer.join().unwrap();
        // A rustls server.
        let leaf = crate::pki::Leaf::self_signed(&["check.example"]).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der()], leaf.key_der())
            .unwrap();
        let server = Arc::new(server);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(server).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut s).is_err() {
                    break;
                }
            }
        });
        assert_eq!(rt.block_on(check(&Target::Tcp(addr), &spec(sni), &tls)), CheckResult::Ok);
        t.join().unwrap();
    }

    /// The QUIC probe: a Version Negotiation answer addressed to it is `ok`, a closed UDP port
    /// `refused`, a server answering something else (or nothing) `timed_out`.
    #[test]
    fn quic_probes_want_version_negotiation() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tls = Arc::new(tls_config());
        let quic = HealthCheck { timeout_ms: 500, ..spec(CheckKind::Quic) };
        let serve = |answer: fn(&[u8]) -> Vec<u8>| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = s.local_addr().unwrap();
            let t = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let (n, from) = s.recv_from(&mut buf).unwrap();
                s.send_to(&answer(&buf[..n]), from).unwrap();
                n
            });
            (addr, t)
        };
        // A server's answer: version 0, the probe's SCID as its DCID, then versions 1 and 2.
        let negotiation = |probe: &[u8]| {
            let (dlen, rest) = (usize::from(probe[5]), &probe[6..]);
            let (dcid, rest) = rest.split_at(dlen);
            let scid = &rest[1..1 + usize::from(rest[0])];
            let mut v = vec![0x80, 0, 0, 0, 0, scid.len() as u8];
            v.extend_from_slice(scid);
            v.push(dcid.len() as u8);
            v.extend_from_slice(dcid);
            v.extend_from_slice(&[0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf]);
            v
        };
        let (addr, t) = serve(negotiation);
        assert_eq!(rt.block_on(check(&Target::Tcp(addr), &quic, &tls)), CheckResult::Ok);
        assert_eq!(t.join().unwrap(), 1200, "the probe is padded to 1,200 bytes");
        let (addr, t) = serve(|probe| probe.to_vec());
        assert_eq!(rt.block_on(check(&Target::Tcp(addr), &quic, &tls)), CheckResult::TimedOut);
        t.join().unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(rt.block_on(check(&Target::Tcp(closed), &quic, &tls)), CheckResult::Refused);
    }

    #[test]
    fn fall_takes_it_down_and_rise_brings_it_back() {
        let shared = Arc::new(Shared::new("127.0.0.1:1".parse().unwrap(), Some(spec(CheckKind::Connect)), 1));
        let mut st =
            State { shared: Arc::clone(&shared), due: Instant::now(), running: false, ok_streak: 0, fail_streak: 0 };
        record(&mut st, CheckResult::Refused);
        assert!(shared.is_up(), "one failure of fall = 2");
        record(&mut st, CheckResult::Ok);
        record(&mut st, CheckResult::Refused);
        assert!(shared.is_up(), "the streak was broken");
        record(&mut st, CheckResult::TimedOut);
        assert!(!shared.is_up());
        record(&mut st, CheckResult::Ok);
        assert!(!shared.is_up(), "one success of rise = 2");
        record(&mut st, CheckResult::Ok);
        assert!(shared.is_up());
        let snap = shared.snapshot();
        assert_eq!(snap.downs, 1);
        assert_eq!(snap.last_check, Some(CheckResult::Ok));
    }
}
