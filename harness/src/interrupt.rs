//! Ctrl-C handling for interactive users of the harness (xtask demo): SIGINT sets a flag that
//! the caller polls, so it can return normally and let every guard drop.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handler (idempotent).
pub fn install() -> Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        sigaction(Signal::SIGINT, &act)?;
        sigaction(Signal::SIGTERM, &act)?;
    }
    Ok(())
}

/// Has SIGINT/SIGTERM arrived since [`install`]?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
