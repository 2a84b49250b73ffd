//! `blockdev-backup` into a node added beforehand. Creating the job drains
//! the graph, so QEMU reports a `paused`/`running` pair before the reply
//! (recorded). `drive-backup`, bitmaps and fleecing come later.

use super::{Context, Return};
use crate::model::jobs::{Job, JobKind, JobStatus};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::QDict;

/// `blockdev-backup`.
#[derive(Debug)]
pub struct BlockdevBackup {
    args: QDict,
}

impl BlockdevBackup {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        BlockdevBackup { args: a.clone() }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let (src, dst) = super::jobs::source_and_target(ctx, a)?;
        let graph = ctx.machine.graph();
        let sync = a.get_str("sync").unwrap_or("full");
        if matches!(sync, "incremental" | "bitmap") && a.get_str("bitmap").is_none() {
            return Err(QmpError::generic(format!(
                "must provide a valid bitmap name for '{sync}' sync mode"
            )));
        }
        if a.get_str("bitmap").is_some() {
            return Err(super::not_implemented(
                ctx.profile,
                "blockdev-backup with a bitmap",
            ));
        }
        let (src_size, dst_size) = (
            graph.node(src).map_or(0, |n| n.size),
            graph.node(dst).map_or(0, |n| n.size),
        );
        if src_size != dst_size {
            return Err(QmpError::generic(
                "Source and target image have different sizes",
            ));
        }
        if src == dst {
            return Err(QmpError::generic("Source and target cannot be the same"));
        }
        let job = Job {
            base: Some(dst),
            ..Job::new("", JobKind::Backup, src, src_size)
        };
        let id = a.get_str("job-id").unwrap_or("").to_owned();
        let reply = super::jobs::start(ctx, a, job)?;
        // The drain when the job attaches its filter: paused, running.
        let err = |e: crate::model::jobs::JobError| QmpError::generic(e.to_string());
        ctx.machine
            .set_status(&id, JobStatus::Paused, false)
            .map_err(err)?;
        ctx.machine
            .set_status(&id, JobStatus::Running, false)
            .map_err(err)?;
        Ok(reply)
    }
}
