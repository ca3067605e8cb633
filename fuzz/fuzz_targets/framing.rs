//! Fuzz `hello::Framing::advance`, fed the input in reads of sizes taken from the input, and
//! check it against `parse` after every read: `parse` Complete ⇒ Complete; Complete ⇒ parse
//! is not NeedMore; Rejected(r) ⇒ parse gives Rejected(r); NeedMore ⇒ parse is not
//! Complete and `at_least` is above what was read. Verdicts are final.
//!
//! Input: `[n][n read sizes (each byte + 1)][the bytes]`, the sizes used in turn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::hello::{parse, Framing, Parsed, Progress, DEFAULT_MAX_HELLO_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 32).min(rest.len());
    let (sizes, buf) = rest.split_at(n);
    let sizes: Vec<usize> = if sizes.is_empty() { vec![buf.len().max(1)] } else { sizes.iter().map(|&s| usize::from(s) + 1).collect() };
    let max = if buf.len() % 7 == 0 { 300 } else { DEFAULT_MAX_HELLO_BYTES };
    let mut f = Framing::new(max);
    let mut end = 0;
    let mut last = None;
    for (i, size) in sizes.iter().cycle().enumerate() {
        end = (end + size).min(buf.len());
        let prefix = &buf[..end];
        let p = f.advance(prefix);
        // parse after every read would make each run quadratic: check the first reads, every
        // 64th, every decided answer and the last.
        if !(i < 64 || i % 64 == 0 || end == buf.len() || !matches!(p, Progress::NeedMore { .. })) {
            last = Some(p);
            continue;
        }
        let q = parse(prefix, max);
        match p {
            Progress::NeedMore { at_least } => {
                assert!(at_least > end, "at_least {at_least} at {end}");
                assert!(at_least <= Framing::max_raw_bytes(max));
                assert!(!matches!(q, Parsed::Complete(_)), "NeedMore, parse {q:?}");
            }
            Progress::Complete => assert!(!matches!(q, Parsed::NeedMore)),
            Progress::Rejected(r) => assert_eq!(q, Parsed::Rejected(r)),
        }
        if matches!(q, Parsed::Complete(_)) {
            assert_eq!(p, Progress::Complete);
        }
        if let Some(prev) = last {
            if !matches!(prev, Progress::NeedMore { .. }) {
                assert_eq!(p, prev, "a verdict changed");
            }
        }
        last = Some(p);
        if end == buf.len() {
            break;
        }
    }
});
