//! Machine facts a management tool reads and sets at start-up:
//! `query-chardev`, `query-migrate-capabilities`,
//! `migrate-set-capabilities`, `query-iothreads`.

use serde::Deserialize;

use super::{not_implemented, parse_args, Context, Return};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// What the recorded build answered to `name` without arguments: the facts
/// a modelled query starts from.
fn recorded(ctx: &Context<'_>, name: &str) -> Result<QObject, QmpError> {
    match ctx.profile.replies().lookup(name, &serde_json::Value::Null) {
        Some(r) => r,
        None => Err(not_implemented(ctx.profile, name)),
    }
}

/// `query-chardev`: the monitors' character devices.
#[derive(Debug)]
pub struct QueryChardev;

impl QueryChardev {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let list = ctx
            .machine
            .vm()
            .chardevs
            .iter()
            .map(|c| {
                let mut d = QDict::new();
                d.put("frontend-open", true);
                d.put("filename", c.filename.as_str());
                d.put("label", c.label.as_str());
                QObject::Dict(d)
            })
            .collect();
        Ok(QObject::List(list))
    }
}

/// `query-migrate-capabilities`: the build's capabilities (recorded from
/// it) with the states clients set.
#[derive(Debug)]
pub struct QueryMigrateCapabilities;

impl QueryMigrateCapabilities {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let base = recorded(ctx, "query-migrate-capabilities")?;
        let set = &ctx.machine.vm().migrate_caps;
        let QObject::List(items) = base else {
            return Ok(base);
        };
        let items = items
            .into_iter()
            .map(|item| match item {
                QObject::Dict(mut d) => {
                    let cap = d.get_str("capability").map(str::to_owned);
                    if let Some(state) = cap.and_then(|c| set.get(&c)) {
                        d.put("state", *state);
                    }
                    QObject::Dict(d)
                }
                other => other,
            })
            .collect();
        Ok(QObject::List(items))
    }
}

#[derive(Debug, Deserialize)]
struct CapabilityState {
    capability: String,
    state: bool,
}

/// `migrate-set-capabilities`.
#[derive(Debug, Deserialize)]
pub struct MigrateSetCapabilities {
    capabilities: Vec<CapabilityState>,
}

impl MigrateSetCapabilities {
    pub(super) fn parse(args: serde_json::Value) -> Result<Self, QmpError> {
        parse_args(args)
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let caps = &mut ctx.machine.vm_mut().migrate_caps;
        for c in self.capabilities {
            caps.insert(c.capability, c.state);
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `query-kvm`: whether KVM is built in (recorded from the build) and in
/// use (the command line's accelerator choice on this host).
#[derive(Debug)]
pub struct QueryKvm;

impl QueryKvm {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        match recorded(ctx, "query-kvm")? {
            QObject::Dict(mut d) => {
                let present = d.get("present").and_then(|p| match p {
                    QObject::Bool(b) => Some(*b),
                    _ => None,
                });
                d.put("enabled", present == Some(true) && ctx.machine.vm().kvm);
                Ok(QObject::Dict(d))
            }
            other => Ok(other),
        }
    }
}

/// `query-iothreads`: the mock runs no I/O threads (`-object iothread` is
/// not modelled).
#[derive(Debug)]
pub struct QueryIothreads;

impl QueryIothreads {
    pub(super) fn apply(self, _ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        Ok(QObject::List(vec![]))
    }
}

/// `qom-list /machine/peripheral`: the devices that have an id (libvirt
/// reads it after start-up to learn which devices exist). Other paths are
/// answered from the recorded machine or refused as not modelled.
#[derive(Debug)]
pub struct QomListPeripheral;

impl QomListPeripheral {
    /// The container's path.
    pub const PATH: &'static str = "/machine/peripheral";

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let prop = |name: &str, ty: &str| {
            let mut d = QDict::new();
            d.put("name", name);
            d.put("type", ty);
            QObject::Dict(d)
        };
        let mut list = vec![prop("type", "string")];
        // QEMU lists a container's properties in its hash table's order;
        // the mock lists devices oldest first (the same for one device).
        for dev in ctx.machine.devices().iter() {
            if let Some(id) = &dev.id {
                if !dev.path.starts_with(&format!("{}/", Self::PATH)) {
                    continue;
                }
                list.push(prop(id, &format!("child<{}>", dev.kind.driver())));
            }
        }
        Ok(QObject::List(list))
    }
}
