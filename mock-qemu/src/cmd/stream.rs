//! `block-stream`: pulls the backing chain below a node (down to `base` or
//! `base-node`, or all of it) into that node. In instant mode the job runs
//! to its end right after the command answers.

use super::desc;
use super::{Context, Return};
use crate::model::graph::{Graph, NodeId};
use crate::model::jobs::{Job, JobKind};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::QDict;

/// `bdrv_chain_contains(top, base)`: `base` is `top` or below it along
/// backing files and filters' filtered children.
fn chain_contains(graph: &Graph, top: NodeId, base: NodeId) -> bool {
    let mut cur = Some(top);
    for _ in 0..=graph.len() {
        let Some(n) = cur else { break };
        if n == base {
            return true;
        }
        cur = graph.child(n, "backing").or_else(|| {
            let filter = graph
                .node(n)
                .is_some_and(|n| super::blockdev::is_filter(&n.driver));
            filter
                .then(|| graph.child(n, "file").or_else(|| graph.child(n, "image")))
                .flatten()
        });
    }
    false
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
        let device = a.get_str("device").unwrap_or_default().to_owned();
        let graph = ctx.machine.graph();
        let top = graph
            .find(&device)
            .ok_or_else(|| desc::node_lookup(v, &device, &device))?;
        super::check_strict(ctx, top, "block-stream")?;
        let graph = ctx.machine.graph();
        // A node a job works on is blocked for other jobs (op blocker).
        super::jobs::check_not_blocked(ctx, top)?;
        let base: Option<NodeId> = match a.get_str("base-node") {
            Some(b) => Some(graph.find(b).ok_or_else(|| desc::node_lookup(v, "", b))?),
            None => None,
        };
        if let (Some(b), Some(name)) = (base, a.get_str("base-node")) {
            if b == top || !chain_contains(graph, top, b) {
                return Err(QmpError::generic(format!(
                    "Node '{name}' is not a backing image of '{device}'"
                )));
            }
        }
        // No BlockBackend names exist, so the default job id is ''.
        // stream_run(): nothing to stream without a backing file.
        let len = if graph.child(top, "backing").is_some() {
            graph.node(top).map_or(0, |n| n.size)
        } else {
            0
        };
        let job = Job {
            base,
            ..Job::new("", JobKind::Stream, top, len)
        };
        let id = a.get_str("job-id").unwrap_or_default().to_owned();
        // The copy-on-read filter opens before the job is created.
        if v >= crate::profile::Version::V7_2 {
            super::jobs::check_filter_name(ctx, a.get_str("filter-node-name"))?;
        }
        let reply = super::jobs::start(ctx, &self.args, job)?;
        // 6.0 on: a copy-on-read filter above the top while it streams.
        if v >= crate::profile::Version::V7_2 {
            super::jobs::insert_filter(
                ctx,
                &id,
                "copy-on-read",
                vec![("file".to_owned(), top)],
                a.get_str("filter-node-name"),
                true,
            )?;
        }
        Ok(reply)
    }
}
