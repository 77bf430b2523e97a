//! `mesh chaos`: runs one of the harness's chaos experiments ([`crate::chaos`]) on the
//! running lab and prints its hypothesis, progress and verdict.

use crate::Lab;
use crate::chaos::{self, Experiment};
use anyhow::{Result, bail};

pub fn run(lab: &mut Lab, args: &[String], out: &mut dyn FnMut(&str)) -> Result<()> {
    let exp = Experiment::from_args(args)?;
    out(&format!("[chaos] {exp}: running (the verdict follows)"));
    let verdict = chaos::run(lab, &exp, out)?;
    for l in verdict.to_string().lines() {
        out(l);
    }
    if !verdict.holds {
        bail!("the hypothesis does not hold (see the verdict above)");
    }
    Ok(())
}
