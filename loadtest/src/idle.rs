//! Idle connections (`kind = "idle"`): open `connections` connections from one thread, hold them
//! in one [`IdleState`], and measure what the target keeps for them: resident memory and file
//! descriptors per connection, and its RSS `leave_s` after the clients have closed them all.
//!
//! RSS is VmRSS summed over the target's process tree (nginx: master and worker); the kernel's
//! socket memory (buffers, `struct sock`) is not in it. The back ends (`hold`) and the clients are
//! this process, so they count nowhere.

use crate::backends::{answer_label, ANSWER_LEN};
use crate::net::io_kind;
use crate::procstat;
use crate::suite::IdleState;
use crate::workloads::{connect_err, handshake, io_err, read_full, tls_client, Err, Prepared};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// What a terminated idle connection sends and reads back before it is held.
pub const PING: &[u8; 16] = b"SNILT-IDLE-PING\n";

/// One idle run against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleStats {
    pub state: String,
    pub requested: u64,
    pub opened: u64,
    /// still open when the memory was read (the denominator of the per-connection figures)
    pub held: u64,
    /// seconds to open them all
    pub open_s: f64,
    pub baseline_rss_kib: u64,
    pub loaded_rss_kib: u64,
    pub after_rss_kib: u64,
    pub baseline_fds: u64,
    pub loaded_fds: u64,
    pub after_fds: u64,
    /// (loaded RSS − baseline RSS) ÷ held, KiB
    pub kib_per_conn: f64,
    /// (loaded fds − baseline fds) ÷ held
    pub fds_per_conn: f64,
    /// RSS `leave_s` after the clients closed, as a percentage of the baseline (100: all freed
    /// memory went back to the system)
    pub after_pct_of_baseline: f64,
    /// the part of the growth still resident then, % (0: all given back, 100: none); None
    /// when RSS did not grow
    pub retained_pct: Option<f64>,
}

impl IdleStats {
    /// The per-connection figures from the three readings (baseline, loaded, after) of RSS (KiB)
    /// and of descriptors.
    pub fn compute(
        state: IdleState,
        (requested, opened, held): (u64, u64, u64),
        open_s: f64,
        rss: [u64; 3],
        fds: [u64; 3],
    ) -> IdleStats {
        let per = |a: u64, b: u64| if held > 0 { (b as f64 - a as f64) / held as f64 } else { 0.0 };
        let grew = rss[1] as f64 - rss[0] as f64;
        IdleStats {
            state: state_name(state).into(),
            requested,
            opened,
            held,
            open_s,
            baseline_rss_kib: rss[0],
            loaded_rss_kib: rss[1],
            after_rss_kib: rss[2],
            baseline_fds: fds[0],
            loaded_fds: fds[1],
            after_fds: fds[2],
            kib_per_conn: per(rss[0], rss[1]),
            fds_per_conn: per(fds[0], fds[1]),
            after_pct_of_baseline: if rss[0] > 0 { rss[2] as f64 * 100.0 / rss[0] as f64 } else { 0.0 },
            retained_pct: (grew > 0.0).then(|| (rss[2] as f64 - rss[0] as f64) * 100.0 / grew),
        }
    }
}

pub fn state_name(s: IdleState) -> &'static str {
    match s {
        IdleState::PartialHello => "partial_hello",
        IdleState::Spliced => "spliced",
        IdleState::Terminated => "terminated",
    }
}

/// Open one connection and bring it to `state`.
fn open_one(p: &Prepared, state: IdleState, dst: SocketAddrV4, n: u32, sni: Option<&str>) -> Result<TcpStream, Err> {
    match state {
        IdleState::PartialHello => {
            let hello = p.hello_bytes(sni);
            let k = p.w.partial_bytes.min(hello.len().saturating_sub(1)).max(1);
            let mut s = p.dial(dst, n).map_err(connect_err)?;
            s.write_all(&hello[..k]).map_err(|e| io_kind(&e))?;
            Ok(s)
        }
        IdleState::Spliced => {
            let route = p.model.expect(*dst.ip(), sni).ok_or("no_route")?;
            let mut s = p.dial(dst, n).map_err(connect_err)?;
            s.write_all(&p.hello_bytes(sni)).map_err(|e| io_kind(&e))?;
            let mut a = [0u8; ANSWER_LEN];
            let got = read_full(&mut s, &mut a).map_err(|e| io_kind(&e))?;
            if got < ANSWER_LEN {
                return Err(if got == 0 { "closed_no_answer" } else { "short_answer" });
            }
            match answer_label(&a) {
                Some(l) if l == p.model.route_names[route] => Ok(s),
                Some(_) => Err("wrong_route"),
                None => Err("bad_answer"),
            }
        }
        IdleState::Terminated => {
            let mut tls = tls_client(p, dst, n, sni)?;
            handshake(&mut tls)?;
            tls.write_all(PING).map_err(io_err)?;
            let mut back = [0u8; PING.len()];
            if read_full(&mut tls, &mut back).map_err(io_err)? < back.len() {
                return Err("closed_no_answer");
            }
            if &back != PING {
                return Err("bad_echo");
            }
            // the TLS state is dropped: the socket alone is held, idle, and later closed
            Ok(tls.sock)
        }
    }
}

/// Whether the target has closed `s` (EOF or an error pending); bytes waiting count as open.
fn closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Hold `p.w.connections` connections of `p.w.state` against the target `pid` listening on
/// `port`: baseline readings, open (bounded by `open_within` and the count), settle, readings,
/// close them all, wait `leave_s`, last readings. Errors by kind, as the other workloads'.
pub fn run(p: &Prepared, pid: u32, port: u16, open_within: Duration, seed: u64) -> (IdleStats, BTreeMap<String, u64>) {
    let w = &p.w;
    let state = w.state.unwrap_or(IdleState::PartialHello);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut rng = SmallRng::seed_from_u64(seed);
    // a quiet target first: the start-up probes and the previous run are over
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = procstat::rss_kib(pid);
    let fds0 = procstat::fd_count(pid);
    let start = Instant::now();
    let deadline = start + open_within;
    let mut held: Vec<TcpStream> = Vec::with_capacity(w.connections);
    for n in 0..w.connections as u32 {
        if Instant::now() >= deadline {
            *errors.entry("not_opened_in_time".into()).or_default() += (w.connections - n as usize) as u64;
            break;
        }
        let (ip, sni) = p.pick(&mut rng);
        match open_one(p, state, SocketAddrV4::new(ip, port), n, sni.as_deref()) {
            Ok(s) => held.push(s),
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    let opened = held.len() as u64;
    std::thread::sleep(Duration::from_secs_f64(w.settle_s));
    let rss1 = procstat::rss_kib(pid);
    let fds1 = procstat::fd_count(pid);
    let gone = held.iter().filter(|s| closed(s)).count() as u64;
    if gone > 0 {
        errors.insert("closed_by_target".into(), gone);
    }
    // the clients leave: every socket closed at once
    held.clear();
    std::thread::sleep(Duration::from_secs_f64(w.leave_s));
    let rss2 = procstat::rss_kib(pid);
    let fds2 = procstat::fd_count(pid);
    let st = IdleStats::compute(
        state,
        (w.connections as u64, opened, opened - gone),
        open_s,
        [rss0, rss1, rss2],
        [fds0, fds1, fds2],
    );
    (st, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn per_connection_figures() {
        // 20,000 KiB at rest, 70,000 KiB with 1,000 held (50 KiB each), 30,000 KiB after
        let s =
            IdleStats::compute(IdleState::Spliced, (1000, 1000, 1000), 1.5, [20_000, 70_000, 30_000], [12, 2012, 12]);
        assert_eq!(s.kib_per_conn, 50.0);
        assert_eq!(s.fds_per_conn, 2.0);
        assert_eq!(s.after_pct_of_baseline, 150.0);
        assert_eq!(s.retained_pct, Some(20.0));
        assert_eq!(s.state, "spliced");
        // the denominator is the connections still held
        let s = IdleStats::compute(IdleState::PartialHello, (1000, 1000, 800), 1.0, [1000, 9000, 1000], [5, 805, 5]);
        assert_eq!(s.kib_per_conn, 10.0);
        assert_eq!(s.fds_per_conn, 1.0);
        assert_eq!(s.after_pct_of_baseline, 100.0);
        assert_eq!(s.retained_pct, Some(0.0));
        // RSS that shrank (pages reclaimed meanwhile) reads negative, never NaN
        let s = IdleStats::compute(IdleState::Terminated, (10, 10, 10), 1.0, [1000, 900, 900], [5, 25, 5]);
        assert_eq!(s.kib_per_conn, -10.0);
        assert_eq!(s.retained_pct, None);
        let s = IdleStats::compute(IdleState::Terminated, (10, 0, 0), 1.0, [0, 0, 0], [0, 0, 0]);
        assert_eq!((s.kib_per_conn, s.fds_per_conn, s.after_pct_of_baseline), (0.0, 0.0, 0.0));
    }

    #[test]
    fn closed_sockets_are_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut srv, _) = l.accept().unwrap();
        assert!(!closed(&c));
        srv.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!closed(&c), "bytes waiting: still open");
        drop(srv);
        std::thread::sleep(Duration::from_millis(20));
        let mut c2 = c.try_clone().unwrap();
        let mut b = [0u8; 1];
        c2.set_nonblocking(false).unwrap();
        assert_eq!(c2.read(&mut b).unwrap(), 1);
        assert!(closed(&c));
    }
}
