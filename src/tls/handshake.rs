//! The TLS handshake of a terminating route, over a ring [`Socket`].
//!
//! The ClientHello bytes the dispatcher already read go to rustls first (never read twice);
//! ciphertext from the client then arrives by io_uring recv into a reused buffer, and what rustls
//! queues is sent with io_uring sends. On a TLS error the alert rustls queued is sent before
//! returning.

use crate::sys::Socket as TcpStream;
use rustls::ServerConnection;
use std::io;
use std::sync::Arc;

/// Read size for the handshake: one full TLS record plus header.
pub(super) const READ_SIZE: usize = 16 * 1024 + 512;

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client closed during the handshake")]
    Eof,
    #[error("socket error during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl HandshakeError {
    /// A short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Eof => "tls_client_closed",
            Self::Io(_) => "tls_io",
            Self::Tls(rustls::Error::PeerIncompatible(_)) => "tls_incompatible",
            Self::Tls(_) => "tls_handshake",
        }
    }
}

/// Runs the handshake on `client`, starting with the `hello` bytes the dispatcher already read
/// (never read twice). On a TLS error the alert rustls queued is sent before returning.
pub async fn handshake(
    client: &TcpStream,
    config: Arc<rustls::ServerConfig>,
    hello: &[u8],
) -> Result<ServerConnection, HandshakeError> {
    let mut tls = ServerConnection::new(config)?;
    let mut out = Vec::new();
    let mut input = hello;
    while !input.is_empty() {
        if tls.read_tls(&mut input)? == 0 {
            break;
        }
        process(client, &mut tls, &mut out).await?;
    }
    let mut buf = Vec::with_capacity(READ_SIZE);
    while tls.is_handshaking() {
        out = flush(client, &mut tls, out).await?;
        buf.clear();
        let (res, b) = client.recv(buf).await;
        buf = b;
        if res? == 0 {
            return Err(HandshakeError::Eof);
        }
        let mut slice = &buf[..];
        while !slice.is_empty() {
            if tls.read_tls(&mut slice)? == 0 {
                break;
            }
            process(client, &mut tls, &mut out).await?;
        }
    }
    // The server's last flight (and a session ticket) may still be queued.
    flush(client, &mut tls, out).await?;
    Ok(tls)
}

/// Processes buffered records; on error, sends the alert rustls prepared and fails.
async fn process(client: &TcpStream, tls: &mut ServerConnection, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
    if let Err(e) = tls.process_new_packets() {
        // Best effort: the peer may already be gone.
        let _ = flush(client, tls, std::mem::take(out)).await;
        return Err(e.into());
    }
    Ok(())
}

/// Writes everything rustls has queued to `client`; returns the (emptied) buffer for reuse.
async fn flush(client: &TcpStream, tls: &mut ServerConnection, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    out.clear();
    while tls.wants_write() {
        tls.write_tls(&mut out)?;
    }
    if out.is_empty() {
        return Ok(out);
    }
    let (res, mut out) = client.send_all(out, 0).await;
    out.clear();
    res.map(|()| out)
}
