//! meshprobe: kernel-timestamped STAMP (RFC 8762/8972) latency probing.
pub mod cli;
pub mod clock;
pub mod ebpf;
pub mod net;
pub mod probe;
pub mod stats;
pub mod wire;
