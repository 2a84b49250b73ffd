//! `blockdev-backup` (into a node added beforehand) and `drive-backup`
//! (into a file it creates, or opens with `mode: existing`): the bitmap
//! arguments and their errors, the hidden filter (`copy-before-write`;
//! `backup-top` in 5.2) with the anonymous bitmaps it makes, a user bitmap
//! held busy with its successor while the job runs, and the drain pair
//! (`paused`/`running`) before the reply (recorded).
//!
//! No data moves yet: a full backup of the (unwritten) source leaves the
//! zero-flagged L2 tables QEMU writes into a qcow2 target; `sync: top`
//! and bitmap syncs find nothing to copy (`len` 0); `sync: none` works
//! until cancelled.

use super::blockdev::{anonymous_bitmap, copy_before_write_bitmaps, refresh_file};
use super::drive::{open_target, release_on_error};
use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::model::jobs::{Job, JobKind, JobStatus};
use crate::profile::Version;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::QDict;

/// `blockdev-backup` or `drive-backup`.
#[derive(Debug)]
pub struct Backup {
    args: QDict,
    drive: bool,
}

impl Backup {
    /// From the checked arguments of `blockdev-backup` (`drive` false) or
    /// `drive-backup`.
    pub fn new(a: &QDict, drive: bool) -> Self {
        Backup {
            args: a.clone(),
            drive,
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let sync = a.get_str("sync").unwrap_or("full").to_owned();
        let (src, dst) = if self.drive {
            let src = super::jobs::lookup(ctx, a, "device")?;
            let t = open_target(ctx, a, src, &sync, true)?;
            // drive-backup gives the new target its backing node at once.
            let graph = ctx.machine.graph_mut();
            let backing = match sync.as_str() {
                "none" => Some(src),
                "top" => graph.child(src, "backing"),
                _ => None,
            };
            if let (true, Some(b)) = (t.created, backing) {
                graph.attach(t.node, "backing", b);
            }
            (src, t.node)
        } else {
            super::jobs::source_and_target(ctx, a)?
        };
        let r = self.start(ctx, src, dst, &sync);
        release_on_error(ctx, self.drive.then_some(dst), r)
    }

    fn start(
        &self,
        ctx: &mut Context<'_>,
        src: NodeId,
        dst: NodeId,
        sync: &str,
    ) -> Result<Return, QmpError> {
        let a = &self.args;
        let v = ctx.profile.version();
        let bitmap = a.get_str("bitmap");
        let mode = a.get_str("bitmap-mode");
        if sync == "incremental" && mode.is_some_and(|m| m != "on-success") {
            return Err(QmpError::generic(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
            ));
        }
        let mut user_bitmap = None;
        if let Some(name) = bitmap {
            let graph = ctx.machine.graph();
            let Some(b) = graph
                .node(src)
                .and_then(|n| n.bitmaps.iter().find(|b| b.name.as_deref() == Some(name)))
            else {
                return Err(QmpError::generic(format!(
                    "Bitmap '{name}' could not be found"
                )));
            };
            if mode.is_none() && sync != "incremental" {
                return Err(QmpError::generic(
                    "Bitmap sync mode must be given when providing a bitmap",
                ));
            }
            if b.busy {
                return Err(QmpError::generic(format!(
                    "Bitmap '{name}' is currently in use by another operation and cannot be used"
                )));
            }
            if sync == "none" {
                return Err(QmpError::generic(
                    "sync mode 'none' does not produce meaningful bitmap outputs",
                ));
            }
            if mode == Some("never") && sync != "bitmap" {
                return Err(QmpError::generic(format!(
                    "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '{sync}'"
                )));
            }
            user_bitmap = Some((src, name.to_owned(), b.granularity));
        } else if mode.is_some() {
            return Err(QmpError::generic(
                "Cannot specify bitmap sync mode without a bitmap",
            ));
        }
        if matches!(sync, "incremental" | "bitmap") && bitmap.is_none() {
            return Err(QmpError::generic(format!(
                "must provide a valid bitmap name for '{sync}' sync mode"
            )));
        }
        // A backup does not block its own source (its main node is its
        // filter), so several backups may read one source.
        super::jobs::check_not_blocked(ctx, src)?;
        super::jobs::check_not_blocked(ctx, dst)?;
        let graph = ctx.machine.graph();
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
        // What is there to copy: all of it for full and none; what the
        // top layer or the bitmap holds (nothing written yet) otherwise.
        let len = match sync {
            "full" | "none" => src_size,
            _ => 0,
        };
        let (fault, on_source_error, on_target_error) =
            super::jobs::fault_and_actions(ctx, a, src, dst, len);
        let job = Job {
            base: Some(dst),
            fault,
            on_source_error,
            on_target_error,
            until_cancelled: sync == "none",
            owned_target: self.drive.then_some(dst),
            user_bitmap: user_bitmap.as_ref().map(|(n, b, _)| (*n, b.clone())),
            ..Job::new("", JobKind::Backup, src, len)
        };
        let id = a.get_str("job-id").unwrap_or("").to_owned();
        // The copy-before-write filter opens before the job is created.
        super::jobs::check_filter_name(ctx, a.get_str("filter-node-name"))?;
        let reply = super::jobs::start(ctx, a, job)?;
        let (driver, children) = if v < Version::V7_2 {
            // backup-top attaches its target first, then the source as
            // its backing (bdrv_append); edges list in attach order.
            (
                "backup-top",
                vec![("target".to_owned(), dst), ("backing".to_owned(), src)],
            )
        } else {
            (
                "copy-before-write",
                vec![("file".to_owned(), src), ("target".to_owned(), dst)],
            )
        };
        let filter = super::jobs::insert_filter(
            ctx,
            &id,
            driver,
            children,
            a.get_str("filter-node-name"),
            true,
        )?;
        let graph = ctx.machine.graph_mut();
        if let Some((node, name, granularity)) = &user_bitmap {
            // The user bitmap is frozen; a successor records new writes.
            if let Some(n) = graph.node_mut(*node) {
                if let Some(b) = n
                    .bitmaps
                    .iter_mut()
                    .find(|b| b.name.as_deref() == Some(name))
                {
                    b.busy = true;
                }
                n.bitmaps
                    .push(anonymous_bitmap(filter, *granularity, 0, true));
            }
        }
        copy_before_write_bitmaps(graph, v, filter, src, dst, len);
        if sync == "full" {
            // Every cluster of the target now reads as zero (written).
            let file = graph.child(dst, "file");
            let name = file
                .and_then(|f| graph.node(f))
                .filter(|_| graph.node(dst).is_some_and(|d| d.driver == "qcow2"))
                .and_then(|f| f.file.as_ref())
                .map(|f| f.filename.clone());
            if let (Some(name), Some(file)) = (name, file) {
                if ctx.host.qcow2_mark_zero(&name).is_ok() {
                    refresh_file(ctx, file);
                }
            }
        }
        // The drain when the job attaches its filter: paused, running (a
        // transaction starts its jobs later; drain pairs are normalized).
        if ctx.machine.in_transaction() {
            return Ok(reply);
        }
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
