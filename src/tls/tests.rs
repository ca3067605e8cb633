//! The adapter against a real rustls client over loopback sockets.

use super::*;
use crate::relay::{End, Relayed};
use crate::route::TlsVersion;
use crate::sys::Socket;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

struct Site {
    key: Arc<rustls::sign::CertifiedKey>,
    roots: rustls::RootCertStore,
}

fn site(name: &str) -> Site {
    let leaf = crate::pki::Leaf::self_signed(&[name]).unwrap();
    let (der, key) = (leaf.cert_der(), leaf.key_der());
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = Arc::new(rustls::sign::CertifiedKey::from_der(vec![der.clone()], key, &provider).unwrap());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    Site { key, roots }
}

fn client_config(site: &Site, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(site.roots.clone())
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// An origin that reads until EOF, then answers the uppercased bytes and closes.
fn upper_origin() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got.to_ascii_uppercase()).unwrap();
    });
    (addr, t)
}

/// Accepts one connection, hands its first read to `handshake`, and relays to `origin`.
fn serve_one(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    origin: Option<std::net::SocketAddr>,
) -> Result<Relayed, String> {
    tokio_uring::start(async move {
        let l = Socket::from(std::os::fd::OwnedFd::from(listener));
        let client = l.accept().await.map_err(|e| e.to_string())?;
        let (res, hello) = client.recv(Vec::with_capacity(4096)).await;
        res.map_err(|e| e.to_string())?;
        let tls = handshake(&client, &config, hello, false).await.map_err(|e| e.as_str().to_owned())?;
        let origin = origin.ok_or("no origin")?;
        let backend = Socket::tcp_for(origin).map_err(|e| e.to_string())?;
        if !backend.start_connect(origin).map_err(|e| e.to_string())? {
            backend.finish_connect().await.map_err(|e| e.to_string())?;
        }
        Ok(relay(&client, tls, &backend, Duration::from_secs(10), true).await)
    })
}

#[test]
fn handshake_relay_and_half_close() {
    let site = site("shop.example.com");
    let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &["h2".into()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (origin, origin_thread) = upper_origin();
    let client_cfg = client_config(&site, &[&rustls::version::TLS13]);
    let client = std::thread::spawn(move || {
        let name = ServerName::try_from("shop.example.com").unwrap();
        let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
        tls.write_all(b"hello through the edge").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).unwrap();
        (got, tls.conn.alpn_protocol().map(<[u8]>::to_vec))
    });
    let relayed = serve_one(listener, config, Some(origin)).unwrap();
    let (got, alpn) = client.join().unwrap();
    origin_thread.join().unwrap();
    assert_eq!(got, b"HELLO THROUGH THE EDGE");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((relayed.to_backend, relayed.to_client), (22, 22));
    assert_eq!(relayed.end, End::Closed, "{relayed:?}");
}

#[test]
fn min_tls_13_refuses_a_tls12_client_with_an_alert() {
    let site = site("shop.example.com");
    let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS13, &[]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client_cfg = client_config(&site, &[&rustls::version::TLS12]);
    let client = std::thread::spawn(move || {
        let name = ServerName::try_from("shop.example.com").unwrap();
        let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
        tls.write_all(b"x").and_then(|()| tls.flush()).map_err(|e| e.to_string())
    });
    let err = serve_one(listener, config, None).unwrap_err();
    assert_eq!(err, "tls_version");
    let client_err = client.join().unwrap().unwrap_err();
    assert!(client_err.contains("ProtocolVersion"), "{client_err}");
}

/// Several MiB each way in full-size records: rustls keeps at most 16 KiB of decrypted
/// plaintext, so the relay must drain it record by record (a regression: uploads used to fail).
#[test]
fn bulk_upload_and_download_in_full_records() {
    let site = site("shop.example.com");
    let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (origin, origin_thread) = upper_origin();
    let client_cfg = client_config(&site, &[&rustls::version::TLS13]);
    let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let sent = data.clone();
    let client = std::thread::spawn(move || {
        let name = ServerName::try_from("shop.example.com").unwrap();
        let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
        tls.write_all(&sent).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).unwrap();
        got
    });
    let relayed = serve_one(listener, config, Some(origin)).unwrap();
    let got = client.join().unwrap();
    origin_thread.join().unwrap();
    assert!(!matches!(relayed.end, End::Error(_)), "{relayed:?}");
    assert_eq!(relayed.to_backend, data.len() as u64);
    assert!(got == data.to_ascii_uppercase(), "download differs ({} bytes back)", got.len());
}

/// Moves 24 MiB (more than both socket buffers hold) through the relay in one direction while
/// the receiving end pauses before reading: the relay must wait for POLLOUT on the full socket
/// and the bytes must still arrive whole and in order. `upload`: client → back end (plaintext
/// leaving rustls), else back end → client (records leaving rustls).
fn paused_receiver(upload: bool) {
    const PAUSE: Duration = Duration::from_millis(300);
    let site = site("shop.example.com");
    let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let data: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let (up, down) = if upload { (data.clone(), Vec::new()) } else { (Vec::new(), data.clone()) };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = l.local_addr().unwrap();
    let origin_thread = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&down).unwrap();
        std::thread::sleep(PAUSE);
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let client_cfg = client_config(&site, &[&rustls::version::TLS13]);
    let client = std::thread::spawn(move || {
        let name = ServerName::try_from("shop.example.com").unwrap();
        let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
        tls.write_all(&up).unwrap();
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        std::thread::sleep(PAUSE);
        let mut got = Vec::new();
        tls.read_to_end(&mut got).unwrap();
        got
    });
    let relayed = serve_one(listener, config, Some(origin)).unwrap();
    let at_client = client.join().unwrap();
    let at_origin = origin_thread.join().unwrap();
    assert!(!matches!(relayed.end, End::Error(_)), "{relayed:?}");
    let (got, moved) = if upload { (at_origin, relayed.to_backend) } else { (at_client, relayed.to_client) };
    assert_eq!(moved, data.len() as u64);
    assert!(got == data, "{} of {} bytes arrived, or not in order", got.len(), data.len());
}

#[test]
fn download_to_a_paused_client_waits_for_room() {
    paused_receiver(false);
}

#[test]
fn upload_to_a_paused_backend_waits_for_room() {
    paused_receiver(true);
}

/// A rustls client and our server handshake over two in-memory buffers; then the client's
/// records are opened by our record layer and ours read by the client.
pub(super) mod in_memory {
    use super::*;
    use crate::tls::handshake::{Handshaker, Step};
    use crate::tls::record::{content, Event, MAX_PLAINTEXT};

    pub(in crate::tls) struct Pair {
        pub client: rustls::ClientConnection,
        pub(in crate::tls) est: crate::tls::Established,
    }

    /// Handshakes `client_cfg` against `server` in memory; returns both ends. `early` is
    /// written by the client at once: rustls sends it right behind its Finished, in the same
    /// flight, as browsers and OpenSSL do with their first request.
    pub(super) fn handshake_pair(
        server: Arc<rustls::ServerConfig>,
        client_cfg: Arc<rustls::ClientConfig>,
        early: &[u8],
    ) -> Result<Pair, rustls::Error> {
        let name = ServerName::try_from("shop.example.com").unwrap();
        let mut client = rustls::ClientConnection::new(client_cfg, name).unwrap();
        client.writer().write_all(early).unwrap();
        let mut hs = Handshaker::new(server.clone())?;
        let mut incoming = Vec::new();
        let mut out = Vec::new();
        for _ in 0..64 {
            while client.wants_write() {
                client.write_tls(&mut incoming).unwrap();
            }
            match hs.advance(&mut incoming, &mut out)? {
                Step::Done => {
                    let est = hs.finish(incoming, &server.alpn_protocols, false)?;
                    let mut slice = &out[..];
                    while !slice.is_empty() {
                        client.read_tls(&mut slice).unwrap();
                        client.process_new_packets()?;
                    }
                    return Ok(Pair { client, est });
                }
                Step::Send => {
                    let mut slice = &out[..];
                    while !slice.is_empty() {
                        client.read_tls(&mut slice).unwrap();
                        client.process_new_packets()?;
                    }
                    out.clear();
                }
                Step::Read => {
                    if !client.wants_write() {
                        panic!("both sides wait");
                    }
                }
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn handshake_completes_in_memory() {
        let site = site("shop.example.com");
        let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &["h2".into()]).unwrap();
        let pair = handshake_pair(config, client_config(&site, &[&rustls::version::TLS13]), b"").unwrap();
        assert!(!pair.client.is_handshaking());
        assert!(pair.est.leftover.is_empty());
        let _ = (content::APPLICATION_DATA, MAX_PLAINTEXT, Event::Closed);
    }
}

mod data_in_memory {
    use super::in_memory::handshake_pair;
    use super::*;
    use crate::tls::record::{content, Event};

    #[test]
    fn records_both_ways() {
        let site = site("shop.example.com");
        let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
        // "ping" comes behind the client's Finished (a regression: the handshake decrypted it
        // and failed with "unexpected state ReadTraffic" when both arrived in one read).
        let mut pair = handshake_pair(config, client_config(&site, &[&rustls::version::TLS13]), b"ping").unwrap();
        let mut buf = std::mem::take(&mut pair.est.leftover);
        assert!(!buf.is_empty(), "the first request is the handshake's leftover");
        let s = &mut pair.est.session;
        let len = s.record_len(&buf).unwrap().unwrap();
        let ev = s.open(&mut buf[..len]).unwrap();
        match ev {
            Event::Data(r) => assert_eq!(&buf[r], b"ping"),
            e => panic!("{e:?}"),
        }
        let mut rec = vec![0u8; 100];
        let p = s.prefix();
        rec[p..p + 4].copy_from_slice(b"pong");
        let n = s.seal(content::APPLICATION_DATA, &mut rec, 4).unwrap();
        let mut slice = &rec[..n];
        pair.client.read_tls(&mut slice).unwrap();
        pair.client.process_new_packets().unwrap();
        let mut got = [0u8; 4];
        pair.client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
    }
}

/// Our record layer against rustls's, for every cipher suite rustls negotiates here.
pub(super) mod record_layer {
    use super::in_memory::{handshake_pair, Pair};
    use super::*;
    use crate::tls::record::{alert, content, Event, Fatal, MAX_PLAINTEXT};

    /// Every suite of the provider that an ECDSA certificate can serve (the RSA ones of TLS 1.2
    /// use the same three AEADs).
    pub(in crate::tls) fn suites() -> Vec<rustls::SupportedCipherSuite> {
        let all = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        let usable: Vec<_> = all
            .into_iter()
            .filter(|s| s.version() == &rustls::version::TLS13 || format!("{:?}", s.suite()).contains("ECDSA"))
            .collect();
        assert_eq!(usable.len(), 6, "three TLS 1.3 suites, three TLS 1.2 ECDSA ones");
        usable
    }

    /// A client offering only `suite`, handshaken with our server.
    pub(in crate::tls) fn pair_for(suite: rustls::SupportedCipherSuite, early: &[u8]) -> Pair {
        let site = site("shop.example.com");
        let server = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[suite.version()])
            .unwrap()
            .with_root_certificates(site.roots.clone())
            .with_no_client_auth();
        let pair = handshake_pair(server, Arc::new(client), early).unwrap();
        assert_eq!(pair.client.negotiated_cipher_suite(), Some(suite));
        pair
    }

    /// What the client has written so far, as wire bytes.
    fn from_client(pair: &mut Pair) -> Vec<u8> {
        let mut wire = std::mem::take(&mut pair.est.leftover);
        while pair.client.wants_write() {
            pair.client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Opens every record of `wire`; the plaintext and whether close_notify came.
    fn open_all(pair: &mut Pair, wire: &mut [u8]) -> Result<(Vec<u8>, bool), Fatal> {
        let (mut plain, mut closed) = (Vec::new(), false);
        let mut at = 0;
        while at < wire.len() {
            let len = pair.est.session.record_len(&wire[at..])?.expect("whole records");
            match pair.est.session.open(&mut wire[at..at + len])? {
                Event::Data(r) => plain.extend_from_slice(&wire[at + r.start..at + r.end]),
                Event::Closed => closed = true,
                Event::Nothing => {}
            }
            at += len;
        }
        Ok((plain, closed))
    }

    /// Seals `data` in records of at most 16 KiB, as the relay does (`reserve` first: a
    /// KeyUpdate the client asked for goes before them).
    fn seal_all(pair: &mut Pair, data: &[u8]) -> Vec<u8> {
        let s = &mut pair.est.session;
        let (prefix, suffix) = (s.prefix(), s.suffix());
        let mut wire = Vec::new();
        s.reserve(data.len().div_ceil(MAX_PLAINTEXT) as u64, &mut wire).unwrap();
        for chunk in data.chunks(MAX_PLAINTEXT) {
            let mut rec = vec![0u8; prefix + chunk.len() + suffix];
            rec[prefix..prefix + chunk.len()].copy_from_slice(chunk);
            let n = s.seal(content::APPLICATION_DATA, &mut rec, chunk.len()).unwrap();
            assert_eq!(n, rec.len());
            wire.extend_from_slice(&rec);
        }
        wire
    }

    /// Feeds `wire` to the client; what it could read, or its error.
    fn to_client(pair: &mut Pair, wire: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut got = Vec::new();
        let mut slice = wire;
        while !slice.is_empty() {
            pair.client.read_tls(&mut slice).unwrap();
            let io = pair.client.process_new_packets()?;
            let mut chunk = vec![0u8; io.plaintext_bytes_to_read()];
            pair.client.reader().read_exact(&mut chunk).unwrap();
            got.extend_from_slice(&chunk);
        }
        Ok(got)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn every_suite_carries_data_both_ways_and_closes() {
        for suite in suites() {
            let first = pattern(300, 1);
            let mut pair = pair_for(suite, &first);
            assert!(crate::tls::relay::geometry_fits(&pair.est.session), "{suite:?}: four records fit a buffer");
            let up = pattern(40_000, 2);
            pair.client.writer().write_all(&up).unwrap();
            let mut wire = from_client(&mut pair);
            let (plain, closed) = open_all(&mut pair, &mut wire).unwrap();
            assert_eq!(plain, [first, up].concat(), "{suite:?}");
            assert!(!closed);
            let down = pattern(MAX_PLAINTEXT * 2 + 77, 3);
            let wire = seal_all(&mut pair, &down);
            assert_eq!(to_client(&mut pair, &wire).unwrap(), down, "{suite:?}");
            // Our close_notify: the client sees a clean end.
            let mut bye = Vec::new();
            pair.est.session.seal_alert(alert::CLOSE_NOTIFY, &mut bye);
            assert!(to_client(&mut pair, &bye).unwrap().is_empty());
            assert!(pair.client.process_new_packets().unwrap().peer_has_closed(), "{suite:?}");
            // The client's close_notify: Closed, and nothing after it counts.
            pair.client.send_close_notify();
            let mut wire = from_client(&mut pair);
            assert!(open_all(&mut pair, &mut wire).unwrap().1, "{suite:?}");
        }
    }

    /// The client updates its keys (asking for ours too) between writes, three times (twice in
    /// a row the last time): our KeyUpdate goes before our next data, one for both requests;
    /// data keeps flowing both ways under the new keys.
    #[test]
    fn key_updates_from_the_client_turn_both_directions_over() {
        for suite in suites().into_iter().filter(|s| s.version() == &rustls::version::TLS13) {
            let mut pair = pair_for(suite, b"");
            for round in 0..3u8 {
                pair.client.writer().write_all(&pattern(1000, round)).unwrap();
                pair.client.refresh_traffic_keys().unwrap();
                pair.client.writer().write_all(&pattern(20_000, round + 10)).unwrap();
                if round == 2 {
                    pair.client.refresh_traffic_keys().unwrap();
                    pair.client.writer().write_all(b"!").unwrap();
                }
                let mut wire = from_client(&mut pair);
                let (plain, _) = open_all(&mut pair, &mut wire).unwrap();
                let tail: &[u8] = if round == 2 { b"!" } else { b"" };
                assert_eq!(plain, [pattern(1000, round), pattern(20_000, round + 10), tail.to_vec()].concat());
                let down = pattern(5000, round + 20);
                let sealed = seal_all(&mut pair, &down);
                let plain_records = 5000 + pair.est.session.prefix() + pair.est.session.suffix();
                assert!(sealed.len() > plain_records, "{suite:?}: no KeyUpdate before the data");
                assert!(sealed.len() < plain_records + 64, "{suite:?}: one KeyUpdate for two requests");
                assert_eq!(to_client(&mut pair, &sealed).unwrap(), down, "{suite:?} round {round}");
            }
        }
    }

    #[test]
    fn a_corrupted_record_is_bad_record_mac_and_the_client_hears_it() {
        for suite in suites() {
            let mut pair = pair_for(suite, b"");
            pair.client.writer().write_all(b"secret").unwrap();
            let mut wire = from_client(&mut pair);
            let last = wire.len() - 1;
            wire[last] ^= 1;
            let f = open_all(&mut pair, &mut wire).unwrap_err();
            assert_eq!(f.alert, Some(alert::BAD_RECORD_MAC), "{suite:?}");
            let mut out = Vec::new();
            pair.est.session.seal_alert(alert::BAD_RECORD_MAC, &mut out);
            let err = to_client(&mut pair, &out).unwrap_err();
            assert!(matches!(err, rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)), "{err:?}");
            // Nothing is sealed after a fatal alert.
            let mut more = Vec::new();
            pair.est.session.seal_alert(alert::CLOSE_NOTIFY, &mut more);
            assert!(more.is_empty());
        }
    }

    /// At the confidentiality limit a TLS 1.3 key is replaced (our KeyUpdate, then the batch
    /// under the new key; the client reads on); a TLS 1.2 connection is closed instead.
    #[test]
    fn keys_are_replaced_at_their_confidentiality_limit() {
        for suite in suites() {
            let mut pair = pair_for(suite, b"");
            let start = pair.est.session.seqs().0;
            pair.est.session.set_limit(start + 5);
            let (mut wire, mut expected, mut updates) = (Vec::new(), Vec::new(), 0);
            for round in 0..6u8 {
                let mut ctl = Vec::new();
                match pair.est.session.reserve(2, &mut ctl) {
                    Ok(()) => {}
                    Err(f) => {
                        assert_eq!(suite.version(), &rustls::version::TLS12, "{suite:?}: {f}");
                        assert_eq!(f.alert, Some(alert::CLOSE_NOTIFY));
                        assert!(round >= 1);
                        break;
                    }
                }
                updates += usize::from(!ctl.is_empty());
                wire.extend_from_slice(&ctl);
                let data = pattern(MAX_PLAINTEXT + 10, round);
                wire.extend_from_slice(&seal_all(&mut pair, &data));
                expected.extend_from_slice(&data);
            }
            assert_eq!(to_client(&mut pair, &wire).unwrap(), expected, "{suite:?}");
            if suite.version() == &rustls::version::TLS13 {
                assert_eq!(updates, 2, "{suite:?}: 12 records, 5 per key");
            }
        }
    }

    /// The client's side of the record layer, built from the secrets its rustls connection
    /// extracts: seals records rustls would never send (bad messages, bad alerts).
    struct RawClient {
        key: aws_lc_rs::aead::LessSafeKey,
        iv: [u8; 12],
        seq: u64,
        tls13: bool,
    }

    impl RawClient {
        /// A pair for `suite` whose client keys are taken over by a `RawClient`.
        fn new(suite: rustls::SupportedCipherSuite) -> (crate::tls::record::Session, RawClient) {
            let site = site("shop.example.com");
            let server = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::aws_lc_rs::default_provider()
            };
            let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[suite.version()])
                .unwrap()
                .with_root_certificates(site.roots.clone())
                .with_no_client_auth();
            client.enable_secret_extraction = true;
            let mut pair = handshake_pair(server, Arc::new(client), b"").unwrap();
            // TLS 1.2: the client's Finished went out under its keys; nothing else is pending.
            let mut rest = from_client(&mut pair);
            open_all(&mut pair, &mut rest).unwrap();
            let secrets = pair.client.dangerous_extract_secrets().unwrap();
            let (seq, tx) = secrets.tx;
            let (key, iv) = crate::tls::record::key_and_iv(&tx).unwrap();
            let alg = match tx {
                rustls::ConnectionTrafficSecrets::Aes128Gcm { .. } => &aws_lc_rs::aead::AES_128_GCM,
                rustls::ConnectionTrafficSecrets::Aes256Gcm { .. } => &aws_lc_rs::aead::AES_256_GCM,
                _ => &aws_lc_rs::aead::CHACHA20_POLY1305,
            };
            let raw = RawClient {
                key: aws_lc_rs::aead::LessSafeKey::new(aws_lc_rs::aead::UnboundKey::new(alg, key).unwrap()),
                iv: iv.try_into().unwrap(),
                seq,
                tls13: suite.version() == &rustls::version::TLS13,
            };
            (*pair.est.session, raw)
        }

        /// One record of content type `typ` carrying `payload` (TLS 1.3: inner type, no padding;
        /// TLS 1.2 AES-GCM: explicit nonce).
        fn seal(&mut self, typ: u8, payload: &[u8]) -> Vec<u8> {
            use aws_lc_rs::aead::{Aad, Nonce};
            let mut nonce = self.iv;
            for (b, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
                *b ^= s;
            }
            let mut rec;
            if self.tls13 {
                let len = payload.len() + 1 + 16;
                rec = vec![23, 3, 3, (len >> 8) as u8, len as u8];
                rec.extend_from_slice(payload);
                rec.push(typ);
                let aad: [u8; 5] = rec[..5].try_into().unwrap();
                let tag = self
                    .key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut rec[5..])
                    .unwrap();
                rec.extend_from_slice(tag.as_ref());
            } else {
                let len = 8 + payload.len() + 16;
                rec = vec![typ, 3, 3, (len >> 8) as u8, len as u8];
                rec.extend_from_slice(&nonce[4..]);
                rec.extend_from_slice(payload);
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.seq.to_be_bytes());
                aad[8] = typ;
                aad[9..11].copy_from_slice(&[3, 3]);
                aad[11..].copy_from_slice(&(payload.len() as u16).to_be_bytes());
                let tag = self
                    .key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut rec[13..])
                    .unwrap();
                rec.extend_from_slice(tag.as_ref());
            }
            self.seq += 1;
            rec
        }
    }

    fn open_one(s: &mut crate::tls::record::Session, mut rec: Vec<u8>) -> Result<Event, Option<u8>> {
        assert_eq!(s.record_len(&rec).map_err(|f| f.alert)?, Some(rec.len()));
        s.open(&mut rec).map_err(|f| f.alert)
    }

    fn tls13_suite() -> rustls::SupportedCipherSuite {
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
    }

    #[test]
    fn records_rustls_would_refuse_get_its_alerts() {
        use content::{ALERT, APPLICATION_DATA as DATA, CHANGE_CIPHER_SPEC as CCS, HANDSHAKE};
        let cases: &[(&str, u8, &[u8], Option<u8>)] = &[
            ("a Finished after the handshake", HANDSHAKE, &[20, 0, 0, 4, 1, 2, 3, 4], Some(alert::UNEXPECTED_MESSAGE)),
            ("a key update asking for 2", HANDSHAKE, &[24, 0, 0, 1, 2], Some(alert::ILLEGAL_PARAMETER)),
            ("a key update of length 2", HANDSHAKE, &[24, 0, 0, 2, 0, 0], Some(alert::UNEXPECTED_MESSAGE)),
            ("a key update and more", HANDSHAKE, &[24, 0, 0, 1, 0, 24], Some(alert::UNEXPECTED_MESSAGE)),
            ("an alert of 3 bytes", ALERT, &[1, 0, 0], Some(alert::DECODE_ERROR)),
            ("an alert of level 3", ALERT, &[3, 40], Some(alert::ILLEGAL_PARAMETER)),
            ("a TLS 1.3 warning", ALERT, &[1, 40], Some(alert::DECODE_ERROR)),
            ("a fatal alert", ALERT, &[2, 40], None),
            ("a protected change_cipher_spec", CCS, &[1], Some(alert::UNEXPECTED_MESSAGE)),
            ("a heartbeat", 24, &[1, 0, 0], Some(alert::UNEXPECTED_MESSAGE)),
        ];
        for (what, typ, payload, expected) in cases {
            let (mut s, mut c) = RawClient::new(tls13_suite());
            assert_eq!(open_one(&mut s, c.seal(DATA, b"ok")), Ok(Event::Data(5..7)), "{what}");
            assert_eq!(open_one(&mut s, c.seal(*typ, payload)), Err(*expected), "{what}");
        }
        // Plaintext over 2^14 bytes, a record without a content type (all padding).
        let (mut s, mut c) = RawClient::new(tls13_suite());
        assert_eq!(open_one(&mut s, c.seal(DATA, &vec![7; MAX_PLAINTEXT + 1])), Err(Some(alert::RECORD_OVERFLOW)));
        let (mut s, mut c) = RawClient::new(tls13_suite());
        assert_eq!(open_one(&mut s, c.seal(0, &[0, 0])), Err(Some(alert::UNEXPECTED_MESSAGE)));
    }

    #[test]
    fn limits_on_warnings_empty_records_and_key_updates() {
        use content::{ALERT, APPLICATION_DATA as DATA};
        let (mut s, mut c) = RawClient::new(tls13_suite());
        for _ in 0..4 {
            assert_eq!(open_one(&mut s, c.seal(ALERT, &[1, alert::USER_CANCELED])), Ok(Event::Nothing));
        }
        assert_eq!(open_one(&mut s, c.seal(ALERT, &[1, alert::USER_CANCELED])), Err(Some(alert::UNEXPECTED_MESSAGE)));
        let (mut s, mut c) = RawClient::new(tls13_suite());
        for _ in 0..32 {
            assert_eq!(open_one(&mut s, c.seal(DATA, b"")), Ok(Event::Data(5..5)));
        }
        assert_eq!(open_one(&mut s, c.seal(DATA, b"x")), Ok(Event::Data(5..6)), "data resets the count");
        for _ in 0..32 {
            assert_eq!(open_one(&mut s, c.seal(DATA, b"")), Ok(Event::Data(5..5)));
        }
        assert_eq!(open_one(&mut s, c.seal(DATA, b"")), Err(Some(alert::UNEXPECTED_MESSAGE)));
    }

    /// A KeyUpdate split over two records is one KeyUpdate: after it the client's old keys no
    /// longer open anything. Data between its two halves is refused.
    #[test]
    fn a_key_update_may_span_records_but_nothing_may_interleave() {
        use content::{APPLICATION_DATA as DATA, HANDSHAKE};
        let (mut s, mut c) = RawClient::new(tls13_suite());
        assert_eq!(open_one(&mut s, c.seal(HANDSHAKE, &[24, 0])), Ok(Event::Nothing));
        assert_eq!(open_one(&mut s, c.seal(HANDSHAKE, &[0, 1, 0])), Ok(Event::Nothing));
        assert_eq!(open_one(&mut s, c.seal(DATA, b"old key")), Err(Some(alert::BAD_RECORD_MAC)));
        let (mut s, mut c) = RawClient::new(tls13_suite());
        assert_eq!(open_one(&mut s, c.seal(HANDSHAKE, &[24, 0, 0])), Ok(Event::Nothing));
        assert_eq!(open_one(&mut s, c.seal(DATA, b"x")), Err(Some(alert::UNEXPECTED_MESSAGE)));
    }

    #[test]
    fn tls12_refuses_handshake_messages_and_takes_warnings() {
        use content::{ALERT, APPLICATION_DATA as DATA, HANDSHAKE};
        let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
        let (mut s, mut c) = RawClient::new(suite);
        assert_eq!(open_one(&mut s, c.seal(DATA, b"ok")), Ok(Event::Data(13..15)));
        assert_eq!(open_one(&mut s, c.seal(ALERT, &[1, 100])), Ok(Event::Nothing), "no_renegotiation warning");
        assert_eq!(open_one(&mut s, c.seal(HANDSHAKE, &[1, 0, 0, 0])), Err(Some(alert::UNEXPECTED_MESSAGE)));
    }

    #[test]
    fn plaintext_after_the_handshake_is_refused() {
        let mut pair = pair_for(tls13_suite(), b"");
        let s = &mut pair.est.session;
        assert_eq!(s.record_len(&[99, 3, 3, 0, 1]).unwrap_err().alert, Some(alert::DECODE_ERROR));
        assert_eq!(s.record_len(&[23, 4, 3, 0, 1]).unwrap_err().alert, Some(alert::DECODE_ERROR));
        assert_eq!(s.record_len(&[23, 3, 3, 0x41, 1]).unwrap_err().alert, Some(alert::RECORD_OVERFLOW));
        assert_eq!(s.record_len(&[21, 3, 3, 0, 0]).unwrap_err().alert, Some(alert::DECODE_ERROR));
        assert_eq!(s.record_len(&[23, 3, 3, 0]).unwrap(), None);
        let mut ccs = [20, 3, 3, 0, 1, 1];
        assert_eq!(s.open(&mut ccs).unwrap_err().alert, Some(alert::UNEXPECTED_MESSAGE));
        let _: Option<Fatal> = None;
    }
}

/// Our suite order, not the client's: AES-128-GCM (SHA-256 key schedule) for a client that
/// prefers AES-256-GCM (rustls and OpenSSL do), what it offers otherwise.
#[test]
fn the_server_picks_aes_128_gcm_whatever_the_client_prefers() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let site = site("shop.example.com");
    let server = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
    let cases = [
        (
            vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_CHACHA20_POLY1305_SHA256, cs::TLS13_AES_128_GCM_SHA256],
            cs::TLS13_AES_128_GCM_SHA256,
        ),
        (vec![cs::TLS13_CHACHA20_POLY1305_SHA256, cs::TLS13_AES_256_GCM_SHA384], cs::TLS13_AES_256_GCM_SHA384),
        (vec![cs::TLS13_CHACHA20_POLY1305_SHA256], cs::TLS13_CHACHA20_POLY1305_SHA256),
        (
            vec![cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ];
    for (offered, expected) in cases {
        let version = expected.version();
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: offered.clone(),
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(site.roots.clone())
            .with_no_client_auth();
        let pair = in_memory::handshake_pair(server.clone(), Arc::new(client), b"").unwrap();
        assert_eq!(pair.client.negotiated_cipher_suite(), Some(expected), "{offered:?}");
    }
}

/// A client that stops in the middle of a record, more than once: the relay keeps the part it
/// has (in a buffer of its size, not a record buffer) and completes the record when the rest
/// comes; nothing is lost or reordered.
#[test]
fn records_split_across_pauses_arrive_whole() {
    let site = site("shop.example.com");
    let config = crate::tls::server_config(site.key.clone(), TlsVersion::TLS12, &[]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (origin, origin_thread) = upper_origin();
    let client_cfg = client_config(&site, &[&rustls::version::TLS13]);
    let client = std::thread::spawn(move || {
        let name = ServerName::try_from("shop.example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        // Three records (1, 2000 and 17 bytes of text) and close_notify, sent in pieces that
        // end inside records, with pauses between them.
        let mut wire = Vec::new();
        for part in [&b"a"[..], &[b'b'; 2000][..], &b"the end of it all"[..]] {
            conn.writer().write_all(part).unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
        }
        conn.send_close_notify();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        for piece in [&wire[..3], &wire[3..30], &wire[30..1500], &wire[1500..]] {
            sock.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut got = Vec::new();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.read_to_end(&mut got).unwrap();
        got
    });
    let relayed = serve_one(listener, config, Some(origin)).unwrap();
    let got = client.join().unwrap();
    origin_thread.join().unwrap();
    let mut expected = b"A".to_vec();
    expected.extend_from_slice(&[b'B'; 2000]);
    expected.extend_from_slice(b"THE END OF IT ALL");
    assert_eq!(got, expected);
    assert_eq!((relayed.to_backend, relayed.end), (2018, End::Closed), "{relayed:?}");
}
