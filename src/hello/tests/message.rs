//! `parse_message`: the bare handshake message (QUIC CRYPTO data), same parser as `parse`.

use super::*;

fn complete_msg(msg: &[u8]) -> ClientHello<'_> {
    match parse_message(msg, MAX) {
        Parsed::Complete(h) => h,
        other => panic!("expected Complete, got {other:?}"),
    }
}

#[test]
fn captures_as_bare_messages_give_the_same_hello() {
    for (name, cap) in CAPTURES {
        let msg = message(cap);
        let h = complete_msg(&msg);
        assert_eq!(summary(&h), summary(&complete(cap)), "{name}");
        assert_eq!(h.len(), msg.len(), "{name}");
        assert!(!h.is_record_fragmented(), "{name}");
        assert!(h.extension_types().eq(complete(cap).extension_types()), "{name}");
        assert!(h.signature_algorithms().eq(complete(cap).signature_algorithms()), "{name}");
        for i in 0..msg.len() {
            assert_eq!(parse_message(&msg[..i], MAX), Parsed::NeedMore, "{name} prefix {i}");
        }
        // Whatever follows the message (more CRYPTO data) is not consumed.
        let mut more = msg.clone();
        more.extend_from_slice(&[11, 0, 0, 3, 1, 2, 3]);
        assert_eq!(complete_msg(&more).len(), msg.len(), "{name}");
    }
}

#[test]
fn message_rejects_are_the_parser_rejects() {
    let h = Hello::new().sni(b"x.example").ext(0xaaaa, vec![0; 100]);
    let msg = h.message();
    let body = h.body().len();
    assert_eq!(parse_message(&msg[..4], body - 1), Parsed::Rejected(Reject::TooLarge));
    assert_eq!(parse_message(&msg[..3], body - 1), Parsed::NeedMore);
    assert!(matches!(parse_message(&msg, body), Parsed::Complete(_)));
    // A record header is not a handshake message: 0x16 is not ClientHello's type.
    assert_eq!(parse_message(&h.bytes(), MAX), Parsed::Rejected(Reject::NotClientHello));
    assert_eq!(parse_message(b"GET / HTTP/1.1\r\n", MAX), Parsed::Rejected(Reject::NotClientHello));
    let mut dup = Hello::new().sni(b"a.example").sni(b"b.example").message();
    assert_eq!(parse_message(&dup, MAX), Parsed::Rejected(Reject::DuplicateExtension(0)));
    dup[4 + 34] = 33;
    assert_eq!(parse_message(&dup, MAX), Parsed::Rejected(Reject::Malformed("session_id length")));
    let mut old = Hello::new();
    old.legacy_version = SSL3_0;
    assert_eq!(parse_message(&old.message(), MAX), Parsed::Rejected(Reject::Ssl3OrOlder));
    let none = Hello::new().ext(43, versions_ext(&[0x1a1a]));
    assert_eq!(parse_message(&none.message(), MAX), Parsed::Rejected(Reject::NoKnownVersion));
    assert_eq!(parse_message(&[], MAX), Parsed::NeedMore);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn bare_messages_never_panic(cap in arb_capture(), muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)) {
        let mut msg = message(cap);
        for (i, b) in &muts {
            let i = i.index(msg.len());
            msg[i] = *b;
        }
        let p = parse_message(&msg, MAX);
        // Same verdict as the record-layer parse of the same message in one record, except
        // that `len` counts message bytes.
        let framed = reframe(&msg, 16384);
        match (parse(&framed, MAX), p) {
            (Parsed::Complete(a), Parsed::Complete(b)) => {
                prop_assert_eq!(summary(&a), summary(&b));
                prop_assert_eq!(parse_message(&msg[..b.len()], MAX), p);
            }
            (Parsed::Rejected(Reject::Malformed(REC_TRAILING)), Parsed::Complete(_) | Parsed::Rejected(_)) => {}
            (a, b) => prop_assert_eq!(a, b),
        }
    }
}
