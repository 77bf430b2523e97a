//! `cargo xtask bench`: placeholder.

use anyhow::Result;

pub fn run() -> Result<()> {
    println!("[bench] not yet: benchmarks arrive with issue 6");
    Ok(())
}
