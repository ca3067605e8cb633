//! Buffered bursts: one non-blocking recv(2) into the worker's scratch buffer, one non-blocking
//! send(2) of it ([`read`]); only the part a full `dst` did not take is copied into a pooled
//! buffer and sent as `dst` drains ([`send`]). So an idle connection holds no buffer, and a busy
//! one holds one only while its peer is slower than its source.
use super::{Burst, Env, Moved, Pair};
use crate::sys::Socket;
use std::io;

/// Reads what `src` has into the scratch buffer and sends it on at once: the burst, and the part
/// `dst` could not take (to be sent with [`send`] as it drains). With `peek`, a read that leaves
/// room is tried once more at once: if it finds the end of the stream, the bytes go out corked
/// for the FIN that follows ([`Burst::Last`]).
pub(crate) fn read(
    pair: &Pair<'_>,
    env: &Env<'_>,
    src: &Socket,
    dst: &Socket,
    moved: &Moved,
    peek: bool,
) -> io::Result<(Burst, Option<Vec<u8>>)> {
    let mut scratch = env.scratch.borrow_mut();
    // With `peek`, the read and the one after it are one system call: the second read goes into
    // the second half of the buffer and says whether the end of the stream followed the bytes.
    let (n, last) = if peek && scratch.len() > 1 {
        let half = scratch.len() / 2;
        match src.try_recv_twice(&mut scratch, half) {
            Ok((0, _)) => return Ok((Burst::Eof, None)),
            Ok((n, None)) => (n, false),
            Ok((n, Some(0))) => (n, true),
            Ok((n, Some(m))) => (join(&mut scratch, half, n, m), false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((Burst::WouldBlock, None)),
            Err(e) => return Err(e),
        }
    } else {
        match src.try_recv(&mut scratch) {
            Ok(0) => return Ok((Burst::Eof, None)),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((Burst::WouldBlock, None)),
            Err(e) => return Err(e),
        }
    };
    pair.touch();
    pair.before_send(dst);
    let got = scratch.get(..n).unwrap_or_default();
    let sent = if last { dst.try_send_vectored_before_close(&[io::IoSlice::new(got)]) } else { dst.try_send(got) };
    let sent = match sent {
        Ok(k) => k,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    moved.add(sent as u64);
    let rest = got.get(sent..).filter(|r| !r.is_empty()).map(|r| {
        let mut rest = env.bufs.borrow_mut().take(r.len());
        rest.extend_from_slice(r);
        rest
    });
    let burst = if last { Burst::Last } else { Burst::Moved { n, more: n == scratch.len() } };
    Ok((burst, rest))
}

/// Joins the two reads of [`Socket::try_recv_twice`]: the second's `m` bytes, read at `half`,
/// move up behind the first's `n` (a first read that came back short); returns their total. The
/// kernel never writes past an iovec; the lengths are clamped all the same.
fn join(buf: &mut [u8], half: usize, n: usize, m: usize) -> usize {
    let half = half.min(buf.len());
    let (n, m) = (n.min(half), m.min(buf.len() - half));
    if n < half {
        buf.copy_within(half..half + m, n);
    }
    n + m
}

/// Sends what `dst` takes now of `rest[*from..]`: `true` once all of it went, `false` when `dst`
/// is full (wait for POLLOUT, then call again).
pub(crate) fn send(dst: &Socket, rest: &[u8], from: &mut usize, moved: &Moved) -> io::Result<bool> {
    while let Some(left) = rest.get(*from..).filter(|l| !l.is_empty()) {
        match dst.try_send(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => {
                *from += k;
                moved.add(k as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn a_second_read_after_a_short_first_moves_up_behind_it() {
        let mut buf = *b"ab..cdef";
        assert_eq!(join(&mut buf, 4, 2, 3), 5);
        assert_eq!(&buf[..5], b"abcde");
        // A full first half: the second read is already behind it.
        let mut buf = *b"abcdefgh";
        assert_eq!(join(&mut buf, 4, 4, 4), 8);
        assert_eq!(&buf, b"abcdefgh");
        // Lengths past the halves (never from the kernel) stay inside the buffer.
        let mut buf = *b"ab..cdef";
        assert_eq!(join(&mut buf, 4, 9, 9), 8);
    }
}
