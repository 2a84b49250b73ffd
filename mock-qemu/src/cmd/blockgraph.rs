//! `x-debug-query-block-graph`: every BlockBackend, block job and node,
//! and every edge between them with its permissions, as `block.c`
//! `bdrv_get_xdbg_block_graph()` lists them.
//!
//! QEMU numbers the objects in the order it first meets them (a hash of
//! pointers, `xdbg_graph_node_num`, counting from 1): the BlockBackends in
//! creation order (devices', exports', jobs'), each with its root edge; the block jobs (newest first),
//! each with the nodes it holds (newest first); then the nodes in the
//! order they were named, each with its children (newest first). A child
//! met on an edge is numbered there. Nodes and edges are prepended as they
//! are met, so both lists come out in the reverse order.

use std::collections::BTreeMap;

use super::{Context, Return};
use crate::model::graph::NodeId;
use crate::model::perms::{qapi_names, PermGraph, Perms};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};
use crate::qmp::shape;

/// What `xdbg_graph_node_num` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Backend(usize),
    Job(usize),
    Node(NodeId),
}

#[derive(Debug, Default)]
struct Numbering {
    ids: BTreeMap<Key, u64>,
    nodes: Vec<QObject>,
    edges: Vec<QObject>,
}

impl Numbering {
    fn num(&mut self, k: Key) -> u64 {
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry(k).or_insert(next)
    }

    fn add_node(&mut self, k: Key, kind: &str, name: &str) {
        let mut d = QDict::new();
        d.put("id", self.num(k));
        d.put("type", kind);
        d.put("name", name);
        self.nodes.push(QObject::Dict(d));
    }

    fn add_edge(&mut self, parent: Key, child: NodeId, name: &str, p: Perms) {
        let mut d = QDict::new();
        d.put("parent", self.num(parent));
        d.put("child", self.num(Key::Node(child)));
        d.put("name", name);
        let list =
            |bits: u8| QObject::List(qapi_names(bits).into_iter().map(QObject::from).collect());
        d.put("perm", list(p.perm));
        d.put("shared-perm", list(p.shared));
        self.edges.push(QObject::Dict(d));
    }
}

/// `x-debug-query-block-graph`.
#[derive(Debug)]
pub struct XDebugQueryBlockGraph;

impl XDebugQueryBlockGraph {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let v = ctx.profile.version();
        let users = ctx.machine.block_users(v);
        let graph = ctx.machine.graph();
        let perms = PermGraph::new(graph, &users, v);
        let mut n = Numbering::default();
        for (i, b) in users.backends.iter().enumerate() {
            // blk_name(), else blk_get_attached_dev_id(): a device's
            // BlockBackend is named by the device's id or QOM path (a
            // virtio-blk-pci's belongs to its id-less virtio-backend
            // child); exports' and jobs' have no name and no device.
            let name = b
                .owner
                .strip_prefix(crate::model::devices::BACKEND_PREFIX)
                .unwrap_or("");
            n.add_node(Key::Backend(i), "block-backend", name);
            n.add_edge(Key::Backend(i), b.node, "root", b.perms);
        }
        for (i, j) in users.jobs.iter().enumerate() {
            n.add_node(Key::Job(i), "block-job", &j.id);
            for (name, node, p) in j.edges.iter().rev() {
                n.add_edge(Key::Job(i), *node, name, *p);
            }
        }
        let mut nodes: Vec<_> = graph.newest_first().collect();
        nodes.reverse();
        for (id, node) in nodes {
            n.add_node(Key::Node(id), "block-driver", &node.name);
            for (role, child) in node.children.iter().rev() {
                n.add_edge(Key::Node(id), *child, role, perms.edge(id, role, *child));
            }
        }
        n.nodes.reverse();
        n.edges.reverse();
        let mut d = QDict::new();
        d.put("nodes", QObject::List(n.nodes));
        d.put("edges", QObject::List(n.edges));
        Ok(shape::reply(
            ctx.profile.schema(),
            "x-debug-query-block-graph",
            QObject::Dict(d),
        ))
    }
}
