//! sni-loadtest: run a load-test suite against sni-dispatch and, side by side, HAProxy and nginx.

use clap::{Parser, Subcommand};
use sni_loadtest::runner::{self, Options};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sni-loadtest",
    version,
    about = "Load-test suites for sni-dispatch, with HAProxy and nginx side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a suite: start the back ends and the targets, run the workloads, report.
    Suite(Options),
    /// Measure the edge topology: a pool with a back end killed under load (pool), the hand-off
    /// to a local terminator against passthrough (handoff), unix-socket back ends (unix).
    Topology(sni_loadtest::topology::Options),
    /// QUIC: handshakes, bulk, idle flows and an Initial flood with quinn, through the dispatcher
    /// and (--compare nginx) nginx's stream UDP proxy on the same traffic.
    Quic(sni_loadtest::quic::QuicOptions),
    /// Write the dispatcher, HAProxy and nginx configs a suite generates into DIR, and exit.
    Configs {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Suite(o) => {
            for c in &o.compare {
                if !sni_loadtest::targets::PEERS.contains(&c.as_str()) {
                    eprintln!("unknown peer {c}; known: {}", sni_loadtest::targets::PEERS.join(", "));
                    std::process::exit(2);
                }
            }
            match runner::run(&o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        Cmd::Topology(o) => match sni_loadtest::topology::run(&o) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Cmd::Quic(o) => match sni_loadtest::quic::run(&o) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Cmd::Configs { file, out } => match runner::write_configs(&file, &out) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
    };
    std::process::exit(code);
}
