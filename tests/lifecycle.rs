//! Stopping through the real binary: a connection that arrives just as SIGTERM lands is served
//! or refused, never left hanging; a second SIGTERM ends the drain at once.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const REPLY: &[u8] = b"served";

/// A binary with one passthrough route to `backend`, a long drain, listening on `addr`.
fn binary(backend: SocketAddr) -> (Proc, ConfigFile, SocketAddr) {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let f = config_file(&format!(
        "[runtime]\nworkers = 1\ndrain_timeout_ms = 60000\n[[listener]]\naddress = \"{addr}\"\n\
         [[route]]\nname = \"r\"\naction = \"passthrough\"\nmin_tls = \"1.0\"\nsni = [\"www.example.com\"]\nbackends = [\"{backend}\"]\n"
    ));
    let p = spawn_binary(&f, &[], addr);
    (p, f, addr)
}

/// An open, relayed connection that keeps the process draining until it is dropped.
fn held(addr: SocketAddr) -> TcpStream {
    let mut c = connect(addr);
    c.write_all(OPENSSL_SNI).unwrap();
    let mut got = [0u8; REPLY.len()];
    c.read_exact(&mut got).unwrap();
    c
}

/// One client: connect, send a hello, read to the end. `None` when the connect was refused.
fn client(addr: SocketAddr) -> Option<Result<Vec<u8>, std::io::Error>> {
    let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = c.write_all(OPENSSL_SNI);
    let mut got = Vec::new();
    Some(match c.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(e),
    })
}

/// Twenty times: clients connect one after another, from four threads, while SIGTERM is sent,
/// with one connection held open so that the process keeps draining. Every client the kernel let
/// in must get its reply (an accept that was in flight when the stop came is completed and
/// served, and the backlog is drained), and none may hang; once connects are refused the round
/// ends.
#[test]
fn connections_racing_sigterm_are_served() {
    let backend = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let mut served = 0;
    for round in 0..20u64 {
        let (mut p, _f, addr) = binary(backend.addr);
        let hold = held(addr);
        let go = Arc::new(Barrier::new(5));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let go = Arc::clone(&go);
                std::thread::spawn(move || {
                    go.wait();
                    let mut outcomes = Vec::new();
                    for _ in 0..2000 {
                        match client(addr) {
                            None => break,
                            Some(r) => outcomes.push(r),
                        }
                    }
                    outcomes
                })
            })
            .collect();
        go.wait();
        std::thread::sleep(Duration::from_millis(2 + round % 5));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
        for c in clients {
            for r in c.join().unwrap() {
                match r {
                    Ok(got) => {
                        assert_eq!(
                            got,
                            REPLY,
                            "round {round}: a client the kernel let in was not served: {}",
                            p.stderr()
                        );
                        served += 1;
                    }
                    Err(e) => panic!("round {round}: a client hung ({e}): {}", p.stderr()),
                }
            }
        }
        assert!(p.child.try_wait().unwrap().is_none(), "round {round}: exited while a connection was open");
        drop(hold);
        let st = p.signal_and_wait(0, Duration::from_secs(30)).expect("exits once the held connection closed");
        assert!(st.success(), "round {round}: {st}: {}", p.stderr());
    }
    eprintln!("{served} racing clients served");
}

/// A second SIGTERM during the drain exits at once, with status 3.
#[test]
fn a_second_sigterm_ends_the_drain() {
    let backend = backend(Mode::ReplyAfter { n: 1, reply: Arc::new(REPLY.to_vec()) });
    let (mut p, _f, addr) = binary(backend.addr);
    let _hold = held(addr);
    assert!(p.signal_and_wait(libc::SIGTERM, Duration::from_millis(500)).is_none(), "stopped with a connection open");
    assert!(wait_until(Duration::from_secs(10), || p.stderr().contains("stopping")), "{}", p.stderr());
    let st = p.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)).expect("a second SIGTERM exits at once");
    assert_eq!(st.code(), Some(3), "{}", p.stderr());
    assert!(p.stderr().contains("second stop signal"), "{}", p.stderr());
}
