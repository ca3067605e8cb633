//! Kernel TLS (`CONFIG_TLS`, linux/tls.h): the `tls` upper-layer protocol of a TCP socket, the
//! per-direction crypto state (`TLS_TX`, `TLS_RX`) and the record type of non-data records,
//! carried in a control message.
//!
//! After `setsockopt(SOL_TCP, TCP_ULP, "tls")` and `setsockopt(SOL_TLS, TLS_TX | TLS_RX,
//! crypto_info)`, plaintext written to the socket leaves it as TLS records encrypted by the
//! kernel, and records read from it arrive decrypted. A record that is not application data is
//! read with `recvmsg` and its type comes in a `TLS_GET_RECORD_TYPE` control message (a plain
//! `read` of it fails with EIO); one is sent with `sendmsg` and a `TLS_SET_RECORD_TYPE` control
//! message.
//!
//! The structures are libc's copies of linux/tls.h; the tests check their sizes and offsets
//! against the kernel header's (measured with gcc from `/usr/include/linux/tls.h`).

use super::socket::Socket;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The record type of TLS application data.
pub const APPLICATION_DATA: u8 = 23;

/// Which direction of the socket a crypto state is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

/// The AEADs kernel TLS implements that rustls negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// One direction's crypto state, as `setsockopt(SOL_TLS, TLS_TX/TLS_RX)` takes it.
pub enum CryptoInfo {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl std::fmt::Debug for CryptoInfo {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Aes128Gcm(_) => "Aes128Gcm",
            Self::Aes256Gcm(_) => "Aes256Gcm",
            Self::Chacha20Poly1305(_) => "Chacha20Poly1305",
        };
        f.debug_tuple("CryptoInfo").field(&name).finish_non_exhaustive()
    }
}

/// Why a [`CryptoInfo`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("kernel TLS crypto_info: {0}")]
pub struct BadKeyMaterial(&'static str);

fn copy_exact(dst: &mut [u8], src: &[u8], what: &'static str) -> Result<(), BadKeyMaterial> {
    if dst.len() != src.len() {
        return Err(BadKeyMaterial(what));
    }
    dst.copy_from_slice(src);
    Ok(())
}

impl CryptoInfo {
    /// Builds the crypto state of one direction. `version` is 0x0303 or 0x0304; `key` the AEAD
    /// key; `salt` the implicit part of the nonce (4 bytes for AES-GCM, empty for ChaCha20);
    /// `iv` the rest of it (8 bytes for AES-GCM, 12 for ChaCha20); `seq` the sequence number of
    /// the next record.
    pub fn new(
        version: u16,
        cipher: Cipher,
        key: &[u8],
        salt: &[u8],
        iv: &[u8],
        seq: u64,
    ) -> Result<Self, BadKeyMaterial> {
        if version != libc::TLS_1_2_VERSION && version != libc::TLS_1_3_VERSION {
            return Err(BadKeyMaterial("version"));
        }
        let rec_seq = seq.to_be_bytes();
        Ok(match cipher {
            Cipher::Aes128Gcm => {
                let mut c = libc::tls12_crypto_info_aes_gcm_128 {
                    info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_128 },
                    iv: [0; libc::TLS_CIPHER_AES_GCM_128_IV_SIZE],
                    key: [0; libc::TLS_CIPHER_AES_GCM_128_KEY_SIZE],
                    salt: [0; libc::TLS_CIPHER_AES_GCM_128_SALT_SIZE],
                    rec_seq,
                };
                copy_exact(&mut c.key, key, "AES-128-GCM key length")?;
                copy_exact(&mut c.salt, salt, "AES-GCM salt length")?;
                copy_exact(&mut c.iv, iv, "AES-GCM iv length")?;
                Self::Aes128Gcm(c)
            }
            Cipher::Aes256Gcm => {
                let mut c = libc::tls12_crypto_info_aes_gcm_256 {
                    info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_AES_GCM_256 },
                    iv: [0; libc::TLS_CIPHER_AES_GCM_256_IV_SIZE],
                    key: [0; libc::TLS_CIPHER_AES_GCM_256_KEY_SIZE],
                    salt: [0; libc::TLS_CIPHER_AES_GCM_256_SALT_SIZE],
                    rec_seq,
                };
                copy_exact(&mut c.key, key, "AES-256-GCM key length")?;
                copy_exact(&mut c.salt, salt, "AES-GCM salt length")?;
                copy_exact(&mut c.iv, iv, "AES-GCM iv length")?;
                Self::Aes256Gcm(c)
            }
            Cipher::Chacha20Poly1305 => {
                let mut c = libc::tls12_crypto_info_chacha20_poly1305 {
                    info: libc::tls_crypto_info { version, cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305 },
                    iv: [0; libc::TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE],
                    key: [0; libc::TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE],
                    salt: [0; libc::TLS_CIPHER_CHACHA20_POLY1305_SALT_SIZE],
                    rec_seq,
                };
                copy_exact(&mut c.key, key, "ChaCha20-Poly1305 key length")?;
                copy_exact(&mut c.salt, salt, "ChaCha20-Poly1305 salt length")?;
                copy_exact(&mut c.iv, iv, "ChaCha20-Poly1305 iv length")?;
                Self::Chacha20Poly1305(c)
            }
        })
    }

    /// The structure's bytes as the kernel reads them (pointer and length for setsockopt).
    fn raw(&self) -> (*const libc::c_void, libc::socklen_t) {
        fn of<T>(t: &T) -> (*const libc::c_void, libc::socklen_t) {
            ((t as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t)
        }
        match self {
            Self::Aes128Gcm(c) => of(c),
            Self::Aes256Gcm(c) => of(c),
            Self::Chacha20Poly1305(c) => of(c),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        // Best effort: the key bytes do not outlive their use on this stack frame's copy.
        match self {
            Self::Aes128Gcm(c) => c.key.fill(0),
            Self::Aes256Gcm(c) => c.key.fill(0),
            Self::Chacha20Poly1305(c) => c.key.fill(0),
        }
    }
}

fn setsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: *const libc::c_void,
    len: libc::socklen_t,
) -> io::Result<()> {
    // SAFETY: `value` points to `len` readable bytes owned by the caller for the duration of the
    // call (a byte string or a crypto_info structure); the kernel copies them.
    if unsafe { libc::setsockopt(fd, level, name, value, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const ULP_NAME: &[u8] = b"tls";

/// Whether this kernel offers the `tls` upper-layer protocol: `TCP_ULP "tls"` on a fresh,
/// unconnected TCP socket. `ENOTCONN` (the module is there; it only attaches to established
/// sockets) or success means yes; `ENOENT` (no `CONFIG_TLS`, or a module that could not be
/// loaded) and anything else mean no, with the error as the reason.
pub fn probe() -> Result<(), io::Error> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns; closed when `fd` drops.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    match setsockopt(fd.as_raw_fd(), libc::SOL_TCP, libc::TCP_ULP, ULP_NAME.as_ptr().cast(), ULP_NAME.len() as _) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Attaches the `tls` upper-layer protocol to an established TCP socket.
pub fn attach(sock: &Socket) -> io::Result<()> {
    setsockopt(sock.as_raw_fd(), libc::SOL_TCP, libc::TCP_ULP, ULP_NAME.as_ptr().cast(), ULP_NAME.len() as _)
}

/// Hands one direction's crypto state to the kernel (after [`attach`]). Setting it again on a
/// TLS 1.3 socket is a key update, which only kernels with TLS rekey support accept.
pub fn set_crypto(sock: &Socket, dir: Direction, info: &CryptoInfo) -> io::Result<()> {
    let name = match dir {
        Direction::Tx => libc::TLS_TX,
        Direction::Rx => libc::TLS_RX,
    };
    let (ptr, len) = info.raw();
    setsockopt(sock.as_raw_fd(), libc::SOL_TLS, name, ptr, len)
}

/// Room for one `cmsghdr` carrying one byte, aligned for `cmsghdr`.
#[repr(C)]
struct RecordTypeCmsg {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 32],
}

fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE(1) as usize }
}

/// Sends `payload` as one record of type `record_type` (an alert, a handshake message) on a
/// socket with kernel TLS for sending, non-blocking: `WouldBlock` when the send buffer is full.
pub fn send_record(sock: &Socket, record_type: u8, payload: &[u8]) -> io::Result<usize> {
    let mut control = RecordTypeCmsg { _align: [], bytes: [0; 32] };
    let space = cmsg_space();
    debug_assert!(space <= control.bytes.len());
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set below to memory that
    // lives until the call returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes a control buffer of `space` bytes, enough for one header and one
    // byte (CMSG_SPACE(1)); CMSG_FIRSTHDR then points inside it and CMSG_DATA at its data byte.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = record_type;
    }
    loop {
        // SAFETY: `msg` and everything it points to are valid for the duration of the call; the
        // fd is borrowed from `sock`.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives the next record's plaintext (or part of it) from a socket with kernel TLS for
/// receiving, non-blocking; returns the bytes read and the record's type
/// ([`APPLICATION_DATA`] when no control message came). `Ok((0, _))` is end of stream.
pub fn recv_record(sock: &Socket, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut control = RecordTypeCmsg { _align: [], bytes: [0; 32] };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as in `send_record`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes.as_mut_ptr().cast();
    msg.msg_controllen = control.bytes.len() as _;
    let n = loop {
        // SAFETY: `msg` describes `buf` and `control`, both valid for writes during the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut record_type = APPLICATION_DATA;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; CMSG_FIRSTHDR/NXTHDR stay
    // within them, and a TLS_GET_RECORD_TYPE message carries at least one data byte.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_TLS
                && (*cmsg).cmsg_type == libc::TLS_GET_RECORD_TYPE
                && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(1) as usize
            {
                record_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, record_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets of linux/tls.h as gcc lays them out on x86_64 and aarch64 (no padding:
    /// every member after the two u16 is a byte array): the kernel copies exactly these.
    #[test]
    fn crypto_info_layout_is_the_kernels() {
        assert_eq!(size_of::<libc::tls_crypto_info>(), 4);
        assert_eq!(size_of::<libc::tls12_crypto_info_aes_gcm_128>(), 40);
        assert_eq!(size_of::<libc::tls12_crypto_info_aes_gcm_256>(), 56);
        assert_eq!(size_of::<libc::tls12_crypto_info_chacha20_poly1305>(), 56);
        type G128 = libc::tls12_crypto_info_aes_gcm_128;
        type G256 = libc::tls12_crypto_info_aes_gcm_256;
        type Cc = libc::tls12_crypto_info_chacha20_poly1305;
        assert_eq!(
            [offset_of!(G128, iv), offset_of!(G128, key), offset_of!(G128, salt), offset_of!(G128, rec_seq)],
            [4, 12, 28, 32]
        );
        assert_eq!(
            [offset_of!(G256, iv), offset_of!(G256, key), offset_of!(G256, salt), offset_of!(G256, rec_seq)],
            [4, 12, 44, 48]
        );
        assert_eq!(
            [offset_of!(Cc, iv), offset_of!(Cc, key), offset_of!(Cc, salt), offset_of!(Cc, rec_seq)],
            [4, 16, 48, 48]
        );
        assert_eq!((libc::SOL_TLS, libc::TLS_TX, libc::TLS_RX, libc::TCP_ULP), (282, 1, 2, 31));
        assert_eq!((libc::TLS_SET_RECORD_TYPE, libc::TLS_GET_RECORD_TYPE), (1, 2));
        assert_eq!(
            (libc::TLS_CIPHER_AES_GCM_128, libc::TLS_CIPHER_AES_GCM_256, libc::TLS_CIPHER_CHACHA20_POLY1305),
            (51, 52, 54)
        );
        assert_eq!((libc::TLS_1_2_VERSION, libc::TLS_1_3_VERSION), (0x0303, 0x0304));
    }

    #[test]
    fn crypto_info_puts_each_part_in_its_field() {
        let key: Vec<u8> = (1..=16).collect();
        let info =
            CryptoInfo::new(0x0304, Cipher::Aes128Gcm, &key, &[0xa0, 0xa1, 0xa2, 0xa3], &[7; 8], 0x0102).unwrap();
        let (ptr, len) = info.raw();
        assert_eq!(len, 40);
        // SAFETY: `raw` describes the 40 bytes of the structure inside `info`, alive here.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) };
        assert_eq!(&bytes[0..4], &[0x04, 0x03, 51, 0], "version and cipher, little-endian u16s");
        assert_eq!(&bytes[4..12], &[7; 8]);
        assert_eq!(&bytes[12..28], &key[..]);
        assert_eq!(&bytes[28..32], &[0xa0, 0xa1, 0xa2, 0xa3]);
        assert_eq!(&bytes[32..40], &[0, 0, 0, 0, 0, 0, 1, 2], "rec_seq is big-endian");
        let cc = CryptoInfo::new(0x0303, Cipher::Chacha20Poly1305, &[9; 32], &[], &[5; 12], 1).unwrap();
        assert_eq!(cc.raw().1, 56);
        assert!(CryptoInfo::new(0x0304, Cipher::Aes256Gcm, &key, &[0; 4], &[0; 8], 0).is_err(), "short key");
        assert!(CryptoInfo::new(0x0301, Cipher::Aes128Gcm, &key, &[0; 4], &[0; 8], 0).is_err(), "TLS 1.0");
        assert!(CryptoInfo::new(0x0304, Cipher::Chacha20Poly1305, &[9; 32], &[0; 4], &[5; 8], 0).is_err());
    }

    /// The probe answers on any kernel without failing the process: here it says whether
    /// CONFIG_TLS is there (the development VM has none: ENOENT).
    #[test]
    fn probe_answers() {
        match probe() {
            Ok(()) => eprintln!("kernel TLS available"),
            Err(e) => {
                eprintln!("kernel TLS unavailable: {e}");
                assert!(e.raw_os_error().is_some(), "{e}");
            }
        }
    }

    #[test]
    fn attach_refuses_a_socket_that_is_not_established() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = Socket::from(OwnedFd::from(s));
        // A listener: ENOTCONN where the module exists, ENOENT where it does not; never success.
        assert!(attach(&sock).is_err());
    }
}
