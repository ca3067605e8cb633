//! Buffered bursts: one non-blocking recv(2) into the worker's scratch buffer, one non-blocking
//! send(2) of it; only the part a full `dst` did not take is copied into a pooled buffer and
//! sent as `dst` drains. So an idle connection holds no buffer, and a busy one holds one only
//! while its peer is slower than its source.
use super::{Burst, Env, Moved, Pair};
use crate::sys::{Socket, POLLOUT};
use std::io;

pub(crate) async fn burst(
    pair: &Pair<'_>,
    env: &Env<'_>,
    src: &Socket,
    dst: &Socket,
    moved: &Moved,
) -> io::Result<Burst> {
    let (n, more, rest) = {
        let mut scratch = env.scratch.borrow_mut();
        let n = match src.try_recv(&mut scratch) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::WouldBlock),
            Err(e) => return Err(e),
        };
        pair.touch();
        let sent = match dst.try_send(&scratch[..n]) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        moved.add(sent as u64);
        let rest = (sent < n).then(|| {
            let mut rest = env.bufs.borrow_mut().take(n - sent);
            rest.extend_from_slice(&scratch[sent..n]);
            rest
        });
        (n, n == scratch.len(), rest)
    };
    if let Some(rest) = rest {
        let res = send_rest(pair, dst, &rest, moved).await;
        env.bufs.borrow_mut().give(rest);
        res?;
    }
    Ok(Burst::Moved { n, more })
}

/// Sends `rest` as `dst` makes room for it.
async fn send_rest(pair: &Pair<'_>, dst: &Socket, rest: &[u8], moved: &Moved) -> io::Result<()> {
    let mut from = 0;
    while let Some(left) = rest.get(from..).filter(|l| !l.is_empty()) {
        dst.poll(POLLOUT).await?;
        match dst.try_send(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => {
                from += k;
                moved.add(k as u64);
                pair.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
