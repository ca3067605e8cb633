//! Buffered relay: io_uring RECV into a pooled buffer, then SEND it all, per direction.
use super::{Moved, Pair};
use crate::sys::Socket;
use std::io;

/// Relays `src` → `dst` until `src` ends its stream (then shuts down `dst`'s write half) or an
/// error (then aborts both sockets). `buf` is returned for reuse; `moved` counts the bytes.
pub(crate) async fn direction(
    pair: &Pair<'_>,
    src: &Socket,
    dst: &Socket,
    mut buf: Vec<u8>,
    moved: &Moved,
) -> (io::Result<()>, Vec<u8>) {
    loop {
        buf.clear();
        let (res, b) = src.recv(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => {
                pair.end_of_stream(dst);
                return (Ok(()), buf);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                pair.abort();
                return (Err(e), buf);
            }
        };
        pair.touch();
        let (res, b) = dst.send_all(buf, 0).await;
        buf = b;
        if let Err(e) = res {
            pair.abort();
            return (Err(e), buf);
        }
        moved.add(n as u64);
        pair.touch();
    }
}
