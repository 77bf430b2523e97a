//! The tracepoint reference's BPF object comes from probe-user's build script, which builds it
//! with the probe's (one build of the BPF crate): its path, for main.rs to embed.
fn main() {
    let key = "DEP_MESHPROBE_EBPF_TRACE_OBJECT";
    println!("cargo::rerun-if-env-changed={key}");
    let path = std::env::var(key).expect("probe-user's build script passes the trace object");
    println!("cargo::rerun-if-changed={path}");
    println!("cargo::rustc-env=TRACE_EBPF_OBJECT={path}");
}
