//! Fuzz `proxy_protocol::decode`, the inbound PROXY v1/v2 header a listener with `accept_proxy`
//! reads before the hello, and `passable_tlvs` on what it accepts. Properties: no panic; a
//! header is self-delimited (`len` within the input, the same header decoded from exactly its
//! `len` bytes, every shorter prefix `NeedMore`, so the reader never consumes a byte of TLS);
//! the TLVs passed on are whole TLVs taken from the header's own.
//!
//! Input: `[accept selector][the bytes]` (selector % 3: v1, v2, any).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::proxy_protocol::{decode, passable_tlvs, Accept, Decoded};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else { return };
    let accept = [Accept::V1, Accept::V2, Accept::Any][usize::from(sel % 3)];
    let Decoded::Header(h) = decode(buf, accept) else { return };
    assert!(h.len <= buf.len(), "len {} past the input {}", h.len, buf.len());
    assert_eq!(decode(&buf[..h.len], accept), Decoded::Header(h), "not self-delimited");
    // Every shorter prefix asks for more (checked at a bounded number of cut points).
    let step = (h.len / 64).max(1);
    for cut in (0..h.len).step_by(step) {
        assert_eq!(decode(&buf[..cut], accept), Decoded::NeedMore, "prefix {cut} of {}", h.len);
    }
    assert!(h.version == 1 || h.version == 2);
    if h.version == 1 {
        assert!(h.tlvs.is_empty());
    }
    let mut out = Vec::new();
    passable_tlvs(h.tlvs, &mut out);
    assert!(out.len() <= h.tlvs.len());
    let mut rest = &out[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 3, "a truncated TLV passed on");
        let n = 3 + usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        assert!(n <= rest.len(), "a TLV past its end passed on");
        rest = &rest[n..];
    }
});
