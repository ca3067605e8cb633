//! The access log: one JSON line per sampled connection, off by default (`--access-log PATH`,
//! `--access-log-sample RATE`).
//!
//! Each worker formats its lines into its own buffer ([`Writer`]); every publish tick, or when
//! the buffer passes [`FLUSH_AT`], the buffer is handed to the [`Sink`] thread through a bounded
//! channel with `try_send`. The worker never waits on the disk: if the writer falls behind, the
//! buffer's lines are dropped and counted (`access_log_dropped`).
use crate::metrics::{Counters, Local};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fraction in `[0, 1]`, held as parts per million (so [`Runtime`] stays `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRate(u32);

impl SampleRate {
    pub const ALL: Self = Self(1_000_000);

    /// `None` unless `0 <= f <= 1`.
    pub fn new(f: f64) -> Option<Self> {
        (0.0..=1.0).contains(&f).then(|| Self((f * 1e6).round() as u32))
    }

    pub fn parts_per_million(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1e6
    }
}

/// A worker hands its buffer over once it holds this many bytes (or at the next tick).
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffers in flight to the writer thread, over all workers.
const QUEUE: usize = 256;

/// The writer thread: appends buffers to the file until every [`Writer`] is gone.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<Msg>,
    thread: JoinHandle<()>,
}

/// What the writer thread receives: lines, or "open the file again" (SIGHUP, for logrotate).
#[derive(Debug)]
enum Msg {
    Lines(Vec<u8>),
    Reopen(std::path::PathBuf),
}

impl Sink {
    /// Opens `path` for appending (created if missing) and starts the writer thread.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new().name("sni-access-log".into()).spawn(move || write_all(file, rx))?;
        Ok(Self { tx, thread })
    }

    /// Makes the writer thread open `path` again (appending, created if missing) after writing
    /// what it has: after logrotate moved the file away, lines go to a new file at `path`
    /// (no `copytruncate` needed). Waits for room in the queue for at most a second.
    pub fn reopen(&self, path: &Path) -> bool {
        let mut msg = Msg::Reopen(path.to_owned());
        for _ in 0..100 {
            match self.tx.try_send(msg) {
                Ok(()) => return true,
                Err(TrySendError::Full(m)) => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        false
    }

    /// A worker's writer, logging a `rate` fraction of its connections.
    pub fn writer(&self, rate: SampleRate) -> Writer {
        Writer {
            tx: self.tx.clone(),
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT + 1024)),
            lines: Cell::new(0),
            rate: rate.parts_per_million(),
            acc: Cell::new(0),
        }
    }

    /// Drops the sink's own sender and waits (up to `limit`) for the thread to write what the
    /// writers sent; the thread ends once every [`Writer`] has been dropped.
    pub fn close(self, limit: Duration) {
        drop(self.tx);
        let end = std::time::Instant::now() + limit;
        while !self.thread.is_finished() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

fn write_all(file: std::fs::File, rx: Receiver<Msg>) {
    let mut out = io::BufWriter::with_capacity(256 * 1024, file);
    let mut failed = false;
    while let Ok(msg) = rx.recv() {
        let buf = match msg {
            Msg::Lines(buf) => buf,
            Msg::Reopen(path) => {
                let _ = out.flush();
                match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                    Ok(f) => {
                        out = io::BufWriter::with_capacity(256 * 1024, f);
                        failed = false;
                        tracing::info!(path = %path.display(), "access log reopened");
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "access log: cannot reopen; still writing to the old file")
                    }
                }
                continue;
            }
        };
        if let Err(e) = out.write_all(&buf) {
            if !failed {
                tracing::error!(error = %e, "access log: write failed; lines are being lost");
                failed = true;
            }
        }
        // Buffers arrive about once per tick per worker: write each out, so the file lags the
        // connections by at most a tick.
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// A worker's side of the access log (one thread, so `Cell`s).
#[derive(Debug)]
pub struct Writer {
    tx: SyncSender<Msg>,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    /// Parts per million of connections to log, and the running remainder.
    rate: u32,
    acc: Cell<u32>,
}

impl Writer {
    /// Whether to log the next connection: exactly `rate` of them, evenly spread.
    #[inline]
    pub fn sample(&self) -> bool {
        let acc = self.acc.get() + self.rate;
        if acc >= 1_000_000 {
            self.acc.set(acc - 1_000_000);
            true
        } else {
            self.acc.set(acc);
            false
        }
    }

    /// Appends one line; hands the buffer over when it is full.
    pub fn log(&self, entry: &Entry<'_>, metrics: &Local) {
        {
            let mut buf = self.buf.borrow_mut();
            if serde_json::to_writer(&mut *buf, entry).is_err() {
                return;
            }
            buf.push(b'\n');
            self.lines.set(self.lines.get() + 1);
            if buf.len() < FLUSH_AT {
                return;
            }
        }
        self.flush(metrics);
    }

    /// Hands the buffered lines to the writer thread, or drops them if it is behind.
    pub fn flush(&self, metrics: &Local) {
        let lines = self.lines.get();
        if lines == 0 {
            return;
        }
        let full = std::mem::replace(&mut *self.buf.borrow_mut(), Vec::with_capacity(FLUSH_AT + 1024));
        self.lines.set(0);
        let sent = match self.tx.try_send(Msg::Lines(full)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        };
        metrics.bump(|c: &mut Counters| {
            if sent {
                c.access_log_lines += lines;
            } else {
                c.access_log_dropped += lines;
            }
        });
    }
}

/// One access-log line. Durations are whole microseconds (route lookup: nanoseconds); a stage the
/// connection did not reach is `null`.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the connection closed, RFC 3339 UTC with microseconds.
    pub time: &'a str,
    pub worker: usize,
    /// `tcp`, or `quic` for a QUIC flow (one line per flow, when it ends).
    pub transport: &'static str,
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a str>,
    /// FoxIO's JA4 of the ClientHello (`t13d1516h2_8daaf6152771_e5627efa2ab1`; `q…` over
    /// QUIC), where it was computed.
    pub ja4: Option<&'a str>,
    pub route: Option<&'a str>,
    /// How the route was chosen: dedicated_ip, sni, wildcard, fallback_no_sni, fallback_unknown_sni, alpn.
    pub how: Option<&'static str>,
    /// passthrough, terminate or handoff.
    pub action: Option<&'static str>,
    /// The back end: `IP:port`, `unix:/path` or `handoff:/path`.
    pub backend: Option<&'a str>,
    /// closed, error, idle_timeout (relayed), or dropped (then `reason` says why).
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub bytes_client_to_backend: u64,
    pub bytes_backend_to_client: u64,
    pub hello_bytes: Option<u64>,
    pub hello_wait_us: Option<u64>,
    pub route_lookup_ns: Option<u64>,
    pub backend_connect_us: Option<u64>,
    pub tls_handshake_us: Option<u64>,
    pub first_byte_us: Option<u64>,
    pub lifetime_us: Option<u64>,
}

impl<'a> Entry<'a> {
    /// A line with only its time, worker, transport and outcome: every other field `null` or 0,
    /// for the caller to fill in (`Entry { client, ..Entry::new(…) }`).
    pub fn new(time: &'a str, worker: usize, transport: &'static str, outcome: &'static str) -> Self {
        Self {
            time,
            worker,
            transport,
            client: None,
            local: None,
            sni: None,
            alpn: None,
            ja4: None,
            route: None,
            how: None,
            action: None,
            backend: None,
            outcome,
            reason: None,
            bytes_client_to_backend: 0,
            bytes_backend_to_client: 0,
            hello_bytes: None,
            hello_wait_us: None,
            route_lookup_ns: None,
            backend_connect_us: None,
            tls_handshake_us: None,
            first_byte_us: None,
            lifetime_us: None,
        }
    }
}

/// `t` as RFC 3339 UTC with microseconds, e.g. `2024-05-01T12:34:56.789012Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z", rem / 3600, rem / 60 % 60, rem % 60, d.subsec_micros())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_709_210_096_123_456);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.123456Z");
    }

    #[test]
    fn sampling_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::open(&dir.path().join("a.log")).unwrap();
        for (rate, n, want) in [(1.0, 100, 100), (0.5, 100, 50), (0.01, 1000, 10), (0.0, 100, 0)] {
            let w = sink.writer(SampleRate::new(rate).unwrap());
            assert_eq!((0..n).filter(|_| w.sample()).count(), want, "rate {rate}");
        }
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let sink = Sink::open(&path).unwrap();
        let reg = Registry::new(1);
        let local = Local::new(reg.slot(0));
        let w = sink.writer(SampleRate::ALL);
        let time = rfc3339(SystemTime::now());
        for i in 0..3000 {
            let e = Entry {
                sni: Some("a\"b.example"),
                reason: Some("unknown_sni"),
                bytes_client_to_backend: i,
                lifetime_us: Some(1),
                ..Entry::new(&time, 0, "tcp", "dropped")
            };
            w.log(&e, &local);
        }
        w.flush(&local);
        drop(w);
        sink.close(Duration::from_secs(10));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3000);
        for (i, l) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["bytes_client_to_backend"], i as u64);
            assert_eq!(v["sni"], "a\"b.example");
        }
        assert_eq!(local.get().access_log_lines, 3000);
    }
}
