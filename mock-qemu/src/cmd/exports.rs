//! The NBD server and block exports: `nbd-server-start/-stop`,
//! `block-export-add/-del`, the deprecated `nbd-server-add/-remove`,
//! `query-block-exports`. Checks in QEMU's order (`blk_exp_add`,
//! `nbd_export_create`); the sockets are the host layer's.

use super::blockdev::filename;
use super::desc;
use super::{Context, Return};
use crate::host::{ExportSource, NbdListen, PublishedExport};
use crate::model::exports::Export;
use crate::model::graph::{name_is_wellformed, NodeId};
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
        let removed = ctx.machine.exports_mut().clear();
        for e in removed {
            ctx.machine.graph_mut().detach_backend(&export_owner(&e.id));
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
    format!("export:{id}")
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
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let v = ctx.profile.version();
        if self.legacy && ctx.machine.exports().server.is_none() {
            return Err(not_running());
        }
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
        if ctx.machine.exports().server.is_none() {
            return Err(not_running());
        }
        let name = self.name.clone().unwrap_or_else(|| self.node.clone());
        if ctx.machine.exports().by_name(&name).is_some() {
            return Err(QmpError::generic(format!(
                "NBD server already has export named '{name}'"
            )));
        }
        let published = publish(ctx, node, &name, self.description.clone(), self.writable);
        ctx.host.nbd_publish(published);
        let (graph, exports) = ctx.machine.graph_and_exports();
        graph.attach_backend(&export_owner(&self.id), node);
        exports.add(Export {
            id: self.id,
            node,
            name,
            description: self.description,
            writable: self.writable,
        });
        Ok(QObject::Dict(QDict::new()))
    }
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
        let Some(e) = ctx.machine.exports_mut().remove(&self.id) else {
            return Err(QmpError::generic(format!(
                "Export '{}' is not found",
                self.id
            )));
        };
        ctx.machine.graph_mut().detach_backend(&export_owner(&e.id));
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
                    graph
                        .node(e.node)
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
