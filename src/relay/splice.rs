//! Zero-copy relay: POLL_ADD through io_uring for readiness, non-blocking `splice(2)` to move
//! bytes socket → pipe → socket. No io-wq threads are involved (IORING_OP_SPLICE is not used).
//!
//! Per direction: wait for `src` to be readable, fill the pipe from `src`, empty the pipe into
//! `dst` (waiting for POLLOUT when `dst` is full). When a fill filled the whole pipe more is
//! probably queued, so the next fill is tried at once; otherwise the direction waits for
//! readiness first. A fill of 0 bytes is end of stream: the pipe is empty at that point (it is
//! always emptied before the next fill), so `dst`'s write half is shut down and the direction ends.
use super::{Moved, Shared};
use crate::worker::ring::{Pipe, Socket, Spliced, POLLIN, POLLOUT, POLLRDHUP};
use std::io;
use std::net::Shutdown;

pub(crate) async fn direction(
    shared: &Shared<'_>,
    src: &Socket,
    dst: &Socket,
    pipe: &mut Pipe,
    moved: &Moved,
) -> io::Result<()> {
    let res = run(shared, src, dst, pipe, moved).await;
    if res.is_err() {
        shared.abort();
    }
    res
}

async fn run(shared: &Shared<'_>, src: &Socket, dst: &Socket, pipe: &mut Pipe, moved: &Moved) -> io::Result<()> {
    let mut ready = false;
    loop {
        if !ready {
            src.poll(POLLIN | POLLRDHUP).await?;
        }
        let room = pipe.capacity - pipe.held;
        match pipe.fill_from(src)? {
            Spliced::WouldBlock => ready = false,
            Spliced::Moved(0) => {
                dst.shutdown(Shutdown::Write);
                return Ok(());
            }
            Spliced::Moved(n) => {
                shared.touch();
                ready = n >= room;
                while pipe.held > 0 {
                    match pipe.drain_to(dst)? {
                        Spliced::Moved(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Spliced::Moved(m) => moved.add(m as u64),
                        Spliced::WouldBlock => {
                            dst.poll(POLLOUT).await?;
                        }
                    }
                }
                shared.touch();
            }
        }
    }
}
