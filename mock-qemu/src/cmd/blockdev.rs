//! Node management: `blockdev-add`, `blockdev-del`, `query-named-block-nodes`.
//!
//! Drivers so far: `null-co`, `null-aio`. Other drivers answer with the
//! explicit not-implemented error naming the driver; images on disk, chains
//! and the other drivers come with the rest of the graph issue.

use super::desc;
use super::{not_implemented, Context, Return};
use crate::model::graph::{Cache, NewNode, Node, NodeId};
use crate::qmp::error::QmpError;
use crate::qmp::json::to_json;
use crate::qmp::qobject::{QDict, QNum, QObject};
use crate::qmp::shape;

/// Size of a null node when `size` is not given (1 GiB).
const NULL_DEFAULT_SIZE: u64 = 1 << 30;

fn bool_opt(d: &QDict, key: &str) -> Option<bool> {
    match d.get(key) {
        Some(QObject::Bool(b)) => Some(*b),
        _ => None,
    }
}

fn int_opt(d: &QDict, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(QObject::Num(QNum::I64(i))) => Some(*i),
        Some(QObject::Num(QNum::U64(u))) => i64::try_from(*u).ok(),
        _ => None,
    }
}

/// `blockdev-add` (arguments already checked against the schema).
#[derive(Debug)]
pub struct BlockdevAdd {
    args: QDict,
}

impl BlockdevAdd {
    /// Wraps the checked arguments.
    pub fn new(args: QDict) -> Self {
        BlockdevAdd { args }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let Some(name) = a.get("node-name").and_then(QObject::as_str) else {
            return Err(QmpError::generic(desc::ROOT_NEEDS_NODE_NAME));
        };
        let driver = a
            .get("driver")
            .and_then(QObject::as_str)
            .unwrap_or_default()
            .to_owned();
        let version = ctx.profile.version();
        ctx.machine
            .graph()
            .check_new_name(name)
            .map_err(|e| desc::graph_error(version, &e))?;
        let node = match driver.as_str() {
            "null-co" | "null-aio" => null_node(&driver, a),
            _ => {
                return Err(QmpError::generic(format!(
                    "mock-qemu: blockdev-add driver '{driver}' is not implemented by the mock for profile {} (it exists in that QEMU)",
                    ctx.profile.label()
                )))
            }
        };
        ctx.machine
            .graph_mut()
            .insert(NewNode {
                name: Some(name.to_owned()),
                node,
            })
            .map_err(|e| desc::graph_error(version, &e))?;
        Ok(QObject::Dict(QDict::new()))
    }
}

/// The options every driver shares.
fn common(driver: &str, a: &QDict) -> Node {
    let cache = match a.get("cache") {
        Some(QObject::Dict(c)) => Cache {
            direct: bool_opt(c, "direct").unwrap_or(false),
            no_flush: bool_opt(c, "no-flush").unwrap_or(false),
        },
        _ => Cache::default(),
    };
    Node {
        name: String::new(),
        driver: driver.to_owned(),
        strong_options: QDict::new(),
        read_only: bool_opt(a, "read-only").unwrap_or(false),
        size: 0,
        cache,
        detect_zeroes: a
            .get("detect-zeroes")
            .and_then(QObject::as_str)
            .unwrap_or("off")
            .to_owned(),
        children: Vec::new(),
        monitor_owned: true,
    }
}

fn null_node(driver: &str, a: &QDict) -> Node {
    let mut strong = QDict::new();
    strong.put("driver", driver);
    // null's "strong" runtime options, as given (block/null.c).
    for key in ["size", "read-zeroes", "latency-ns"] {
        if let Some(v) = a.get(key) {
            strong.put(key, v.clone());
        }
    }
    let size = int_opt(a, "size")
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(NULL_DEFAULT_SIZE);
    Node {
        strong_options: strong,
        size,
        ..common(driver, a)
    }
}

/// `blockdev-del`.
#[derive(Debug)]
pub struct BlockdevDel {
    node_name: String,
}

impl BlockdevDel {
    /// From the checked arguments.
    pub fn new(args: &QDict) -> Self {
        BlockdevDel {
            node_name: args
                .get("node-name")
                .and_then(QObject::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let version = ctx.profile.version();
        ctx.machine
            .graph_mut()
            .delete(&self.node_name)
            .map_err(|e| desc::graph_error(version, &e))?;
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `query-named-block-nodes`.
#[derive(Debug)]
pub struct QueryNamedBlockNodes {
    flat: bool,
}

impl QueryNamedBlockNodes {
    /// From the checked arguments.
    pub fn new(args: &QDict) -> Self {
        QueryNamedBlockNodes {
            flat: bool_opt(args, "flat").unwrap_or(false),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let graph = ctx.machine.graph();
        let mut list = Vec::with_capacity(graph.len());
        for (id, _) in graph.newest_first() {
            list.push(QObject::Dict(node_info(ctx, id, self.flat)?));
        }
        Ok(shape::reply(
            ctx.profile.schema(),
            "query-named-block-nodes",
            QObject::List(list),
        ))
    }
}

/// The node's file name as QEMU reports it: a `json:{…}` pseudo-protocol
/// name built from its strong options when it has no file.
fn filename(node: &Node) -> String {
    format!(
        "json:{}",
        to_json(&QObject::Dict(node.strong_options.clone()))
    )
}

/// `BlockDeviceInfo` with every member any supported version has; the
/// schema projection keeps the profile's.
fn node_info(ctx: &Context<'_>, id: NodeId, _flat: bool) -> Result<QDict, QmpError> {
    let Some(node) = ctx.machine.graph().node(id) else {
        return Err(not_implemented(ctx.profile, "query-named-block-nodes"));
    };
    let name = filename(node);
    let mut image = QDict::new();
    image.put("filename", name.clone());
    image.put("format", node.driver.clone());
    image.put("virtual-size", node.size);
    image.put("actual-size", 0i64);
    let mut cache = QDict::new();
    cache.put("writeback", true);
    cache.put("direct", node.cache.direct);
    cache.put("no-flush", node.cache.no_flush);
    let mut d = QDict::new();
    d.put("file", name);
    d.put("node-name", node.name.clone());
    d.put("ro", node.read_only);
    d.put("drv", node.driver.clone());
    d.put("backing_file_depth", 0i64);
    d.put("encrypted", false);
    d.put("encryption_key_missing", false);
    d.put("detect_zeroes", node.detect_zeroes.clone());
    for k in ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"] {
        d.put(k, 0i64);
    }
    d.put("image", image);
    d.put("cache", cache);
    d.put("write_threshold", 0i64);
    d.put("active", true);
    Ok(d)
}
