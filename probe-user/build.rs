//! Builds the eBPF object from the current source with the nightly toolchain (aya-build) and
//! puts it in OUT_DIR, where `ebpf::loader` embeds it: never a stale or committed object.
//! Also generates the protobuf types (`pb`) from proto/meshprobe.proto.
use anyhow::Context as _;

#[path = "build/ebpf.rs"]
mod ebpf;

fn main() -> anyhow::Result<()> {
    compile_proto()?;
    // One build of the BPF crate gives every object: the probe's (embedded here), the delay
    // element's (only meshprobe-delay embeds it) and the tracepoint reference's (only
    // meshprobe-tracer); cargo passes these paths to their build.rs.
    ebpf::build("probe-ebpf")?;
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    println!("cargo::metadata=delay_object={out}/delay-ebpf");
    println!("cargo::metadata=trace_object={out}/trace-ebpf");
    Ok(())
}

/// Compiles proto/meshprobe.proto with protox (pure Rust: no protoc needed) and prost-build.
fn compile_proto() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/meshprobe.proto");
    let fds =
        protox::compile(["meshprobe.proto"], ["proto"]).context("compiling meshprobe.proto")?;
    let mut cfg = prost_build::Config::new();
    // JSON lines (`--output json`, `consume --json`) serialize the records directly; the field
    // names are the proto names. Enum fields are i32 in prost: print their proto names instead.
    cfg.type_attribute(".meshprobe.v1", "#[derive(serde::Serialize)]");
    for (field, with) in [
        ("ProbeResult.t1_source", "stamp_source"),
        ("ProbeResult.t4_source", "stamp_source"),
        ("ProbeResult.t2_source", "stamp_source"),
        ("ProbeResult.t3_source", "stamp_source"),
        ("ProbeResult.timestamping", "timestamping"),
        ("WindowSummary.timestamping", "timestamping"),
        ("ZoneSummary.timestamping", "timestamping"),
        ("ZoneSummary.network_rtt_hdr", "base64"),
    ] {
        cfg.field_attribute(
            format!(".meshprobe.v1.{field}"),
            format!("#[serde(serialize_with = \"crate::sink::json::{with}\")]"),
        );
    }
    cfg.compile_fds(fds)
        .context("generating Rust code from meshprobe.proto")
}
