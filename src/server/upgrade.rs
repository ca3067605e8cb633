//! Binary upgrade with no refused connection: a new process takes the listening sockets of the
//! running one over a unix socket (`SCM_RIGHTS`), as HAProxy's `-x` and Pingora do, and the old
//! one stops accepting and drains.
//!
//! - `sni-dispatch run --upgrade-socket PATH` offers this process's listening sockets (every
//!   worker's, and the admin endpoint's) on a `SOCK_SEQPACKET` unix socket at `PATH` (mode 0600;
//!   only a process of the same user, by `SO_PEERCRED`, may take them) — [`Offer`].
//! - `sni-dispatch run --upgrade-from PATH` (usually with `--upgrade-socket PATH` too) loads its
//!   configuration first, then takes the sockets ([`take`]), starts its workers on them, and
//!   tells the old process it is ready ([`Inherited::finish`]).
//!
//! The sockets are the same kernel sockets in both processes, so connections that arrive during
//! the exchange wait in their accept queue for whichever process accepts first: none is
//! refused. On `ready` the old process stops its admin endpoint (if taken), cancels the accepts
//! it has in flight on the adopted sockets without shutting them down (a connection such an
//! accept already took is served), leaves their queues to the new process, and drains as on
//! SIGTERM; listeners the new configuration dropped are drained and closed as on SIGTERM. If the
//! new process fails before `ready` (a bad configuration, a crash), the old one keeps serving as
//! if nothing happened.
//!
//! QUIC (protocol version 2): a QUIC listener's UDP sockets follow its TCP ones, and the open
//! QUIC flows follow the descriptors, each with its socket connected to the back end (the same
//! kernel socket in both processes). The old process opens no new flow from the moment it hands
//! its flows over (the clients retransmit those Initials to whichever process reads them); both
//! forward every handed-over flow until `ready`, when the old one lets its flows and UDP sockets
//! go without shutting them down (see `worker::quic`, "binary upgrade"). A version-1 taker (an
//! older binary) gets neither, and binds its UDP sockets anew; a taker of this build asks for
//! version 2 and, refused by an older process, asks again for version 1.
//!
//! For tests only, `SNI_DISPATCH_TEST_UPGRADE_VERSION=1` in a process's environment (read once,
//! at its first exchange) makes it speak version 1 alone, as a binary of before version 2 did: it
//! refuses a version-2 taker as such a binary would, serves version-1 takers, and takes as one.
//! `tests/quic.rs` upgrades such a process with a normal one to run the fallback against a
//! real version-1 peer. It is no setting: production processes never set it.
//!
//! Messages are JSON, one per datagram ([`Msg`]), the descriptors attached to `fds` and `flows`
//! messages:
//!
//! ```text
//! new → old   {"msg":"take","version":2,"pid":N}
//! old → new   {"msg":"listeners","version":2,"pid":N,"listeners":[{"configured":"0.0.0.0:443",
//!              "bound":"0.0.0.0:443","sockets":4,"udp":4}],"admin":{"configured":…,"bound":…}|null,
//!              "fds":9,"flows":120}     ("udp" and "flows" only when not 0)
//! old → new   {"msg":"fds","count":9}  + 9 descriptors (at most 64 per message), in that order:
//!              each listener's TCP sockets, then its UDP sockets, then the admin socket
//! old → new   {"msg":"flows","flows":[{"listener":"0.0.0.0:443","socket":1,"client":…,"local":…,
//!              "scid":"hex","route":"a","backend":"10.0.0.5:443"},…]} + one descriptor each (≤ 64)
//! new → old   {"msg":"ready","adopted":["0.0.0.0:443"],"admin":true,"quic":["0.0.0.0:443"]}
//! old → new   {"msg":"released"}      (the old process no longer accepts; it drains and exits)
//! ```
//! or `{"msg":"refused","reason":…}` from the old process (another user, a version it does not
//! speak).

use crate::metrics::UpgradeResult;
use crate::sys::unix;
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The protocol version this build speaks: 2 adds the QUIC listeners' UDP sockets and the open
/// QUIC flows. A version-1 taker (an older binary) is still served, without them; a taker of this
/// build asks for 2 and, refused by an older process, asks again for 1.
pub const VERSION: u32 = 2;
/// The oldest version this build still serves and speaks.
const OLDEST: u32 = 1;
/// Tests only: the highest version this process speaks (see the module doc).
pub const TEST_VERSION_ENV: &str = "SNI_DISPATCH_TEST_UPGRADE_VERSION";

/// The highest version this process speaks: [`VERSION`], or what [`TEST_VERSION_ENV`] says when
/// it names an older one this build knows (read once).
fn speaks() -> u32 {
    static SPEAKS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SPEAKS.get_or_init(|| {
        let v = std::env::var(TEST_VERSION_ENV).ok().and_then(|v| v.trim().parse::<u32>().ok());
        v.filter(|v| (OLDEST..VERSION).contains(v)).unwrap_or(VERSION)
    })
}

/// What a process that speaks `OLDEST..=max` answers a taker of `version`, in the words of a
/// version-1 binary when it speaks 1 alone (a taker falls back on "protocol version").
fn unspoken(version: u32, max: u32) -> String {
    if max == OLDEST {
        format!("protocol version {version}; this process speaks {max}")
    } else {
        format!("protocol version {version}; this process speaks {OLDEST} to {max}")
    }
}
/// The largest message.
const MAX_MSG: usize = 64 * 1024;
/// Each message of the exchange must come within this.
const STEP: Duration = Duration::from_secs(30);
/// The new process has this long between receiving the sockets and saying it is ready.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How often the offering thread looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// How `run` takes part in binary upgrades.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeOptions {
    /// `--upgrade-socket PATH`: offer this process's listeners at `PATH`.
    pub socket: Option<PathBuf>,
    /// `--upgrade-from PATH`: take the listeners of the process offering them at `PATH`.
    pub from: Option<PathBuf>,
}

/// Why an upgrade step failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("upgrade socket {}: the running process refused: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    #[error("upgrade socket {}: {reason}", path.display())]
    Protocol { path: PathBuf, reason: String },
    #[error(
        "upgrade socket {}: another process offers its listeners there; start with --upgrade-from {} to take them over",
        path.display(),
        path.display()
    )]
    InUse { path: PathBuf },
}

/// One message of the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Msg {
    Take {
        version: u32,
        pid: u32,
    },
    Listeners {
        version: u32,
        pid: u32,
        listeners: Vec<ListenerMsg>,
        admin: Option<AdminMsg>,
        fds: usize,
        /// Open QUIC flows that follow in `flows` messages (version 2; absent: none).
        #[serde(default, skip_serializing_if = "is_zero")]
        flows: usize,
        /// Hand-off listeners (`[[listener]] handoff`), by path; their sockets follow the admin
        /// endpoint's (version 2; absent: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        handoff: Vec<PathBuf>,
    },
    Fds {
        count: usize,
    },
    /// Open QUIC flows, each with its connected socket attached, in order (at most
    /// [`unix::MAX_FDS`] per message).
    Flows {
        flows: Vec<FlowMsg>,
    },
    Ready {
        adopted: Vec<SocketAddr>,
        admin: bool,
        /// The QUIC listeners (bound addresses) whose UDP sockets and flows the new process
        /// serves now (version 2; absent: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quic: Vec<SocketAddr>,
        /// The hand-off listeners (paths) whose sockets the new process accepts on now.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        handoff: Vec<PathBuf>,
    },
    Released {},
    Refused {
        reason: String,
    },
}

/// A listener on offer: as configured (`:0` stays `:0`), as bound, and how many sockets (one per
/// worker) follow for it: `sockets` TCP listening sockets, then `udp` UDP sockets (a QUIC
/// listener, version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerMsg {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) sockets: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) udp: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An open QUIC flow on offer: which UDP socket of which listener its client's datagrams arrive
/// on (`socket`: its position among the listener's UDP sockets), the client, the address it
/// dialed, its Source Connection ID (hex), its route and back end by name; its socket connected to
/// the back end is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowMsg {
    pub listener: SocketAddr,
    pub socket: usize,
    pub client: SocketAddr,
    pub local: std::net::IpAddr,
    pub scid: String,
    pub route: String,
    pub backend: String,
}

/// A flow handed over or taken: what [`FlowMsg`] says, and its socket.
#[derive(Debug)]
pub struct Flow {
    pub msg: FlowMsg,
    pub fd: OwnedFd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminMsg {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
}

fn send(sock: &Socket, msg: &Msg, fds: &[OwnedFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    unix::send_fds(sock, &bytes, &raw, 0).map(|_| ())
}

/// The next message (with the descriptors that came with it), or an error; EOF is an error.
fn recv(sock: &Socket, fds: &mut Vec<OwnedFd>) -> io::Result<Msg> {
    let mut buf = vec![0u8; MAX_MSG];
    let n = unix::recv_fds(sock, &mut buf, fds, 0)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other process closed the upgrade socket"));
    }
    serde_json::from_slice(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {e}")))
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

// ---- the running process's side -------------------------------------------------------------

/// The sockets of one listener, as this process offers them.
#[derive(Debug)]
pub(crate) struct Offered {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    /// Duplicates of every worker's socket for this listener.
    pub(crate) fds: Vec<OwnedFd>,
    /// Duplicates of its UDP sockets (a QUIC listener), in the order the flows name them.
    pub(crate) udp: Vec<OwnedFd>,
}

/// The admin endpoint's socket, as offered.
#[derive(Debug)]
pub(crate) struct OfferedAdmin {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) fd: OwnedFd,
}

/// A hand-off listener's socket, as offered.
#[derive(Debug)]
pub(crate) struct OfferedHandoff {
    pub(crate) path: PathBuf,
    pub(crate) fd: OwnedFd,
}

/// What the offering thread does once a new process is ready: stop what it adopted.
pub(crate) trait HandOver: Send + Sync + 'static {
    /// The new process accepts on `adopted` (bound addresses) and, if `admin`, on the admin
    /// socket, and serves the QUIC listeners `quic` (their UDP sockets and the flows it took):
    /// stop accepting and receiving on them without closing them, and start draining.
    /// The same for the hand-off listeners `handoff` (paths): stop accepting there, and leave
    /// the socket files to the new process.
    fn hand_over(&self, adopted: Vec<SocketAddr>, admin: bool, quic: Vec<SocketAddr>, handoff: Vec<PathBuf>);
    /// The open QUIC flows, each with a duplicate of its socket; from now until
    /// [`HandOver::quic_resume`] or the hand-over, no new flow is opened (their Initials are
    /// dropped, `draining`, and retransmitted by the clients), so the taker misses none.
    fn quic_flows(&self) -> Vec<Flow>;
    /// The exchange failed after [`HandOver::quic_flows`]: open new flows again.
    fn quic_resume(&self);
    /// Counts what came of one taker (`upgrade_takers_total`).
    fn count(&self, result: crate::metrics::UpgradeResult);
}

/// A running offer: the thread serving the unix socket, stopped (and the socket file removed if
/// it is still ours) on drop.
#[derive(Debug)]
pub struct Offer {
    path: PathBuf,
    ino: u64,
    /// Set to stop the thread.
    stop: Arc<AtomicBool>,
    /// Set by the thread once it handed over: the path is then the successor's, whatever inode
    /// it has (inode numbers are reused, so comparing them is not enough).
    handed_over: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Offer {
    /// Binds the unix socket at `path` and serves takers on a thread named `sni-upgrade`.
    /// `then` runs once a new process has taken over (in `run`: raise SIGTERM, so that this
    /// process drains and exits as on a stop signal).
    pub(crate) fn start(
        path: &Path,
        listeners: Arc<Mutex<Vec<Offered>>>,
        admin: Option<OfferedAdmin>,
        handoff: Vec<OfferedHandoff>,
        control: Arc<dyn HandOver>,
        then: Box<dyn Fn() + Send>,
    ) -> Result<Self, UpgradeError> {
        let err = |source| UpgradeError::Io { path: path.to_owned(), source };
        let (listener, ino) = bind_offer(path)?;
        listener.set_read_timeout(Some(STOP_CHECK)).map_err(err)?;
        let (stop, handed_over) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let flags = Flags { stop: Arc::clone(&stop), handed_over: Arc::clone(&handed_over) };
        let path2 = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("sni-upgrade".into())
            .spawn(move || {
                let offer = Offering { listeners: &listeners, rest: Rest { admin: admin.as_ref(), handoff: &handoff } };
                serve_offer(&listener, &path2, ino, &offer, &*control, &*then, &flags)
            })
            .map_err(err)?;
        tracing::info!(path = %path.display(), "offering the listeners for a binary upgrade (sni-dispatch run --upgrade-from PATH)");
        Ok(Self { path: path.to_owned(), ino, stop, handed_over, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Offer {
    /// Stops offering: the socket file goes now; the thread ends within [`STOP_CHECK`], or
    /// after the exchange it is in (it is not waited for: a taker may be slow).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if !self.handed_over.load(Ordering::SeqCst) {
            unlink_if_ours(&self.path, self.ino);
        }
        drop(self.thread.take());
    }
}

/// Fails if a live process offers its listeners at `path` (a stale socket file is fine: it will
/// be replaced). `run` checks this before binding anything, unless it takes over from `path`.
pub fn check_free(path: &Path) -> Result<(), UpgradeError> {
    let err = |source| UpgradeError::Io { path: path.to_owned(), source };
    if path.exists() {
        let probe = seqpacket().map_err(err)?;
        let addr = SockAddr::unix(path).map_err(err)?;
        if probe.connect(&addr).is_ok() {
            return Err(UpgradeError::InUse { path: path.to_owned() });
        }
    }
    Ok(())
}

/// Binds a SEQPACKET listener at `path`, mode 0600: under a temporary name, then renamed over
/// `path` (a stale socket file of a dead process is replaced; a live one is an error).
fn bind_offer(path: &Path) -> Result<(Socket, u64), UpgradeError> {
    let err = |source| UpgradeError::Io { path: path.to_owned(), source };
    check_free(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "upgrade".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let sock = seqpacket().map_err(err)?;
    sock.bind(&SockAddr::unix(&tmp).map_err(err)?).map_err(err)?;
    let placed = (|| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        sock.listen(8)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    let ino = inode(path).ok_or_else(|| err(io::Error::new(io::ErrorKind::NotFound, "the socket file vanished")))?;
    Ok((sock, ino))
}

/// The inode of the file at `path`, if there is one.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Removes the socket file at `path` if it is still the one this process bound (inode `ino`):
/// a successor may have renamed its own over it.
fn unlink_if_ours(path: &Path, ino: u64) {
    if inode(path) == Some(ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// What the offering thread and its [`Offer`] share.
struct Flags {
    stop: Arc<AtomicBool>,
    handed_over: Arc<AtomicBool>,
}

/// Everything on offer.
struct Offering<'a> {
    listeners: &'a Mutex<Vec<Offered>>,
    rest: Rest<'a>,
}

/// What is on offer besides the listeners: the admin endpoint's socket, the hand-off listeners'.
#[derive(Clone, Copy)]
struct Rest<'a> {
    admin: Option<&'a OfferedAdmin>,
    handoff: &'a [OfferedHandoff],
}

fn serve_offer(
    listener: &Socket,
    path: &Path,
    ino: u64,
    offer: &Offering<'_>,
    control: &dyn HandOver,
    then: &dyn Fn(),
    flags: &Flags,
) {
    while !flags.stop.load(Ordering::SeqCst) {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                crate::warn_every_second!(error = %e, "upgrade socket: accept failed");
                std::thread::sleep(STOP_CHECK);
                continue;
            }
        };
        // The listeners of the moment (a reload adds and removes them): held through the
        // exchange, so that none is added or closed while a taker adopts them.
        let offered = super::lock(offer.listeners);
        let taken = offer_to(&conn, &offered, offer.rest, control);
        drop(offered);
        match taken {
            Ok(TakenBy { adopted, admin: took_admin, quic, handoff, pid }) => {
                control.count(UpgradeResult::HandedOver);
                control.hand_over(adopted.clone(), took_admin, quic.clone(), handoff.clone());
                // Unlink before `released`: the successor renames its own socket over the path
                // only after it, so this cannot remove the successor's.
                unlink_if_ours(path, ino);
                flags.handed_over.store(true, Ordering::SeqCst);
                let _ = send(&conn, &Msg::Released {}, &[]);
                tracing::info!(
                    successor = pid,
                    adopted = ?adopted,
                    admin = took_admin,
                    quic = ?quic,
                    handoff = ?handoff,
                    "binary upgrade: the new process accepts on our listeners; draining"
                );
                then();
                return;
            }
            // A connection that closed without asking (another process checking that the socket
            // is live) is no upgrade.
            Err(NotTaken { result: None, why }) => {
                control.quic_resume();
                tracing::debug!(error = %why, "upgrade socket: a connection that asked for nothing")
            }
            Err(NotTaken { result: Some(result), why }) => {
                control.quic_resume();
                control.count(result);
                tracing::warn!(error = %why, "binary upgrade not completed; still serving");
            }
        }
    }
    unlink_if_ours(path, ino);
}

/// One taker: checks who it is, sends the sockets, waits for `ready`. Returns what it adopted
/// and its pid.
/// A taker that took the sockets and said it was ready.
struct TakenBy {
    adopted: Vec<SocketAddr>,
    admin: bool,
    quic: Vec<SocketAddr>,
    handoff: Vec<PathBuf>,
    pid: u32,
}

/// A taker that did not: what to count (`None`: it asked nothing), and why.
struct NotTaken {
    result: Option<UpgradeResult>,
    why: String,
}

fn offer_to(conn: &Socket, listeners: &[Offered], rest: Rest<'_>, control: &dyn HandOver) -> Result<TakenBy, NotTaken> {
    offer_steps(conn, listeners, rest, control).map_err(|why| {
        let result = if why.starts_with(REFUSED) {
            Some(UpgradeResult::Refused)
        } else if why.starts_with(SILENT) {
            None
        } else {
            Some(UpgradeResult::Aborted)
        };
        NotTaken { result, why }
    })
}

/// What a refusal's message starts with.
const REFUSED: &str = "refused: ";
/// What the message of a connection that closed before asking anything starts with.
const SILENT: &str = "closed before asking: ";

fn offer_steps(
    conn: &Socket,
    listeners: &[Offered],
    rest: Rest<'_>,
    control: &dyn HandOver,
) -> Result<TakenBy, String> {
    let Rest { admin, handoff } = rest;
    conn.set_read_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(STEP)).map_err(|e| e.to_string())?;
    let cred = unix::peer_cred(conn).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = unix::euid();
    let refuse = |reason: String| {
        let _ = send(conn, &Msg::Refused { reason: reason.clone() }, &[]);
        format!("{REFUSED}{reason}")
    };
    // Read the request before answering anything, a refusal included: closing with a message
    // unread would reset the connection before the taker reads why.
    let mut none = Vec::new();
    let first = recv(conn, &mut none).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("{SILENT}{e}"),
        _ => e.to_string(),
    })?;
    if cred.uid != me {
        return Err(refuse(format!("pid {} runs as uid {}; only uid {me} may take the listeners", cred.pid, cred.uid)));
    }
    let (version, pid) = match first {
        Msg::Take { version, pid } if (OLDEST..=speaks()).contains(&version) => (version, pid),
        Msg::Take { version, .. } => return Err(refuse(unspoken(version, speaks()))),
        other => return Err(refuse(format!("expected take, got {other:?}"))),
    };
    // Version 1 takers get no UDP sockets (they bind their own) and no flows.
    let quic = version >= 2;
    let fds: Vec<&OwnedFd> = listeners
        .iter()
        .flat_map(|l| l.fds.iter().chain(l.udp.iter().filter(|_| quic)))
        .chain(admin.map(|a| &a.fd))
        .chain(handoff.iter().filter(|_| quic).map(|h| &h.fd))
        .collect();
    let flows = if quic && listeners.iter().any(|l| !l.udp.is_empty()) { control.quic_flows() } else { Vec::new() };
    let header = Msg::Listeners {
        version,
        pid: std::process::id(),
        listeners: listeners
            .iter()
            .map(|l| ListenerMsg {
                configured: l.configured,
                bound: l.bound,
                sockets: l.fds.len(),
                udp: if quic { l.udp.len() } else { 0 },
            })
            .collect(),
        admin: admin.map(|a| AdminMsg { configured: a.configured, bound: a.bound }),
        fds: fds.len(),
        flows: flows.len(),
        handoff: if quic { handoff.iter().map(|h| h.path.clone()).collect() } else { Vec::new() },
    };
    send(conn, &header, &[]).map_err(|e| e.to_string())?;
    for chunk in fds.chunks(unix::MAX_FDS) {
        let raw: Vec<_> = chunk.iter().map(|f| f.as_raw_fd()).collect();
        let bytes = serde_json::to_vec(&Msg::Fds { count: raw.len() }).map_err(|e| e.to_string())?;
        unix::send_fds(conn, &bytes, &raw, 0).map_err(|e| format!("sending descriptors: {e}"))?;
    }
    for chunk in flows.chunks(unix::MAX_FDS) {
        let raw: Vec<_> = chunk.iter().map(|f| f.fd.as_raw_fd()).collect();
        let msg = Msg::Flows { flows: chunk.iter().map(|f| f.msg.clone()).collect() };
        let bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        unix::send_fds(conn, &bytes, &raw, 0).map_err(|e| format!("sending QUIC flows: {e}"))?;
    }
    // This process's duplicates of the flows' sockets go now; it keeps forwarding on its own.
    drop(flows);
    conn.set_read_timeout(Some(READY_WITHIN)).map_err(|e| e.to_string())?;
    match recv(conn, &mut none) {
        Ok(Msg::Ready { adopted, admin, quic, handoff }) => Ok(TakenBy { adopted, admin, quic, handoff, pid }),
        Ok(other) => Err(format!("pid {pid}: expected ready, got {other:?}")),
        Err(e) => Err(format!("pid {pid} did not become ready: {e}")),
    }
}

// ---- the new process's side -----------------------------------------------------------------

/// The sockets taken from the running process, until the new server has adopted what it
/// configures ([`Inherited::listener`], [`Inherited::admin`]) and said so
/// ([`Inherited::finish`]). What is not adopted is closed on drop.
#[derive(Debug)]
pub struct Inherited {
    path: PathBuf,
    conn: Socket,
    from_pid: u32,
    /// Each listener with its TCP sockets and its UDP sockets (QUIC).
    listeners: Vec<(ListenerMsg, Vec<OwnedFd>, Vec<OwnedFd>)>,
    admin: Option<(AdminMsg, OwnedFd)>,
    /// The open QUIC flows of the running process.
    flows: Vec<Flow>,
    adopted: Vec<SocketAddr>,
    took_admin: bool,
    /// The QUIC listeners (bound) whose UDP sockets were adopted.
    quic: Vec<SocketAddr>,
    /// The hand-off listeners' sockets, by path.
    handoff: Vec<(PathBuf, OwnedFd)>,
    took_handoff: Vec<PathBuf>,
}

/// Takes the listening sockets of the process offering them at `path`. `Ok(None)` when no
/// process listens there (none running: the new one binds its own, as on a first start).
pub fn take(path: &Path) -> Result<Option<Inherited>, UpgradeError> {
    match take_as(path, speaks()) {
        // An older process (version 1: no UDP sockets, no flows): asked again in its version.
        Err(UpgradeError::Refused { reason, .. }) if reason.starts_with("protocol version") => take_as(path, OLDEST),
        other => other,
    }
}

fn take_as(path: &Path, version: u32) -> Result<Option<Inherited>, UpgradeError> {
    let io_err = |source| UpgradeError::Io { path: path.to_owned(), source };
    let proto = |reason: String| UpgradeError::Protocol { path: path.to_owned(), reason };
    let conn = seqpacket().map_err(io_err)?;
    match conn.connect(&SockAddr::unix(path).map_err(io_err)?) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => {
            tracing::warn!(path = %path.display(), "no running process offers its listeners here; binding them anew");
            return Ok(None);
        }
        Err(e) => return Err(io_err(e)),
    }
    conn.set_read_timeout(Some(STEP)).map_err(io_err)?;
    conn.set_write_timeout(Some(STEP)).map_err(io_err)?;
    send(&conn, &Msg::Take { version, pid: std::process::id() }, &[]).map_err(io_err)?;
    let mut fds = Vec::new();
    let (from_pid, listeners, admin, count, flow_count, handoff) = match recv(&conn, &mut fds).map_err(io_err)? {
        Msg::Listeners { version: v, pid, listeners, admin, fds, flows, handoff } if v == version => {
            (pid, listeners, admin, fds, flows, handoff)
        }
        Msg::Refused { reason } => return Err(UpgradeError::Refused { path: path.to_owned(), reason }),
        other => return Err(proto(format!("expected the listeners, got {other:?}"))),
    };
    let expected =
        listeners.iter().map(|l| l.sockets + l.udp).sum::<usize>() + usize::from(admin.is_some()) + handoff.len();
    if count != expected || count > 16 * 1024 || flow_count > MAX_FLOWS {
        return Err(proto(format!("{count} descriptors announced for {expected} sockets, {flow_count} flows")));
    }
    while fds.len() < count {
        let before = fds.len();
        match recv(&conn, &mut fds).map_err(io_err)? {
            Msg::Fds { count: n } if fds.len() - before == n && n > 0 => {}
            other => return Err(proto(format!("expected {n} descriptors, got {other:?}", n = count - before))),
        }
    }
    if fds.len() != count {
        return Err(proto(format!("{} descriptors for {count} sockets", fds.len())));
    }
    let mut flows: Vec<Flow> = Vec::with_capacity(flow_count);
    while flows.len() < flow_count {
        let mut got = Vec::new();
        match recv(&conn, &mut got).map_err(io_err)? {
            Msg::Flows { flows: list } if list.len() == got.len() && !list.is_empty() => {
                flows.extend(list.into_iter().zip(got).map(|(msg, fd)| Flow { msg, fd }));
            }
            other => return Err(proto(format!("expected QUIC flows with their sockets, got {other:?}"))),
        }
    }
    if flows.len() != flow_count {
        return Err(proto(format!("{} QUIC flows for {flow_count} announced", flows.len())));
    }
    let mut fds = fds.into_iter();
    let listeners = listeners
        .into_iter()
        .map(|l| {
            let socks: Vec<OwnedFd> = fds.by_ref().take(l.sockets).collect();
            let udp: Vec<OwnedFd> = fds.by_ref().take(l.udp).collect();
            (l, socks, udp)
        })
        .collect();
    let admin = admin.and_then(|a| fds.next().map(|fd| (a, fd)));
    let handoff = handoff.into_iter().zip(fds).collect();
    tracing::info!(
        from = from_pid,
        version,
        quic_flows = flows.len(),
        "took the listening sockets of the running process"
    );
    Ok(Some(Inherited {
        path: path.to_owned(),
        conn,
        from_pid,
        listeners,
        admin,
        flows,
        adopted: Vec::new(),
        took_admin: false,
        quic: Vec::new(),
        handoff,
        took_handoff: Vec::new(),
    }))
}

/// The most QUIC flows one exchange carries (each a descriptor).
const MAX_FLOWS: usize = 1 << 20;

/// Whether `fd` is a UDP socket bound to `bound`.
fn is_udp_on(fd: &OwnedFd, bound: SocketAddr) -> bool {
    let s = socket2::SockRef::from(fd);
    s.r#type().ok() == Some(Type::DGRAM) && s.local_addr().ok().and_then(|a| a.as_socket()) == Some(bound)
}

/// Whether `fd` is a listening TCP socket bound to `bound` (what was announced), and so safe
/// to accept on.
fn is_listener_on(fd: &OwnedFd, bound: SocketAddr) -> bool {
    let s = socket2::SockRef::from(fd);
    s.r#type().ok() == Some(Type::STREAM)
        && s.is_listener().unwrap_or(false)
        && s.local_addr().ok().and_then(|a| a.as_socket()) == Some(bound)
}

impl Inherited {
    /// The pid of the process the sockets came from.
    pub fn from_pid(&self) -> u32 {
        self.from_pid
    }

    /// The sockets of the listener configured as `configured` (matched as configured, so a
    /// `:0` listener keeps its port), with their bound address; `None` if the running process
    /// had no such listener, or its sockets are not what was announced.
    pub fn listener(&mut self, configured: SocketAddr) -> Option<(SocketAddr, Vec<OwnedFd>)> {
        let i = self.listeners.iter().position(|(l, tcp, _)| l.configured == configured && !tcp.is_empty())?;
        let (l, fds) = (self.listeners[i].0.clone(), std::mem::take(&mut self.listeners[i].1));
        // Blocking, as the ring's accept needs (a stop that drained it set O_NONBLOCK, which the
        // file, shared by every process holding it, would keep).
        let good: Vec<OwnedFd> = fds
            .into_iter()
            .filter(|fd| is_listener_on(fd, l.bound) && socket2::SockRef::from(fd).set_nonblocking(false).is_ok())
            .collect();
        if good.is_empty() {
            tracing::warn!(listener = %configured, "the sockets handed over are not listening on {}; binding anew", l.bound);
            return None;
        }
        self.adopted.push(l.bound);
        Some((l.bound, good))
    }

    /// The UDP sockets of the QUIC listener configured as `configured`, in the running
    /// process's order (the order [`Inherited::quic_flows`] names them by), with its bound
    /// address; `None` if it had none, or they are not UDP sockets on that address.
    pub fn udp(&mut self, configured: SocketAddr) -> Option<(SocketAddr, Vec<OwnedFd>)> {
        let i = self.listeners.iter().position(|(l, _, udp)| l.configured == configured && !udp.is_empty())?;
        let bound = self.listeners[i].0.bound;
        let fds = std::mem::take(&mut self.listeners[i].2);
        if !fds.iter().all(|fd| is_udp_on(fd, bound)) {
            tracing::warn!(listener = %configured, "the UDP sockets handed over are not bound to {bound}; binding anew");
            return None;
        }
        self.quic.push(bound);
        Some((bound, fds))
    }

    /// The running process's open QUIC flows on the listener bound to `bound` (whose UDP
    /// sockets [`Inherited::udp`] adopted).
    pub fn quic_flows(&mut self, bound: SocketAddr) -> Vec<Flow> {
        let (mine, rest) = std::mem::take(&mut self.flows).into_iter().partition(|f| f.msg.listener == bound);
        self.flows = rest;
        mine
    }

    /// The socket of the hand-off listener at `path`, if the running process had one there and it
    /// is a listening unix socket bound to that path.
    pub fn handoff(&mut self, path: &Path) -> Option<OwnedFd> {
        let i = self.handoff.iter().position(|(p, _)| p == path)?;
        let (p, fd) = self.handoff.swap_remove(i);
        let s = socket2::SockRef::from(&fd);
        let bound = s.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
        if s.r#type().ok() != Some(Type::SEQPACKET)
            || !s.is_listener().unwrap_or(false)
            || bound.as_deref() != Some(path)
        {
            tracing::warn!(path = %path.display(), "the hand-off socket handed over is not listening there; binding anew");
            return None;
        }
        self.took_handoff.push(p);
        Some(fd)
    }

    /// The admin endpoint's socket, if the running process's was configured as `configured`.
    pub fn admin(&mut self, configured: SocketAddr) -> Option<std::net::TcpListener> {
        if self.admin.as_ref().map(|(a, _)| a.configured) != Some(configured) {
            return None;
        }
        let (a, fd) = self.admin.take()?;
        if !is_listener_on(&fd, a.bound) {
            return None;
        }
        self.took_admin = true;
        Some(std::net::TcpListener::from(fd))
    }

    /// Tells the running process that this one accepts on what it adopted, and waits until it
    /// has stopped accepting (`released`). Sockets not adopted are closed here.
    pub fn finish(mut self) -> Result<u32, UpgradeError> {
        let io_err = |source| UpgradeError::Io { path: self.path.clone(), source };
        self.listeners.clear();
        self.admin = None;
        self.flows.clear();
        let ready = Msg::Ready {
            adopted: std::mem::take(&mut self.adopted),
            admin: self.took_admin,
            quic: std::mem::take(&mut self.quic),
            handoff: std::mem::take(&mut self.took_handoff),
        };
        self.handoff.clear();
        send(&self.conn, &ready, &[]).map_err(io_err)?;
        let mut none = Vec::new();
        match recv(&self.conn, &mut none).map_err(io_err)? {
            Msg::Released {} => Ok(self.from_pid),
            other => Err(UpgradeError::Protocol {
                path: self.path.clone(),
                reason: format!("expected released, got {other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running process's side for the exchange tests: it offers one QUIC listener (a TCP and
    /// a UDP socket) and one flow, and records what it is told.
    #[derive(Default)]
    struct Recorder {
        quic: Mutex<Option<Vec<SocketAddr>>>,
        asked_flows: AtomicBool,
        flow_fd: Mutex<Option<OwnedFd>>,
    }

    impl HandOver for Recorder {
        fn hand_over(&self, _: Vec<SocketAddr>, _: bool, quic: Vec<SocketAddr>, _: Vec<PathBuf>) {
            *super::super::lock(&self.quic) = Some(quic);
        }
        fn quic_flows(&self) -> Vec<Flow> {
            self.asked_flows.store(true, Ordering::SeqCst);
            let fd = super::super::lock(&self.flow_fd).take();
            fd.into_iter()
                .map(|fd| Flow {
                    msg: FlowMsg {
                        listener: "127.0.0.1:4433".parse().unwrap(),
                        socket: 0,
                        client: "192.0.2.7:5000".parse().unwrap(),
                        local: "127.0.0.1".parse().unwrap(),
                        scid: "0a0b".into(),
                        route: "a".into(),
                        backend: "127.0.0.1:9".into(),
                    },
                    fd,
                })
                .collect()
        }
        fn quic_resume(&self) {}
        fn count(&self, _: UpgradeResult) {}
    }

    /// Offers a TCP listener with a QUIC twin on 127.0.0.1 (the UDP socket bound to the TCP
    /// port), and one flow; returns the offer, its socket path, the recorder and the bound address.
    fn offer_one(dir: &Path) -> (Offer, PathBuf, Arc<Recorder>, SocketAddr) {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bound = tcp.local_addr().unwrap();
        let udp = std::net::UdpSocket::bind(bound).unwrap();
        let flow = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rec = Arc::new(Recorder { flow_fd: Mutex::new(Some(OwnedFd::from(flow))), ..Recorder::default() });
        let offered = Offered {
            configured: "127.0.0.1:4433".parse().unwrap(),
            bound,
            fds: vec![OwnedFd::from(tcp)],
            udp: vec![OwnedFd::from(udp)],
        };
        let path = dir.join("up.sock");
        let control: Arc<dyn HandOver> = Arc::clone(&rec) as _;
        let offer =
            Offer::start(&path, Arc::new(Mutex::new(vec![offered])), None, Vec::new(), control, Box::new(|| {}))
                .unwrap();
        (offer, path, rec, bound)
    }

    /// Version 2: the UDP socket and the flow (with its socket) come over, and `ready` names the
    /// QUIC listener adopted.
    #[test]
    fn a_taker_gets_the_quic_sockets_and_flows() {
        let dir = tempfile::tempdir().unwrap();
        let (_offer, path, rec, bound) = offer_one(dir.path());
        let mut got = take(&path).unwrap().expect("an offer");
        let configured: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(got.listener(configured).map(|(b, fds)| (b, fds.len())), Some((bound, 1)));
        let (b, udp) = got.udp(configured).expect("the UDP socket");
        assert_eq!((b, udp.len()), (bound, 1));
        let flows = got.quic_flows(bound);
        assert!(flows.is_empty(), "the flow names another listener: {flows:?}");
        let flows = got.quic_flows("127.0.0.1:4433".parse().unwrap());
        assert_eq!(flows.len(), 1);
        assert_eq!((flows[0].msg.route.as_str(), flows[0].msg.scid.as_str()), ("a", "0a0b"));
        assert!(socket2::SockRef::from(&flows[0].fd).r#type().ok() == Some(Type::DGRAM));
        got.finish().unwrap();
        assert_eq!(*super::super::lock(&rec.quic), Some(vec![bound]));
    }

    /// Version 1 (an older binary taking over): neither the UDP sockets nor the flows, and
    /// messages without the fields it does not know.
    #[test]
    fn a_version_1_taker_gets_no_quic_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_offer, path, rec, _) = offer_one(dir.path());
        let mut got = take_as(&path, 1).unwrap().expect("an offer");
        assert_eq!(got.listeners.len(), 1);
        assert!(got.listeners[0].2.is_empty() && got.flows.is_empty());
        assert!(got.udp("127.0.0.1:4433".parse().unwrap()).is_none());
        assert!(!rec.asked_flows.load(Ordering::SeqCst), "flows were exported for a taker that cannot take them");
        // Gone without `ready`: the offer serves the next taker.
        drop(got);
        // What a version-1 process reads: the first message has no "udp" or "flows".
        let conn = seqpacket().unwrap();
        conn.connect(&SockAddr::unix(&path).unwrap()).unwrap();
        send(&conn, &Msg::Take { version: 1, pid: 1 }, &[]).unwrap();
        let mut buf = vec![0u8; MAX_MSG];
        let mut fds = Vec::new();
        let n = unix::recv_fds(&conn, &mut buf, &mut fds, 0).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.contains(r#""version":1"#) && !text.contains("udp") && !text.contains("flows"), "{text}");
    }

    #[test]
    fn messages_read_back_as_written_and_unknown_ones_are_refused() {
        let m = Msg::Listeners {
            version: VERSION,
            pid: 7,
            listeners: vec![ListenerMsg {
                configured: "0.0.0.0:0".parse().unwrap(),
                bound: "0.0.0.0:443".parse().unwrap(),
                sockets: 2,
                udp: 0,
            }],
            admin: None,
            fds: 2,
            flows: 0,
            handoff: vec![],
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"msg":"listeners","version":2"#), "{text}");
        // Without QUIC, what a version-1 process reads (no field it does not know).
        assert!(!text.contains("udp") && !text.contains("flows"), "{text}");
        let ready = Msg::Ready { adopted: vec![], admin: false, quic: vec![], handoff: vec![] };
        assert_eq!(serde_json::to_string(&ready).unwrap(), r#"{"msg":"ready","adopted":[],"admin":false}"#);
        assert_eq!(serde_json::from_str::<Msg>(&text).unwrap(), m);
        for bad in [r#"{"msg":"explode"}"#, r#"{"msg":"take","version":1}"#, r#"{"msg":"released","x":1}"#, "", "[]"] {
            assert!(serde_json::from_str::<Msg>(bad).is_err(), "{bad}");
        }
    }
}
