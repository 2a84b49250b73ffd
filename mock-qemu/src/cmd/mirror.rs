//! `blockdev-mirror` (to a node added beforehand) and `drive-mirror` (to a
//! file it creates, or opens with `mode: existing`). The job inserts a
//! `mirror_top` filter above the source, with the mirror's dirty bitmap
//! (on the filter in 10.0, on the source before), goes `ready` and waits
//! for `complete` (which pivots: the source's parents move to the target)
//! or a cancel. A target of another size makes the job fail once started,
//! as in QEMU. A target QEMU just created reads as zeroes, so there is
//! nothing to copy (`len` 0, recorded).

use super::blockdev::anonymous_bitmap;
use super::desc;
use super::drive::{open_target, release_on_error};
use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::model::jobs::{Job, JobKind};
use crate::profile::Version;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// `blockdev-mirror` or `drive-mirror`.
#[derive(Debug)]
pub struct Mirror {
    args: QDict,
    drive: bool,
}

impl Mirror {
    /// From the checked arguments of `blockdev-mirror` (`drive` false) or
    /// `drive-mirror`.
    pub fn new(a: &QDict, drive: bool) -> Self {
        Mirror {
            args: a.clone(),
            drive,
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let sync = a.get_str("sync").unwrap_or("full").to_owned();
        // qmp_get_root_bs(): the source first, then the target.
        let src = super::jobs::lookup(ctx, a, "device")?;
        if ctx.machine.graph().has_node_parent(src) {
            return Err(super::desc::not_a_root_node());
        }
        let (src, dst, zeroed) = if self.drive {
            let t = open_target(ctx, a, src, &sync, false)?;
            (src, t.node, t.created)
        } else {
            (src, super::jobs::lookup(ctx, a, "target")?, false)
        };
        let r = self.start(ctx, src, dst, &sync, zeroed);
        release_on_error(ctx, self.drive.then_some(dst), r)
    }

    fn start(
        &self,
        ctx: &mut Context<'_>,
        src: NodeId,
        dst: NodeId,
        sync: &str,
        zeroed: bool,
    ) -> Result<Return, QmpError> {
        let a = &self.args;
        let v = ctx.profile.version();
        let graph = ctx.machine.graph();
        if src == dst {
            return Err(QmpError::generic("Can't mirror node into itself"));
        }
        if !matches!(sync, "full" | "top" | "none") {
            return Err(QmpError::generic(format!(
                "Sync mode '{sync}' not supported"
            )));
        }
        let granularity = match a.get("granularity") {
            Some(QObject::Num(n)) => n.as_u64().unwrap_or(0),
            _ => 0,
        };
        if granularity != 0 && !(512..=64 << 20).contains(&granularity) {
            return Err(QmpError::generic(
                "Parameter 'granularity' expects a value in range [512B, 64MB]",
            ));
        }
        if !granularity.is_power_of_two() && granularity != 0 {
            return Err(QmpError::generic(if v < Version::V7_2 {
                "Parameter 'granularity' expects power of 2"
            } else {
                "Parameter 'granularity' expects a power of 2"
            }));
        }
        super::jobs::check_not_blocked(ctx, src)?;
        super::jobs::check_not_blocked(ctx, dst)?;
        let (src_size, dst_size) = (
            graph.node(src).map_or(0, |n| n.size),
            graph.node(dst).map_or(0, |n| n.size),
        );
        // The bitmap's granularity: the target's cluster size, 4 KiB to 64 KiB.
        let granularity = if granularity != 0 {
            granularity
        } else {
            graph
                .node(dst)
                .and_then(|t| t.qcow2.as_ref())
                .map_or(1 << 16, |q| q.cluster_size)
                .clamp(4096, 1 << 16)
        };
        let len = if zeroed { 0 } else { src_size };
        let (fault, on_source_error, on_target_error) =
            super::jobs::fault_and_actions(ctx, a, src, dst, len);
        let job = Job {
            base: Some(dst),
            fault,
            on_source_error,
            on_target_error,
            waits_for_complete: true,
            write_blocking: a.get_str("copy-mode") == Some("write-blocking"),
            owned_target: self.drive.then_some(dst),
            fails_with: (src_size != dst_size).then(|| desc::mirror_size_mismatch(v)),
            ..Job::new("", JobKind::Mirror, src, len)
        };
        let id = a.get_str("job-id").unwrap_or("").to_owned();
        // mirror_top opens before the job is created.
        super::jobs::check_filter_name(ctx, a.get_str("filter-node-name"))?;
        let reply = super::jobs::start(ctx, a, job)?;
        let filter = super::jobs::insert_filter(
            ctx,
            &id,
            "mirror_top",
            vec![("backing".to_owned(), src)],
            a.get_str("filter-node-name"),
            true,
        )?;
        add_dirty_bitmap(ctx, filter, src, granularity);
        Ok(reply)
    }
}

/// The mirror's dirty bitmap (mirror and active commit): disabled, on the
/// filter (10.0); an enabled one on the source before (recorded).
pub(super) fn add_dirty_bitmap(
    ctx: &mut Context<'_>,
    filter: NodeId,
    src: NodeId,
    granularity: u64,
) {
    let (on, recording) = if ctx.profile.version() > Version::V7_2 {
        (filter, false)
    } else {
        (src, true)
    };
    if let Some(n) = ctx.machine.graph_mut().node_mut(on) {
        n.bitmaps
            .push(anonymous_bitmap(filter, granularity, 0, recording));
    }
}
