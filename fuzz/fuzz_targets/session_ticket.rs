//! Fuzz `tls::Tickets::decrypt` over a key file (a ticket is whatever a client sends): never
//! panics, and nothing but a ticket this key sealed decrypts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::server::ProducesTickets;
use sni_dispatch::tls::{KeyFile, Tickets};
use std::sync::{Arc, OnceLock};

fn tickets() -> &'static Arc<Tickets> {
    static T: OnceLock<Arc<Tickets>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sni-fuzz-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("keys");
        // Two keys of 80 bytes: names 0x01… and 0x02…; the first encrypts.
        let line = |b: u8| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode([b; 80])
        };
        std::fs::write(&path, format!("{}\n{}\n", line(1), line(2))).expect("key file");
        Tickets::new(Some(&KeyFile::read(&path).expect("key file")), 3600)
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tickets();
    if let Some(plain) = t.decrypt(data) {
        // Authenticated: only what encrypt produced opens; so re-sealing round-trips.
        let again = t.encrypt(&plain).expect("encrypt");
        assert_eq!(t.decrypt(&again).as_deref(), Some(&plain[..]));
    }
    // A sealed copy of the input opens to the input.
    if data.len() < 4096 {
        let sealed = t.encrypt(data).expect("encrypt");
        assert_eq!(t.decrypt(&sealed).as_deref(), Some(data));
    }
});
