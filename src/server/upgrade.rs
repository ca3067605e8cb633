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
//! Messages are JSON, one per datagram ([`Msg`]), the descriptors attached to `fds` messages:
//!
//! ```text
//! new → old   {"msg":"take","version":1,"pid":N}
//! old → new   {"msg":"listeners","version":1,"pid":N,"listeners":[{"configured":"0.0.0.0:443",
//!              "bound":"0.0.0.0:443","sockets":4}],"admin":{"configured":…,"bound":…}|null,"fds":5}
//! old → new   {"msg":"fds","count":5}  + 5 descriptors (at most 64 per message), in that order
//! new → old   {"msg":"ready","adopted":["0.0.0.0:443"],"admin":true}
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

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
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
    Take { version: u32, pid: u32 },
    Listeners { version: u32, pid: u32, listeners: Vec<ListenerMsg>, admin: Option<AdminMsg>, fds: usize },
    Fds { count: usize },
    Ready { adopted: Vec<SocketAddr>, admin: bool },
    Released {},
    Refused { reason: String },
}

/// A listener on offer: as configured (`:0` stays `:0`), as bound, and how many sockets (one per
/// worker) follow for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerMsg {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) sockets: usize,
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
}

/// The admin endpoint's socket, as offered.
#[derive(Debug)]
pub(crate) struct OfferedAdmin {
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) fd: OwnedFd,
}

/// What the offering thread does once a new process is ready: stop what it adopted.
pub(crate) trait HandOver: Send + Sync + 'static {
    /// The new process accepts on `adopted` (bound addresses) and, if `admin`, on the admin
    /// socket: stop accepting on them without closing them, and start draining.
    fn hand_over(&self, adopted: Vec<SocketAddr>, admin: bool);
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
            .spawn(move || serve_offer(&listener, &path2, ino, &listeners, admin.as_ref(), &*control, &*then, &flags))
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

#[allow(clippy::too_many_arguments)]
fn serve_offer(
    listener: &Socket,
    path: &Path,
    ino: u64,
    listeners: &Mutex<Vec<Offered>>,
    admin: Option<&OfferedAdmin>,
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
        let offered = super::lock(listeners);
        let taken = offer_to(&conn, &offered, admin);
        drop(offered);
        match taken {
            Ok(TakenBy { adopted, admin: took_admin, pid }) => {
                control.count(UpgradeResult::HandedOver);
                control.hand_over(adopted.clone(), took_admin);
                // Unlink before `released`: the successor renames its own socket over the path
                // only after it, so this cannot remove the successor's.
                unlink_if_ours(path, ino);
                flags.handed_over.store(true, Ordering::SeqCst);
                let _ = send(&conn, &Msg::Released {}, &[]);
                tracing::info!(
                    successor = pid,
                    adopted = ?adopted,
                    admin = took_admin,
                    "binary upgrade: the new process accepts on our listeners; draining"
                );
                then();
                return;
            }
            // A connection that closed without asking (another process checking that the socket
            // is live) is no upgrade.
            Err(NotTaken { result: None, why }) => {
                tracing::debug!(error = %why, "upgrade socket: a connection that asked for nothing")
            }
            Err(NotTaken { result: Some(result), why }) => {
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
    pid: u32,
}

/// A taker that did not: what to count (`None`: it asked nothing), and why.
struct NotTaken {
    result: Option<UpgradeResult>,
    why: String,
}

fn offer_to(conn: &Socket, listeners: &[Offered], admin: Option<&OfferedAdmin>) -> Result<TakenBy, NotTaken> {
    offer_steps(conn, listeners, admin).map(|(adopted, admin, pid)| TakenBy { adopted, admin, pid }).map_err(|why| {
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
    admin: Option<&OfferedAdmin>,
) -> Result<(Vec<SocketAddr>, bool, u32), String> {
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
    let pid = match first {
        Msg::Take { version: VERSION, pid } => pid,
        Msg::Take { version, .. } => {
            return Err(refuse(format!("protocol version {version}; this process speaks {VERSION}")))
        }
        other => return Err(refuse(format!("expected take, got {other:?}"))),
    };
    let fds: Vec<&OwnedFd> = listeners.iter().flat_map(|l| l.fds.iter()).chain(admin.map(|a| &a.fd)).collect();
    let header = Msg::Listeners {
        version: VERSION,
        pid: std::process::id(),
        listeners: listeners
            .iter()
            .map(|l| ListenerMsg { configured: l.configured, bound: l.bound, sockets: l.fds.len() })
            .collect(),
        admin: admin.map(|a| AdminMsg { configured: a.configured, bound: a.bound }),
        fds: fds.len(),
    };
    send(conn, &header, &[]).map_err(|e| e.to_string())?;
    for chunk in fds.chunks(unix::MAX_FDS) {
        let raw: Vec<_> = chunk.iter().map(|f| f.as_raw_fd()).collect();
        let bytes = serde_json::to_vec(&Msg::Fds { count: raw.len() }).map_err(|e| e.to_string())?;
        unix::send_fds(conn, &bytes, &raw, 0).map_err(|e| format!("sending descriptors: {e}"))?;
    }
    conn.set_read_timeout(Some(READY_WITHIN)).map_err(|e| e.to_string())?;
    match recv(conn, &mut none) {
        Ok(Msg::Ready { adopted, admin }) => Ok((adopted, admin, pid)),
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
    listeners: Vec<(ListenerMsg, Vec<OwnedFd>)>,
    admin: Option<(AdminMsg, OwnedFd)>,
    adopted: Vec<SocketAddr>,
    took_admin: bool,
}

/// Takes the listening sockets of the process offering them at `path`. `Ok(None)` when no
/// process listens there (none running: the new one binds its own, as on a first start).
pub fn take(path: &Path) -> Result<Option<Inherited>, UpgradeError> {
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
    send(&conn, &Msg::Take { version: VERSION, pid: std::process::id() }, &[]).map_err(io_err)?;
    let mut fds = Vec::new();
    let (from_pid, listeners, admin, count) = match recv(&conn, &mut fds).map_err(io_err)? {
        Msg::Listeners { version: VERSION, pid, listeners, admin, fds } => (pid, listeners, admin, fds),
        Msg::Refused { reason } => return Err(UpgradeError::Refused { path: path.to_owned(), reason }),
        other => return Err(proto(format!("expected the listeners, got {other:?}"))),
    };
    let expected = listeners.iter().map(|l| l.sockets).sum::<usize>() + usize::from(admin.is_some());
    if count != expected || count > 16 * 1024 {
        return Err(proto(format!("{count} descriptors announced for {expected} sockets")));
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
    let mut fds = fds.into_iter();
    let listeners = listeners
        .into_iter()
        .map(|l| {
            let socks: Vec<OwnedFd> = fds.by_ref().take(l.sockets).collect();
            (l, socks)
        })
        .collect();
    let admin = admin.and_then(|a| fds.next().map(|fd| (a, fd)));
    tracing::info!(from = from_pid, "took the listening sockets of the running process");
    Ok(Some(Inherited {
        path: path.to_owned(),
        conn,
        from_pid,
        listeners,
        admin,
        adopted: Vec::new(),
        took_admin: false,
    }))
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
        let i = self.listeners.iter().position(|(l, _)| l.configured == configured)?;
        let (l, fds) = self.listeners.swap_remove(i);
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
        let ready = Msg::Ready { adopted: std::mem::take(&mut self.adopted), admin: self.took_admin };
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

    #[test]
    fn messages_read_back_as_written_and_unknown_ones_are_refused() {
        let m = Msg::Listeners {
            version: VERSION,
            pid: 7,
            listeners: vec![ListenerMsg {
                configured: "0.0.0.0:0".parse().unwrap(),
                bound: "0.0.0.0:443".parse().unwrap(),
                sockets: 2,
            }],
            admin: None,
            fds: 2,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"msg":"listeners","version":1"#), "{text}");
        assert_eq!(serde_json::from_str::<Msg>(&text).unwrap(), m);
        for bad in [r#"{"msg":"explode"}"#, r#"{"msg":"take","version":1}"#, r#"{"msg":"released","x":1}"#, "", "[]"] {
            assert!(serde_json::from_str::<Msg>(bad).is_err(), "{bad}");
        }
    }
}
