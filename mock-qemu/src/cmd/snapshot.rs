//! External snapshots: `blockdev-snapshot-sync` (creates the overlay image)
//! and `blockdev-snapshot` (attaches an overlay that was added already),
//! both following `external_snapshot_action()`.
//!
//! The overlay takes over every parent of the old top (`bdrv_append()`):
//! an export follows it. Without a parent, the overlay that
//! `blockdev-snapshot-sync` creates has no user and QEMU frees it at once:
//! the file stays on disk and the old top stays read-only.

use super::blockdev::{filename, is_filter, Opener};
use super::desc;
use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// The op blocker that makes a node busy for a snapshot: it is some node's
/// backing file (the newest such parent's blocker is reported).
fn busy_as_backing(ctx: &Context<'_>, id: NodeId) -> Option<QmpError> {
    let graph = ctx.machine.graph();
    let name = &graph.node(id)?.name;
    let parent = graph.backing_parent(id)?;
    Some(QmpError::generic(format!(
        "Node '{name}' is busy: node is used as backing hd of '{}'",
        parent.name
    )))
}

/// Image formats `bdrv_img_create()` makes without a backing file option.
const NO_BACKING_FORMATS: &[&str] = &["raw", "file"];

/// `bdrv_img_create()`'s refusals of a format for a new overlay.
fn check_format(ctx: &Context<'_>, format: &str) -> Result<(), QmpError> {
    let known = ctx
        .profile
        .schema()
        .member_enum_values("blockdev-add", "driver")
        .is_some_and(|d| d.iter().any(|d| d == format));
    if !known {
        return Err(QmpError::generic(format!("Unknown file format '{format}'")));
    }
    if NO_BACKING_FORMATS.contains(&format) {
        return Err(QmpError::generic(format!(
            "Backing file not supported for file format '{format}'"
        )));
    }
    if format != "qcow2" {
        return Err(QmpError::generic(format!(
            "mock-qemu: blockdev-snapshot-sync format '{format}' is not implemented by the mock for profile {}",
            ctx.profile.label()
        )));
    }
    Ok(())
}

/// The checks `external_snapshot_action()` makes of the overlay, then
/// `bdrv_append()`: the overlay becomes the parents' node and gets the old
/// top as its backing; the old top turns read-only (on commit).
fn append(ctx: &mut Context<'_>, old: NodeId, overlay: NodeId) -> Result<(), QmpError> {
    let graph = ctx.machine.graph();
    let Some(o) = graph.node(overlay) else {
        return Err(QmpError::generic("The overlay is already in use"));
    };
    if graph.has_reader(overlay) {
        return Err(QmpError::generic("The overlay is already in use"));
    }
    if is_filter(&o.driver) {
        return Err(QmpError::generic("Filters cannot be used as overlays"));
    }
    if graph.child(overlay, "backing").is_some() {
        return Err(QmpError::generic("The overlay already has a backing image"));
    }
    if o.driver != "qcow2" {
        return Err(QmpError::generic(
            "The overlay does not support backing images",
        ));
    }
    // bdrv_attach_child_noperm(): no cycles (QEMU 5.2 aborts instead).
    if graph.reaches(old, overlay) {
        let old_name = graph.node(old).map(|n| n.name.clone()).unwrap_or_default();
        return Err(QmpError::generic(format!(
            "Making '{old_name}' a backing child of '{}' would create a cycle",
            o.name
        )));
    }
    let graph = ctx.machine.graph_mut();
    graph.replace_node(old, overlay);
    graph.attach(overlay, "backing", old);
    graph.set_read_only(old);
    Ok(())
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
        let node_name = a.get_str("node-name");
        let graph = ctx.machine.graph();
        // bdrv_lookup_bs(device, node-name): qemu-storage-daemon has no
        // named BlockBackends, so only a node name can match.
        let id = node_name
            .and_then(|n| graph.find(n))
            .ok_or_else(|| desc::node_lookup(v, device, node_name.unwrap_or("")))?;
        if let Some(e) = busy_as_backing(ctx, id) {
            return Err(e);
        }
        super::check_strict(ctx, id, "a new overlay")?;
        let snapshot_node_name = a.get_str("snapshot-node-name");
        if node_name.is_some() && snapshot_node_name.is_none() {
            return Err(QmpError::generic(desc::overlay_name_missing(v)));
        }
        if snapshot_node_name.is_some_and(|n| ctx.machine.graph().find(n).is_some()) {
            return Err(QmpError::generic(desc::overlay_name_in_use(v)));
        }
        let graph = ctx.machine.graph();
        let Some(top) = graph.node(id) else {
            return Err(desc::node_lookup(v, device, node_name.unwrap_or("")));
        };
        let read_only = top.read_only;
        let snapshot_file = a.get_str("snapshot-file").unwrap_or_default().to_owned();
        let format = a.get_str("format").unwrap_or("qcow2").to_owned();
        if a.get_str("mode") != Some("existing") {
            check_format(ctx, &format)?;
            let graph = ctx.machine.graph();
            let Some(top) = graph.node(id) else {
                return Err(desc::node_lookup(v, device, node_name.unwrap_or("")));
            };
            let backing = filename(graph, top);
            ctx.host
                .create_qcow2(&snapshot_file, top.size, Some((&backing, &top.driver)))
                .map_err(|e| QmpError::generic(e.to_string()))?;
        }
        // Open the overlay with the old top's flags and no backing: it gets
        // the old top when appended.
        let mut file = QDict::new();
        file.put("driver", "file");
        file.put("filename", snapshot_file);
        let mut def = QDict::new();
        def.put("driver", format);
        if let Some(n) = snapshot_node_name {
            def.put("node-name", n);
        }
        def.put("backing", QObject::Null);
        def.put("file", file);
        let mut opener = Opener::new(ctx);
        let overlay = match opener.open(&def, read_only, false) {
            Ok(o) => o,
            Err(e) => {
                opener.rollback();
                return Err(e);
            }
        };
        if let Err(e) = append(ctx, id, overlay) {
            ctx.machine.graph_mut().free_unused(overlay);
            return Err(e);
        }
        // Nothing else holds a QEMU-created overlay: without a parent
        // taken over from the old top it goes away again.
        ctx.machine.graph_mut().free_unused(overlay);
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
        let id = ctx
            .machine
            .graph()
            .find(&self.node)
            .ok_or_else(|| desc::node_lookup(v, &self.node, &self.node))?;
        if let Some(e) = busy_as_backing(ctx, id) {
            return Err(e);
        }
        super::check_strict(ctx, id, "a new overlay")?;
        // bdrv_open() of a reference: a lookup.
        let overlay = ctx
            .machine
            .graph()
            .find(&self.overlay)
            .ok_or_else(|| desc::node_lookup(v, &self.overlay, &self.overlay))?;
        append(ctx, id, overlay)?;
        Ok(QObject::Dict(QDict::new()))
    }
}
