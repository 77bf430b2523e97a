//! Builds the delay element's BPF object (delay-ebpf) into OUT_DIR, where main.rs embeds it,
//! the way probe-user builds the probe's (one build function for both).
#[path = "../probe-user/build/ebpf.rs"]
mod ebpf;

fn main() -> anyhow::Result<()> {
    ebpf::build("delay-ebpf")
}
