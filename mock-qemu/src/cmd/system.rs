//! Run state commands of the system emulator: `query-status`, `stop`, `cont`,
//! `system_reset`.
//! (The schema of a qemu-storage-daemon profile has none of them, so they
//! never get here for that flavor.)

use super::{Context, Return};
use crate::model::{ModelEvent, RunState};
use crate::profile::Version;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// `query-status`.
#[derive(Debug)]
pub struct QueryStatus;

impl QueryStatus {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let (running, status) = match ctx.machine.run_state() {
            RunState::Prelaunch => (false, "prelaunch"),
            RunState::Running => (true, "running"),
            RunState::Paused => (false, "paused"),
            RunState::Shutdown => (false, "shutdown"),
        };
        let mut d = QDict::new();
        d.put("running", running);
        // `singlestep` was dropped from StatusInfo in QEMU 9.1.
        if ctx.profile.version() < Version::V10_0 {
            d.put("singlestep", false);
        }
        d.put("status", status);
        Ok(QObject::Dict(d))
    }
}

/// `stop`.
#[derive(Debug)]
pub struct Stop;

impl Stop {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        ctx.machine.stop();
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `cont`.
#[derive(Debug)]
pub struct Cont;

impl Cont {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        ctx.machine.cont();
        // Mock-only: a guest that answers unplug requests does so once it
        // runs.
        if ctx.machine.run_state() == RunState::Running {
            super::devices::eject_pending(ctx);
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `system_reset`: `RESET` before the reply; the reset then ejects every
/// PCI device whose unplug was requested (ACPI hot-plug state is reset),
/// with `DEVICE_DELETED` after the reply.
#[derive(Debug)]
pub struct SystemReset;

impl SystemReset {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        ctx.machine.emit_now(ModelEvent::Reset {
            guest: false,
            reason: "host-qmp-system-reset",
        });
        super::devices::eject_all_pending(ctx);
        Ok(QObject::Dict(QDict::new()))
    }
}
