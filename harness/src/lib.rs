//! Test support for meshprobe's root integration tests, the lab and the bench: network
//! namespaces and topologies that clean up after themselves, guarded child processes, services
//! (ZooKeeper, the broker), tcpdump captures decoded with pcap-file/pnet, nftables loss, CPU
//! load, hand-crafted frames, and drivers of the meshprobe binary.
//!
//! Everything lives in namespaces this harness creates, addressed from 198.18.0.0/15 and
//! fd00::/8 only.

pub mod agent;
pub mod capture;
pub mod child;
pub mod craft;
pub mod env;
pub mod fake;
pub mod interrupt;
pub mod load;
pub mod meshprobe;
pub mod netem;
pub mod netns;
pub mod nft;
pub mod reference;
pub mod safety;
pub mod scenario;
pub mod server_thread;
pub mod services;
pub mod stamp;
pub mod star;
pub mod stats;
pub mod synthetic;
pub mod tls;
pub mod topo;
pub mod trace;
pub mod zkproxy;
pub mod zkreg;

pub use capture::{Capture, CaptureResult, Packet};
pub use child::{ChildGuard, Finished};
pub use env::TestEnv;
pub use meshprobe::{Meshprobe, PingRun, Probe, Reflector, Summary};
pub use netns::Netns;
pub use topo::{Family, Routed, TwoHosts};

/// The STAMP port meshprobe listens on by default.
pub const STAMP_PORT: u16 = probe_common::STAMP_DEFAULT_PORT;
/// The only networks the harness addresses (see the module comment), as a network-list setting.
pub const TEST_NETWORKS: &str = "198.18.0.0/15,fd00::/8";
