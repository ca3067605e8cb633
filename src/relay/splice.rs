//! Zero-copy bursts: non-blocking `splice(2)` socket → pipe → socket, through a pipe borrowed
//! from the worker's pool for the burst. No io-wq threads are involved (IORING_OP_SPLICE is not
//! used; readiness comes from POLL_ADD, see [`super::relay`]).
//!
//! A burst fills the pipe from `src` once, then empties it into `dst` (waiting for POLLOUT when
//! `dst` is full) and gives the pipe back: a pipe is lent only while it holds bytes, so idle
//! connections hold none. A fill of 0 bytes is end of stream: the pipe is empty at that point
//! (it is always emptied before the next fill). With no pipe to be had (every pipe of the pool
//! is moving bytes right now, or the process is out of descriptors) the burst is copied
//! ([`super::copy::burst`]) and counted in `splice_fallbacks_total{cause}`.
use super::pool::PipeLoan;
use super::{copy, Burst, Env, Moved, Pair};
use crate::metrics::PipeMiss;
use crate::sys::{Socket, Spliced, POLLOUT};
use std::io;

pub(crate) async fn burst(
    pair: &Pair<'_>,
    env: &Env<'_>,
    src: &Socket,
    dst: &Socket,
    moved: &Moved,
) -> io::Result<Burst> {
    let mut loan = match PipeLoan::take(env.pipes) {
        Ok(loan) => loan,
        Err(miss) => {
            env.metrics.bump(|c| c.splice_fallbacks.bump(miss));
            if miss != PipeMiss::PoolFull {
                crate::warn_every_second!(cause = miss.as_str(), "cannot make a splice pipe; copying through buffers");
            }
            return copy::burst(pair, env, src, dst, moved).await;
        }
    };
    let pipe = loan.get();
    let room = pipe.capacity - pipe.held;
    let n = match pipe.fill_from(src)? {
        Spliced::WouldBlock => return Ok(Burst::WouldBlock),
        Spliced::Moved(0) => return Ok(Burst::Eof),
        Spliced::Moved(n) => n,
    };
    pair.touch();
    while pipe.held > 0 {
        match pipe.drain_to(dst)? {
            Spliced::Moved(0) => return Err(io::ErrorKind::WriteZero.into()),
            Spliced::Moved(m) => moved.add(m as u64),
            Spliced::WouldBlock => {
                dst.poll(POLLOUT).await?;
            }
        }
    }
    pair.touch();
    Ok(Burst::Moved { n, more: n >= room })
}
