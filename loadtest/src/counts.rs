//! Counts that do not drift with noise (`--counts`): the target's system calls, io_uring
//! submissions and scheduler wake-ups from kernel tracepoints (`perf stat -e EVENTS -p PIDS`,
//! started with its events off and switched on and off through `--control` exactly around the
//! measured window), and the host's TCP segments sent (`nstat` TcpOutSegs, before and after).
//!
//! A tracepoint counts where it fires: `raw_syscalls:sys_enter` and `io_uring:io_uring_submit_req`
//! in the target's threads; `sched:sched_wakeup` fires in the waker, so it counts the wake-ups the
//! target's threads issue (clients and back ends woken by what it sends, its own threads).
//! TcpOutSegs is the whole host: the load generators, the back ends and anything else running.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tracepoints, in the order of [`Counts`]'s figures.
pub const EVENTS: [&str; 3] = ["raw_syscalls:sys_enter", "io_uring:io_uring_submit_req", "sched:sched_wakeup"];

/// What one run counted, and per connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// connections of the window: the workload's and its background's
    pub conns: u64,
    pub syscalls: Option<u64>,
    pub io_uring_submits: Option<u64>,
    pub wakeups: Option<u64>,
    /// TcpOutSegs of the host during the window
    pub tcp_out_segs: Option<u64>,
    pub syscalls_per_conn: Option<f64>,
    pub io_uring_submits_per_conn: Option<f64>,
    pub wakeups_per_conn: Option<f64>,
    pub tcp_segs_per_conn: Option<f64>,
    /// why a figure is missing (perf without permission, an event this kernel lacks, no nstat)
    pub notes: Vec<String>,
}

impl Counts {
    /// The per-connection figures of the totals.
    pub fn new(conns: u64, perf: Result<[Option<u64>; 3], String>, segs: Result<u64, String>) -> Counts {
        let mut notes = Vec::new();
        let ev = perf.unwrap_or_else(|e| {
            notes.push(e);
            [None; 3]
        });
        for (e, v) in EVENTS.iter().zip(ev) {
            if v.is_none() && notes.is_empty() {
                notes.push(format!("perf: {e} not supported here"));
            }
        }
        let segs = segs.map_err(|e| notes.push(e)).ok();
        let per = |v: Option<u64>| v.filter(|_| conns > 0).map(|v| v as f64 / conns as f64);
        Counts {
            conns,
            syscalls: ev[0],
            io_uring_submits: ev[1],
            wakeups: ev[2],
            tcp_out_segs: segs,
            syscalls_per_conn: per(ev[0]),
            io_uring_submits_per_conn: per(ev[1]),
            wakeups_per_conn: per(ev[2]),
            tcp_segs_per_conn: per(segs),
            notes,
        }
    }
}

/// The counts of `EVENTS` in `perf stat -x,` output: a line `VALUE,UNIT,EVENT,RUNTIME,...` per
/// event. `<not counted>` (the threads never ran while counting) reads 0; `<not supported>`
/// and a missing line read None.
pub fn parse_perf_csv(text: &str) -> [Option<u64>; 3] {
    let mut out = [None; 3];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Some(i) = EVENTS.iter().position(|e| *e == f[2].trim()) else { continue };
        out[i] = match f[0].trim() {
            "<not counted>" => Some(0),
            v => v.parse::<f64>().ok().map(|x| x.round() as u64),
        };
    }
    out
}

/// The first lines of perf's complaint, in one line ("no permission ..." and the like).
fn perf_complaint(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Events ") && !l.starts_with("Usage"))
        .take(3)
        .collect();
    let text = lines.join(" ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("permission") || lower.contains("paranoid") || lower.contains("access to performance") {
        format!("perf: no permission to count tracepoints ({text}); run as root or lower kernel.perf_event_paranoid")
    } else if text.is_empty() {
        "perf: exited without a word".into()
    } else {
        format!("perf: {text}")
    }
}

/// A `perf stat` attached to the target's processes, its events off until [`Perf::enable`].
pub struct Perf {
    child: Child,
    ctl: File,
    ack: File,
    out: PathBuf,
    err: PathBuf,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Perf {
    /// Start `perf stat` on `pids`, writing its counts to `dir/perf-TAG.csv`. Err says why not
    /// (no perf binary, no permission), in words for the report.
    pub fn start(pids: &[u32], dir: &Path, tag: &str) -> Result<Perf, String> {
        let (ctl_r, ctl_w) = pipe().map_err(|e| format!("perf: pipe: {e}"))?;
        let (ack_r, ack_w) = pipe().map_err(|e| format!("perf: pipe: {e}"))?;
        let out = dir.join(format!("perf-{tag}.csv"));
        let err = dir.join(format!("perf-{tag}.err"));
        let errf = File::create(&err).map_err(|e| format!("perf: {}: {e}", err.display()))?;
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let (cr, aw) = (ctl_r.as_raw_fd(), ack_w.as_raw_fd());
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-x,", "-D", "-1", "--control"])
            .arg(format!("fd:{cr},{aw}"))
            .arg("-o")
            .arg(&out)
            .arg("-e")
            .arg(EVENTS.join(","))
            .arg("-p")
            .arg(pids.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errf);
        // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on perf's two ends.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [cr, aw] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("perf: cannot start: {e}"))?;
        // perf's ends live on in perf only: an exit shows as EOF on `ack`
        drop((ctl_r, ack_w));
        Ok(Perf { child, ctl: File::from(ctl_w), ack: File::from(ack_r), out, err })
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Send a control command and wait (5 s at most) for perf's "ack".
    fn command(&mut self, what: &str) -> Result<(), String> {
        self.ctl.write_all(format!("{what}\n").as_bytes()).map_err(|_| perf_complaint(&self.stderr_text()))?;
        let mut pfd = libc::pollfd { fd: self.ack.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        // perf writes "ack\n" and its terminating NUL
        while !got.windows(4).any(|w| w == b"ack\n") {
            let left = deadline.saturating_duration_since(Instant::now()).as_millis() as libc::c_int;
            // SAFETY: one valid pollfd.
            if left == 0 || unsafe { libc::poll(&mut pfd, 1, left) } <= 0 {
                return Err(format!("perf: no ack for {what} within 5 s"));
            }
            let mut b = [0u8; 16];
            match self.ack.read(&mut b) {
                Ok(0) | Err(_) => return Err(perf_complaint(&self.stderr_text())),
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        Ok(())
    }

    /// Switch the events on: counting starts when this returns.
    pub fn enable(&mut self) -> Result<(), String> {
        let r = self.command("enable");
        if r.is_err() {
            self.kill();
        }
        r
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Switch the events off, stop perf and read its counts.
    pub fn finish(mut self) -> Result<[Option<u64>; 3], String> {
        let r = self.command("disable");
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(5) {
                self.kill();
                return Err("perf: did not stop within 5 s of SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        r?;
        let text = std::fs::read_to_string(&self.out).map_err(|e| format!("perf: {}: {e}", self.out.display()))?;
        let v = parse_perf_csv(&text);
        if v.iter().all(Option::is_none) {
            return Err(perf_complaint(&format!("{}\n{text}", self.stderr_text())));
        }
        Ok(v)
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// TcpOutSegs in `nstat -asz TcpOutSegs` output (`TcpOutSegs   12345   0.0`).
pub fn parse_nstat(text: &str, counter: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(counter)).then(|| f.next()?.parse().ok()).flatten()
    })
}

/// A counter of /proc/net/snmp (`Tcp:` header line, then `Tcp:` values line).
pub fn parse_snmp(text: &str, group: &str, counter: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let head: Vec<&str> = rows.next()?.split_whitespace().collect();
    let vals: Vec<&str> = rows.next()?.split_whitespace().collect();
    vals.get(head.iter().position(|h| *h == counter)?)?.parse().ok()
}

/// The host's TCP segments sent so far: `nstat` (absolute, its history left alone), else
/// /proc/net/snmp.
pub fn tcp_out_segs() -> Result<u64, String> {
    if let Ok(o) = Command::new("nstat").args(["-asz", "TcpOutSegs"]).stderr(Stdio::null()).output() {
        if let Some(v) = parse_nstat(&String::from_utf8_lossy(&o.stdout), "TcpOutSegs") {
            return Ok(v);
        }
    }
    let snmp = std::fs::read_to_string("/proc/net/snmp").map_err(|e| format!("nstat failed, /proc/net/snmp: {e}"))?;
    parse_snmp(&snmp, "Tcp", "OutSegs").ok_or_else(|| "nstat failed and /proc/net/snmp has no Tcp OutSegs".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv() {
        let text = "# started on Mon Dec  1 08:00:00 2026\n\n\
            1199104,,raw_syscalls:sys_enter,1000704918,100.00,,\n\
            <not counted>,,io_uring:io_uring_submit_req,0,100.00,,\n\
            33,,sched:sched_wakeup,1000704918,100.00,,\n";
        assert_eq!(parse_perf_csv(text), [Some(1199104), Some(0), Some(33)]);
        let text = "<not supported>,,io_uring:io_uring_submit_req,0,100.00,,\n5,,raw_syscalls:sys_enter,10,100.00,,\n";
        assert_eq!(parse_perf_csv(text), [Some(5), None, None]);
        assert_eq!(parse_perf_csv("Error:\nNo permission to enable raw_syscalls:sys_enter event.\n"), [None; 3]);
    }

    #[test]
    fn complaints_read_as_words() {
        let e = perf_complaint("Error:\nNo permission to enable raw_syscalls:sys_enter event.\n\nYou may not have permission to collect stats.\n");
        assert!(e.starts_with("perf: no permission"), "{e}");
        assert!(e.contains("raw_syscalls"), "{e}");
        assert_eq!(perf_complaint("Events disabled\n"), "perf: exited without a word");
        assert!(perf_complaint("event syntax error: 'io_uring:x'").contains("syntax"));
    }

    #[test]
    fn per_connection_and_notes() {
        let c = Counts::new(1000, Ok([Some(14_000), Some(3_000), None]), Ok(20_000));
        assert_eq!(c.syscalls_per_conn, Some(14.0));
        assert_eq!(c.io_uring_submits_per_conn, Some(3.0));
        assert_eq!(c.wakeups_per_conn, None);
        assert_eq!(c.tcp_segs_per_conn, Some(20.0));
        assert_eq!(c.notes, vec!["perf: sched:sched_wakeup not supported here".to_string()]);
        let c = Counts::new(0, Err("perf: no permission".into()), Err("no nstat".into()));
        assert_eq!((c.syscalls, c.syscalls_per_conn, c.tcp_segs_per_conn), (None, None, None));
        assert_eq!(c.notes, vec!["perf: no permission".to_string(), "no nstat".to_string()]);
    }

    #[test]
    fn nstat_and_snmp() {
        assert_eq!(
            parse_nstat("#kernel\nTcpOutSegs                      79891709           0.0\n", "TcpOutSegs"),
            Some(79891709)
        );
        assert_eq!(parse_nstat("#kernel\nTcpOutSegsX 5 0.0\n", "TcpOutSegs"), None);
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\nTcp: 1 200 120000 -1 10 10 0 0 2 500 640 0 0 3 0\n";
        assert_eq!(parse_snmp(snmp, "Tcp", "OutSegs"), Some(640));
        assert_eq!(parse_snmp(snmp, "Tcp", "Nope"), None);
        assert!(tcp_out_segs().unwrap() > 0);
    }

    #[test]
    fn perf_counts_this_process_or_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        match Perf::start(&[me], dir.path(), "t") {
            Err(e) => assert!(e.starts_with("perf:"), "{e}"),
            Ok(mut p) => match p.enable() {
                Err(e) => assert!(e.starts_with("perf:"), "{e}"),
                Ok(()) => {
                    for _ in 0..200 {
                        let _ = std::fs::metadata("/");
                    }
                    match p.finish() {
                        // this test's own 200 stat(2) at least
                        Ok(v) => assert!(v[0].unwrap() >= 200, "{v:?}"),
                        Err(e) => assert!(e.starts_with("perf:"), "{e}"),
                    }
                }
            },
        }
    }
}
