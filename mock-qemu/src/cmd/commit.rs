//! `block-commit` of an intermediate node: the data of `top-node` (and what
//! lies between it and `base-node`) goes into the base, and the overlay
//! above `top-node` then points to the base. QEMU keeps no marker on the
//! nodes left behind, which are now stale (see the strict mode planned for
//! the jobs issue). Active commit (`top-node` = the device, or omitted) goes
//! `ready` and waits for `complete`.

use super::desc;
use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::model::jobs::{Job, JobKind};
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::QDict;

/// `block-commit`.
#[derive(Debug)]
pub struct BlockCommit {
    args: QDict,
}

impl BlockCommit {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        BlockCommit { args: a.clone() }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let v = ctx.profile.version();
        let graph = ctx.machine.graph();
        let device = a.get_str("device").unwrap_or_default();
        let Some(dev) = graph.find(device) else {
            return Err(QmpError::new(
                ErrorClass::DeviceNotFound,
                format!("Device '{device}' not found"),
            ));
        };
        super::check_strict(ctx, dev, "block-commit")?;
        super::jobs::check_not_blocked(ctx, dev)?;
        let graph = ctx.machine.graph();
        let chain = {
            let mut c = vec![dev];
            let mut cur = dev;
            while let Some(b) = graph.child(cur, "backing") {
                c.push(b);
                cur = b;
            }
            c
        };
        let lookup = |name: &str| {
            graph
                .find(name)
                .ok_or_else(|| desc::node_lookup(v, "", name))
        };
        let top: NodeId = match a.get_str("top-node") {
            Some(t) => lookup(t)?,
            None => dev,
        };
        let base: Option<NodeId> = match a.get_str("base-node") {
            Some(b) => Some(lookup(b)?),
            None => chain.last().copied(),
        };
        let pos = |n: NodeId| chain.iter().position(|c| *c == n);
        let (Some(tpos), Some(base)) = (pos(top), base) else {
            let name = graph.node(top).map(|n| n.name.clone()).unwrap_or_default();
            return Err(QmpError::generic(format!(
                "Top image file {name} not found"
            )));
        };
        if pos(base).is_none_or(|b| b <= tpos) {
            let name = graph.node(base).map(|n| n.name.clone()).unwrap_or_default();
            return Err(QmpError::generic(format!(
                "'{name}' is not in this backing file chain"
            )));
        }
        // Every node from top to base is checked too.
        for n in &chain[tpos..=pos(base).unwrap_or(tpos)] {
            super::jobs::check_not_blocked(ctx, *n)?;
        }
        // Active commit copies what the top has allocated: nothing in an
        // image no one has written (the data plane comes later).
        let len = if top == dev {
            0
        } else {
            graph.node(top).map_or(0, |n| n.size)
        };
        // The overlay right above top (intermediate commit).
        let above = tpos.checked_sub(1).map(|i| chain[i]);
        // commit_start()/commit_active_start() reopen a read-only base
        // read-write for the job.
        let base_read_only = graph.node(base).is_some_and(|n| n.read_only);
        let job = Job {
            base: Some(base),
            top: Some(top),
            waits_for_complete: top == dev,
            base_read_only,
            ..Job::new("", JobKind::Commit, dev, len)
        };
        let id = a.get_str("job-id").unwrap_or_default().to_owned();
        let name = a.get_str("filter-node-name");
        // Active commit opens mirror_top before creating the job;
        // commit_start() opens commit_top after it (a failure destroys it).
        let filter_ok = super::jobs::check_filter_name(ctx, name);
        let reply = if above.is_none() {
            filter_ok?;
            super::jobs::start(ctx, &self.args, job)?
        } else {
            super::jobs::start_or_drop(ctx, &self.args, job, filter_ok)?
        };
        if base_read_only {
            ctx.machine.graph_mut().set_writable(base);
        }
        match above {
            // Active commit runs as a mirror: mirror_top above the device.
            None => {
                let filter = super::jobs::insert_filter(
                    ctx,
                    &id,
                    "mirror_top",
                    vec![("backing".to_owned(), dev)],
                    name,
                    true,
                )?;
                super::mirror::add_dirty_bitmap(ctx, filter, dev, 1 << 16);
            }
            // commit_top between the overlay above top and top.
            Some(above) => {
                let filter = super::jobs::insert_filter(
                    ctx,
                    &id,
                    "commit_top",
                    vec![("backing".to_owned(), top)],
                    name,
                    false,
                )?;
                ctx.machine.graph_mut().set_backing(above, Some(filter));
            }
        }
        Ok(reply)
    }
}
