//! `mesh chaos`: runs one of the harness's chaos experiments on the lab and prints its verdict.

use anyhow::{Result, bail};
use meshprobe_tests::lab::MeshLab;

pub fn run(_lab: &mut MeshLab, args: &[String], _out: &mut dyn FnMut(&str)) -> Result<()> {
    bail!("chaos {args:?}: not wired yet")
}
