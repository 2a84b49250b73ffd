//! `blockdev-mirror` to a node added beforehand: the job goes `ready` and
//! waits for `complete` (which pivots) or a cancel. A target of another size
//! makes the job fail once started, as in QEMU. `drive-mirror` (which
//! creates the target) comes later.

use super::desc;
use super::{Context, Return};
use crate::model::jobs::{Job, JobKind, JobStatus};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QNum, QObject};

fn str_arg<'a>(a: &'a QDict, key: &str) -> Option<&'a str> {
    a.get(key).and_then(QObject::as_str)
}

/// `blockdev-mirror`.
#[derive(Debug)]
pub struct BlockdevMirror {
    args: QDict,
}

impl BlockdevMirror {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        BlockdevMirror { args: a.clone() }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let v = ctx.profile.version();
        let graph = ctx.machine.graph();
        let device = str_arg(a, "device").unwrap_or_default();
        let src = graph
            .find(device)
            .ok_or_else(|| desc::node_lookup(v, device, device))?;
        let target = str_arg(a, "target").unwrap_or_default();
        let dst = graph
            .find(target)
            .ok_or_else(|| desc::node_lookup(v, target, target))?;
        if src == dst {
            return Err(QmpError::generic("Can't mirror node into itself"));
        }
        let sync = str_arg(a, "sync").unwrap_or("full");
        if !matches!(sync, "full" | "top" | "none") {
            return Err(QmpError::generic(format!(
                "Sync mode '{sync}' not supported"
            )));
        }
        if let Some(j) = ctx
            .machine
            .jobs_newest_first()
            .find(|j| j.node == src && j.status < JobStatus::Concluded)
        {
            let name = graph.node(src).map(|n| n.name.clone()).unwrap_or_default();
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: block device is in use by block job: {}",
                j.kind.name()
            )));
        }
        let (src_size, dst_size) = (
            graph.node(src).map_or(0, |n| n.size),
            graph.node(dst).map_or(0, |n| n.size),
        );
        let id = str_arg(a, "job-id").unwrap_or("").to_owned();
        let speed = match a.get("speed") {
            Some(QObject::Num(QNum::I64(s))) => *s,
            _ => 0,
        };
        let bool_or_true = |k: &str| !matches!(a.get(k), Some(QObject::Bool(false)));
        let job = Job {
            id: id.clone(),
            kind: JobKind::Mirror,
            status: JobStatus::Undefined,
            auto_finalize: bool_or_true("auto-finalize"),
            auto_dismiss: bool_or_true("auto-dismiss"),
            len: src_size,
            offset: 0,
            speed: u64::try_from(speed).unwrap_or(0),
            node: src,
            base: Some(dst),
            top: None,
            user_paused: false,
            waits_for_complete: true,
            complete_requested: false,
            fails_with: (src_size != dst_size).then(|| desc::mirror_size_mismatch(v)),
            error: None,
        };
        ctx.machine
            .check_job_id(&id)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        if speed < 0 {
            ctx.machine
                .create_and_drop_job(job)
                .map_err(|e| QmpError::generic(e.to_string()))?;
            return Err(QmpError::generic(
                "Parameter 'speed' expects a non-negative value",
            ));
        }
        ctx.machine
            .start_job(job)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        Ok(QObject::Dict(QDict::new()))
    }
}
