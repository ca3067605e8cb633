//! The `sni-dispatch` command: `run`, `check`, `route` and `demo`.
//!
//! Exit codes: 0 success; 1 the configuration (or a certificate, key or address) is bad;
//! 2 the command line is bad (clap's own code); 3 a second SIGTERM/SIGINT ended the drain early.

use clap::{Args, Parser, Subcommand};
use sni_dispatch::config::{Config, RuntimeOverrides};
use sni_dispatch::server::UpgradeOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core TLS front door: routes each connection by the local IP it dialed or by the
/// SNI of its ClientHello, before any crypto, then terminates TLS or passes the bytes through.
#[derive(Parser, Debug)]
#[command(name = "sni-dispatch", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, as RUST_LOG: "info", "debug", "sni_dispatch=debug,warn" …
    #[arg(long, global = true, default_value = "info", env = "SNI_DISPATCH_LOG")]
    log: String,
}

const AFTER_HELP: &str = "\
Start here:
  sni-dispatch demo                          a complete local edge, nothing to prepare
  sni-dispatch check --config edge.toml      validate a config, its certificates and keys
  sni-dispatch run --config edge.toml        serve until SIGTERM/SIGINT (SIGHUP reloads; a second
                                             SIGTERM/SIGINT ends the drain at once, exit 3)
  sni-dispatch route --config edge.toml --sni shop.example.com
                                             which route a connection would get, and why
  sni-dispatch run --config edge.toml --upgrade-socket /run/sni.sock --upgrade-from /run/sni.sock
                                             start a new binary that takes over the listeners of
                                             the running one (no refused connection); it drains
  curl --unix-socket admin.sock -X PUT --data-binary @route.toml http://x/routes/shop
  curl --unix-socket admin.sock -X PUT --data-binary @shop.pem http://x/certs/shop
                                             the admin API ([admin] socket, api_dir): a route, then
                                             its certificate (chain + key, PEM), serving at once

Configuration reference: docs/configuration.md; metrics: docs/metrics.md; tuning: tuning/README.md.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the configuration until SIGTERM/SIGINT; SIGHUP reloads config and certificates.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// A tuning profile (a file with only a [runtime] table, e.g. tuning/profiles/latency.toml):
        /// its keys override the config's [runtime]; flags override both. Read once at start.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
        /// Offer the listening sockets on this unix socket (TCP, QUIC's UDP with the open flows,
        /// hand-off, admin), for a new binary started with --upgrade-from (same user only); once
        /// one takes them, stop accepting, drain, exit 0.
        #[arg(long, value_name = "PATH")]
        upgrade_socket: Option<PathBuf>,
        /// Take the listening sockets that a process run with --upgrade-socket offers at this
        /// unix socket, then tell it to stop accepting and drain: an upgrade with no refused
        /// connection. Nobody there: bind them anew.
        #[arg(long, value_name = "PATH")]
        upgrade_from: Option<PathBuf>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Start a complete local edge on 127.0.0.1-3 with generated certificates and origins, and
    /// print the curl commands that show each routing case. Nothing to prepare.
    Demo {
        /// Port of the demo's listeners.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Validate a configuration, its certificates and keys; print a summary. Exit 0 or 1.
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print which route a connection would get and by which rule (dedicated IP, exact name,
    /// wildcard, fallback, drop), as the running server decides. Exit 0, or 1 if the config is bad.
    Route {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The SNI the client sends (none: a client without SNI).
        #[arg(long, value_name = "NAME")]
        sni: Option<String>,
        /// The local address the client dialed [default: the first listener's].
        #[arg(long, value_name = "ADDR")]
        ip: Option<std::net::IpAddr>,
        /// The client's first ALPN protocol (what a terminating route would answer).
        #[arg(long, value_name = "PROTOCOL")]
        alpn: Option<String>,
        /// Print the answer as JSON (what GET /route answers).
        #[arg(long)]
        json: bool,
    },
}

/// Flags that override the `[runtime]` table, one per key, same name with dashes.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Tuning (override [runtime])")]
struct Tuning {
    /// Worker threads, one io_uring each [default: one per allowed CPU].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// CPUs to pin workers to, e.g. "0-3,8" [default: the allowed set].
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Submission queue entries per ring (power of two) [default: 4096].
    #[arg(long, value_name = "N")]
    ring_entries: Option<u32>,
    /// Kernel-side submission polling (costs a busy kernel thread per worker).
    #[arg(long)]
    sqpoll: bool,
    /// SQPOLL thread idle time before it sleeps [default: 1000].
    #[arg(long, value_name = "MS")]
    sqpoll_idle_ms: Option<u32>,
    /// The whole ClientHello must arrive within this [default: 5000].
    #[arg(long, value_name = "MS")]
    hello_timeout_ms: Option<u64>,
    /// Per back-end connect attempt [default: 3000].
    #[arg(long, value_name = "MS")]
    connect_timeout_ms: Option<u64>,
    /// Close a connection with no traffic either way for this long [default: 300000].
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// On SIGTERM, wait this long for open connections [default: 30000].
    #[arg(long, value_name = "MS")]
    drain_timeout_ms: Option<u64>,
    /// Largest ClientHello accepted [default: 16384].
    #[arg(long, value_name = "BYTES")]
    max_hello_bytes: Option<usize>,
    /// Open connections per worker; 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    max_conns_per_worker: Option<usize>,
    /// Relay passthrough streams with zero-copy splice(2), from a direction's first burst that
    /// fills the 64 KiB copy buffer (short responses are copied) [default].
    #[arg(long, overrides_with = "no_splice")]
    splice: bool,
    /// Relay through io_uring reads and writes instead of splice.
    #[arg(long, overrides_with = "splice")]
    no_splice: bool,
    /// Pipes per worker for splicing; beyond them connections relay buffered [default: 1024].
    #[arg(long, value_name = "N")]
    pipe_pool: Option<usize>,
    /// Listen backlog of each worker's socket [default: 4096].
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,
    /// Admin endpoint address, overriding [admin] listen (e.g. 127.0.0.1:9900).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Write a JSON line per connection to this file (written by a separate thread) [default: off].
    #[arg(long, value_name = "PATH")]
    access_log: Option<PathBuf>,
    /// Fraction of connections written to the access log, 0 to 1 [default: 1].
    #[arg(long, value_name = "RATE")]
    access_log_sample: Option<f64>,
    /// Kernel TLS for terminated connections where the kernel has it [default: off].
    #[arg(long, value_name = "MODE")]
    ktls: Option<sni_dispatch::tls::ktls::Ktls>,
    /// Close a routed QUIC flow with no datagram either way for this long [default: 30000].
    #[arg(long, value_name = "MS")]
    quic_idle_timeout_ms: Option<u64>,
    /// Turn UDP GRO/GSO off on QUIC sockets (one datagram per system call) [default: on where the kernel has it].
    #[arg(long)]
    no_quic_gro: bool,
}

impl Tuning {
    fn overrides(&self) -> RuntimeOverrides {
        RuntimeOverrides {
            workers: self.workers,
            cpus: self.cpus.clone(),
            ring_entries: self.ring_entries,
            sqpoll: self.sqpoll.then_some(true),
            sqpoll_idle_ms: self.sqpoll_idle_ms,
            hello_timeout_ms: self.hello_timeout_ms,
            connect_timeout_ms: self.connect_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            drain_timeout_ms: self.drain_timeout_ms,
            max_hello_bytes: self.max_hello_bytes,
            max_conns_per_worker: self.max_conns_per_worker,
            splice: if self.no_splice { Some(false) } else { self.splice.then_some(true) },
            pipe_pool: self.pipe_pool,
            backlog: self.backlog,
            access_log: self.access_log.clone(),
            access_log_sample: self.access_log_sample,
            ktls: self.ktls,
            quic_idle_timeout_ms: self.quic_idle_timeout_ms,
            quic_gro: self.no_quic_gro.then_some(false),
            admin: self.admin,
            ..RuntimeOverrides::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Route { config, sni, ip, alpn, json } => explain(&config, sni.as_deref(), ip, alpn.as_deref(), json),
        Command::Run { config, profile, upgrade_socket, upgrade_from, tuning } => {
            let overrides = match profile.as_deref().map(RuntimeOverrides::from_profile).transpose() {
                Ok(p) => p.unwrap_or_default().then(&tuning.overrides()),
                Err(e) => return fail(&e),
            };
            run(&config, &overrides, &UpgradeOptions { socket: upgrade_socket, from: upgrade_from })
        }
        Command::Demo { port, tuning } => match sni_dispatch::demo::run(port, &tuning.overrides()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("sni-dispatch: warning: bad --log filter {filter:?} ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn check(path: &Path) -> ExitCode {
    // Nothing serves here: memory the parse frees goes back at once (a lower peak).
    let _purge = sni_dispatch::sys::purge_at_once();
    match Config::load(path, &RuntimeOverrides::default()) {
        Ok(c) => {
            print!("{}: ok\n{}", path.display(), c.summary());
            for w in &c.warnings {
                println!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn explain(path: &Path, sni: Option<&str>, ip: Option<std::net::IpAddr>, alpn: Option<&str>, json: bool) -> ExitCode {
    let config = match Config::load(path, &RuntimeOverrides::default()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let v = sni_dispatch::admin::explain_json(&config, ip, sni, alpn);
    if json {
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    println!("ip {}, sni {}", s("ip"), v["sni"].as_str().map_or("(none)".to_owned(), |n| format!("{n:?}")));
    match v["route"].as_str() {
        Some(route) => {
            println!("route: {route:?} ({})", s("action"));
            println!("rule: {} (matched {})", s("rule"), s("matched"));
            let backends: Vec<&str> =
                v["backends"].as_array().map(|a| a.iter().filter_map(|b| b.as_str()).collect()).unwrap_or_default();
            println!("backends: {}", backends.join(", "));
            if let Some(a) = v["alpn"].as_str() {
                println!("alpn: {a}");
            }
        }
        None => println!("rule: drop ({})", s("drop_reason")),
    }
    ExitCode::SUCCESS
}

fn run(path: &Path, overrides: &RuntimeOverrides, upgrade: &UpgradeOptions) -> ExitCode {
    match sni_dispatch::server::serve(path, overrides, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// One line per problem, as `sni-dispatch: error: FILE: KEY: REASON`.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    for line in e.to_string().lines() {
        eprintln!("sni-dispatch: error: {line}");
    }
    ExitCode::from(1)
}
