//! Dirty bitmaps: `block-dirty-bitmap-add/-remove/-clear/-enable/-disable/-merge`.
//!
//! Bitmaps are state of their node (shown by `query-named-block-nodes`).
//! Nothing writes to images yet, so every count is 0. Persistent bitmaps
//! are accepted on qcow2 nodes as QEMU does; writing them into the image
//! when the node closes comes with the data plane.

use super::desc;
use super::{Context, Return};
use crate::model::graph::{Bitmap, NodeId};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QNum, QObject};

fn bool_arg(a: &QDict, key: &str) -> bool {
    matches!(a.get(key), Some(QObject::Bool(true)))
}

/// `bdrv_lookup_bs(node, node)`.
fn node(ctx: &Context<'_>, name: &str) -> Result<NodeId, QmpError> {
    ctx.machine
        .graph()
        .find(name)
        .ok_or_else(|| desc::node_lookup(ctx.profile.version(), name, name))
}

fn not_found(name: &str) -> QmpError {
    QmpError::generic(format!("Dirty bitmap '{name}' not found"))
}

/// The index of bitmap `name` on `node`.
fn find(ctx: &Context<'_>, node: NodeId, name: &str) -> Result<usize, QmpError> {
    ctx.machine
        .graph()
        .node(node)
        .and_then(|n| {
            n.bitmaps
                .iter()
                .position(|b| b.name.as_deref() == Some(name))
        })
        .ok_or_else(|| not_found(name))
}

/// `bdrv_dirty_bitmap_check()`: a bitmap an operation holds cannot change.
fn check_not_busy(ctx: &Context<'_>, node: NodeId, i: usize, name: &str) -> Result<(), QmpError> {
    let busy = ctx
        .machine
        .graph()
        .node(node)
        .and_then(|n| n.bitmaps.get(i))
        .is_some_and(|b| b.busy);
    if busy {
        return Err(QmpError::generic(format!(
            "Bitmap '{name}' is currently in use by another operation and cannot be used"
        )));
    }
    Ok(())
}

/// `block-dirty-bitmap-add`.
#[derive(Debug)]
pub struct BitmapAdd {
    node: String,
    name: String,
    granularity: Option<u64>,
    persistent: bool,
    disabled: bool,
}

impl BitmapAdd {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        let granularity = match a.get("granularity") {
            Some(QObject::Num(QNum::I64(g))) => u64::try_from(*g).ok(),
            _ => None,
        };
        BitmapAdd {
            node: a.get_str("node").unwrap_or_default().to_owned(),
            name: a.get_str("name").unwrap_or_default().to_owned(),
            granularity,
            persistent: bool_arg(a, "persistent"),
            disabled: bool_arg(a, "disabled"),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let id = node(ctx, &self.node)?;
        if self.name.is_empty() {
            return Err(QmpError::generic("Bitmap name cannot be empty"));
        }
        let graph = ctx.machine.graph();
        let Some(n) = graph.node(id) else {
            return Err(not_found(&self.name));
        };
        let granularity = match self.granularity {
            Some(g) if g < 512 || !g.is_power_of_two() => {
                return Err(QmpError::generic(
                    "Granularity must be power of 2 and at least 512",
                ))
            }
            Some(g) => g,
            // bdrv_get_default_bitmap_granularity(): the cluster size, at least 64 KiB.
            None => n
                .qcow2
                .as_ref()
                .map_or(65536, |q| q.cluster_size.max(65536)),
        };
        if self.persistent && n.driver != "qcow2" {
            return Err(QmpError::generic(format!(
                "Can't store persistent bitmaps to {}: Operation not supported",
                n.name
            )));
        }
        if n.bitmaps
            .iter()
            .any(|b| b.name.as_deref() == Some(self.name.as_str()))
        {
            return Err(QmpError::generic(format!(
                "Bitmap already exists: {}",
                self.name
            )));
        }
        if let Some(n) = ctx.machine.graph_mut().node_mut(id) {
            n.bitmaps.push(Bitmap {
                name: Some(self.name),
                granularity,
                persistent: self.persistent,
                recording: !self.disabled,
                count: 0,
                owner: None,
                busy: false,
                tracks_progress: false,
            });
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `block-dirty-bitmap-remove/-clear/-enable/-disable`.
#[derive(Debug)]
pub struct BitmapVerb {
    verb: String,
    node: String,
    name: String,
}

impl BitmapVerb {
    /// From the command name and checked arguments.
    pub fn new(verb: &str, a: &QDict) -> Self {
        BitmapVerb {
            verb: verb.to_owned(),
            node: a.get_str("node").unwrap_or_default().to_owned(),
            name: a.get_str("name").unwrap_or_default().to_owned(),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let id = node(ctx, &self.node)?;
        let i = find(ctx, id, &self.name)?;
        check_not_busy(ctx, id, i, &self.name)?;
        if let Some(n) = ctx.machine.graph_mut().node_mut(id) {
            match self.verb.as_str() {
                "block-dirty-bitmap-remove" => {
                    n.bitmaps.remove(i);
                }
                "block-dirty-bitmap-enable" => n.bitmaps[i].recording = true,
                "block-dirty-bitmap-disable" => n.bitmaps[i].recording = false,
                // clear: every count is already 0.
                _ => {}
            }
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `block-dirty-bitmap-merge`.
#[derive(Debug)]
pub struct BitmapMerge {
    node: String,
    target: String,
    sources: Vec<(String, String)>,
}

impl BitmapMerge {
    /// From the checked arguments: sources are names on `node`, or
    /// `{node, name}` pairs.
    pub fn new(a: &QDict) -> Self {
        let node = a.get_str("node").unwrap_or_default().to_owned();
        let sources = match a.get("bitmaps") {
            Some(QObject::List(l)) => l
                .iter()
                .map(|s| match s {
                    QObject::Dict(d) => (
                        d.get_str("node").unwrap_or_default().to_owned(),
                        d.get_str("name").unwrap_or_default().to_owned(),
                    ),
                    other => (node.clone(), other.as_str().unwrap_or_default().to_owned()),
                })
                .collect(),
            _ => Vec::new(),
        };
        BitmapMerge {
            target: a.get_str("target").unwrap_or_default().to_owned(),
            node,
            sources,
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let id = node(ctx, &self.node)?;
        let i = find(ctx, id, &self.target)?;
        check_not_busy(ctx, id, i, &self.target)?;
        for (n, b) in &self.sources {
            let src = node(ctx, n)?;
            find(ctx, src, b)?;
        }
        // Counts are all 0: merging changes nothing visible yet.
        Ok(QObject::Dict(QDict::new()))
    }
}
