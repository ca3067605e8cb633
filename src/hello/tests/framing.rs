//! `Framing`: linear scanning, `at_least`, early rejects, and agreement with `parse`.

use super::*;

/// Feeds `buf` to a fresh `Framing` in segments cut at `cuts` (sorted offsets), checking each
/// answer against `parse` of the same prefix, and returns the last answer with the length of
/// the prefix it was given.
fn feed(buf: &[u8], max: usize, cuts: impl IntoIterator<Item = usize>) -> (Progress, usize) {
    let mut f = Framing::new(max);
    let mut last = (Progress::NeedMore { at_least: 0 }, 0);
    for end in cuts.into_iter().chain([buf.len()]) {
        let end = end.min(buf.len());
        if end < last.1 {
            continue;
        }
        let prefix = &buf[..end];
        let p = f.advance(prefix);
        agree(prefix, max, p);
        last = (p, end);
        if !matches!(p, Progress::NeedMore { .. }) {
            break;
        }
    }
    last
}

/// The agreement promised by the `framing` module docs, for one buffer.
fn agree(buf: &[u8], max: usize, p: Progress) {
    let q = parse(buf, max);
    match p {
        Progress::NeedMore { at_least } => {
            assert!(at_least > buf.len(), "at_least {at_least} for {} bytes", buf.len());
            assert!(matches!(q, Parsed::NeedMore | Parsed::Rejected(_)), "NeedMore but parse says {q:?}");
        }
        Progress::Complete => assert!(matches!(q, Parsed::Complete(_) | Parsed::Rejected(_)), "{q:?}"),
        Progress::Rejected(r) => assert_eq!(q, Parsed::Rejected(r)),
    }
    if matches!(q, Parsed::Complete(_)) {
        assert_eq!(p, Progress::Complete);
    }
}

#[test]
fn captures_in_any_records_and_segments_complete_exactly_at_the_end() {
    for (name, cap) in CAPTURES {
        let msg = message(cap);
        for size in [1, 2, 3, 5, 7, 100, 512, 16384] {
            let buf = reframe(&msg, size);
            for seg in [1, 3, 17, 1000, buf.len()] {
                let mut f = Framing::new(MAX);
                let mut end = 0;
                while end < buf.len() {
                    end = (end + seg).min(buf.len());
                    let p = f.advance(&buf[..end]);
                    if end < buf.len() {
                        let Progress::NeedMore { at_least } = p else {
                            panic!("{name} {size}/{seg} at {end}: {p:?}");
                        };
                        // A lower bound on the complete hello, above what is there.
                        assert!(at_least > end && at_least <= buf.len(), "{name} {size}/{seg} at {end}: {at_least}");
                    } else {
                        assert_eq!(p, Progress::Complete, "{name} {size}/{seg}");
                    }
                }
                assert_eq!(f.records() as usize, msg.len().div_ceil(size), "{name} {size}/{seg}");
                assert_eq!(summary(&complete(&buf)), summary(&complete(cap)), "{name} {size}/{seg}");
            }
        }
    }
}

#[test]
fn at_least_is_exact_when_the_rest_comes_in_one_record() {
    for (name, cap) in CAPTURES {
        let mut f = Framing::new(MAX);
        // Before the handshake header: the record and handshake headers.
        assert_eq!(f.advance(&[]), Progress::NeedMore { at_least: 9 }, "{name}");
        assert_eq!(f.advance(&cap[..3]), Progress::NeedMore { at_least: 9 }, "{name}");
        // Once the message length is known, the whole single-record hello.
        for end in 9..cap.len() {
            assert_eq!(f.advance(&cap[..end]), Progress::NeedMore { at_least: cap.len() }, "{name} {end}");
        }
        assert_eq!(f.advance(cap), Progress::Complete);
    }
    // 1-byte records: each step assumes the rest arrives in one record.
    let buf = reframe(&message(CURL), 1);
    let mut f = Framing::new(MAX);
    let body = message(CURL).len() - 4;
    // The handshake header took 4 records; the body may come in the next one.
    assert_eq!(f.advance(&buf[..24]), Progress::NeedMore { at_least: 24 + 5 + body });
    // The 5th record holds 1 byte: the rest needs one more record after it.
    assert_eq!(f.advance(&buf[..29]), Progress::NeedMore { at_least: 30 + 5 + body - 1 });
    assert_eq!(f.advance(&buf[..30]), Progress::NeedMore { at_least: 30 + 5 + body - 1 });
}

#[test]
fn verdicts_are_final() {
    let mut f = Framing::new(MAX);
    assert_eq!(f.advance(CURL), Progress::Complete);
    let mut longer = CURL.to_vec();
    longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
    assert_eq!(f.advance(&longer), Progress::Complete);
    let mut f = Framing::new(MAX);
    assert_eq!(f.advance(b"GET "), Progress::Rejected(Reject::NotTls { http: true }));
    assert_eq!(f.advance(CURL), Progress::Rejected(Reject::NotTls { http: true }));
}

#[test]
fn six_thousand_byte_hello_in_one_byte_records_is_accepted() {
    let h = Hello::new().sni(b"big.example").ext(0xaaaa, vec![7; 6000 - 100]);
    let msg = h.message();
    let buf = reframe(&msg, 1);
    assert!(buf.len() > 36_000 && msg.len() - 4 <= MAX);
    assert!(buf.len() <= Framing::max_raw_bytes(MAX));
    let cuts: Vec<usize> = (0..buf.len()).step_by(997).collect();
    assert_eq!(feed(&buf, MAX, cuts), (Progress::Complete, buf.len()));
    assert_eq!(complete(&buf).sni(), Some("big.example"));
    // The allowance is exact: the largest acceptable body in 1-byte records.
    let fat = reframe(&Hello::new().ext(0xaaaa, vec![0; MAX - Hello::new().body().len() - 4]).message(), 1);
    assert_eq!(fat.len(), Framing::max_raw_bytes(MAX));
    assert_eq!(feed(&fat, MAX, [100, 50_000]), (Progress::Complete, fat.len()));
    assert_eq!(Framing::max_raw_bytes(usize::MAX), 6 * (4 + (1 << 24) - 1));
}

#[test]
fn framing_rejects_as_early_as_parse_does() {
    let msg = Hello::new().sni(b"a.example").message();
    let split = reframe(&msg, 40);
    let mut cases: Vec<(Vec<u8>, Reject)> = vec![
        (b"GET ".to_vec(), Reject::NotTls { http: true }),
        (b"\x16\x02".to_vec(), Reject::NotTls { http: false }),
        (b"\x15".to_vec(), Reject::NotTls { http: false }),
        (vec![0x80, 0x2e, 0x01], Reject::SslV2),
        (vec![0x16, 3, 1, 0, 0], Reject::Malformed("record length: empty handshake record")),
        (vec![0x16, 3, 1, 0x40, 1], Reject::Malformed("record length: over 2^14")),
        (vec![0x16, 3, 1, 0, 4, 2], Reject::NotClientHello),
    ];
    for bad in [0x15u8, 0x14, 0x17] {
        let mut buf = split[..45].to_vec();
        buf.extend_from_slice(&[bad, 3, 3, 0, 2]);
        cases.push((buf, Reject::Malformed("record type: non-handshake record inside ClientHello")));
    }
    let mut buf = split[..45].to_vec();
    buf.push(0x42);
    cases.push((buf, Reject::Malformed("record type: unknown content type inside ClientHello")));
    let mut buf = split[..45].to_vec();
    buf.extend_from_slice(&[0x16, 0x02]);
    cases.push((buf, Reject::Malformed("record version")));
    let mut buf = split[..45].to_vec();
    buf.extend_from_slice(&[0x16, 3, 3, 0, 0]);
    cases.push((buf, Reject::Malformed("record length: empty handshake record")));
    // Declared length over the limit, decided from the handshake header in 1-byte records.
    let big = Hello::new().ext(0xaaaa, vec![0; 1000]);
    let one = reframe(&big.message(), 1);
    cases.push((one[..24].to_vec(), Reject::TooLarge));

    for (buf, want) in cases {
        let max = if want == Reject::TooLarge { 1000 } else { MAX };
        // Byte by byte: rejected exactly when the last byte arrives, as parse does.
        assert_eq!(feed(&buf, max, 0..buf.len()), (Progress::Rejected(want), buf.len()), "{buf:x?}");
        assert_eq!(parse(&buf, max), Parsed::Rejected(want));
        assert_eq!(parse(&buf[..buf.len() - 1], max), Parsed::NeedMore, "{buf:x?}");
    }
}

#[test]
fn limit_is_on_the_body_length_as_in_parse() {
    let h = Hello::new().ext(0xaaaa, vec![0; 1000]);
    let body = h.body().len();
    for size in [1, 100, 16384] {
        let buf = reframe(&h.message(), size);
        assert_eq!(feed(&buf, body, 0..buf.len()), (Progress::Complete, buf.len()), "{size}");
        let hdr_end = if size == 1 { 24 } else { 9 };
        assert_eq!(feed(&buf, body - 1, 0..buf.len()), (Progress::Rejected(Reject::TooLarge), hdr_end), "{size}");
    }
}

#[test]
fn a_body_fault_before_a_framing_fault_is_the_reason() {
    // session_id length 33 in the first record, then a bad record type: parse names the
    // first fault, and so does Framing (the scan alone only sees the second).
    let mut body = Hello::new().body();
    body[34] = 33;
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&u16b(body.len()));
    msg.extend_from_slice(&body);
    let mut buf = reframe(&msg, 40)[..45].to_vec();
    buf.push(0x42);
    assert_eq!(feed(&buf, MAX, [45]), (Progress::Rejected(Reject::Malformed("session_id length")), buf.len()));
}

#[test]
fn trailing_bytes_and_body_faults_are_left_to_parse() {
    // Data after the hello in its record: the framing is complete, parse rejects.
    let msg = Hello::new().sni(b"a.example").message();
    let mut two = msg.clone();
    two.extend_from_slice(&[14, 0, 0, 0]);
    let buf = reframe(&two, 16384);
    assert_eq!(feed(&buf, MAX, 0..buf.len()), (Progress::Complete, msg.len() + 5));
    assert_eq!(parse(&buf, MAX), Parsed::Rejected(Reject::Malformed("record: data after ClientHello")));
    // A zero-length body: complete at once, malformed for parse.
    assert_eq!(Framing::new(MAX).advance(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]), Progress::Complete);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_parse_on_mutated_captures_in_any_split(
        cap in arb_capture(),
        size in prop::sample::select(vec![1usize, 2, 7, 100, 16384]),
        muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        max in prop::sample::select(vec![0usize, 200, 1500, MAX]),
    ) {
        let mut buf = reframe(&message(cap), size);
        for (i, b) in &muts {
            let i = i.index(buf.len());
            buf[i] = *b;
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(buf.len() + 1)).collect();
        cuts.sort_unstable();
        // `feed` checks every answer against parse of the same prefix.
        let (p, end) = feed(&buf, max, cuts);
        if p == Progress::Complete {
            prop_assert!(!matches!(parse(&buf[..end], max), Parsed::NeedMore));
        }
    }

    #[test]
    fn agrees_with_parse_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..300), step in 1usize..20) {
        feed(&buf, MAX, (0..buf.len()).step_by(step));
    }
}
