//! `block-stream`: pulls the backing chain below a node (down to `base` or
//! `base-node`, or all of it) into that node. In instant mode the job runs
//! to its end right after the command answers.

use super::desc;
use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::model::jobs::{Job, JobKind, JobStatus};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QNum, QObject};

fn str_arg<'a>(a: &'a QDict, key: &str) -> Option<&'a str> {
    a.get(key).and_then(QObject::as_str)
}

/// `block-stream`.
#[derive(Debug)]
pub struct BlockStream {
    args: QDict,
}

impl BlockStream {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        BlockStream { args: a.clone() }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let v = ctx.profile.version();
        let device = str_arg(a, "device").unwrap_or_default().to_owned();
        let graph = ctx.machine.graph();
        let top = graph
            .find(&device)
            .ok_or_else(|| desc::node_lookup(v, &device, &device))?;
        // A node a job works on is blocked for other jobs (op blocker).
        if let Some(j) = ctx
            .machine
            .jobs_newest_first()
            .find(|j| j.node == top && j.status < JobStatus::Concluded)
        {
            let name = graph.node(top).map(|n| n.name.clone()).unwrap_or_default();
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: block device is in use by block job: {}",
                j.kind.name()
            )));
        }
        let base: Option<NodeId> = match str_arg(a, "base-node") {
            Some(b) => Some(graph.find(b).ok_or_else(|| desc::node_lookup(v, "", b))?),
            None => None,
        };
        // No BlockBackend names exist, so the default job id is ''.
        let id = str_arg(a, "job-id").unwrap_or("").to_owned();
        let speed = match a.get("speed") {
            Some(QObject::Num(QNum::I64(s))) => *s,
            _ => 0,
        };
        let bool_or_true = |k: &str| !matches!(a.get(k), Some(QObject::Bool(false)));
        let len = graph.node(top).map_or(0, |n| n.size);
        let job = Job {
            id: id.clone(),
            kind: JobKind::Stream,
            status: JobStatus::Undefined,
            auto_finalize: bool_or_true("auto-finalize"),
            auto_dismiss: bool_or_true("auto-dismiss"),
            len,
            offset: 0,
            speed: u64::try_from(speed).unwrap_or(0),
            node: top,
            base,
            user_paused: false,
            waits_for_complete: false,
            complete_requested: false,
            fails_with: None,
            error: None,
            top: None,
        };
        ctx.machine
            .check_job_id(&id)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        if speed < 0 {
            // Created, then refused: QEMU reports created and null first.
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
