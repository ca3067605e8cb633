//! sni-loadtest: load-test suites for sni-dispatch, with HAProxy and nginx side by side.
//!
//! The modules follow a run: [`suite`] reads a suite file and builds the routing model,
//! [`certs`] makes the PEM files, [`targets`] writes the configs of the dispatcher and its
//! peers and starts them, [`backends`] serves the built-in back ends, [`workloads`] drives the
//! load ([`hello`] shapes ClientHellos, [`dist`] draws names, [`co`] paces open loops; [`idle`]
//! holds idle connections), [`procstat`] reads CPU time, RSS and descriptors, [`counts`] counts
//! system calls, io_uring submissions, wake-ups and TCP segments, [`report`] and [`plot`] write the
//! results; [`quic`] runs the QUIC workloads (quinn) through the dispatcher and nginx's UDP proxy;
//! [`scaling`] places the workers, load generators and back ends of scaling runs;
//! [`control`] measures changing a large configuration (the `[control_plane]` suites) beside
//! HAProxy's map and runtime API; [`topology`] measures the edge topology (a pool with a back
//! end killed, the hand-off, unix back ends) with processes of its own.

pub mod backends;
pub mod certs;
pub mod co;
pub mod control;
pub mod counts;
pub mod dist;
pub mod hello;
pub mod idle;
pub mod net;
pub mod plot;
pub mod procstat;
pub mod quic;
pub mod report;
pub mod runner;
pub mod scaling;
pub mod suite;
pub mod targets;
pub mod topology;
pub mod workloads;
