//! Kernel TLS for terminated connections (`[runtime] ktls`), where the kernel has it.
//!
//! After rustls's handshake the traffic secrets go to the kernel (`TCP_ULP "tls"`, then
//! `TLS_TX` and `TLS_RX` with each direction's key, IV and next sequence number) and the
//! client socket carries plaintext: the kernel seals what we send and opens what we read. The
//! rules about what may arrive after the handshake stay ours ([`Session::classify`], the same
//! as the user-space record layer's): a non-data record comes with its type in a control
//! message and is classified here; the client's KeyUpdate gives the kernel the next receive key
//! (and, when asked, ours: our KeyUpdate first, then the next send key), which needs a kernel
//! with TLS 1.3 rekey support (Linux 6.14 and later); an older kernel refuses the second
//! `setsockopt` and the connection is closed (counted as `relay_errors{cause="ktls"}`).
//!
//! Detection: [`available`] tries `TCP_ULP "tls"` once per process on a fresh socket
//! (`ENOTCONN` means the module is there) and logs the answer once. `ktls = "auto"` uses
//! kernel TLS when it is there and the user-space record layer otherwise; `"on"` makes
//! `check` and start fail without it; `"off"` (the default) never uses it.
//!
//! A connection is handed to the kernel only in a state it can take over: every record the
//! client sent after its Finished (already read with the handshake) is whole application
//! data, which is opened here first (the kernel starts at the next sequence number); otherwise
//! that connection stays in user space. A kernel that refuses after `TCP_ULP` succeeded closes
//! the connection and turns kernel TLS off for the rest of the process (logged once).
//!
//! TLS 1.2 AES-GCM: the kernel sends as explicit nonce its initial IV plus the number of
//! records it sealed, where rustls (and our user-space layer) XOR the IV with the sequence
//! number; handing the kernel rustls's IV would repeat the nonce of the records rustls sealed
//! during the handshake under the same key. [`tls12_tx_explicit`] gives it a start past all
//! of those.

use super::record::{self, Aead, Session, Version};
use crate::sys::ktls::{self as abi, Cipher, CryptoInfo, Direction};
use crate::sys::Socket;
use rustls::ConnectionTrafficSecrets;
use serde::Deserialize;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// `[runtime] ktls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Ktls {
    /// Never: the user-space record layer.
    #[default]
    Off,
    /// Where the kernel has it.
    Auto,
    /// Required: `check` and start fail where the kernel lacks it.
    On,
}

impl Ktls {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Auto => "auto",
            Self::On => "on",
        }
    }
}

/// Whether the kernel offers TLS: probed once per process, the answer logged once.
pub fn probe() -> Result<(), String> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    PROBED
        .get_or_init(|| {
            let r = abi::probe().map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => format!("the kernel has no TLS module (CONFIG_TLS; modprobe tls): {e}"),
                _ => e.to_string(),
            });
            match &r {
                Ok(()) => tracing::info!("kernel TLS is available (TCP_ULP \"tls\")"),
                Err(why) => tracing::info!(
                    "kernel TLS unavailable: {why}; terminated connections use the user-space record layer"
                ),
            }
            r
        })
        .clone()
}

/// 0: not decided, 1: usable, 2: off (unavailable, or turned off after a kernel refusal).
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether connections under `mode` go to kernel TLS (a load of one byte per connection; the
/// probe runs once).
pub fn enabled(mode: Ktls) -> bool {
    if mode == Ktls::Off {
        return false;
    }
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let ok = probe().is_ok();
            STATE.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

/// After a kernel refusal past `TCP_ULP`: no more kernel TLS in this process.
fn turn_off(why: &std::io::Error) {
    if STATE.swap(2, Ordering::Relaxed) != 2 {
        tracing::warn!(
            "kernel TLS refused a connection's keys ({why}); kernel TLS is off for the rest of this process"
        );
    }
}

fn cipher(aead: Aead) -> Cipher {
    match aead {
        Aead::Aes128Gcm => Cipher::Aes128Gcm,
        Aead::Aes256Gcm => Cipher::Aes256Gcm,
        Aead::Chacha20Poly1305 => Cipher::Chacha20Poly1305,
    }
}

/// The explicit nonce the kernel starts from for TLS 1.2 AES-GCM sending, given rustls's IV
/// (its last 8 bytes, big-endian) and the sequence number `seq` of the first record the kernel
/// seals. rustls used `iv ^ s` for every `s < seq`: all of them lie in the aligned block of
/// 2^k values around `iv` (2^k ≥ seq); the kernel counts up from just past that block, and
/// cannot come back to it before 2^64 records.
pub(crate) fn tls12_tx_explicit(iv: u64, seq: u64) -> u64 {
    let block = seq.max(1).next_power_of_two();
    (iv | (block - 1)).wrapping_add(1)
}

/// The crypto state of one direction for the kernel.
fn crypto_info(
    version: Version,
    aead: Aead,
    dir: Direction,
    key: &[u8],
    iv: &[u8],
    seq: u64,
) -> Result<CryptoInfo, String> {
    let tls_version = match version {
        Version::Tls12 => libc::TLS_1_2_VERSION,
        Version::Tls13 => libc::TLS_1_3_VERSION,
    };
    let info = match aead {
        Aead::Chacha20Poly1305 => CryptoInfo::new(tls_version, Cipher::Chacha20Poly1305, key, &[], iv, seq),
        Aead::Aes128Gcm | Aead::Aes256Gcm => {
            let (salt, explicit) = iv.split_at(4);
            let tail: [u8; 8] = explicit.try_into().map_err(|_| "IV length")?;
            let explicit = match (version, dir) {
                (Version::Tls12, Direction::Tx) => tls12_tx_explicit(u64::from_be_bytes(tail), seq).to_be_bytes(),
                _ => tail,
            };
            CryptoInfo::new(tls_version, cipher(aead), key, salt, &explicit, seq)
        }
    };
    info.map_err(|e| e.to_string())
}

/// Hands the connection's record layer to the kernel: `TCP_ULP "tls"`, `TLS_TX`, `TLS_RX` with
/// the session's next sequence numbers. `Err(false)`: nothing changed (the connection goes on
/// in user space); `Err(true)`: the socket is half set up and must be closed.
pub(super) fn offload(client: &Socket, session: &Session, secrets: &rustls::ExtractedSecrets) -> Result<(), bool> {
    let (tx_seq, rx_seq) = session.seqs();
    let (version, aead) = (session.version(), session.aead());
    let info = |dir, s: &ConnectionTrafficSecrets, seq| {
        let (key, iv) = record::key_and_iv(s).ok_or("unsupported traffic secrets")?;
        crypto_info(version, aead, dir, key, iv, seq)
    };
    let infos =
        info(Direction::Tx, &secrets.tx.1, tx_seq).and_then(|tx| Ok((tx, info(Direction::Rx, &secrets.rx.1, rx_seq)?)));
    let (tx, rx) = match infos {
        Ok(i) => i,
        Err(why) => {
            tracing::debug!("kernel TLS: {why}");
            return Err(false);
        }
    };
    if let Err(e) = abi::attach(client) {
        tracing::debug!("kernel TLS: TCP_ULP refused: {e}");
        return Err(false);
    }
    for (dir, info) in [(Direction::Tx, &tx), (Direction::Rx, &rx)] {
        if let Err(e) = abi::set_crypto(client, dir, info) {
            turn_off(&e);
            return Err(true);
        }
    }
    Ok(())
}

/// Why a rekey failed: a protocol error of the session, or the kernel's refusal.
pub(super) enum RekeyError {
    Fatal(record::Fatal),
    Refused(std::io::Error),
}

/// After our KeyUpdate went out (TLS 1.3), or the client's arrived: the next key of `dir` to
/// the kernel. Kernels without TLS rekey support refuse.
pub(super) fn rekey(client: &Socket, session: &mut Session, dir: Direction) -> Result<(), RekeyError> {
    let next = match dir {
        Direction::Tx => session.next_tx_keys(),
        Direction::Rx => session.next_rx_keys(),
    }
    .map_err(RekeyError::Fatal)?;
    let refused = |why: String| RekeyError::Refused(std::io::Error::new(std::io::ErrorKind::Unsupported, why));
    let info = crypto_info(session.version(), session.aead(), dir, next.key(), next.iv(), 0).map_err(refused)?;
    abi::set_crypto(client, dir, &info)
        .map_err(|e| refused(format!("the kernel refused the next TLS key (no TLS rekey support?): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's TLS 1.2 AES-GCM nonces (start + k) never meet rustls's (iv ^ s, s < seq).
    #[test]
    fn tls12_kernel_nonces_avoid_rustls_ones() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for seq in [0u64, 1, 2, 3, 5, 8, 1000, 1 << 20] {
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                for iv in [x, u64::MAX, u64::MAX - 1, 0, x | 0xff] {
                    let start = tls12_tx_explicit(iv, seq);
                    let used: Vec<u64> = (0..seq.min(4096)).map(|s| iv ^ s).collect();
                    for k in 0..64u64 {
                        assert!(!used.contains(&start.wrapping_add(k)), "iv {iv:#x} seq {seq} k {k}");
                    }
                    // The block rustls used lies entirely before the start (modulo 2^64).
                    let block = seq.max(1).next_power_of_two();
                    assert_eq!(start.wrapping_sub(iv & !(block - 1)), block);
                }
            }
        }
    }

    #[test]
    fn modes_parse_from_the_config_words() {
        #[derive(Deserialize)]
        struct T {
            ktls: Ktls,
        }
        for (word, mode) in [("auto", Ktls::Auto), ("off", Ktls::Off), ("on", Ktls::On)] {
            let t: T = toml::from_str(&format!("ktls = {word:?}")).unwrap();
            assert_eq!(t.ktls, mode);
            assert_eq!(mode.as_str(), word);
        }
        assert!(toml::from_str::<T>("ktls = \"yes\"").is_err());
        assert!(!enabled(Ktls::Off));
    }

    /// On a kernel without TLS (this VM), `auto` is off and the reason is the probe's.
    #[test]
    fn detection_follows_the_probe() {
        let probed = probe();
        assert_eq!(enabled(Ktls::Auto), probed.is_ok());
        if let Err(why) = probed {
            assert!(!why.is_empty());
        }
    }
}
