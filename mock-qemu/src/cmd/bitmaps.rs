//! Dirty bitmaps: `block-dirty-bitmap-add/-remove/-clear/-enable/-disable/-merge`.
//!
//! Bitmaps are state of their node (shown by `query-named-block-nodes`).
//! Nothing writes to images yet, so every count is 0. Persistent bitmaps
//! are accepted on qcow2 nodes as QEMU does; writing them into the image
//! when the node closes comes with the data plane.

use super::desc;
use super::{Context, Return};
use crate::model::graph::{Bitmap, NodeId};
use crate::profile::Version;
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

/// `block_dirty_bitmap_lookup()`'s node lookup, with its own message.
fn lookup_node(ctx: &Context<'_>, name: &str) -> Result<NodeId, QmpError> {
    ctx.machine
        .graph()
        .find(name)
        .ok_or_else(|| QmpError::generic(format!("Node '{name}' not found")))
}

/// Longest bitmap name (`BDRV_BITMAP_MAX_NAME_SIZE`).
const MAX_NAME: usize = 1023;

/// What `bdrv_dirty_bitmap_check()` is asked to refuse.
#[derive(Debug, Clone, Copy)]
struct Refuse {
    busy: bool,
    readonly: bool,
    inconsistent: bool,
}

/// `BDRV_BITMAP_DEFAULT`: busy, read-only and inconsistent bitmaps cannot
/// change.
const DEFAULT: Refuse = Refuse {
    busy: true,
    readonly: true,
    inconsistent: true,
};

/// `BDRV_BITMAP_ALLOW_RO`: read-only bitmaps may (enable, disable).
const ALLOW_RO: Refuse = Refuse {
    busy: true,
    readonly: false,
    inconsistent: true,
};

/// `BDRV_BITMAP_INCONSISTENT` (a merge's sources).
const SOURCE: Refuse = Refuse {
    busy: false,
    readonly: false,
    inconsistent: true,
};

/// `BDRV_BITMAP_BUSY | BDRV_BITMAP_RO` (remove: an inconsistent bitmap is
/// removed to get rid of it).
const REMOVE: Refuse = Refuse {
    busy: true,
    readonly: true,
    inconsistent: false,
};

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

/// `bdrv_dirty_bitmap_check()`: a bitmap an operation holds cannot change,
/// nor (unless allowed) one loaded from a read-only image.
fn check(
    ctx: &Context<'_>,
    node: NodeId,
    i: usize,
    name: &str,
    refuse: Refuse,
) -> Result<(), QmpError> {
    let Some(b) = ctx
        .machine
        .graph()
        .node(node)
        .and_then(|n| n.bitmaps.get(i))
    else {
        return Ok(());
    };
    if refuse.busy && b.busy {
        return Err(QmpError::generic(format!(
            "Bitmap '{name}' is currently in use by another operation and cannot be used"
        )));
    }
    if refuse.readonly && b.readonly {
        return Err(QmpError::generic(format!(
            "Bitmap '{name}' is readonly and cannot be modified"
        )));
    }
    if refuse.inconsistent && b.inconsistent {
        return Err(QmpError::generic(format!(
            "Bitmap '{name}' is inconsistent and cannot be used"
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
            // bdrv_get_default_bitmap_granularity(): the cluster size
            // within [4 KiB, 64 KiB], else 64 KiB.
            None => default_granularity(ctx, id),
        };
        if self.persistent && n.driver != "qcow2" {
            return Err(QmpError::generic(format!(
                "Can't store persistent bitmaps to {}: Operation not supported",
                n.name
            )));
        }
        // qcow2_co_can_store_new_dirty_bitmap(): the image must be able
        // to hold it.
        if self.persistent {
            if let Some(q) = &n.qcow2 {
                // A taken name is refused plainly first (as real QEMU
                // does), then the image's own limits, worded with a prefix.
                if n.bitmaps
                    .iter()
                    .any(|b| b.name.as_deref() == Some(self.name.as_str()))
                {
                    return Err(QmpError::generic(format!(
                        "Bitmap already exists: {}",
                        self.name
                    )));
                }
                let why = if q.version < 3 {
                    Some("Cannot store dirty bitmaps in qcow2 v2 files".to_owned())
                } else if granularity > 1 << 31 {
                    Some("Granularity exceeds maximum (2147483648 bytes)".to_owned())
                } else if self.name.len() > MAX_NAME {
                    Some(format!(
                        "Name length exceeds maximum ({MAX_NAME} characters)"
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(QmpError::generic(format!(
                        "Can't make bitmap '{}' persistent in '{}': {why}",
                        self.name, n.name
                    )));
                }
            }
        }
        // bdrv_create_dirty_bitmap().
        if n.bitmaps
            .iter()
            .any(|b| b.name.as_deref() == Some(self.name.as_str()))
        {
            return Err(QmpError::generic(format!(
                "Bitmap already exists: {}",
                self.name
            )));
        }
        if self.name.len() > MAX_NAME {
            return Err(QmpError::generic(format!(
                "Bitmap name too long: {}",
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
                readonly: false,
                inconsistent: false,
                locked: false,
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
        let id = lookup_node(ctx, &self.node)?;
        let i = find(ctx, id, &self.name)?;
        let refuse = match self.verb.as_str() {
            "block-dirty-bitmap-enable" | "block-dirty-bitmap-disable" => ALLOW_RO,
            "block-dirty-bitmap-remove" => REMOVE,
            _ => DEFAULT,
        };
        check(ctx, id, i, &self.name, refuse)?;
        let graph = ctx.machine.graph_mut();
        let filename = graph.image_filename(id);
        if let Some(n) = graph.node_mut(id) {
            match self.verb.as_str() {
                "block-dirty-bitmap-remove" => {
                    let b = n.bitmaps.remove(i);
                    // A persistent bitmap leaves the image at once.
                    if b.persistent && n.driver == "qcow2" {
                        if let Some(q) = n.qcow2.as_mut() {
                            q.bitmaps.retain(|s| s.name != self.name);
                        }
                        if let Some(filename) = filename {
                            graph.push_effect(crate::model::Effect::RemoveBitmap {
                                filename,
                                name: self.name,
                            });
                        }
                    }
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
        let id = lookup_node(ctx, &self.node)?;
        let i = find(ctx, id, &self.target)?;
        check(ctx, id, i, &self.target, DEFAULT)?;
        let graph = ctx.machine.graph();
        let dst_size = graph.node(id).map_or(0, |n| n.size);
        for (n, b) in &self.sources {
            let src = lookup_node(ctx, n)?;
            // A source may be busy or read-only: it is only read; an
            // inconsistent one has no bits to give.
            let j = find(ctx, src, b)?;
            check(ctx, src, j, b, SOURCE)?;
            // bdrv_merge_dirty_bitmap(): both cover the same size.
            let src_size = graph.node(src).map_or(0, |n| n.size);
            if src_size != dst_size {
                return Err(QmpError::generic(
                    if ctx.profile.version() < Version::V7_2 {
                        "Bitmaps are incompatible and can't be merged".to_owned()
                    } else {
                        format!("Bitmaps are of different sizes (destination size is {dst_size}, source size is {src_size}) and can't be merged")
                    },
                ));
            }
        }
        // Counts are all 0: merging changes nothing visible yet.
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `bdrv_get_default_bitmap_granularity()`: a driver's cluster size (what
/// `bdrv_get_info()` reports, through filters and raw), kept within
/// [4 KiB, 64 KiB]; 64 KiB when there is none.
fn default_granularity(ctx: &Context<'_>, id: NodeId) -> u64 {
    let graph = ctx.machine.graph();
    let mut cur = Some(id);
    while let Some(n) = cur.and_then(|c| graph.node(c)) {
        if let Some(q) = &n.qcow2 {
            return q.cluster_size.clamp(4096, 65536);
        }
        cur = match n.driver.as_str() {
            "raw" | "throttle" | "copy-on-read" | "copy-before-write" | "blkdebug" => n
                .children
                .iter()
                .find(|(r, _)| r == "file" || r == "image")
                .map(|(_, c)| *c),
            _ => None,
        };
    }
    65536
}
