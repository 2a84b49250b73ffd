//! Block permissions on every edge of the graph, as QEMU computes them.
//!
//! Each user of a node (a BlockBackend, a job, a parent node) takes some
//! permissions on it and shares some with the other users
//! (`BdrvChild.perm`, `.shared_perm`). A BlockBackend or a job states its
//! own; a parent node derives its child's from what its own users take
//! (its *cumulative* permissions, `bdrv_get_cumulative_perm`) through its
//! driver's `bdrv_child_perm` rule: `bdrv_default_perms_for_storage` for a
//! format's file, `..._for_cow` for a backing file, the filter default,
//! and the job filters' own rules. This module is that computation; the
//! permission-conflict checks and `x-debug-query-block-graph` both read it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::graph::{Graph, Node, NodeId, PERM_READ, PERM_RESIZE, PERM_WRITE};
use crate::profile::Version;

/// `BLK_PERM_WRITE_UNCHANGED`.
pub const PERM_WRITE_UNCHANGED: u8 = 4;
/// `BLK_PERM_GRAPH_MOD` (5.2; 6.1 removed it).
pub const PERM_GRAPH_MOD: u8 = 16;

const R: u8 = PERM_READ;
const W: u8 = PERM_WRITE;
const U: u8 = PERM_WRITE_UNCHANGED;
const Z: u8 = PERM_RESIZE;
const G: u8 = PERM_GRAPH_MOD;
/// `DEFAULT_PERM_PASSTHROUGH`: what a filter forwards.
const PASSTHROUGH: u8 = R | W | U | Z;

/// `BLK_PERM_ALL` of a version.
pub fn all(v: Version) -> u8 {
    if v < Version::V7_2 {
        R | W | U | Z | G
    } else {
        R | W | U | Z
    }
}

/// The `BlockPermission` names of `perms` as `x-debug-query-block-graph`
/// lists them: QEMU walks the enum in order and prepends each, so the
/// list comes out last first.
pub fn qapi_names(perms: u8) -> Vec<&'static str> {
    const NAMES: [(u8, &str); 5] = [
        (R, "consistent-read"),
        (W, "write"),
        (U, "write-unchanged"),
        (Z, "resize"),
        (G, "graph-mod"),
    ];
    NAMES
        .iter()
        .rev()
        .filter(|(bit, _)| perms & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Permissions taken and shared by one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// Taken.
    pub perm: u8,
    /// Shared with other users.
    pub shared: u8,
}

impl Perms {
    /// Takes nothing, shares everything (a user that only holds a node).
    pub fn inert(v: Version) -> Perms {
        Perms {
            perm: 0,
            shared: all(v),
        }
    }

    fn masked(self, v: Version) -> Perms {
        Perms {
            perm: self.perm & all(v),
            shared: self.shared & all(v),
        }
    }
}

/// A BlockBackend on a node: an export's (`blk_exp_add`) or one a job
/// opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Who holds it (`export:<id>`, `job:<id>`).
    pub owner: String,
    /// The node its root child is on.
    pub node: NodeId,
    /// Its root child's permissions.
    pub perms: Perms,
}

/// A block job and the nodes it holds (`block_job_add_bdrv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUse {
    /// The job id.
    pub id: String,
    /// Its type (`mirror`, `commit`, `stream`, `backup`).
    pub kind: String,
    /// (child name, node, permissions), in the order the job added them.
    pub edges: Vec<(String, NodeId, Perms)>,
}

/// Every user of the graph that is not a node: BlockBackends in creation
/// order (QEMU's `block_backends` list) and block jobs in QEMU's job
/// list order (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    /// BlockBackends, oldest first.
    pub backends: Vec<Backend>,
    /// Block jobs, newest first.
    pub jobs: Vec<JobUse>,
    /// `mirror_top` filters of active commit jobs (`is_commit`).
    pub commit_mirror_tops: Vec<NodeId>,
    /// Permissions a node's children were last computed with that no
    /// listed user takes any more (QEMU did not refresh them): they count
    /// in the node's cumulative permissions.
    pub hidden: Vec<(NodeId, Perms)>,
}

/// An export's BlockBackend (`blk_exp_add`: reads, writes if writable,
/// shares all but resize).
pub fn export_root(writable: bool, v: Version) -> Perms {
    Perms {
        perm: R | if writable { W } else { 0 },
        shared: all(v) & !Z,
    }
}

/// A disk's BlockBackend (`blkconf_apply_backend_options`): reads, writes
/// unless the disk is read-only (its node is: `blk_supports_write_perm`);
/// shares reads, unchanged writes and graph changes, resizes if the device
/// copes with them (virtio-blk and scsi-hd do), and writes with `share-rw`.
pub fn device_root(read_only: bool, resizable: bool, share_rw: bool, v: Version) -> Perms {
    Perms {
        perm: R | if read_only { 0 } else { W },
        shared: (R | U | G | if resizable { Z } else { 0 } | if share_rw { W } else { 0 }) & all(v),
    }
}

/// The permissions `bdrv_default_perms_for_storage` gives a format node's
/// file child (`metadata`: it holds the format's metadata, as qcow2's
/// `file`), from the parent's cumulative `parent` permissions.
pub fn for_storage(parent_read_only: bool, metadata: bool, parent: Perms, v: Version) -> Perms {
    let mut p = filter_default(parent, v);
    if metadata {
        if !parent_read_only {
            p.perm |= W | Z;
        }
        p.perm |= R;
        p.shared &= !(W | Z);
    }
    // The data path: no one resizes under it; unchanged writes may need
    // real ones, and writes may grow the file.
    p.shared &= !Z;
    if p.perm & U != 0 {
        p.perm |= W;
    }
    if p.perm & W != 0 {
        p.perm |= Z;
    }
    p
}

/// `bdrv_default_perms_for_cow`: a backing file is read if the parent
/// reads, and may change under it only if the parent's users let it.
pub fn for_cow(parent: Perms, v: Version) -> Perms {
    let shared = if parent.shared & W != 0 { W | Z } else { 0 };
    Perms {
        perm: parent.perm & R,
        shared: (shared | R | U | G) & all(v),
    }
}

/// `bdrv_filter_default_perms`: forwards what its users take and share.
pub fn filter_default(parent: Perms, v: Version) -> Perms {
    Perms {
        perm: parent.perm & PASSTHROUGH,
        shared: (parent.shared & PASSTHROUGH) | (all(v) & !PASSTHROUGH),
    }
}

/// An edge between two nodes with its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEdge {
    /// The parent node.
    pub parent: NodeId,
    /// The child's role (`file`, `backing`, …).
    pub role: String,
    /// The child node.
    pub child: NodeId,
    /// Its permissions.
    pub perms: Perms,
}

/// The permissions of every node-to-node edge, given the graph's other
/// users. Cumulative permissions are worked out on demand (up from a node
/// through its parents) and remembered.
#[derive(Debug)]
pub struct PermGraph<'a> {
    graph: &'a Graph,
    users: &'a Users,
    v: Version,
    /// Each node's parent nodes with the child's role, newest parent first.
    parents: BTreeMap<NodeId, Vec<(NodeId, String)>>,
    cumulative: RefCell<BTreeMap<NodeId, Perms>>,
}

impl<'a> PermGraph<'a> {
    /// Indexes the graph's edges.
    pub fn new(graph: &'a Graph, users: &'a Users, v: Version) -> Self {
        let mut parents: BTreeMap<NodeId, Vec<(NodeId, String)>> = BTreeMap::new();
        for (pid, p) in graph.newest_first() {
            for (role, c) in &p.children {
                parents.entry(*c).or_default().push((pid, role.clone()));
            }
        }
        PermGraph {
            graph,
            users,
            v,
            parents,
            cumulative: RefCell::new(BTreeMap::new()),
        }
    }

    /// What every user of `id` together takes and shares.
    pub fn cumulative(&self, id: NodeId) -> Perms {
        self.cumulative_of(id, self.graph.len() + 1)
    }

    /// The edge `parent` → `child` in `role`.
    pub fn edge(&self, parent: NodeId, role: &str, child: NodeId) -> Perms {
        self.child_perm(parent, role, child, self.cumulative(parent))
    }

    /// Every node's edges, `(parent, role, child)` in the parent's
    /// attach order, parents oldest first.
    pub fn node_edges(&self) -> Vec<NodeEdge> {
        let mut ids: Vec<(NodeId, &Node)> = self.graph.newest_first().collect();
        ids.reverse();
        ids.into_iter()
            .flat_map(|(pid, p)| {
                p.children.iter().map(move |(role, c)| NodeEdge {
                    parent: pid,
                    role: role.clone(),
                    child: *c,
                    perms: self.edge(pid, role, *c),
                })
            })
            .collect()
    }

    fn has_users(&self, id: NodeId) -> bool {
        self.users.backends.iter().any(|b| b.node == id)
            || self
                .users
                .jobs
                .iter()
                .any(|j| j.edges.iter().any(|(_, n, _)| *n == id))
            || self.parents.get(&id).is_some_and(|p| !p.is_empty())
    }

    fn cumulative_of(&self, id: NodeId, depth: usize) -> Perms {
        if let Some(p) = self.cumulative.borrow().get(&id) {
            return *p;
        }
        let mut acc = Perms {
            perm: 0,
            shared: all(self.v),
        };
        let mut add = |p: Perms| {
            acc.perm |= p.perm;
            acc.shared &= p.shared;
        };
        for b in self.users.backends.iter().filter(|b| b.node == id) {
            add(b.perms);
        }
        for j in &self.users.jobs {
            for (_, _, p) in j.edges.iter().filter(|(_, n, _)| *n == id) {
                add(*p);
            }
        }
        for (_, p) in self.users.hidden.iter().filter(|(n, _)| *n == id) {
            add(*p);
        }
        // A loop (which the graph refuses) ends at the depth limit.
        if depth > 0 {
            for (pid, role) in self.parents.get(&id).into_iter().flatten() {
                let cum = self.cumulative_of(*pid, depth - 1);
                add(self.child_perm(*pid, role, id, cum));
            }
        }
        let acc = acc.masked(self.v);
        self.cumulative.borrow_mut().insert(id, acc);
        acc
    }

    /// The parent driver's `bdrv_child_perm` for one child.
    fn child_perm(&self, parent: NodeId, role: &str, child: NodeId, cum: Perms) -> Perms {
        let Some(p) = self.graph.node(parent) else {
            return Perms::inert(self.v);
        };
        let ctx = ParentState {
            has_users: self.has_users(parent),
            commit_mirror_top: self.users.commit_mirror_tops.contains(&parent),
        };
        let child_force_share = self.graph.node(child).is_some_and(|c| c.force_share);
        child_perm(p, role, cum, ctx, child_force_share, self.v)
    }
}

/// What a parent's rule may need beyond its own options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParentState {
    /// The parent has users of its own (copy-before-write, 10.0).
    pub has_users: bool,
    /// The parent is an active commit's `mirror_top` (`is_commit`).
    pub commit_mirror_top: bool,
}

/// The permissions a new node (no users yet) takes on its child in `role`.
pub fn new_node_edge(p: &Node, role: &str, child_force_share: bool, v: Version) -> Perms {
    child_perm(
        p,
        role,
        Perms::inert(v),
        ParentState::default(),
        child_force_share,
        v,
    )
}

/// The parent driver's `bdrv_child_perm` for one child, from the
/// parent's cumulative permissions `cum`.
pub fn child_perm(
    p: &Node,
    role: &str,
    cum: Perms,
    state: ParentState,
    child_force_share: bool,
    v: Version,
) -> Perms {
    let mut out = match (p.driver.as_str(), role) {
        ("qcow2", "backing") => for_cow(cum, v),
        ("qcow2", "file") => for_storage(p.read_only, true, cum, v),
        ("qcow2", "data-file") => for_storage(p.read_only, false, cum, v),
        // raw with an offset or size holds data of its own in its file
        // (raw_open: a data child, not a filtered one).
        ("raw", "file") if p.perm_options.raw_data_child => for_storage(p.read_only, false, cum, v),
        ("blkdebug", _) => {
            // blkdebug_child_perm: take-child-perms, unshare-child-perms.
            let mut o = filter_default(cum, v);
            o.perm |= p.perm_options.take;
            o.shared &= !p.perm_options.unshare;
            o
        }
        ("copy-on-read", _) => {
            // cor_child_perm: forwards read, write and resize; takes
            // unchanged writes of its own (copying on read).
            let pass = R | W | Z;
            Perms {
                perm: (cum.perm & pass) | U,
                shared: (cum.shared & pass) | (all(v) & !pass),
            }
        }
        ("snapshot-access", _) => Perms::inert(v),
        ("commit_top", _) => Perms::inert(v),
        ("copy-before-write" | "backup-top", "target") => Perms {
            perm: W,
            shared: all(v) & !Z,
        },
        ("copy-before-write" | "backup-top", _) => {
            let mut o = filter_default(cum, v);
            // 10.0 reads the source whenever someone uses the filter;
            // earlier versions when someone writes through it.
            let reads = if v >= Version::V10_0 {
                state.has_users
            } else {
                cum.perm & W != 0
            };
            if reads {
                o.perm |= R;
            }
            if v < Version::V10_0 || state.has_users {
                o.shared &= !(W | Z);
            }
            o
        }
        ("mirror_top", _) if v < Version::V7_2 => Perms {
            perm: cum.perm & W,
            shared: all(v),
        },
        ("mirror_top", _) => {
            let mut o = filter_default(cum, v);
            if state.commit_mirror_top {
                o.perm &= !R;
                o.shared |= W;
            }
            o
        }
        // raw, throttle and other filters.
        _ => filter_default(cum, v),
    };
    if child_force_share {
        out.shared = all(v);
    }
    out.masked(v)
}

/// `BlockPermission` names (blkdebug's `take-child-perms`) as bits.
pub fn from_qapi_names<'n>(names: impl IntoIterator<Item = &'n str>) -> u8 {
    names
        .into_iter()
        .map(|n| match n {
            "consistent-read" => R,
            "write" => W,
            "write-unchanged" => U,
            "resize" => Z,
            "graph-mod" => G,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::{Cache, NewNode};
    use crate::qmp::qobject::QDict;

    fn node(driver: &str, read_only: bool, children: Vec<(&str, NodeId)>) -> NewNode {
        NewNode {
            name: None,
            node: Node {
                name: String::new(),
                driver: driver.into(),
                strong_options: QDict::new(),
                read_only,
                auto_read_only: false,
                force_share: false,
                unmap: false,
                size: 1 << 20,
                cache: Cache::default(),
                detect_zeroes: "off".into(),
                children: children
                    .into_iter()
                    .map(|(r, c)| (r.to_owned(), c))
                    .collect(),
                monitor_owned: true,
                file: None,
                qcow2: None,
                bitmaps: vec![],
                implicit: false,
                perm_options: Default::default(),
            },
        }
    }

    /// Short names: R W U Z G, in that order.
    fn letters(p: u8) -> String {
        [(R, 'R'), (W, 'W'), (U, 'U'), (Z, 'Z'), (G, 'G')]
            .iter()
            .filter(|(b, _)| p & b != 0)
            .map(|(_, c)| *c)
            .collect()
    }

    /// A writable qcow2 `top` over its file, with a read-only qcow2
    /// backing file over its own; `users` are put on `top`.
    fn chain_edges(v: Version, on_top: &[Perms]) -> Vec<(String, String, String)> {
        let mut g = Graph::new();
        let base_file = g.insert(node("file", true, vec![])).unwrap();
        let base = g
            .insert(node("qcow2", true, vec![("file", base_file)]))
            .unwrap();
        let top_file = g.insert(node("file", false, vec![])).unwrap();
        let top = g
            .insert(node(
                "qcow2",
                false,
                vec![("file", top_file), ("backing", base)],
            ))
            .unwrap();
        let users = Users {
            backends: on_top
                .iter()
                .map(|p| Backend {
                    owner: "export:e".into(),
                    node: top,
                    perms: *p,
                })
                .collect(),
            ..Users::default()
        };
        let pg = PermGraph::new(&g, &users, v);
        pg.node_edges()
            .into_iter()
            .map(|e| {
                let who = if e.parent == top { "top" } else { "base" };
                (
                    format!("{who}.{}", e.role),
                    letters(e.perms.perm),
                    letters(e.perms.shared),
                )
            })
            .collect()
    }

    #[test]
    fn format_nodes_take_their_file_and_share_their_backing() {
        let check = |v: Version, users: &[Perms], expect: &[(&str, &str, &str)]| {
            let got = chain_edges(v, users);
            let want: Vec<(String, String, String)> = expect
                .iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
                .collect();
            assert_eq!(got, want, "{v:?} with {users:?}");
        };
        // No users: a writable qcow2 still writes and resizes its file;
        // the read-only backing file only reads its own.
        check(
            Version::V10_0,
            &[],
            &[
                ("base.file", "R", "RU"),
                ("top.file", "RWZ", "RU"),
                ("top.backing", "", "RWUZ"),
            ],
        );
        // 5.2 shares graph-mod everywhere a default rule decides.
        check(
            Version::V5_2,
            &[],
            &[
                ("base.file", "R", "RUG"),
                ("top.file", "RWZ", "RUG"),
                ("top.backing", "", "RWUZG"),
            ],
        );
        // A read-only export of top: the backing file is read through,
        // and may still change (the export shares write).
        check(
            Version::V10_0,
            &[export_root(false, Version::V10_0)],
            &[
                ("base.file", "R", "RU"),
                ("top.file", "RWZ", "RU"),
                ("top.backing", "R", "RWUZ"),
            ],
        );
        // A disk writing top (no share-rw): nobody else may write under
        // it, down the backing chain too; with share-rw they may.
        check(
            Version::V10_0,
            &[device_root(false, true, false, Version::V10_0)],
            &[
                ("base.file", "R", "RU"),
                ("top.file", "RWZ", "RU"),
                ("top.backing", "R", "RU"),
            ],
        );
        check(
            Version::V10_0,
            &[device_root(false, true, true, Version::V10_0)],
            &[
                ("base.file", "R", "RU"),
                ("top.file", "RWZ", "RU"),
                ("top.backing", "R", "RWUZ"),
            ],
        );
        // A user that shares only unchanged writes (a mirror target):
        // top's file is not shared for reading, its backing not for writing.
        check(
            Version::V10_0,
            &[Perms { perm: W, shared: U }],
            &[
                ("base.file", "R", "RU"),
                ("top.file", "RWZ", "U"),
                ("top.backing", "", "RU"),
            ],
        );
    }

    #[test]
    fn a_stream_reads_through_its_copy_on_read_filter() {
        // 10.0's block-stream of `top` (qcow2 over its file, backing `base`):
        // the copy-on-read filter over top carries the job's BlockBackend
        // (read; shares read, write, unchanged writes) and its `main node`
        // edge; the job also holds top (`active node`) and base.
        let v = Version::V10_0;
        let mut g = Graph::new();
        let base_file = g.insert(node("file", false, vec![])).unwrap();
        let base = g
            .insert(node("qcow2", false, vec![("file", base_file)]))
            .unwrap();
        let top_file = g.insert(node("file", false, vec![])).unwrap();
        let top = g
            .insert(node(
                "qcow2",
                false,
                vec![("file", top_file), ("backing", base)],
            ))
            .unwrap();
        let cor = g
            .insert(node("copy-on-read", false, vec![("file", top)]))
            .unwrap();
        let users = Users {
            backends: vec![Backend {
                owner: "job:s".into(),
                node: cor,
                perms: Perms {
                    perm: R,
                    shared: R | U | W,
                },
            }],
            jobs: vec![JobUse {
                id: "s".into(),
                kind: "stream".into(),
                edges: vec![
                    ("main node".into(), cor, Perms::inert(v)),
                    (
                        "active node".into(),
                        top,
                        Perms {
                            perm: 0,
                            shared: R | U | W,
                        },
                    ),
                    (
                        "intermediate node".into(),
                        base,
                        Perms {
                            perm: 0,
                            shared: R | U,
                        },
                    ),
                ],
            }],
            ..Users::default()
        };
        let pg = PermGraph::new(&g, &users, v);
        let check = |parent: NodeId, role: &str, child: NodeId, perm: &str, shared: &str| {
            let p = pg.edge(parent, role, child);
            assert_eq!(
                (letters(p.perm), letters(p.shared)),
                (perm.to_owned(), shared.to_owned()),
                "{role} edge of node {parent}"
            );
        };
        // copy-on-read adds unchanged writes to what it forwards.
        check(cor, "file", top, "RU", "RWU");
        // qcow2 turns unchanged writes on its data into writes (and resize).
        check(top, "file", top_file, "RWUZ", "RU");
        check(top, "backing", base, "R", "RWUZ");
        // base is read through top's backing edge and may not be written
        // by others (the job's intermediate edge does not share it).
        check(base, "file", base_file, "RWZ", "RU");
        assert_eq!(
            pg.cumulative(base),
            Perms {
                perm: R,
                shared: R | U
            }
        );
    }

    #[test]
    fn names_come_out_last_first() {
        assert_eq!(
            qapi_names(R | W | Z),
            ["resize", "write", "consistent-read"]
        );
        assert_eq!(qapi_names(all(Version::V5_2))[0], "graph-mod");
        assert!(qapi_names(0).is_empty());
    }
}
