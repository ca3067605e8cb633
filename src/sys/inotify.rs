//! inotify(7): watching directories for the files in them being written, created, renamed or
//! removed (what editors, `consul-template`, `confd` and a Kubernetes ConfigMap volume's
//! `..data` symlink swap do).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

/// What a directory watch reports: a file closed after writing, moved in or out, created,
/// removed, its metadata changed; or the directory itself removed or moved.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// One event: the watch it came from, what happened, the file's name in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub watch: i32,
    pub mask: u32,
    pub name: Option<OsString>,
}

impl Event {
    /// The kernel's queue overflowed: events were lost.
    pub fn overflowed(&self) -> bool {
        self.mask & libc::IN_Q_OVERFLOW != 0
    }

    /// The watch is gone (the directory was removed or moved).
    pub fn ignored(&self) -> bool {
        self.mask & libc::IN_IGNORED != 0
    }
}

/// An inotify instance.
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    pub fn new() -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned to us and is owned by nothing else.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches the directory `dir` (again: the same watch id when it is already watched).
    pub fn watch(&self, dir: &Path) -> io::Result<i32> {
        let mut path = dir.as_os_str().as_bytes().to_vec();
        if path.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"));
        }
        path.push(0);
        // SAFETY: path is NUL-terminated and outlives the call; the fd is ours.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr().cast(), MASK | libc::IN_ONLYDIR) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Stops watching `watch`.
    pub fn unwatch(&self, watch: i32) {
        // SAFETY: removing a watch id from our own instance; a stale id only fails with EINVAL.
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), watch) };
    }

    /// Waits up to `timeout` for events and returns those that arrived (none on timeout).
    pub fn read(&self, timeout: Duration) -> io::Result<Vec<Event>> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, valid for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(e) };
        }
        let mut events = Vec::new();
        if n == 0 {
            return Ok(events);
        }
        // Aligned for inotify_event; room for many events with names.
        let mut buf = vec![0u64; 8192 / 8];
        loop {
            let len = buf.len() * 8;
            // SAFETY: reading into our own buffer of `len` bytes.
            let got = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), len) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    break;
                }
                return Err(e);
            }
            if got == 0 {
                break;
            }
            // SAFETY: the buffer holds `got` initialised bytes that the kernel wrote.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), got as usize) };
            parse(bytes, &mut events);
        }
        Ok(events)
    }
}

/// Decodes a buffer of `struct inotify_event`s (each a fixed header and a NUL-padded name).
fn parse(bytes: &[u8], out: &mut Vec<Event>) {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let field = |off: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[at + off..at + off + 4]);
            w
        };
        let watch = i32::from_ne_bytes(field(0));
        let mask = u32::from_ne_bytes(field(4));
        let len = u32::from_ne_bytes(field(12)) as usize;
        let name_bytes = bytes.get(at + HEADER..at + HEADER + len).unwrap_or(&[]);
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
        let name = (end > 0).then(|| OsString::from_vec(name_bytes[..end].to_vec()));
        out.push(Event { watch, mask, name });
        at += HEADER + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_rename_into_a_watched_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ino = Inotify::new().unwrap();
        let wd = ino.watch(dir.path()).unwrap();
        assert!(ino.read(Duration::from_millis(10)).unwrap().is_empty());
        std::fs::write(dir.path().join(".tmp"), b"x").unwrap();
        std::fs::rename(dir.path().join(".tmp"), dir.path().join("a.toml")).unwrap();
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen.extend(ino.read(Duration::from_millis(100)).unwrap());
            if seen.iter().any(|e| e.mask & libc::IN_MOVED_TO != 0) {
                break;
            }
        }
        let moved = seen.iter().find(|e| e.mask & libc::IN_MOVED_TO != 0).expect("IN_MOVED_TO");
        assert_eq!(moved.watch, wd);
        assert_eq!(moved.name.as_deref(), Some(std::ffi::OsStr::new("a.toml")));
        assert!(ino.watch(Path::new("/nonexistent-sni-dispatch-dir")).is_err());
    }
}
