//! Zero-copy relay: POLL_ADD through io_uring for readiness, non-blocking `splice(2)` to move
//! bytes socket → pipe → socket. No io-wq threads are involved (IORING_OP_SPLICE is not used).
//!
//! Per direction: wait for `src` to be readable, fill the pipe from `src`, empty the pipe into
//! `dst` (waiting for POLLOUT when `dst` is full). When a fill filled the whole pipe more is
//! probably queued, so the next fill is tried at once, and so it is when the poll reported the
//! peer's FIN (POLLRDHUP: the next fill returns the rest or 0, with no second poll); otherwise the
//! direction waits for readiness first. A fill of 0 bytes is end of stream: the pipe is empty at
//! that point (it is always emptied before the next fill), so the FIN is passed on to `dst`
//! ([`Pair::end_of_stream`]) and the direction ends.
use super::{Moved, Pair};
use crate::sys::{Pipe, Socket, Spliced, POLLHUP, POLLIN, POLLOUT, POLLRDHUP};
use std::io;

pub(crate) async fn direction(
    pair: &Pair<'_>,
    src: &Socket,
    dst: &Socket,
    pipe: &mut Pipe,
    moved: &Moved,
) -> io::Result<()> {
    let res = run(pair, src, dst, pipe, moved).await;
    if res.is_err() {
        pair.abort();
    }
    res
}

async fn run(pair: &Pair<'_>, src: &Socket, dst: &Socket, pipe: &mut Pipe, moved: &Moved) -> io::Result<()> {
    let mut ready = false;
    // The peer's FIN has been seen: after this fill the stream ends, so no poll is needed before
    // the next fill (which returns the rest, or 0).
    let mut hup = false;
    loop {
        if !ready {
            hup = src.poll(POLLIN | POLLRDHUP).await? & (POLLRDHUP | POLLHUP) != 0;
        }
        let room = pipe.capacity - pipe.held;
        match pipe.fill_from(src)? {
            Spliced::WouldBlock => ready = false,
            Spliced::Moved(0) => {
                pair.end_of_stream(dst);
                return Ok(());
            }
            Spliced::Moved(n) => {
                pair.touch();
                ready = n >= room || hup;
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
            }
        }
    }
}
