//! Commands: one struct per command with its typed arguments and `apply`.
//!
//! Arguments arrive here already checked against the profile's schema, so
//! deserializing them cannot fail on shape; a command only adds the checks
//! QEMU's own C code makes. [`execute`] is the routing table.

mod backup;
mod bitmaps;
mod blockdev;
mod blockgraph;
mod commit;
mod control;
mod create;
mod desc;
mod devices;
mod drive;
mod exports;
mod jobs;
mod machine;
mod mirror;
mod objects;
mod snapshot;
mod stream;
mod system;
mod transaction;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::core::{SessionId, SessionState};
use crate::model::{Machine, ModelEvent};
use crate::profile::Profile;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// What a command may touch.
#[derive(Debug)]
pub struct Context<'a> {
    /// The requesting session.
    pub sid: SessionId,
    /// The impersonated profile.
    pub profile: &'a Arc<Profile>,
    /// The model.
    pub machine: &'a mut Machine,
    /// Every session's protocol state (qmp_capabilities changes the requester's).
    pub sessions: &'a mut BTreeMap<SessionId, SessionState>,
    /// Sockets and other effects outside the model.
    pub host: &'a mut dyn crate::host::HostIo,
    /// Serialized replies of queries, valid while the graph is unchanged.
    pub cache: &'a mut ReplyCache,
}

/// Serialized query replies keyed by query, each valid for one graph
/// generation (management tools poll `query-named-block-nodes`).
#[derive(Debug, Default)]
pub struct ReplyCache {
    entries: BTreeMap<String, (u64, Arc<str>)>,
}

impl ReplyCache {
    /// The cached text for `key` if it was made at `generation`.
    pub fn get(&self, key: &str, generation: u64) -> Option<Arc<str>> {
        self.entries
            .get(key)
            .filter(|(g, _)| *g == generation)
            .map(|(_, t)| Arc::clone(t))
    }

    /// Remembers `text` for `key` at `generation`.
    pub fn put(&mut self, key: &str, generation: u64, text: Arc<str>) {
        self.entries.insert(key.to_owned(), (generation, text));
    }
}

/// A command's success value.
pub type Return = QObject;

/// Runs a schema-checked command.
pub fn execute(
    ctx: &mut Context<'_>,
    name: &str,
    args: serde_json::Value,
) -> Result<Return, QmpError> {
    match name {
        "qmp_capabilities" => control::QmpCapabilities::parse(args)?.apply(ctx),
        "query-version" => Ok(ctx.profile.query_version().clone()),
        "query-commands" => Ok(ctx.profile.query_commands().clone()),
        "query-qmp-schema" => Ok(ctx.profile.schema_raw().clone()),
        "quit" => control::Quit.apply(ctx),
        "query-status" => system::QueryStatus.apply(ctx),
        "query-chardev" => machine::QueryChardev.apply(ctx),
        "query-migrate-capabilities" => machine::QueryMigrateCapabilities.apply(ctx),
        "migrate-set-capabilities" => machine::MigrateSetCapabilities::parse(args)?.apply(ctx),
        "query-iothreads" => machine::QueryIothreads.apply(ctx),
        "query-kvm" => machine::QueryKvm.apply(ctx),
        "qom-list"
            if args.get("path").and_then(serde_json::Value::as_str)
                == Some(machine::QomListPeripheral::PATH) =>
        {
            machine::QomListPeripheral.apply(ctx)
        }
        "stop" => system::Stop.apply(ctx),
        "cont" => system::Cont.apply(ctx),
        "system_reset" => system::SystemReset.apply(ctx),
        "blockdev-add" => blockdev::BlockdevAdd::new(dict(&args)).apply(ctx),
        "blockdev-del" => blockdev::BlockdevDel::new(&dict(&args)).apply(ctx),
        "query-block" => blockdev::QueryBlock.apply(ctx),
        "x-debug-query-block-graph" => blockgraph::XDebugQueryBlockGraph.apply(ctx),
        "query-blockstats" => blockdev::QueryBlockstats::new(&dict(&args)).apply(ctx),
        "device_add" => devices::DeviceAdd::new(dict(&args), devices::Origin::Qmp).apply(ctx),
        "device_del" => devices::DeviceDel::new(&dict(&args)).apply(ctx),
        "query-named-block-nodes" => blockdev::QueryNamedBlockNodes::new(&dict(&args)).apply(ctx),
        "blockdev-snapshot-sync" => snapshot::BlockdevSnapshotSync::new(dict(&args)).apply(ctx),
        "blockdev-snapshot" => snapshot::BlockdevSnapshot::new(&dict(&args)).apply(ctx),
        "nbd-server-start" => exports::NbdServerStart::new(dict(&args)).apply(ctx),
        "nbd-server-stop" => exports::NbdServerStop.apply(ctx),
        "block-export-add" => exports::BlockExportAdd::from_qmp(&dict(&args)).apply(ctx),
        "nbd-server-add" => exports::BlockExportAdd::from_legacy(&dict(&args)).apply(ctx),
        "block-export-del" => exports::BlockExportDel::new(&dict(&args), false).apply(ctx),
        "nbd-server-remove" => exports::BlockExportDel::new(&dict(&args), true).apply(ctx),
        "query-block-exports" => exports::QueryBlockExports.apply(ctx),
        "object-add" => objects::ObjectAdd::new(&dict(&args)).apply(ctx),
        "object-del" => objects::ObjectDel::new(&dict(&args)).apply(ctx),
        "block-dirty-bitmap-add" => bitmaps::BitmapAdd::new(&dict(&args)).apply(ctx),
        "block-dirty-bitmap-remove"
        | "block-dirty-bitmap-clear"
        | "block-dirty-bitmap-enable"
        | "block-dirty-bitmap-disable" => bitmaps::BitmapVerb::new(name, &dict(&args)).apply(ctx),
        "block-dirty-bitmap-merge" => bitmaps::BitmapMerge::new(&dict(&args)).apply(ctx),
        "transaction" => transaction::Transaction::new(&dict(&args)).apply(ctx),
        "block-commit" => commit::BlockCommit::new(&dict(&args)).apply(ctx),
        "blockdev-create" => create::BlockdevCreate::new(&dict(&args)).apply(ctx),
        "blockdev-backup" => backup::Backup::new(&dict(&args), false).apply(ctx),
        "drive-backup" => backup::Backup::new(&dict(&args), true).apply(ctx),
        "blockdev-mirror" => mirror::Mirror::new(&dict(&args), false).apply(ctx),
        "drive-mirror" => mirror::Mirror::new(&dict(&args), true).apply(ctx),
        "block-stream" => stream::BlockStream::new(&dict(&args)).apply(ctx),
        "query-jobs" => jobs::QueryJobs::new("query-jobs").apply(ctx),
        "query-block-jobs" => jobs::QueryJobs::new("query-block-jobs").apply(ctx),
        "job-pause" | "job-resume" | "job-cancel" | "job-complete" | "job-finalize"
        | "job-dismiss" => jobs::JobVerb::parse(name, jobs::Family::Job, args)?.apply(ctx),
        "block-job-pause"
        | "block-job-resume"
        | "block-job-cancel"
        | "block-job-complete"
        | "block-job-finalize"
        | "block-job-dismiss"
        | "block-job-set-speed"
        | "block-job-change" => {
            jobs::JobVerb::parse(name, jobs::Family::BlockJob, args)?.apply(ctx)
        }
        _ => {
            let replies = ctx.profile.replies();
            let machine = || {
                let answer = ctx
                    .machine
                    .devices()
                    .has_cpus()
                    .then(|| replies.lookup_machine(name, &args))
                    .flatten()?;
                Some(match &ctx.machine.vm().vcpus_unrecorded {
                    None => answer,
                    Some(line) => Err(QmpError::generic(format!(
                        "mock-qemu: '{name}' about vCPUs is answered from the recorded machine \
                         (one qemu64 vCPU); this one has {line}"
                    ))),
                })
            };
            match replies.lookup(name, &args).or_else(machine) {
                Some(recorded) => recorded,
                None => Err(not_implemented(ctx.profile, name)),
            }
        }
    }
}

/// Checked arguments as a QDict, members in the order the client sent them.
fn dict(args: &serde_json::Value) -> QDict {
    match QObject::from(args) {
        QObject::Dict(d) => d,
        _ => QDict::new(),
    }
}

/// Strict mode (`--mock-strict`): refuses a use of an image that a
/// completed commit invalidated (reference §3.11). The message is plainly
/// the mock's own: QEMU keeps no such mark and accepts the command.
pub(super) fn check_strict(
    ctx: &mut Context<'_>,
    id: crate::model::graph::NodeId,
    what: &str,
) -> Result<(), QmpError> {
    let Some((file, job)) = ctx
        .machine
        .invalidated_by(id)
        .map(|(f, j)| (f.to_owned(), j.to_owned()))
    else {
        return Ok(());
    };
    let desc = format!(
        "mock-qemu strict mode: {what} uses '{file}', which block-commit job '{job}' \
         invalidated (it no longer represents any point in time); QEMU would accept this"
    );
    // Reported three ways: a log line, a mock-only event, the error.
    eprintln!("{desc}");
    ctx.machine
        .emit_now(crate::model::ModelEvent::InvalidatedImageUse {
            what: what.to_owned(),
            image: file,
            job,
        });
    Err(QmpError::generic(desc))
}

/// The mock-only error for a command the profile has but the model does not
/// implement yet: never a fake success.
pub fn not_implemented(profile: &Profile, name: &str) -> QmpError {
    QmpError::generic(format!(
        "mock-qemu: command '{name}' is not implemented by the mock for profile {} (it exists in that QEMU)",
        profile.label()
    ))
}

/// Deserializes schema-checked arguments into a command struct.
fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, QmpError> {
    // The schema check ran first, so a failure here is a mock bug; report it
    // as an error rather than panicking on a client's input.
    serde_json::from_value(args)
        .map_err(|e| QmpError::generic(format!("mock-qemu: internal argument mismatch: {e}")))
}

/// The data every `BLOCK_JOB_*` progress event carries.
fn block_job_data(device: &str, len: u64, offset: u64, speed: u64, kind: &str) -> QDict {
    let mut d = QDict::new();
    d.put("type", kind);
    d.put("device", device);
    d.put("len", len);
    d.put("offset", offset);
    d.put("speed", speed);
    d
}

/// A `-device` of the command line (cold plug): `json` for the JSON form.
pub fn device_add_cmdline(
    ctx: &mut Context<'_>,
    args: QDict,
    json: bool,
) -> Result<Return, QmpError> {
    let origin = if json {
        devices::Origin::CmdlineJson
    } else {
        devices::Origin::CmdlineKeyval
    };
    devices::DeviceAdd::new(args, origin).apply(ctx)
}

/// An event's wire name and data.
pub fn event_to_wire(e: &ModelEvent) -> (&'static str, Option<QObject>) {
    match e {
        ModelEvent::Shutdown { guest, reason } => {
            let mut d = QDict::new();
            d.put("guest", *guest);
            d.put("reason", *reason);
            ("SHUTDOWN", Some(QObject::Dict(d)))
        }
        ModelEvent::Stop => ("STOP", None),
        ModelEvent::Reset { guest, reason } => {
            let mut d = QDict::new();
            d.put("guest", *guest);
            d.put("reason", *reason);
            ("RESET", Some(QObject::Dict(d)))
        }
        ModelEvent::Resume => ("RESUME", None),
        ModelEvent::JobStatusChange { id, status } => {
            let mut d = QDict::new();
            d.put("status", *status);
            d.put("id", id.clone());
            ("JOB_STATUS_CHANGE", Some(QObject::Dict(d)))
        }
        ModelEvent::BlockJobCompleted {
            device,
            len,
            offset,
            speed,
            kind,
            error,
        } => {
            let mut d = block_job_data(device, *len, *offset, *speed, kind);
            if let Some(e) = error {
                d.put("error", e.clone());
            }
            ("BLOCK_JOB_COMPLETED", Some(QObject::Dict(d)))
        }
        ModelEvent::BlockJobReady {
            device,
            len,
            offset,
            speed,
            kind,
        } => (
            "BLOCK_JOB_READY",
            Some(QObject::Dict(block_job_data(
                device, *len, *offset, *speed, kind,
            ))),
        ),
        ModelEvent::BlockJobCancelled {
            device,
            len,
            offset,
            speed,
            kind,
        } => (
            "BLOCK_JOB_CANCELLED",
            Some(QObject::Dict(block_job_data(
                device, *len, *offset, *speed, kind,
            ))),
        ),
        ModelEvent::BlockJobError {
            device,
            operation,
            action,
        } => {
            let mut d = QDict::new();
            d.put("device", device.clone());
            d.put("operation", *operation);
            d.put("action", *action);
            ("BLOCK_JOB_ERROR", Some(QObject::Dict(d)))
        }
        ModelEvent::InvalidatedImageUse { what, image, job } => {
            let mut d = QDict::new();
            d.put("use", what.clone());
            d.put("image", image.clone());
            d.put("job", job.clone());
            ("X_MOCK_INVALIDATED_IMAGE_USE", Some(QObject::Dict(d)))
        }
        ModelEvent::BlockJobPending { kind, id } => {
            let mut d = QDict::new();
            d.put("type", *kind);
            d.put("id", id.clone());
            ("BLOCK_JOB_PENDING", Some(QObject::Dict(d)))
        }
        ModelEvent::BlockExportDeleted { id } => {
            let mut d = QDict::new();
            d.put("id", id.clone());
            ("BLOCK_EXPORT_DELETED", Some(QObject::Dict(d)))
        }
        ModelEvent::DeviceDeleted { device, path } => {
            let mut d = QDict::new();
            if let Some(id) = device {
                d.put("device", id.clone());
            }
            d.put("path", path.clone());
            ("DEVICE_DELETED", Some(QObject::Dict(d)))
        }
    }
}
