//! The floor: the kernel ABI and every `unsafe` of the crate.
//!
//! Nothing here knows about routes, TLS or connections; everything above uses these types and
//! never a raw fd or a syscall of its own. The crate root has `#![deny(unsafe_code)]`; this
//! module alone allows it, and every `unsafe` block carries a `// SAFETY:` comment (enforced by
//! `clippy::undocumented_unsafe_blocks`, which CI runs with `-D warnings`).
//!
//! - [`ring`]: a worker's io_uring runtime and one-shot submission;
//! - [`socket`]: [`Socket`], async accept/recv/send/poll through the ring, connect, addresses;
//! - [`filter`]: the listener's handshake filter (classic BPF): every new handshake dropped
//!   before a close, or those of shunned sources (admission);
//! - [`pipe`]: [`Pipe`] and non-blocking `splice(2)`;
//! - [`limits`]: `RLIMIT_NOFILE`, huge-page hints;
//! - [`alloc`]: giving freed allocator pages back to the system;
//! - [`epoll`]: [`Watched`], readiness from the runtime's epoll rather than the ring (QUIC's UDP
//!   sockets, woken many times each);
//! - [`udp`]: UDP sockets for QUIC: `SO_REUSEPORT` listeners with the destination address of each
//!   datagram, connected back-end sockets, non-blocking `recvmsg`/`sendmsg` with GRO and GSO;
//! - [`unix`]: passing descriptors over unix sockets (`SCM_RIGHTS`), the peer's credentials;
//! - [`ktls`]: kernel TLS (`TCP_ULP "tls"`, `TLS_TX`/`TLS_RX`, record types in control messages);
//! - [`sched`]: control-plane threads off the workers' CPUs (affinity, `SCHED_IDLE`), parallel maps;
//! - [`inotify`]: watching configuration directories;
//! - [`huge`]: [`HugeBuf`], large tables in transparent huge pages.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod alloc;
pub mod epoll;
pub mod filter;
pub mod huge;
pub mod inotify;
pub mod ktls;
pub mod limits;
pub mod pipe;
pub mod ring;
pub mod sched;
pub mod socket;
pub mod udp;
pub mod unix;

pub use alloc::{purge_at_once, release_all_free_memory, release_free_memory, PurgeAtOnce};
pub use epoll::{Readable, Watched};
pub use huge::HugeBuf;
pub use limits::{advise_huge_pages, raise_fd_limit, zeroed_atomics};
pub use pipe::{Pipe, Spliced};
pub use ring::{runtime, RingOptions};
pub use sched::{parallel_map, parallelism, place_control_thread, Placement};
pub use socket::{Ready, Socket, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP};
