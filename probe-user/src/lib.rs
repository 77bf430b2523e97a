//! meshprobe: kernel-timestamped STAMP (RFC 8762/8972) latency probing.
pub mod agent;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod consume;
pub mod discovery;
pub mod ebpf;
pub mod kafka_security;
pub mod matrix;
pub mod net;
pub mod networks;
pub mod pinglist;
pub mod probe;
pub mod sink;
pub mod stats;
pub mod topic;
pub mod wire;

/// Protobuf types generated from proto/meshprobe.proto (ZooKeeper registrations, Kafka records).
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/meshprobe.v1.rs"));
}
