//! Fuzz `hello::server_hello_version`: never panics, and a decided prefix agrees with the
//! whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_dispatch::hello::{server_hello_version, ServerVersion};

fuzz_target!(|data: &[u8]| {
    let v = server_hello_version(data);
    if let ServerVersion::Chosen(c) = v {
        assert!((0x0300..=0x0304).contains(&c));
    }
    for cut in [data.len() / 3, data.len() / 2] {
        let w = server_hello_version(&data[..cut]);
        if w != ServerVersion::NeedMore {
            assert_eq!(w, v, "prefix of {cut}");
        }
    }
});
