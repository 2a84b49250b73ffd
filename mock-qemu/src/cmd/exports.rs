//! The NBD server and block exports: `nbd-server-start/-stop`,
//! `block-export-add/-del`, the deprecated `nbd-server-add/-remove`,
//! `query-block-exports`. Checks in QEMU's order (`blk_exp_add`,
//! `nbd_export_create`); the sockets are the host layer's.

use super::blockdev::filename;
use super::desc;
use super::{Context, Return};
use crate::host::{ExportSource, NbdListen, PublishedExport};
use crate::model::exports::Export;
use crate::model::graph::{name_is_wellformed, EdgePerm, Graph, NodeId, PermUser};
use crate::model::ModelEvent;
use crate::profile::Version;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QNum, QObject};
use crate::qmp::shape;

fn not_running() -> QmpError {
    QmpError::generic("NBD server not running")
}

/// `nbd-server-start`.
#[derive(Debug)]
pub struct NbdServerStart {
    args: QDict,
}

impl NbdServerStart {
    /// From the checked arguments.
    pub fn new(args: QDict) -> Self {
        NbdServerStart { args }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        if ctx.machine.exports().server.is_some() {
            return Err(QmpError::generic("NBD server already running"));
        }
        let addr = match self.args.get("addr") {
            Some(QObject::Dict(a)) => a,
            _ => {
                return Err(QmpError::generic(
                    "mock-qemu: nbd-server-start without addr",
                ))
            }
        };
        let data = match addr.get("data") {
            Some(QObject::Dict(d)) => d.clone(),
            _ => addr.clone(),
        };
        let listen = match addr.get_str("type") {
            Some("unix") => NbdListen::Unix(data.get_str("path").unwrap_or_default().to_owned()),
            Some("inet") => {
                let host = data.get_str("host").unwrap_or_default().to_owned();
                let port = data.get_str("port").unwrap_or_default();
                let port = port.parse::<u16>().map_err(|_| QmpError::generic(format!("Parameter 'port' expects a number: {port}")))?;
                NbdListen::Tcp(host, port)
            }
            other => {
                return Err(QmpError::generic(format!(
                    "mock-qemu: nbd-server-start address type '{}' is not implemented by the mock for profile {}",
                    other.unwrap_or(""),
                    ctx.profile.label()
                )))
            }
        };
        let max = match self.args.get("max-connections") {
            Some(QObject::Num(QNum::I64(n))) => u32::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        ctx.host
            .nbd_start(&listen, max)
            .map_err(QmpError::generic)?;
        // nbd_server_start(): the credentials are looked up once the
        // listener is open; a failure closes it again.
        if let Some(id) = self.args.get_str("tls-creds") {
            let err = match ctx.machine.objects().get(id) {
                None => format!("No TLS credentials with id '{id}'"),
                Some(o) if !o.qom_type.starts_with("tls-creds") => {
                    format!("Object with id '{id}' is not TLS credentials")
                }
                Some(_) => format!(
                    "mock-qemu: nbd-server-start with TLS is not implemented by the mock for profile {}",
                    ctx.profile.label()
                ),
            };
            ctx.host.nbd_stop();
            return Err(QmpError::generic(err));
        }
        ctx.machine.exports_mut().server = Some(format!("{listen:?}"));
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `nbd-server-stop`: every export goes, each with `BLOCK_EXPORT_DELETED`.
#[derive(Debug)]
pub struct NbdServerStop;

impl NbdServerStop {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        if ctx.machine.exports().server.is_none() {
            return Err(not_running());
        }
        let mut removed = ctx.machine.exports_mut().clear();
        // 10.0 closes the newest export first (blk_exp_close_all_type()
        // walks a list exports are inserted at the head of); 5.2 and 7.2
        // the oldest first (recorded).
        if ctx.profile.version() >= Version::V10_0 {
            removed.reverse();
        }
        for e in removed {
            detach(ctx, &e.id);
            ctx.host.nbd_unpublish(&e.name);
            ctx.machine
                .emit_now(ModelEvent::BlockExportDeleted { id: e.id });
        }
        ctx.machine.exports_mut().server = None;
        ctx.host.nbd_stop();
        Ok(QObject::Dict(QDict::new()))
    }
}

/// The BlockBackend owner name of an export.
fn export_owner(id: &str) -> String {
    crate::model::exports::backend_owner(id)
}

/// The node an export's BlockBackend is attached to now (it follows
/// snapshots and pivots).
fn export_node(graph: &Graph, id: &str) -> Option<NodeId> {
    let owner = export_owner(id);
    graph.backends().find(|(o, _)| *o == owner).map(|(_, n)| n)
}

/// Drops an export's BlockBackend: its bitmaps are no longer busy, and a
/// node QEMU created that nothing else holds goes with it.
fn detach(ctx: &mut Context<'_>, id: &str) {
    let bitmaps = ctx
        .machine
        .exports()
        .by_id(id)
        .map(|e| e.bitmaps.clone())
        .unwrap_or_default();
    let graph = ctx.machine.graph_mut();
    let node = export_node(graph, id);
    graph.detach_backend(&export_owner(id));
    if let Some(n) = node {
        for (owner, name) in &bitmaps {
            if let Some(b) = graph
                .node_mut(*owner)
                .and_then(|o| o.bitmaps.iter_mut().find(|b| b.name.as_ref() == Some(name)))
            {
                b.busy = false;
                b.locked = false;
            }
        }
        graph.free_unused(n);
    }
}

/// `block-export-add` (type nbd), or the legacy `nbd-server-add`.
#[derive(Debug)]
pub struct BlockExportAdd {
    legacy: bool,
    id: String,
    node: String,
    name: Option<String>,
    description: Option<String>,
    writable: bool,
    iothread: Option<String>,
    bitmaps: Vec<String>,
}

impl BlockExportAdd {
    /// `block-export-add`.
    pub fn from_qmp(a: &QDict) -> Self {
        BlockExportAdd {
            legacy: false,
            id: a.get_str("id").unwrap_or_default().to_owned(),
            node: a.get_str("node-name").unwrap_or_default().to_owned(),
            name: a.get_str("name").map(str::to_owned),
            description: a.get_str("description").map(str::to_owned),
            writable: matches!(a.get("writable"), Some(QObject::Bool(true))),
            iothread: a.get_str("iothread").map(str::to_owned),
            bitmaps: match a.get("bitmaps") {
                Some(QObject::List(l)) => l
                    .iter()
                    .filter_map(|b| b.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// `nbd-server-add`: the export id is its name, by default the device.
    pub fn from_legacy(a: &QDict) -> Self {
        let device = a.get_str("device").unwrap_or_default().to_owned();
        let name = a
            .get_str("name")
            .map_or_else(|| device.clone(), str::to_owned);
        BlockExportAdd {
            legacy: true,
            id: name.clone(),
            node: device,
            name: Some(name),
            description: a.get_str("description").map(str::to_owned),
            writable: matches!(a.get("writable"), Some(QObject::Bool(true))),
            iothread: None,
            bitmaps: a.get_str("bitmap").map(str::to_owned).into_iter().collect(),
        }
    }

    pub(super) fn apply(mut self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let v = ctx.profile.version();
        if self.legacy && ctx.machine.exports().server.is_none() {
            return Err(not_running());
        }
        // blk_exp_add(): the id, the node, the node's flag, the iothread,
        // attaching the BlockBackend; then the NBD driver's own checks.
        if !name_is_wellformed(&self.id) {
            return Err(QmpError::generic("Invalid block export id"));
        }
        if ctx.machine.exports().by_id(&self.id).is_some() {
            return Err(QmpError::generic(format!(
                "Block export id '{}' is already in use",
                self.id
            )));
        }
        let node = lookup_node(ctx, v, &self.node)?;
        super::check_strict(ctx, node, "an export")?;
        let read_only = ctx.machine.graph().node(node).is_some_and(|n| n.read_only);
        if read_only && self.writable {
            // nbd-server-add quietly exports a read-only node read-only.
            if self.legacy {
                self.writable = false;
            } else {
                return Err(QmpError::generic(
                    "Cannot export read-only node as writable",
                ));
            }
        }
        if let Some(t) = &self.iothread {
            let known = ctx
                .machine
                .objects()
                .get(t)
                .is_some_and(|o| o.qom_type == "iothread");
            if !known {
                return Err(QmpError::generic(format!("iothread \"{t}\" not found")));
            }
        }
        // blk_insert_bs(): the export's BlockBackend and the node's other
        // users must agree (it does not share resize: nbd/server.c).
        let root = crate::model::perms::export_root(self.writable, v);
        let new = EdgePerm {
            user: PermUser::Backend,
            role: "root".into(),
            perm: root.perm,
            shared: root.shared,
        };
        let graph = ctx.machine.graph();
        let users = graph.users(node, &ctx.machine.block_users(v), v);
        if let Some(c) = graph.perm_conflict(node, &new, &users, v < Version::V7_2) {
            return Err(desc::perm_conflict(v, &c, &new));
        }
        if ctx.machine.exports().server.is_none() {
            return Err(not_running());
        }
        let name = self.name.clone().unwrap_or_else(|| self.node.clone());
        if name.len() > NBD_MAX_STRING_SIZE {
            return Err(QmpError::generic(format!("export name '{name}' too long")));
        }
        if let Some(d) = self
            .description
            .as_ref()
            .filter(|d| d.len() > NBD_MAX_STRING_SIZE)
        {
            return Err(QmpError::generic(format!("description '{d}' too long")));
        }
        if ctx.machine.exports().by_name(&name).is_some() {
            return Err(QmpError::generic(format!(
                "NBD server already has export named '{name}'"
            )));
        }
        let bitmaps = export_bitmaps(ctx, node, &self.bitmaps, self.writable)?;
        let published = publish(ctx, node, &name, self.description.clone(), self.writable);
        ctx.host.nbd_publish(published);
        let (graph, exports) = ctx.machine.graph_and_exports();
        for (owner, b) in &bitmaps {
            if let Some(bm) = graph
                .node_mut(*owner)
                .and_then(|o| o.bitmaps.iter_mut().find(|x| x.name.as_ref() == Some(b)))
            {
                bm.busy = true;
                bm.locked = true;
            }
        }
        graph.attach_backend(&export_owner(&self.id), node);
        exports.add(Export {
            id: self.id,
            node,
            name,
            description: self.description,
            writable: self.writable,
            bitmaps,
        });
        Ok(QObject::Dict(QDict::new()))
    }
}

/// NBD's limit on export names and descriptions, in bytes.
const NBD_MAX_STRING_SIZE: usize = 4096;

/// `nbd_export_create()`'s bitmap checks: each bitmap is looked up on the
/// node and down its backing chain; an enabled one cannot go with a
/// read-only export of a writable node; one busy with another operation
/// cannot be exported. Returns (owner, name) of each.
fn export_bitmaps(
    ctx: &Context<'_>,
    node: NodeId,
    names: &[String],
    writable: bool,
) -> Result<Vec<(NodeId, String)>, QmpError> {
    let graph = ctx.machine.graph();
    let mut found = Vec::new();
    for name in names {
        let mut cur = Some(node);
        let mut hit = None;
        while let Some(id) = cur {
            if let Some(b) = graph
                .node(id)
                .and_then(|n| n.bitmaps.iter().find(|b| b.name.as_ref() == Some(name)))
            {
                hit = Some((id, b));
                break;
            }
            cur = graph.child(id, "backing");
        }
        let Some((owner, b)) = hit else {
            return Err(QmpError::generic(format!("Bitmap '{name}' is not found")));
        };
        if b.busy {
            return Err(QmpError::generic(format!(
                "Bitmap '{name}' is currently in use by another operation and cannot be used"
            )));
        }
        let node_writable = graph.node(node).is_some_and(|n| !n.read_only);
        if !writable && node_writable && b.recording {
            return Err(QmpError::generic(format!(
                "Enabled bitmap '{name}' incompatible with readonly export"
            )));
        }
        found.push((owner, name.clone()));
    }
    Ok(found)
}

/// A node by name for export commands (`bdrv_lookup_bs(NULL, node)`).
fn lookup_node(ctx: &Context<'_>, v: Version, name: &str) -> Result<NodeId, QmpError> {
    ctx.machine
        .graph()
        .find(name)
        .ok_or_else(|| desc::node_lookup(v, "", name))
}

/// What clients of the export will see.
fn publish(
    ctx: &Context<'_>,
    node: NodeId,
    name: &str,
    description: Option<String>,
    writable: bool,
) -> PublishedExport {
    let graph = ctx.machine.graph();
    let n = graph.node(node);
    let source = match n.map(|n| n.driver.as_str()) {
        Some("null-co" | "null-aio") => ExportSource::Zeroes,
        Some("raw" | "file") => n.map_or(ExportSource::Refuse, |n| {
            ExportSource::File(filename(graph, n))
        }),
        _ => ExportSource::Refuse,
    };
    PublishedExport {
        name: name.to_owned(),
        description,
        size: n.map_or(0, |n| n.size),
        read_only: !writable,
        source,
    }
}

/// `block-export-del`, or the legacy `nbd-server-remove` (by name).
#[derive(Debug)]
pub struct BlockExportDel {
    legacy: bool,
    id: String,
}

impl BlockExportDel {
    /// From the checked arguments.
    pub fn new(a: &QDict, legacy: bool) -> Self {
        let key = if legacy { "name" } else { "id" };
        BlockExportDel {
            legacy,
            id: a.get_str(key).unwrap_or_default().to_owned(),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        if self.legacy && ctx.machine.exports().server.is_none() {
            return Err(not_running());
        }
        if ctx.machine.exports().by_id(&self.id).is_none() {
            return Err(QmpError::generic(format!(
                "Export '{}' is not found",
                self.id
            )));
        }
        detach(ctx, &self.id);
        let Some(e) = ctx.machine.exports_mut().remove(&self.id) else {
            return Err(QmpError::generic(format!(
                "Export '{}' is not found",
                self.id
            )));
        };
        ctx.host.nbd_unpublish(&e.name);
        let event = ModelEvent::BlockExportDeleted { id: e.id };
        // QEMU 5.2 finished the deletion after answering (recorded).
        if ctx.profile.version() < Version::V7_2 {
            ctx.machine.emit_after_reply(event);
        } else {
            ctx.machine.emit_now(event);
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `query-block-exports`.
#[derive(Debug)]
pub struct QueryBlockExports;

impl QueryBlockExports {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let graph = ctx.machine.graph();
        let list = ctx
            .machine
            .exports()
            .newest_first()
            .map(|e| {
                let mut d = QDict::new();
                d.put("id", e.id.clone());
                d.put("type", "nbd");
                d.put(
                    "node-name",
                    export_node(graph, &e.id)
                        .and_then(|n| graph.node(n))
                        .map(|n| n.name.clone())
                        .unwrap_or_default(),
                );
                d.put("shutting-down", false);
                QObject::Dict(d)
            })
            .collect();
        Ok(shape::reply(
            ctx.profile.schema(),
            "query-block-exports",
            QObject::List(list),
        ))
    }
}
