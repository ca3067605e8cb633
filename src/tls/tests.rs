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
        Ok(relay(&client, tls, &backend, Duration::from_secs(10)).await)
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
mod in_memory {
    use super::*;
    use crate::tls::handshake::{Handshaker, Step};
    use crate::tls::record::{content, Event, MAX_PLAINTEXT};

    pub(super) struct Pair {
        pub client: rustls::ClientConnection,
        pub est: crate::tls::Established,
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
        let mut reply = Vec::new();
        let ev = s.open(&mut buf[..len], &mut reply).unwrap();
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
