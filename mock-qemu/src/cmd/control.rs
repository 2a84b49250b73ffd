//! Monitor control: `qmp_capabilities`, `quit`.

use serde::Deserialize;

use super::{parse_args, Context, Return};
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::{QDict, QObject};

/// `qmp_capabilities`: leave negotiation mode, optionally enabling `oob`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct QmpCapabilities {
    #[serde(default)]
    enable: Vec<String>,
}

impl QmpCapabilities {
    pub(super) fn parse(args: serde_json::Value) -> Result<Self, QmpError> {
        parse_args(args)
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let offers_oob = ctx.profile.offers_oob();
        let state = ctx.sessions.entry(ctx.sid).or_default();
        if state.negotiated {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        let mut oob = false;
        for cap in &self.enable {
            // The schema admits only known capability names; offered ones are checked here.
            if cap == "oob" && offers_oob {
                oob = true;
            } else {
                return Err(QmpError::generic(format!("Capability {cap} not available")));
            }
        }
        state.negotiated = true;
        state.oob = oob;
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `quit`: answer, then end the process.
#[derive(Debug)]
pub struct Quit;

impl Quit {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        // The system emulator reports SHUTDOWN before the reply (recorded
        // from 7.2 and 10.0); qemu-storage-daemon reports nothing.
        let system = ctx.profile.flavor() == crate::profile::Flavor::System;
        ctx.machine.request_quit(system, "host-qmp-quit");
        Ok(QObject::Dict(QDict::new()))
    }
}
