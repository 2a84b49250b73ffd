//! External snapshots: `blockdev-snapshot-sync` (creates the overlay image)
//! and `blockdev-snapshot` (attaches an overlay that was added already).
//!
//! Without a parent holding the old top (a device or an export), the
//! overlay that `blockdev-snapshot-sync` creates has no user and QEMU frees
//! it at once: the file stays on disk and the old top stays read-only.
//! Devices and exports arrive with the rest of the graph issue.

use super::blockdev::{filename, Opener};
use super::desc;
use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// The op blocker that makes a node busy for a snapshot: it is some node's
/// backing file.
fn busy_as_backing(ctx: &Context<'_>, id: NodeId) -> Option<QmpError> {
    let graph = ctx.machine.graph();
    let name = &graph.node(id)?.name;
    let parent = graph
        .newest_first()
        .map(|(_, n)| n)
        .find(|n| n.children.iter().any(|(r, c)| r == "backing" && *c == id))?;
    Some(QmpError::generic(format!(
        "Node '{name}' is busy: node is used as backing hd of '{}'",
        parent.name
    )))
}

/// `blockdev-snapshot-sync`.
#[derive(Debug)]
pub struct BlockdevSnapshotSync {
    args: QDict,
}

impl BlockdevSnapshotSync {
    /// From the checked arguments.
    pub fn new(args: QDict) -> Self {
        BlockdevSnapshotSync { args }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let v = ctx.profile.version();
        let device = a.get_str("device").unwrap_or("");
        let node_name = a.get_str("node-name").unwrap_or("");
        let graph = ctx.machine.graph();
        // No BlockBackends exist yet, so only a node name can match.
        let id = (if node_name.is_empty() {
            None
        } else {
            graph.find(node_name)
        })
        .ok_or_else(|| desc::node_lookup(v, device, node_name))?;
        if let Some(e) = busy_as_backing(ctx, id) {
            return Err(e);
        }
        let graph = ctx.machine.graph();
        let Some(top) = graph.node(id) else {
            return Err(desc::node_lookup(v, device, node_name));
        };
        let snapshot_file = a.get_str("snapshot-file").unwrap_or_default().to_owned();
        let format = a.get_str("format").unwrap_or("qcow2").to_owned();
        let existing = a.get_str("mode") == Some("existing");
        if !existing {
            if format != "qcow2" {
                return Err(QmpError::generic(format!(
                    "mock-qemu: blockdev-snapshot-sync format '{format}' is not implemented by the mock for profile {}",
                    ctx.profile.label()
                )));
            }
            let backing = filename(graph, top);
            ctx.host
                .create_qcow2(&snapshot_file, top.size, Some((&backing, &top.driver)))
                .map_err(|e| QmpError::generic(e.to_string()))?;
        }
        // Open the overlay (backing overridden: it becomes the old top).
        let mut file = QDict::new();
        file.put("driver", "file");
        file.put("filename", snapshot_file);
        let mut def = QDict::new();
        def.put("driver", format);
        if let Some(n) = a.get_str("snapshot-node-name") {
            def.put("node-name", n);
        }
        def.put("backing", QObject::Null);
        def.put("file", file);
        let mut opener = Opener::new(ctx);
        let overlay = match opener.open(&def, false, false) {
            Ok(o) => o,
            Err(e) => {
                opener.rollback();
                return Err(e);
            }
        };
        // bdrv_append(): the old top becomes the overlay's (read-only)
        // backing. Nothing holds the overlay, so it goes away again.
        let graph = ctx.machine.graph_mut();
        graph.set_read_only(id);
        graph.free_unused(overlay);
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `blockdev-snapshot`.
#[derive(Debug)]
pub struct BlockdevSnapshot {
    node: String,
    overlay: String,
}

impl BlockdevSnapshot {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        BlockdevSnapshot {
            node: a.get_str("node").unwrap_or_default().to_owned(),
            overlay: a.get_str("overlay").unwrap_or_default().to_owned(),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let v = ctx.profile.version();
        let graph = ctx.machine.graph();
        let id = graph
            .find(&self.node)
            .ok_or_else(|| desc::node_lookup(v, &self.node, &self.node))?;
        let overlay = graph
            .find(&self.overlay)
            .ok_or_else(|| desc::node_lookup(v, &self.overlay, &self.overlay))?;
        if let Some(e) = busy_as_backing(ctx, id) {
            return Err(e);
        }
        let graph = ctx.machine.graph();
        if graph.child(overlay, "backing").is_some() {
            return Err(QmpError::generic("The overlay already has a backing image"));
        }
        let graph = ctx.machine.graph_mut();
        graph.attach(overlay, "backing", id);
        graph.set_read_only(id);
        Ok(QObject::Dict(QDict::new()))
    }
}
