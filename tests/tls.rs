//! The TLS data path of terminate routes through the real binary: a rustls client that turns
//! its keys over (KeyUpdate, asking for ours) in the middle of 64 MiB downloads and uploads,
//! checksummed end to end; and each way a handshake can fail, provoked by a real client
//! (`openssl s_client`, a rustls client, or crafted hello bytes where no client sends them),
//! counted under its own drop reason.

mod common;

use common::*;
use rustls::pki_types::ServerName;
use sni_dispatch::pki;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const NAME: &str = "shop.example.com";
const STRICT: &str = "strict.example.com";
const H2ONLY: &str = "h2only.example.com";

/// A CA, a leaf for each test name, and a rustls client configuration trusting the CA.
struct Site {
    dir: tempfile::TempDir,
    client: Arc<rustls::ClientConfig>,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::new("tls test CA").unwrap();
        ca.write(dir.path(), "ca.pem").unwrap();
        pki::Ca::new("a CA nobody used").unwrap().write(dir.path(), "other-ca.pem").unwrap();
        for name in [NAME, STRICT, H2ONLY] {
            ca.issue(&[name]).unwrap().write(dir.path(), name).unwrap();
        }
        let mut client = pki::client_config(ca.der()).unwrap();
        // The download test reads the client's receive sequence number at the end.
        client.enable_secret_extraction = true;
        Self { dir, client: Arc::new(client) }
    }

    fn cert_lines(&self, name: &str) -> String {
        let p = |ext: &str| self.dir.path().join(format!("{name}.{ext}"));
        format!("cert = {:?}\nkey = {:?}\n", p("pem"), p("key"))
    }

    /// A CA that signed none of the site's certificates.
    fn other_ca(&self) -> String {
        self.dir.path().join("other-ca.pem").display().to_string()
    }
}

/// The bulk origin: one line of command per connection. `down N SEED`: N bytes of the
/// [`Stream`] `SEED`, then its FIN; `up N SEED`: reads N bytes and checks them against the
/// stream, answers `ok N` or `bad AT`. Anything else: an echo of the line.
fn bulk_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve_bulk(s));
        }
    });
    addr
}

fn serve_bulk(s: TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s.set_write_timeout(Some(IO_TIMEOUT)).ok();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let arg = |i: usize| words.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    match words.first().copied() {
        Some("down") => {
            let (n, mut stream, mut chunk) = (arg(1), Stream::new(arg(2)), Vec::new());
            while stream.position() < n {
                let k = (n - stream.position()).min(1 << 16) as usize;
                stream.next_chunk(&mut chunk, k);
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = w.shutdown(Shutdown::Write);
            let _ = r.read_to_end(&mut Vec::new());
        }
        Some("up") => {
            let (n, mut stream, mut scratch) = (arg(1), Stream::new(arg(2)), Vec::new());
            let mut buf = vec![0u8; 1 << 16];
            let mut verdict = None;
            while stream.position() < n {
                let k = ((n - stream.position()) as usize).min(buf.len());
                match r.read(&mut buf[..k]) {
                    Ok(0) | Err(_) => {
                        verdict = Some(format!("bad short {}\n", stream.position()));
                        break;
                    }
                    Ok(m) => {
                        let at = stream.position();
                        if !stream.verify(&buf[..m], &mut scratch) {
                            verdict = Some(format!("bad at {at}\n"));
                            break;
                        }
                    }
                }
            }
            let _ = w.write_all(verdict.unwrap_or(format!("ok {n}\n")).as_bytes());
        }
        Some("echo") => {
            let (n, mut left, mut buf) = (arg(1), arg(1), vec![0u8; 1 << 16]);
            while left > 0 {
                match r.read(&mut buf[..(left as usize).min(1 << 16)]) {
                    Ok(0) | Err(_) => return,
                    Ok(m) => {
                        if w.write_all(&buf[..m]).is_err() {
                            return;
                        }
                        left -= m as u64;
                    }
                }
            }
            let _ = (n, w.shutdown(Shutdown::Write));
            let _ = r.read_to_end(&mut Vec::new());
        }
        _ => {
            let _ = w.write_all(line.as_bytes());
        }
    }
}

/// The binary with one worker, routes for the test names to `origin`, `--admin`; `extra` goes
/// into `[runtime]`.
fn edge(site: &Site, origin: SocketAddr, extra: &str) -> (Proc, ConfigFile, SocketAddr, SocketAddr) {
    let port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        "[runtime]\nworkers = 1\nhello_timeout_ms = 10000\n{extra}\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\n\
         [[route]]\nname = \"shop\"\nsni = [\"{NAME}\"]\naction = \"terminate\"\n{}backends = [\"{origin}\"]\n\
         [[route]]\nname = \"strict\"\nsni = [\"{STRICT}\"]\nmin_tls = \"1.3\"\naction = \"terminate\"\n{}backends = [\"{origin}\"]\n\
         [[route]]\nname = \"h2only\"\nsni = [\"{H2ONLY}\"]\nalpn = [\"h2\"]\naction = \"terminate\"\n{}backends = [\"{origin}\"]\n",
        site.cert_lines(NAME),
        site.cert_lines(STRICT),
        site.cert_lines(H2ONLY),
    );
    let cfg = config_file(&toml);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let admin_arg = admin.to_string();
    let proc = spawn_binary(&cfg, &["--admin", &admin_arg], addr);
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(admin).is_ok()), "no admin endpoint");
    (proc, cfg, addr, admin)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(site: &Site, addr: SocketAddr, name: &str) -> Tls {
    let conn =
        rustls::ClientConnection::new(site.client.clone(), ServerName::try_from(name.to_owned()).unwrap()).unwrap();
    Tls::new(conn, connect(addr))
}

const BULK: u64 = 64 << 20;
/// The client turns its keys over after every this many bytes.
const KEY_UPDATE_EVERY: u64 = 8 << 20;

/// 64 MiB from the origin through the route, the client asking for a key update every 8 MiB
/// (rustls then answers with its own KeyUpdate behind whatever download records are queued):
/// every byte arrives, in order, and the download ends with close_notify. The client's receive
/// sequence number at the end shows that the server's keys turned over too.
#[test]
fn key_updates_in_the_middle_of_a_64_mib_download() {
    let site = Site::new();
    let (_proc, _cfg, addr, _admin) = edge(&site, bulk_origin(), "");
    // A small receive buffer: the server can then be only a few hundred KiB ahead of what the
    // client has read, so the key update the client asks for at 8 MiB is answered well before
    // the end (with the 32 MiB a loopback socket may autotune to, plus the server's send
    // buffer, a slow client under a loaded CI once read all 64 MiB under the server's first key).
    let sock = connect(addr);
    socket2::SockRef::from(&sock).set_recv_buffer_size(256 << 10).unwrap();
    let conn =
        rustls::ClientConnection::new(site.client.clone(), ServerName::try_from(NAME.to_owned()).unwrap()).unwrap();
    let mut tls = Tls::new(conn, sock);
    tls.write_all(format!("down {BULK} 7\n").as_bytes()).unwrap();
    tls.flush().unwrap();
    let (mut stream, mut scratch, mut buf) = (Stream::new(7), Vec::new(), vec![0u8; 1 << 16]);
    let mut next_update = KEY_UPDATE_EVERY;
    let mut updates = 0;
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("download broke after {} bytes ({updates} key updates): {e}", stream.position()),
        };
        let at = stream.position();
        assert!(stream.verify(&buf[..n], &mut scratch), "download differs at byte {at}");
        if stream.position() >= next_update && stream.position() < BULK {
            tls.conn.refresh_traffic_keys().unwrap();
            tls.flush().unwrap();
            updates += 1;
            next_update += KEY_UPDATE_EVERY;
        }
    }
    assert_eq!(stream.position(), BULK, "the whole download ({updates} key updates)");
    assert_eq!(updates, 7);
    // Without the server's KeyUpdates the client would have read all 4096 records and more
    // under one key. The server answers each request before its next data record, and it may
    // be megabytes ahead (socket buffers): the last requests may come after its last record,
    // but the first ones were answered 56 MiB before the end, so the count restarted at least
    // once.
    let secrets = tls.conn.dangerous_extract_secrets().unwrap();
    assert!(secrets.rx.0 < 3600, "server keys never turned over: {} records under the last", secrets.rx.0);
}

/// 64 MiB to the origin, a key update every 8 MiB: the origin checks every byte and answers
/// through the server's new keys.
#[test]
fn key_updates_in_the_middle_of_a_64_mib_upload() {
    let site = Site::new();
    let (_proc, _cfg, addr, _admin) = edge(&site, bulk_origin(), "");
    let mut tls = tls_connect(&site, addr, NAME);
    tls.write_all(format!("up {BULK} 11\n").as_bytes()).unwrap();
    let (mut stream, mut chunk) = (Stream::new(11), Vec::new());
    let mut updates = 0;
    while stream.position() < BULK {
        stream.next_chunk(&mut chunk, 1 << 20);
        tls.write_all(&chunk).unwrap();
        if stream.position() % KEY_UPDATE_EVERY == 0 && stream.position() < BULK {
            tls.conn.refresh_traffic_keys().unwrap();
            updates += 1;
        }
    }
    tls.flush().unwrap();
    let mut answer = String::new();
    BufReader::new(&mut tls).read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("ok {BULK}\n"), "{updates} key updates");
    assert_eq!(updates, 7);
}

/// Both directions at once: 16 MiB up and the same 16 MiB echoed back down on one connection,
/// the client turning its keys over every 256 KiB it sends, so KeyUpdates of both ends cross
/// data in flight both ways (the server answers each behind the download records it queued).
#[test]
fn key_updates_while_both_directions_stream() {
    const N: u64 = 16 << 20;
    let site = Site::new();
    let (_proc, _cfg, addr, _admin) = edge(&site, bulk_origin(), "");
    let name = ServerName::try_from(NAME.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(site.client.clone(), name).unwrap();
    let mut sock = connect(addr);
    conn.writer().write_all(format!("echo {N} 0\n").as_bytes()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let (mut up, mut down) = (Stream::new(5), Stream::new(5));
    let (mut chunk, mut scratch, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 1 << 16]);
    let (mut at, mut updates) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while down.position() < N {
        assert!(std::time::Instant::now() < deadline, "stuck at {} up, {} down", up.position(), down.position());
        let mut progress = false;
        // 256 KiB at a time into rustls (as much as its buffer takes), then a key update.
        if at == chunk.len() && up.position() < N && !conn.is_handshaking() {
            up.next_chunk(&mut chunk, 1 << 18);
            at = 0;
        }
        if at < chunk.len() && !conn.wants_write() {
            at += conn.writer().write(&chunk[at..]).unwrap();
            if at == chunk.len() && up.position() < N {
                conn.refresh_traffic_keys().unwrap();
                updates += 1;
            }
            progress = true;
        }
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => progress = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => panic!("EOF after {} of {N} bytes back", down.position()),
            Ok(_) => {
                progress = true;
                conn.process_new_packets().unwrap();
                loop {
                    match conn.reader().read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let at = down.position();
                            assert!(down.verify(&buf[..n], &mut scratch), "echo differs at {at}");
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read_tls: {e}"),
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!((up.position(), down.position()), (N, N));
    assert_eq!(updates, 63);
}

// ---- drop reasons ------------------------------------------------------------------------

/// `openssl s_client` with `args` against `addr` (SNI `name`); its output.
fn s_client(addr: SocketAddr, name: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect", &addr.to_string(), "-servername", name])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The value of `sni_dispatch_connections_dropped_total{reason="REASON"}` on `admin`.
fn dropped(admin: SocketAddr, reason: &str) -> u64 {
    let (_, _, body) = http_raw(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let key = format!("sni_dispatch_connections_dropped_total{{reason=\"{reason}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Every TLS drop reason the binary counts, with its count.
fn tls_drops(admin: SocketAddr) -> Vec<(String, u64)> {
    let (_, _, body) = http_raw(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    body.lines()
        .filter_map(|l| l.strip_prefix("sni_dispatch_connections_dropped_total{reason=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(r, v)| (r.to_owned(), v.trim().parse().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Runs `provoke`, then waits (bounded) for `reason` to count one more drop, and checks that it
/// was the only reason that moved.
fn expect_drop(admin: SocketAddr, reason: &str, what: &str, provoke: impl FnOnce() -> String) {
    let before = tls_drops(admin);
    let out = provoke();
    let moved = wait_until(Duration::from_secs(10), || dropped(admin, reason) > before_of(&before, reason));
    let after = tls_drops(admin);
    assert!(moved, "{what}: no {reason} drop; drops {after:?}\nclient: {out}");
    // `client_closed`: the probes that waited for the listener (connect, then close).
    let others: Vec<_> =
        after.iter().filter(|(r, v)| r != reason && r != "client_closed" && *v != before_of(&before, r)).collect();
    assert!(others.is_empty(), "{what}: counted as {others:?} too");
}

fn before_of(before: &[(String, u64)], reason: &str) -> u64 {
    before.iter().find(|(r, _)| r == reason).map(|(_, v)| *v).unwrap_or(0)
}

/// How [`crafted_hello`] departs from a plain TLS 1.3 hello.
#[derive(Clone, Copy)]
struct Craft {
    /// Cipher suites offered (TLS_AES_128_GCM_SHA256 and unknown ones).
    ciphers: usize,
    /// Bytes of the x25519 key share (32 is right).
    share_len: usize,
    /// Bytes of an unknown extension.
    padding: usize,
    /// The compression methods (`[0]`: null only, as TLS 1.3 requires).
    compression: &'static [u8],
}

const PLAIN: Craft = Craft { ciphers: 1, share_len: 32, padding: 0, compression: &[0] };

/// A TLS 1.3 ClientHello for `sni`, built field by field so that a test can make it what no
/// client sends ([`Craft`]). Framed in records of 16 KiB.
fn crafted_hello(sni: &str, c: Craft) -> Vec<u8> {
    let Craft { ciphers, share_len, padding, compression } = c;
    fn ext(out: &mut Vec<u8>, typ: u16, body: &[u8]) {
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut exts = Vec::new();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    sn.extend_from_slice(sni.as_bytes());
    ext(&mut exts, 0, &sn);
    ext(&mut exts, 43, &[2, 3, 4]); // supported_versions: TLS 1.3
    ext(&mut exts, 10, &[0, 2, 0, 29]); // supported_groups: x25519
    ext(&mut exts, 13, &[0, 2, 4, 3]); // signature_algorithms: ecdsa_secp256r1_sha256
    let mut ks = Vec::new();
    ks.extend_from_slice(&((share_len + 4) as u16).to_be_bytes());
    ks.extend_from_slice(&[0, 29]);
    ks.extend_from_slice(&(share_len as u16).to_be_bytes());
    ks.extend((0..share_len).map(|i| (i * 7 + 9) as u8));
    ext(&mut exts, 51, &ks); // key_share
    if padding > 0 {
        ext(&mut exts, 0xfe77, &vec![0u8; padding]);
    }
    let mut body = vec![3, 3];
    body.extend((0..32).map(|i| i as u8));
    body.push(0); // session id
    let suites: Vec<u16> =
        std::iter::once(0x1301).chain((0..ciphers.saturating_sub(1)).map(|i| 0x3000 + i as u16)).collect();
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.push(compression.len() as u8);
    body.extend_from_slice(compression);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut out = Vec::new();
    for part in hs.chunks(16 * 1024) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The ClientHello of a rustls client that speaks TLS 1.2 only.
fn tls12_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(NAME).unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Sends `bytes` on a plain TCP connection and reads what comes back until the server closes.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = connect(addr);
    let _ = c.write_all(bytes);
    let got = read_to_end(&mut c).unwrap_or_default();
    // An alert record: type 21, then level and description.
    match got.windows(2).position(|w| w == [21, 3]) {
        Some(at) if got.len() >= at + 7 => format!("alert level {} description {}", got[at + 5], got[at + 6]),
        _ => format!("{} bytes, no alert", got.len()),
    }
}

#[test]
fn each_handshake_failure_has_its_drop_reason() {
    let site = Site::new();
    let (_proc, _cfg, addr, admin) = edge(&site, bulk_origin(), "max_hello_bytes = 131072");
    let other_ca = site.other_ca();
    expect_drop(admin, "tls_no_common_cipher", "TLS 1.3 with CCM only", || {
        s_client(addr, NAME, &["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"])
    });
    expect_drop(admin, "tls_no_common_cipher", "TLS 1.2 with CBC only", || {
        s_client(addr, NAME, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"])
    });
    expect_drop(admin, "tls_no_common_group", "ffdhe2048 only", || {
        s_client(addr, NAME, &["-tls1_3", "-groups", "ffdhe2048"])
    });
    expect_drop(admin, "tls_no_common_signature", "RSA-PSS only for an ECDSA certificate", || {
        s_client(addr, NAME, &["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"])
    });
    expect_drop(admin, "tls_version", "TLS 1.2 on a min_tls 1.3 route", || s_client(addr, STRICT, &["-tls1_2"]));
    expect_drop(admin, "tls_no_alpn", "http/1.1 only on an h2 route", || {
        s_client(addr, H2ONLY, &["-alpn", "http/1.1"])
    });
    expect_drop(admin, "tls_cert_rejected", "a client that does not trust the CA", || {
        s_client(addr, NAME, &["-verify_return_error", "-CAfile", &other_ca])
    });
    // Hellos no client sends, crafted: within max_hello_bytes, so the dispatcher routes them
    // and rustls refuses.
    expect_drop(admin, "tls_hello_too_large", "a 70 KB ClientHello (rustls takes 64 KiB)", || {
        raw_exchange(addr, &crafted_hello(NAME, Craft { ciphers: 30_000, padding: 12_000, ..PLAIN }))
    });
    expect_drop(admin, "tls_protocol_violation", "an x25519 key share of 31 bytes", || {
        raw_exchange(addr, &crafted_hello(NAME, Craft { share_len: 31, ..PLAIN }))
    });
    expect_drop(admin, "tls_incompatible", "a hello without null compression", || {
        raw_exchange(addr, &crafted_hello(NAME, Craft { compression: &[1], ..PLAIN }))
    });
    // A TLS 1.2 client (rustls) that sends its ClientHello again where its key exchange belongs.
    let hello12 = tls12_hello();
    expect_drop(admin, "tls_bad_message", "a second ClientHello in place of the key exchange", || {
        raw_exchange(addr, &[hello12.clone(), hello12.clone()].concat())
    });
    let hello = rustls_hello(Some(NAME), &[]);
    expect_drop(admin, "tls_client_alert", "a client that gives up with handshake_failure", || {
        raw_exchange(addr, &[hello.clone(), vec![21, 3, 3, 0, 2, 2, 40]].concat())
    });
    expect_drop(admin, "tls_client_closed", "a client that leaves after its hello", || {
        let mut c = connect(addr);
        c.write_all(&hello).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        format!("{:?}", read_to_end(&mut c).map(|v| v.len()))
    });
    // None of them is below_min_tls any more: that is passthrough's (and the hello parser's).
    assert_eq!(dropped(admin, "below_min_tls"), 0);
}

// ---- kernel TLS ----------------------------------------------------------------------------

/// Whether this kernel offers TLS (the probe the binary makes: `TCP_ULP "tls"` on a fresh TCP
/// socket answers ENOTCONN where the module is there, ENOENT where it is not).
fn kernel_has_tls() -> bool {
    let out = Command::new("python3")
        .args(["-c", "import socket\ns=socket.socket()\ntry:\n  s.setsockopt(socket.SOL_TCP, 31, b'tls')\n  print('yes')\nexcept OSError as e:\n  print('yes' if e.errno == 107 else 'no')"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// `ktls = "on"` is refused by `check` on a kernel without TLS, naming the key and the reason;
/// `"auto"` starts, says once at start what it found, and serves terminated connections either
/// way (in user space here), KeyUpdate included.
#[test]
fn ktls_is_detected_at_start_and_skipped_where_the_kernel_lacks_it() {
    let site = Site::new();
    let origin = bulk_origin();
    let has_tls = kernel_has_tls();
    let toml = |mode: &str| {
        format!(
            "[runtime]\nktls = \"{mode}\"\n[[listener]]\naddress = \"127.0.0.1:{}\"\n\
             [[route]]\nname = \"shop\"\nsni = [\"{NAME}\"]\naction = \"terminate\"\n{}backends = [\"{origin}\"]\n",
            free_port(),
            site.cert_lines(NAME)
        )
    };
    let on = config_file(&toml("on"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_sni-dispatch")).args(["check", "--config"]).arg(&on.path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if has_tls {
        assert!(out.status.success(), "{text}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("runtime.ktls") && text.contains("kernel TLS"), "{text}");
    }
    let auto = config_file(&toml("auto"));
    let text = std::fs::read_to_string(&auto.path).unwrap();
    let port: u16 = text.split("127.0.0.1:").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let proc = spawn_binary(&auto, &["--workers", "1"], addr);
    let expected = if has_tls { "kernel TLS is available" } else { "kernel TLS unavailable" };
    assert!(wait_until(Duration::from_secs(10), || proc.stderr().contains(expected)), "{}", proc.stderr());
    assert_eq!(proc.stderr().matches("kernel TLS").count(), 1, "logged once: {}", proc.stderr());
    let mut tls = tls_connect(&site, addr, NAME);
    tls.write_all(b"down 1048576 9\n").unwrap();
    tls.flush().unwrap();
    tls.conn.refresh_traffic_keys().unwrap();
    let (mut stream, mut scratch, mut buf) = (Stream::new(9), Vec::new(), vec![0u8; 1 << 16]);
    loop {
        let n = tls.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(stream.verify(&buf[..n], &mut scratch));
    }
    assert_eq!(stream.position(), 1 << 20);
}

/// A terminating route with `half_close = false`: the back end's end (after its reply) closes
/// the connection both ways. The client reads the reply, then close_notify and the end, while it
/// still holds its side open; the back end, which shut its write half and reads on, reads its
/// end without the client having closed. (With half-close it would wait for the client.)
#[test]
fn no_half_close_on_a_terminating_route_ends_both_ways_at_the_back_ends_end() {
    let site = Site::new();
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = origin.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).unwrap();
        s.write_all(b"reply\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let _ = tx.send((line, rest));
    });
    let port = free_port();
    let toml = format!(
        "[runtime]\nworkers = 1\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
         [[route]]\nname = \"shop\"\nsni = [\"{NAME}\"]\naction = \"terminate\"\nhalf_close = false\n{}backends = [\"{origin_addr}\"]\n",
        site.cert_lines(NAME),
    );
    let cfg = config_file(&toml);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _proc = spawn_binary(&cfg, &[], addr);
    let mut tls = tls_connect(&site, addr, NAME);
    tls.write_all(b"hello\n").unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    tls.sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tls.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"reply\n", "the reply, then close_notify");
    let (line, rest) = rx.recv_timeout(Duration::from_secs(20)).expect("the back end never read its end");
    assert_eq!(line, "hello\n");
    assert!(rest.is_empty(), "{rest:?}");
    drop(tls);
}
