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
    Suite {
        /// the suite file (TOML), e.g. loadtest/suites/smoke.toml
        file: PathBuf,
        /// the sni-dispatch binary to measure (e.g. target/release/sni-dispatch)
        #[arg(long)]
        dispatcher: Option<PathBuf>,
        /// write every figure as JSON here, and one SVG latency plot per workload beside it
        #[arg(long)]
        json: Option<PathBuf>,
        /// peers to run the same workloads against, alternately: haproxy, haproxy-splice, nginx
        #[arg(long, value_delimiter = ',')]
        compare: Vec<String>,
        /// alternating runs per target (default: the suite's `runs`)
        #[arg(long)]
        runs: Option<usize>,
        /// run only these workloads
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// multiply every workload's duration (e.g. 0.2 for a quick look)
        #[arg(long, default_value_t = 1.0)]
        duration_scale: f64,
        /// keep the temporary directory with the generated configs and logs
        #[arg(long)]
        keep_tmp: bool,
        /// exit 1 on any error even if the suite does not ask for it
        #[arg(long)]
        fail_on_error: bool,
        /// no progress bars or per-run lines; print the report at the end
        #[arg(long)]
        quiet: bool,
        /// count the target's system calls, io_uring submissions and wake-ups (perf stat on
        /// tracepoints) and the host's TCP segments (nstat) in each measured window, per connection
        #[arg(long)]
        counts: bool,
        /// idle workloads: hold N connections instead of the suite's `connections` (e.g. 1000, 3000, 5000)
        #[arg(long, value_name = "N")]
        connections: Option<usize>,
    },
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
        Cmd::Suite {
            file,
            dispatcher,
            json,
            compare,
            runs,
            only,
            duration_scale,
            keep_tmp,
            fail_on_error,
            quiet,
            counts,
            connections,
        } => {
            for c in &compare {
                if !sni_loadtest::targets::PEERS.contains(&c.as_str()) {
                    eprintln!("unknown peer {c}; known: {}", sni_loadtest::targets::PEERS.join(", "));
                    std::process::exit(2);
                }
            }
            let o = Options {
                suite: file,
                dispatcher,
                json,
                compare,
                runs,
                only,
                duration_scale,
                keep_tmp,
                fail_on_error,
                quiet,
                counts,
                connections,
            };
            match runner::run(&o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
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
