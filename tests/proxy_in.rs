//! PROXY protocol in: sni-dispatch behind HAProxy (`send-proxy-v2`) and nginx (`proxy_protocol
//! on`, v1), routing by the dedicated IP the header says the client dialed and passing the real
//! client on in its own PROXY header; an untrusted source; missing, malformed, wrong-version and
//! slow headers; a header split over segments; TLVs passed on.
mod common;

use common::peers::{haproxy, nginx};
use common::*;
use sni_dispatch::config::RuntimeOverrides;
use sni_dispatch::metrics::DropReason;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// A dispatcher on 127.0.0.1 that requires `accept` headers from `trusted`, with a route owning
/// the dedicated IP 127.0.0.3 (outbound PROXY v1 to `site`) and a fallback route for the rest.
fn edge(accept: &str, trusted: &str, site: SocketAddr, other: SocketAddr) -> String {
    format!(
        "{RUNTIME}[[listener]]\naddress = \"127.0.0.1:0\"\naccept_proxy = \"{accept}\"\ntrusted_sources = [{trusted}]\n\
         [fallback]\nunknown_sni = \"other\"\nno_sni = \"other\"\n\
         [[route]]\nname = \"site\"\ndedicated_ips = [\"127.0.0.3\"]\naction = \"passthrough\"\nmin_tls = \"1.0\"\n\
         backends = [\"{site}\"]\nproxy_protocol = \"v1\"\n\
         [[route]]\nname = \"other\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nbackends = [\"{other}\"]\nproxy_protocol = \"v2\"\n"
    )
}

fn reply() -> Mode {
    Mode::ReplyAtEof { reply: std::sync::Arc::new(b"from the back end".to_vec()) }
}

/// Through `front`: a hello for a name no route has, then EOF; the back end's reply comes back.
fn through(front: SocketAddr, hello: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut c = connect(front);
    let me = c.local_addr().unwrap();
    c.write_all(hello).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    (read_to_end(&mut c).expect("reply"), me)
}

#[test]
fn behind_haproxy_send_proxy_v2_the_header_picks_the_dedicated_ip_and_names_the_client() {
    let (site, other) = (backend(reply()), backend(reply()));
    let (server, _f) = start(&edge("v2", "\"127.0.0.0/8\"", site.addr, other.addr), &RuntimeOverrides::default());
    let Some(hap) = haproxy("127.0.0.3", server.local_addrs()[0], "send-proxy-v2") else { return };
    let hello = rustls_hello(Some("unknown.example"), &[b"h2"]);
    let (got, me) = through(hap.addr, &hello);
    assert_eq!(got, b"from the back end", "haproxy: {}", hap.log());
    let seen = site.next().bytes;
    let want = format!("PROXY TCP4 {} 127.0.0.3 {} {}\r\n", me.ip(), me.port(), hap.addr.port());
    assert!(
        seen.starts_with(want.as_bytes()),
        "{:?} does not start with {want:?}",
        String::from_utf8_lossy(&seen[..60.min(seen.len())])
    );
    assert_eq!(&seen[want.len()..], &hello[..], "the hello follows the header, unchanged");
    assert_eq!(other.connections(), 0);
    let m = wait_metrics(&server, |m| m.routed_total() == 1 && m.open == 0);
    assert_eq!(m.routed_by(sni_dispatch::route::Match::DedicatedIp), 1);
    server.shutdown();
}

#[test]
fn behind_nginx_proxy_protocol_v1_the_header_picks_the_dedicated_ip() {
    let (site, other) = (backend(reply()), backend(reply()));
    let (server, _f) = start(&edge("any", "\"127.0.0.1\"", site.addr, other.addr), &RuntimeOverrides::default());
    let Some(ngx) = nginx("127.0.0.3", server.local_addrs()[0], "proxy_protocol on; proxy_half_close on;") else {
        return;
    };
    let hello = rustls_hello(Some("unknown.example"), &[]);
    let (got, me) = through(ngx.addr, &hello);
    assert_eq!(got, b"from the back end", "nginx: {}", ngx.log());
    let seen = site.next().bytes;
    let want = format!("PROXY TCP4 {} 127.0.0.3 {} {}\r\n", me.ip(), me.port(), ngx.addr.port());
    assert!(seen.starts_with(want.as_bytes()), "{:?}", String::from_utf8_lossy(&seen[..60.min(seen.len())]));
    assert_eq!(&seen[want.len()..], &hello[..]);
    server.shutdown();
}

#[test]
fn a_v2_header_split_over_segments_with_tlvs_routes_and_passes_the_tlvs_on() {
    let (site, other) = (backend(reply()), backend(reply()));
    let (server, _f) = start(&edge("v2", "\"127.0.0.1/32\"", site.addr, other.addr), &RuntimeOverrides::default());
    // To 127.0.0.9 (no dedicated IP): the fallback route, which sends v2 with the TLVs.
    let mut header = sni_dispatch::proxy_protocol::V2_SIGNATURE.to_vec();
    let tlv = [0xea, 0x00, 0x04, b'v', b'p', b'c', b'e'];
    header.extend_from_slice(&[
        0x21,
        0x11,
        0x00,
        (12 + tlv.len()) as u8,
        198,
        51,
        100,
        7,
        127,
        0,
        0,
        9,
        0x30,
        0x39,
        0x01,
        0xbb,
    ]);
    header.extend_from_slice(&tlv);
    let hello = rustls_hello(Some("x.example"), &[]);
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(&header[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    c.write_all(&header[10..]).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    c.write_all(&hello).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"from the back end");
    let seen = other.next().bytes;
    let Some(end) = seen.windows(hello.len()).position(|w| w == hello) else { panic!("no hello: {seen:?}") };
    let out = &seen[..end];
    assert_eq!(&out[12..14], &[0x21, 0x11]);
    assert_eq!(
        &out[16..28],
        &[198, 51, 100, 7, 127, 0, 0, 9, 0x30, 0x39, 0x01, 0xbb],
        "the header's addresses, not the socket's"
    );
    assert!(out.windows(tlv.len()).any(|w| w == tlv), "the balancer's TLV is passed on: {out:?}");
    assert_eq!(&seen[end..], &hello[..]);
    // Header and hello in one segment: exactly the header is consumed, the hello reader gets
    // the rest.
    let mut c = connect(server.local_addrs()[0]);
    c.write_all(&[header.as_slice(), hello.as_slice()].concat()).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c).unwrap(), b"from the back end");
    let seen = other.next().bytes;
    assert!(seen.ends_with(&hello), "the hello arrived whole after the outbound header");
    server.shutdown();
}

#[test]
fn untrusted_sources_and_bad_missing_or_slow_headers_are_dropped() {
    let (site, other) = (backend(reply()), backend(reply()));
    let rt = "[runtime]\nworkers = 1\nhello_timeout_ms = 700\nconnect_timeout_ms = 2000\n";
    let (server, _f) =
        start(&edge("v1", "\"10.0.0.0/8\"", site.addr, other.addr).replace(RUNTIME, rt), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    expect_dropped(addr, b"PROXY TCP4 10.1.1.1 127.0.0.3 1 443\r\n");
    wait_metrics(&server, |m| m.dropped_by(DropReason::ProxyUntrusted) == 1);
    server.shutdown();

    let (server, _f) =
        start(&edge("v1", "\"127.0.0.0/8\"", site.addr, other.addr).replace(RUNTIME, rt), &RuntimeOverrides::default());
    let addr = server.local_addrs()[0];
    let hello = rustls_hello(Some("a.example"), &[]);
    // No header: the hello itself.
    expect_dropped(addr, &hello);
    // Malformed, and a v2 header where v1 is required.
    expect_dropped(addr, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n");
    let mut v2 = sni_dispatch::proxy_protocol::V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    expect_dropped(addr, &v2);
    // Slow: half a header, then nothing until the hello timeout.
    let mut c = connect(addr);
    c.write_all(b"PROXY TCP4 1.2.").unwrap();
    assert!(read_to_end(&mut c).unwrap().is_empty());
    let m = wait_metrics(&server, |m| m.dropped_by(DropReason::ProxyHeader) == 4);
    assert_eq!(m.routed_total(), 0);
    assert_eq!(site.connections() + other.connections(), 0);
    server.shutdown();
}
