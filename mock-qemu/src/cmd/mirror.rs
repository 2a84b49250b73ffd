//! `blockdev-mirror` to a node added beforehand: the job goes `ready` and
//! waits for `complete` (which pivots) or a cancel. A target of another size
//! makes the job fail once started, as in QEMU. `drive-mirror` (which
//! creates the target) comes later.

use super::desc;
use super::{Context, Return};
use crate::model::jobs::{Job, JobKind, JobStatus};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::QDict;

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
        let (src, dst) = super::jobs::source_and_target(ctx, a)?;
        let graph = ctx.machine.graph();
        if src == dst {
            return Err(QmpError::generic("Can't mirror node into itself"));
        }
        let sync = a.get_str("sync").unwrap_or("full");
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
        let job = Job {
            base: Some(dst),
            waits_for_complete: true,
            fails_with: (src_size != dst_size).then(|| desc::mirror_size_mismatch(v)),
            ..Job::new("", JobKind::Mirror, src, src_size)
        };
        super::jobs::start(ctx, &self.args, job)
    }
}
