//! The io_uring ring of a worker and how one-shot operations are submitted to it.
//!
//! tokio-uring 0.5 has no POLL_ADD, no socket-less accept and no splice, so operations are built
//! with the `io-uring` crate and submitted through tokio-uring's public [`UnsubmittedOneshot`].
//! **Dropping an in-flight operation does not cancel it**: the kernel keeps using the fd number
//! and the buffer until the completion arrives, so [`submit`] requires the operation's stored
//! data to own both until then (see [`super::socket`]).

use io_uring::{cqueue, squeue};
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

/// Turns a completion into `(result, stored data)`.
struct Completion<D>(PhantomData<fn() -> D>);

impl<D> OneshotOutputTransform for Completion<D> {
    type Output = (io::Result<u32>, D);
    type StoredData = D;

    fn transform_oneshot_output(self, data: D, cqe: cqueue::Entry) -> Self::Output {
        let res = cqe.result();
        let out = if res >= 0 { Ok(res as u32) } else { Err(io::Error::from_raw_os_error(-res)) };
        (out, data)
    }
}

/// An operation in flight: resolves to `(result, stored data)`. A named type, not an `async fn`,
/// so that a connection's future holds only these few words per pending operation (a pending
/// POLL_ADD is 24 bytes plus its data), which is most of what an idle connection holds.
#[must_use = "the operation is already submitted; dropping it parks its data until completion"]
pub(super) struct Submitted<D: Unpin + 'static>(InFlightOneshot<D, Completion<D>>);

impl<D: Unpin + 'static> Future for Submitted<D> {
    type Output = (io::Result<u32>, D);

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Submits `sqe` now (it goes to the kernel with the ring's next submission), keeping `data` alive
/// until the kernel completes it, even if the returned future is dropped first (tokio-uring then
/// parks `data` in its driver until the completion arrives). Create it right where it is awaited.
///
/// # Safety
/// Every pointer inside `sqe` must point into memory owned by `data` (heap memory, so moving `data`
/// does not move it), and every fd in `sqe` must be kept open by `data`.
pub(super) unsafe fn submit<D: Unpin + 'static>(data: D, sqe: squeue::Entry) -> Submitted<D> {
    Submitted(UnsubmittedOneshot::new(data, Completion(PhantomData), sqe).submit())
}

/// Whether this kernel closes fds through the ring (IORING_OP_CLOSE, Linux 5.6): probed once per
/// process on a ring of its own, since a close submitted without waiting for its completion
/// could not fall back to close(2) on the kernel's refusal.
pub(super) fn closes_on_ring() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let Ok(ring) = io_uring::IoUring::<squeue::Entry, cqueue::Entry>::new(2) else { return false };
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(io_uring::opcode::Close::CODE)
    })
}

/// Ring settings of one worker.
#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    pub entries: u32,
    pub sqpoll: bool,
    pub sqpoll_idle_ms: u32,
}

/// Builds a tokio-uring runtime. Tries COOP_TASKRUN + SINGLE_ISSUER (never DEFER_TASKRUN, which
/// hangs tokio-uring 0.5) and falls back to a plain ring on kernels that refuse them.
pub fn runtime(opts: RingOptions) -> io::Result<tokio_uring::Runtime> {
    let mut first = io_uring::IoUring::builder();
    if opts.sqpoll {
        first.setup_sqpoll(opts.sqpoll_idle_ms);
    } else {
        first.setup_coop_taskrun().setup_single_issuer();
    }
    let mut plain = io_uring::IoUring::builder();
    if opts.sqpoll {
        plain.setup_sqpoll(opts.sqpoll_idle_ms);
    }
    let mut last = None;
    for urb in [first, plain] {
        let mut b = tokio_uring::builder();
        b.entries(opts.entries).uring_builder(&urb);
        match tokio_uring::Runtime::new(&b) {
            Ok(rt) => return Ok(rt),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no ring")))
}
