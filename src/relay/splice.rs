//! Zero-copy bursts: non-blocking `splice(2)` socket → pipe → socket, through a pipe borrowed
//! from the worker's pool for the burst. No io-wq threads are involved (IORING_OP_SPLICE is not
//! used; readiness comes from POLL_ADD, see [`super::relay`]).
//!
//! A burst fills the pipe from `src` once ([`fill`]), then empties it into `dst` ([`drain`],
//! waiting for POLLOUT when `dst` is full) and gives the pipe back: a pipe is lent only while it
//! holds bytes, so idle connections hold none. A fill of 0 bytes is end of stream: the pipe is
//! empty at that point (it is always emptied before the next fill). With no pipe to be had
//! (every pipe of the pool is moving bytes right now, or the process is out of descriptors) the
//! burst is copied ([`super::copy`]) and counted in `splice_fallbacks_total{cause}`.
use super::pool::PipeLoan;
use super::{Burst, Env, Moved};
use crate::metrics::PipeMiss;
use crate::sys::{Pipe, Socket, Spliced};
use std::io;

/// A pipe for one burst, or `None` (counted) when there is none to be had.
pub(crate) fn loan<'a>(env: &Env<'a>) -> Option<PipeLoan<'a>> {
    match PipeLoan::take(env.pipes) {
        Ok(loan) => Some(loan),
        Err(miss) => {
            env.metrics.bump(|c| c.splice_fallbacks.bump(miss));
            if miss != PipeMiss::PoolFull {
                crate::warn_every_second!(cause = miss.as_str(), "cannot make a splice pipe; copying through buffers");
            }
            None
        }
    }
}

/// Fills the (empty) pipe from `src` once; with `peek`, a fill that leaves room is tried once
/// more at once, to find the end of the stream with the last bytes ([`Burst::Last`]).
pub(crate) fn fill(pipe: &mut Pipe, src: &Socket, peek: bool) -> io::Result<Burst> {
    let room = pipe.capacity - pipe.held;
    let n = match pipe.fill_from(src)? {
        Spliced::WouldBlock => return Ok(Burst::WouldBlock),
        Spliced::Moved(0) => return Ok(Burst::Eof),
        Spliced::Moved(n) if n >= room || !peek => return Ok(Burst::Moved { n, more: n >= room }),
        Spliced::Moved(n) => n,
    };
    Ok(match pipe.fill_from(src)? {
        Spliced::WouldBlock => Burst::Moved { n, more: false },
        Spliced::Moved(0) => Burst::Last,
        Spliced::Moved(m) => Burst::Moved { n: n + m, more: n + m >= room },
    })
}

/// Empties the pipe into `dst` as far as it takes now: `true` when `dst` is full (wait for
/// POLLOUT, then call again), `false` once the pipe is empty. `last`: the stream ends right
/// after, so the bytes go out corked, for the FIN of the shutdown or close that follows.
pub(crate) fn drain(pipe: &mut Pipe, dst: &Socket, moved: &Moved, last: bool) -> io::Result<bool> {
    while pipe.held > 0 {
        match pipe.drain_to(dst, last)? {
            Spliced::Moved(0) => return Err(io::ErrorKind::WriteZero.into()),
            Spliced::Moved(m) => moved.add(m as u64),
            Spliced::WouldBlock => return Ok(true),
        }
    }
    Ok(false)
}
