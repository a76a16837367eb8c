//! The stop flag every loop of the demo checks, and the SIGINT/SIGTERM handler that sets it.
//! A second signal exits at once, but first sends SIGTERM to the broker the demo started (its
//! pid recorded here by `broker`), which runs in its own process group and so never sees the
//! terminal's Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::bail;

/// Set by SIGINT or SIGTERM, or by the demo when --duration is up or something failed.
static STOP: AtomicBool = AtomicBool::new(false);
/// The broker the demo started (0: none), so that a second Ctrl-C can stop it on the way out.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // The first signal asks every loop to end; a second one means "now", but must not leave
    // the broker (in its own process group, so the terminal's SIGINT misses it) running.
    if STOP.swap(true, Ordering::SeqCst) {
        let pid = CHILD_PID.load(Ordering::SeqCst);
        // SAFETY: kill and _exit are async-signal-safe and take no pointers. (The pid is cleared
        // once the broker has been signalled or has exited, so it names no other process.)
        unsafe {
            if pid > 0 {
                libc::kill(pid, libc::SIGTERM);
            }
            libc::_exit(130);
        }
    }
}

pub(super) fn install_stop_handler() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_stop_signal;
        // SAFETY: the handler only touches atomics and calls async-signal-safe functions, so it
        // is sound whatever code of this process it interrupts.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            bail!("cannot install the Ctrl-C handler: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(super) fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks every loop of the demo to end.
pub(super) fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Records the broker a second Ctrl-C must stop (0: none). It is cleared once the broker has
/// been signalled or has exited, so the handler never signals a pid the system has reused.
pub(super) fn set_child_pid(pid: i32) {
    CHILD_PID.store(pid, Ordering::SeqCst);
}
