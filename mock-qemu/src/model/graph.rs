//! The block node graph: nodes, their children, who owns them.
//!
//! Sans-IO: a node's image facts (size, format, backing) are given to the
//! graph by the caller; the graph only keeps the structure and QEMU's rules
//! about names, ownership and lifetime. Errors are typed ([`GraphError`]);
//! the command layer turns them into each profile's exact `desc` text.

use std::collections::{BTreeMap, BTreeSet};

use super::perms::{self, PermGraph, Perms, Users};
use super::Effect;
use crate::profile::Version;
use crate::qmp::qobject::QDict;

/// Identifies a node for the life of the process (never reused).
pub type NodeId = u64;

/// Longest node name QEMU accepts (its buffer is 32 bytes with the NUL).
pub const NODE_NAME_MAX: usize = 31;

/// `cache` options of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cache {
    /// `cache.direct`: O_DIRECT.
    pub direct: bool,
    /// `cache.no-flush`: ignore flushes.
    pub no_flush: bool,
}

/// What opening a `file` node found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// The filename as given.
    pub filename: String,
    /// File size in bytes.
    pub size: u64,
    /// Bytes allocated on disk.
    pub allocated: u64,
}

/// What a qcow2 header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Facts {
    /// 2 or 3.
    pub version: u32,
    /// Bytes of header before the extensions (72 for version 2).
    pub header_length: usize,
    /// Virtual size.
    pub size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// The backing file name as stored.
    pub backing_file: Option<String>,
    /// The backing file name resolved against the image's folder.
    pub full_backing: Option<String>,
    /// The backing format extension.
    pub backing_format: Option<String>,
    /// Incompatible bit 0.
    pub dirty: bool,
    /// Incompatible bit 1.
    pub corrupt: bool,
    /// Incompatible bit 4.
    pub extended_l2: bool,
    /// Compatible bit 0.
    pub lazy_refcounts: bool,
    /// Refcount width.
    pub refcount_bits: u32,
    /// Compression type zstd (else zlib).
    pub compression_zstd: bool,
    /// The bitmaps extension: the bitmap directory's offset and size.
    pub bitmap_directory: Option<(u64, u64)>,
    /// The persistent bitmaps the directory lists, in its order.
    pub bitmaps: Vec<StoredBitmap>,
}

/// A persistent dirty bitmap as a qcow2 bitmap directory entry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBitmap {
    /// Its name.
    pub name: String,
    /// Bytes per bit.
    pub granularity: u64,
    /// Flag `in_use`: a writer had it open (inconsistent if found so).
    pub in_use: bool,
    /// Flag `auto`: enabled (recording) when loaded.
    pub auto: bool,
}

/// A persistent bitmap the image is to store when its node closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistBitmap {
    /// Its name.
    pub name: String,
    /// Bytes per bit.
    pub granularity: u64,
    /// Recording (stored with the `auto` flag).
    pub enabled: bool,
}

/// A dirty bitmap of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// Its name (`None`: an anonymous bitmap a driver or job made).
    pub name: Option<String>,
    /// Bytes per bit.
    pub granularity: u64,
    /// Stored in the image (qcow2) when the node closes.
    pub persistent: bool,
    /// Records writes (enabled).
    pub recording: bool,
    /// Dirty bytes (whole granules).
    pub count: u64,
    /// Held by an operation (a backup job, an export): it cannot be changed.
    pub busy: bool,
    /// Loaded from an image opened read-only: it cannot be changed.
    pub readonly: bool,
    /// Loaded from an image that had it marked in use (its writer did not
    /// close it): its bits are lost, it cannot be used, only removed.
    pub inconsistent: bool,
    /// Busy because an export reads it, not because a job froze it (QEMU
    /// 5.2's status tells `locked` from `frozen`).
    pub locked: bool,
    /// Counts its owner job's remaining work (block-copy's copy bitmap):
    /// cleared when the job's work is done.
    pub tracks_progress: bool,
    /// The node whose driver made this anonymous bitmap (it goes with it).
    pub owner: Option<NodeId>,
}

/// One block driver state (`BlockDriverState`).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node name (given, or generated `#blockNNN`).
    pub name: String,
    /// The driver (`null-co`, `qcow2`, `file`, …).
    pub driver: String,
    /// The driver options that identify the node when it has no file name
    /// (QEMU's "strong" runtime options, as given), for `json:{…}` names.
    pub strong_options: QDict,
    /// Opened read-only.
    pub read_only: bool,
    /// `auto-read-only`: may fall back to read-only.
    pub auto_read_only: bool,
    /// `force-share`: shares every permission with other users.
    pub force_share: bool,
    /// `discard=unmap`.
    pub unmap: bool,
    /// Virtual size in bytes.
    pub size: u64,
    /// Cache mode.
    pub cache: Cache,
    /// `detect-zeroes` (`off`, `on`, `unmap`).
    pub detect_zeroes: String,
    /// Children by role (`file`, `backing`, …), in the order attached.
    pub children: Vec<(String, NodeId)>,
    /// Created by `blockdev-add` at the top level: only such nodes may be
    /// deleted with `blockdev-del`.
    pub monitor_owned: bool,
    /// For a `file` node: the file.
    pub file: Option<FileFacts>,
    /// For a `qcow2` node: its header.
    pub qcow2: Option<Qcow2Facts>,
    /// Dirty bitmaps, oldest first.
    pub bitmaps: Vec<Bitmap>,
    /// A job's filter inserted without `filter-node-name` (`bs->implicit`):
    /// it takes its child's file name.
    pub implicit: bool,
    /// Driver options that change what it takes on its children.
    pub perm_options: PermOptions,
}

/// Driver options that change a node's permissions on its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermOptions {
    /// blkdebug `take-child-perms`.
    pub take: u8,
    /// blkdebug `unshare-child-perms`.
    pub unshare: u8,
    /// raw with `offset` or `size`: its file is a data child.
    pub raw_data_child: bool,
}

/// Block permissions as QEMU's file locks name them, in QEMU's bit order
/// (`BLK_PERM_CONSISTENT_READ` … `BLK_PERM_RESIZE`).
pub const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
/// `BLK_PERM_CONSISTENT_READ`.
pub const PERM_READ: u8 = 1;
/// `BLK_PERM_WRITE`.
pub const PERM_WRITE: u8 = 2;
/// `BLK_PERM_RESIZE`.
pub const PERM_RESIZE: u8 = 8;

/// What a `file` node locks: permissions it uses, and permissions it does
/// not let other users of the same file have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Locks {
    /// Permissions held.
    pub perm: u8,
    /// Permissions not shared.
    pub unshared: u8,
}

impl Locks {
    /// QEMU's check of a new user's locks against an existing one
    /// (`raw_check_lock_bytes`): its permissions first, then what it
    /// unshares, lowest bit first.
    pub fn conflict(self, other: Locks) -> Option<String> {
        for (bit, name) in PERM_NAMES.iter().enumerate() {
            if self.perm & other.unshared & (1 << bit) != 0 {
                return Some(format!("Failed to get \"{name}\" lock"));
            }
        }
        for (bit, name) in PERM_NAMES.iter().enumerate() {
            if self.unshared & other.perm & (1 << bit) != 0 {
                return Some(format!("Failed to get shared \"{name}\" lock"));
            }
        }
        None
    }
}

/// Every permission.
pub const PERM_ALL: u8 = 0xf;

/// Who uses a node through an edge (its parent side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermUser {
    /// An anonymous BlockBackend (an export's).
    Backend,
    /// A device's BlockBackend, by what QEMU calls it (its id, or a path).
    Device(String),
    /// A parent node, by name.
    Node(String),
    /// A block job, as QEMU describes it (`stream job 's'`).
    Job(String),
}

/// One user's permissions on a node: what it takes and what it lets
/// others take (`BdrvChild.perm`, `.shared_perm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePerm {
    /// The user.
    pub user: PermUser,
    /// The child role (`root`, `file`, …).
    pub role: String,
    /// Permissions taken.
    pub perm: u8,
    /// Permissions shared with other users.
    pub shared: u8,
}

/// Two users of a node that cannot both have their permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermConflict {
    /// The node's name.
    pub node: String,
    /// The user that already holds the node.
    pub existing: EdgePerm,
    /// `true`: the new user needs `perms`, which `existing` does not share;
    /// `false`: `existing` uses `perms`, which the new user does not share.
    pub new_needs: bool,
    /// The permissions in conflict.
    pub perms: u8,
}

/// Permission names in QEMU's order, joined as `bdrv_perm_names()` does.
pub fn perm_names(perms: u8) -> String {
    PERM_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| perms & (1 << bit) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the graph refuses. The command layer words these per profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// The name is not an identifier (letter first; letters, digits, `-._`).
    #[error("invalid node name '{0}'")]
    InvalidName(String),
    /// Another node has this name.
    #[error("duplicate node name '{0}'")]
    Duplicate(String),
    /// Longer than [`NODE_NAME_MAX`].
    #[error("node name too long")]
    TooLong,
    /// No node has this name.
    #[error("no node named '{0}'")]
    NotFound(String),
    /// A BlockBackend (an export, a device) uses the node.
    #[error("node '{0}' has a block backend")]
    HasBackend(String),
    /// The node was not created by `blockdev-add` at the top level.
    #[error("node '{0}' is not owned by the monitor")]
    NotMonitorOwned(String),
    /// An op blocker: the node is another node's backing file.
    #[error("node '{node}' is used as backing hd of '{parent}'")]
    BusyBacking {
        /// The node.
        node: String,
        /// The parent node's name.
        parent: String,
    },
    /// Other references remain (a parent holds it in another role).
    #[error("node '{0}' is in use")]
    InUse(String),
}

/// A node as `blockdev-add` describes it, before it is in the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    /// The node name (`None`: generate one).
    pub name: Option<String>,
    /// The node itself (its `name` is filled in by [`Graph::insert`]).
    pub node: Node,
}

/// The graph: every node the process holds.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    nodes: BTreeMap<NodeId, Node>,
    /// BlockBackends attached to nodes (exports, devices), by owner name.
    backends: Vec<(String, NodeId)>,
    /// The permissions of device BlockBackends, by owner (the device model
    /// sets them; an export's or a job's follow from what it is).
    device_perms: BTreeMap<String, Perms>,
    next_id: NodeId,
    /// Counter for generated names (`#block%03d` … QEMU counts every
    /// generated name, never reusing one).
    next_auto: u64,
    /// Nodes running jobs hold a reference to (set by the machine): they
    /// are not freed while held.
    job_held: BTreeSet<NodeId>,
    /// When each BlockBackend was made, by owner: QEMU lists BlockBackends
    /// in creation order, devices', exports' and jobs' interleaved.
    backend_born: BTreeMap<String, u64>,
    /// Counter for [`Graph::claim_backend_seq`].
    next_backend_seq: u64,
    /// Changes to files the host is to make, in order (closing a qcow2
    /// node stores its persistent bitmaps; jobs rewrite headers).
    effects: Vec<Effect>,
}

/// QEMU's `id_wellformed()`.
pub fn name_is_wellformed(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks a user-given name as `bdrv_assign_node_name()` does, in its
    /// order: syntax, then duplicates, then length.
    pub fn check_new_name(&self, name: &str) -> Result<(), GraphError> {
        if !name_is_wellformed(name) {
            return Err(GraphError::InvalidName(name.to_owned()));
        }
        if self.find(name).is_some() {
            return Err(GraphError::Duplicate(name.to_owned()));
        }
        if name.len() > NODE_NAME_MAX {
            return Err(GraphError::TooLong);
        }
        Ok(())
    }

    /// Adds a node (its children must already be in the graph). A node
    /// without a name gets the next generated one.
    pub fn insert(&mut self, new: NewNode) -> Result<NodeId, GraphError> {
        let name = match new.name {
            Some(n) => {
                self.check_new_name(&n)?;
                n
            }
            None => self.generate_name(),
        };
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(id, Node { name, ..new.node });
        Ok(id)
    }

    /// The node with this name.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.name == name)
            .map(|(id, _)| *id)
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Every node, most recently created first (QEMU's `all_bdrv_states`
    /// list, which `query-named-block-nodes` walks, inserts at the head).
    pub fn newest_first(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().rev().map(|(id, n)| (*id, n))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether a node (not a BlockBackend) holds `id` as a child
    /// (`!bdrv_is_root_node()`).
    pub fn has_node_parent(&self, id: NodeId) -> bool {
        self.parent_of(id).is_some()
    }

    /// The first parent (in creation order) holding `id` as a child.
    fn parent_of(&self, id: NodeId) -> Option<&Node> {
        self.nodes
            .values()
            .find(|p| p.children.iter().any(|(_, c)| *c == id))
    }

    /// `blockdev-del`, with `qmp_blockdev_del()`'s checks in its order: the
    /// backing-file op blocker, monitor ownership, other references. Then
    /// every child left without a parent goes too (QEMU frees what nothing
    /// holds).
    pub fn delete(&mut self, name: &str) -> Result<(), GraphError> {
        let id = self
            .find(name)
            .ok_or_else(|| GraphError::NotFound(name.to_owned()))?;
        if self.backends.iter().any(|(_, n)| *n == id) {
            return Err(GraphError::HasBackend(name.to_owned()));
        }
        if let Some(p) = self.backing_parent(id) {
            return Err(GraphError::BusyBacking {
                node: name.to_owned(),
                parent: p.name.clone(),
            });
        }
        if !self.nodes[&id].monitor_owned {
            return Err(GraphError::NotMonitorOwned(name.to_owned()));
        }
        if self.parent_of(id).is_some() || self.job_held.contains(&id) {
            return Err(GraphError::InUse(name.to_owned()));
        }
        self.remove_unreferenced(id);
        Ok(())
    }

    /// Whether `id` is `from` or below it.
    pub fn reaches(&self, from: NodeId, id: NodeId) -> bool {
        from == id
            || self
                .nodes
                .get(&from)
                .is_some_and(|n| n.children.iter().any(|(_, c)| self.reaches(*c, id)))
    }

    /// `bdrv_replace_node(from, to)`: every parent of `from` (node edges
    /// and BlockBackends) now points to `to`, except parents below `to`
    /// (that would make a loop, e.g. `to` itself or a backup target whose
    /// backing is the source).
    pub fn replace_node(&mut self, from: NodeId, to: NodeId) {
        let parents: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.children.iter().any(|(_, c)| *c == from))
            .map(|(id, _)| *id)
            .filter(|p| !self.reaches(to, *p))
            .collect();
        for p in parents {
            if let Some(n) = self.nodes.get_mut(&p) {
                for (_, c) in &mut n.children {
                    if *c == from {
                        *c = to;
                    }
                }
            }
        }
        self.move_backends(from, to);
    }

    /// Removes a job's filter node and the bitmaps it owns: what pointed
    /// to it points to its filtered child again (`bdrv_drop_filter`), and
    /// children nothing else holds go.
    pub fn remove_filter(&mut self, id: NodeId, filtered: Option<NodeId>) {
        if let Some(f) = filtered {
            self.replace_node(id, f);
        }
        self.store_on_close(id);
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        for n in self.nodes.values_mut() {
            n.bitmaps.retain(|b| b.owner != Some(id));
        }
        for (_, c) in node.children {
            self.free_unused(c);
        }
    }

    /// Takes a job's filter node out of the graph but keeps it (a
    /// finished job not yet dismissed still holds it): what pointed to it
    /// points to `filtered` again, its children other than `keep` go (if
    /// nothing else holds them), and so do the bitmaps it owns. Remove it
    /// later with [`Graph::remove_filter`].
    pub fn detach_filter(&mut self, id: NodeId, filtered: Option<NodeId>, keep: &[&str]) {
        if let Some(f) = filtered {
            self.replace_node(id, f);
        }
        for n in self.nodes.values_mut() {
            n.bitmaps.retain(|b| b.owner != Some(id));
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut node.children)
            .into_iter()
            .partition(|(r, _)| keep.contains(&r.as_str()));
        node.children = kept;
        for (_, c) in dropped {
            self.free_unused(c);
        }
    }

    /// Empties the progress-tracking bitmaps `owner` made.
    pub fn clear_progress_bitmaps(&mut self, owner: NodeId) {
        for n in self.nodes.values_mut() {
            for b in n
                .bitmaps
                .iter_mut()
                .filter(|b| b.owner == Some(owner) && b.tracks_progress)
            {
                b.count = 0;
            }
        }
    }

    /// Every BlockBackend on `from` moves to `to` (a mirror's pivot).
    pub fn move_backends(&mut self, from: NodeId, to: NodeId) {
        for (_, n) in &mut self.backends {
            if *n == from {
                *n = to;
            }
        }
    }

    /// Whether some user reads `id` consistently (`BLK_PERM_CONSISTENT_READ`
    /// in its cumulative permissions): a BlockBackend, a format driver's
    /// metadata child, or a child through which a reader of its parent
    /// reads (filters, raw, backing files).
    pub fn has_reader(&self, id: NodeId) -> bool {
        if self.backends.iter().any(|(_, n)| *n == id) {
            return true;
        }
        self.nodes.iter().any(|(pid, p)| {
            p.children.iter().any(|(role, c)| {
                *c == id
                    && match role.as_str() {
                        "file" if p.driver == "qcow2" || p.driver == "snapshot-access" => true,
                        "file" | "backing" | "image" => self.has_reader(*pid),
                        _ => false,
                    }
            })
        })
    }

    /// The newest parent holding `id` as its backing file (QEMU lists op
    /// blockers newest first).
    pub fn backing_parent(&self, id: NodeId) -> Option<&Node> {
        self.nodes
            .values()
            .rev()
            .find(|p| p.children.iter().any(|(r, c)| *c == id && r == "backing"))
    }

    /// Whether a parent node or a BlockBackend holds `id`.
    pub fn is_held(&self, id: NodeId) -> bool {
        self.parent_of(id).is_some()
            || self.backends.iter().any(|(_, n)| *n == id)
            || self.job_held.contains(&id)
    }

    /// The nodes running jobs hold (`block_job_add_bdrv()` takes a
    /// reference): [`Graph::free_unused`] and deleting a parent keep them.
    pub fn set_job_held(&mut self, held: BTreeSet<NodeId>) {
        self.job_held = held;
    }

    /// Attaches a BlockBackend (an export or a device named `owner`).
    pub fn attach_backend(&mut self, owner: &str, id: NodeId) {
        self.backends.push((owner.to_owned(), id));
        let seq = self.claim_backend_seq();
        self.backend_born.insert(owner.to_owned(), seq);
    }

    /// A place in the creation order of BlockBackends (a job's own are
    /// made when it is created).
    pub fn claim_backend_seq(&mut self) -> u64 {
        let seq = self.next_backend_seq;
        self.next_backend_seq += 1;
        seq
    }

    /// When `owner`'s BlockBackend was made (see [`Graph::claim_backend_seq`]).
    pub fn backend_seq(&self, owner: &str) -> u64 {
        self.backend_born.get(owner).copied().unwrap_or(0)
    }

    /// Every BlockBackend: (owner, node).
    pub fn backends(&self) -> impl Iterator<Item = (&str, NodeId)> {
        self.backends.iter().map(|(o, n)| (o.as_str(), *n))
    }

    /// Attaches a device's BlockBackend (`owner` starts with
    /// [`crate::model::devices::BACKEND_PREFIX`]) with the permissions the
    /// device model set on it (`blkconf_apply_backend_options`).
    pub fn attach_device_backend(&mut self, owner: &str, id: NodeId, perms: Perms) {
        self.attach_backend(owner, id);
        self.device_perms.insert(owner.to_owned(), perms);
    }

    /// The permissions a device's BlockBackend takes and shares (`None`:
    /// `owner` is not a device's).
    pub fn device_perms(&self, owner: &str) -> Option<Perms> {
        self.device_perms.get(owner).copied()
    }

    /// Detaches `owner`'s BlockBackend.
    pub fn detach_backend(&mut self, owner: &str) {
        self.backends.retain(|(o, _)| o != owner);
        self.backend_born.remove(owner);
        self.device_perms.remove(owner);
    }

    /// Frees a node no parent holds and that the monitor does not own,
    /// with its children that are left unused (QEMU's refcount drop).
    pub fn free_unused(&mut self, id: NodeId) {
        let owned = self.nodes.get(&id).is_some_and(|n| n.monitor_owned);
        if !owned && !self.is_held(id) {
            self.remove_unreferenced(id);
        }
    }

    /// Removes nodes a failed `blockdev-add` created (generated names stay
    /// consumed, as in QEMU).
    pub fn discard(&mut self, ids: &[NodeId]) {
        for id in ids {
            self.store_on_close(*id);
        }
        for id in ids {
            self.nodes.remove(id);
        }
    }

    /// Replaces (or removes) a node's backing child.
    pub fn set_backing(&mut self, id: NodeId, backing: Option<NodeId>) {
        if let Some(n) = self.nodes.get_mut(&id) {
            match (n.children.iter_mut().find(|(r, _)| r == "backing"), backing) {
                // Replaced in place: the child keeps its position.
                (Some(slot), Some(b)) => slot.1 = b,
                (_, None) => n.children.retain(|(r, _)| r != "backing"),
                (None, Some(b)) => n.children.push(("backing".into(), b)),
            }
        }
    }

    /// Records a rewritten qcow2 header backing name and format.
    pub fn set_header_backing(&mut self, id: NodeId, backing: Option<(String, String)>) {
        if let Some(q) = self.nodes.get_mut(&id).and_then(|n| n.qcow2.as_mut()) {
            q.backing_file = backing.as_ref().map(|(n, _)| n.clone());
            q.full_backing = q.backing_file.clone();
            q.backing_format = backing.map(|(_, f)| f);
        }
    }

    /// Attaches `child` to `parent` in `role`.
    pub fn attach(&mut self, parent: NodeId, role: &str, child: NodeId) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.push((role.to_owned(), child));
        }
    }

    /// The users of `id` the permission-conflict checks consider, with the
    /// permissions [`PermGraph`] computes for them (the same
    /// `x-debug-query-block-graph` shows): BlockBackends (devices',
    /// exports' and jobs', newest first), then what block jobs hold (newest job first),
    /// then parent nodes (newest first). Users that take nothing and share
    /// everything are left out: they never conflict.
    pub fn users(&self, id: NodeId, others: &Users, v: Version) -> Vec<EdgePerm> {
        let pg = PermGraph::new(self, others, v);
        let inert = Perms::inert(v);
        let mut out: Vec<EdgePerm> = others
            .backends
            .iter()
            .rev()
            .filter(|b| b.node == id && b.perms != inert)
            .map(|b| EdgePerm {
                user: match b.owner.strip_prefix(crate::model::devices::BACKEND_PREFIX) {
                    Some(qdev) => PermUser::Device(qdev.to_owned()),
                    None => PermUser::Backend,
                },
                role: "root".into(),
                perm: b.perms.perm,
                shared: b.perms.shared,
            })
            .collect();
        for j in &others.jobs {
            for (role, _, p) in j
                .edges
                .iter()
                .rev()
                .filter(|(_, n, p)| *n == id && *p != inert)
            {
                out.push(EdgePerm {
                    user: PermUser::Job(format!("{} job '{}'", j.kind, j.id)),
                    role: role.clone(),
                    perm: p.perm,
                    shared: p.shared,
                });
            }
        }
        for (pid, p) in self.nodes.iter().rev() {
            for (role, _) in p.children.iter().filter(|(_, c)| *c == id) {
                let e = pg.edge(*pid, role, id);
                if e != inert {
                    out.push(EdgePerm {
                        user: PermUser::Node(p.name.clone()),
                        role: role.clone(),
                        perm: e.perm,
                        shared: e.shared,
                    });
                }
            }
        }
        out
    }

    /// A new qcow2 node's permissions on its file child (no users yet).
    pub fn qcow2_file_edge(parent: &Node, child_force_share: bool, v: Version) -> EdgePerm {
        let p = perms::for_storage(parent.read_only, true, Perms::inert(v), v);
        EdgePerm {
            user: PermUser::Node(parent.name.clone()),
            role: "file".into(),
            perm: p.perm,
            shared: if child_force_share {
                perms::all(v)
            } else {
                p.shared
            },
        }
    }

    /// Whether a new user `new` of `id` conflicts with its users: QEMU 6.0+
    /// (`bdrv_parent_perms_conflict`) first finds a user whose permissions
    /// the new one does not share, then one that does not share what the
    /// new one needs; `legacy_order` (5.2's `bdrv_check_update_perm`) asks
    /// both questions of each user in turn, the second first.
    pub fn perm_conflict(
        &self,
        id: NodeId,
        new: &EdgePerm,
        users: &[EdgePerm],
        legacy_order: bool,
    ) -> Option<PermConflict> {
        let node = self.nodes.get(&id)?.name.clone();
        let uses = |e: &EdgePerm| e.perm & !new.shared;
        let needs = |e: &EdgePerm| new.perm & !e.shared;
        let conflict = |e: &EdgePerm, new_needs: bool, perms: u8| PermConflict {
            node: node.clone(),
            existing: e.clone(),
            new_needs,
            perms,
        };
        if legacy_order {
            for e in users {
                if needs(e) != 0 {
                    return Some(conflict(e, true, needs(e)));
                }
                if uses(e) != 0 {
                    return Some(conflict(e, false, uses(e)));
                }
            }
            return None;
        }
        if let Some(e) = users.iter().find(|e| uses(e) != 0) {
            return Some(conflict(e, false, uses(e)));
        }
        users
            .iter()
            .find(|e| needs(e) != 0)
            .map(|e| conflict(e, true, needs(e)))
    }

    /// The locks a file node holds, from its parents: a format driver's
    /// metadata child (`qcow2`'s `file`) is read consistently, written and
    /// resized when the format node is writable, and never shared for
    /// writing or resizing (`bdrv_default_perms_for_storage`), unless the
    /// file node is force-shared. `raw` passes its own parents' needs
    /// through, and nodes without users need nothing.
    pub fn locks(&self, file: NodeId) -> Locks {
        let mut l = Locks::default();
        let force_share = self.nodes.get(&file).is_some_and(|n| n.force_share);
        for p in self.nodes.values() {
            if p.driver == "qcow2" && p.children.iter().any(|(r, c)| r == "file" && *c == file) {
                let e = Self::qcow2_file_edge(p, force_share, Version::V10_0);
                l.perm |= e.perm & PERM_ALL;
                l.unshared |= !e.shared & PERM_ALL;
            }
        }
        l
    }

    /// Would `file` (a `file` node) holding `want` conflict with another
    /// file node of the same file? Returns QEMU's message.
    pub fn lock_conflict(&self, file: NodeId, want: Locks) -> Option<String> {
        let name = self.nodes.get(&file)?.file.as_ref()?.filename.clone();
        self.nodes
            .iter()
            .filter(|(id, n)| **id != file && n.file.as_ref().is_some_and(|f| f.filename == name))
            .find_map(|(id, _)| want.conflict(self.locks(*id)))
    }

    /// Marks a node and its `file` child read-only (a node that became a
    /// backing file is reopened read-only).
    pub fn set_read_only(&mut self, id: NodeId) {
        // qcow2_reopen_bitmaps_ro(): the persistent bitmaps are stored and
        // become read-only (kept, not released).
        if self.store_bitmaps(id) {
            if let Some(n) = self.nodes.get_mut(&id) {
                for b in n.bitmaps.iter_mut().filter(|b| b.persistent) {
                    b.readonly = true;
                }
            }
        }
        let file = self.child(id, "file");
        for n in [Some(id), file].into_iter().flatten() {
            if let Some(node) = self.nodes.get_mut(&n) {
                node.read_only = true;
            }
        }
    }

    /// Marks a node and its `file` child writable again (a commit job
    /// reopens a read-only base read-write).
    pub fn set_writable(&mut self, id: NodeId) {
        let file = self.child(id, "file");
        for n in [Some(id), file].into_iter().flatten() {
            if let Some(node) = self.nodes.get_mut(&n) {
                node.read_only = false;
            }
        }
    }

    /// Puts back a copy taken earlier (a failed transaction), keeping the
    /// generated-name counter where it is, as QEMU does.
    pub fn restore(&mut self, saved: Graph) {
        let (next_auto, next_backend_seq) = (self.next_auto, self.next_backend_seq);
        let effects = std::mem::take(&mut self.effects);
        *self = saved;
        self.next_auto = next_auto;
        self.next_backend_seq = next_backend_seq;
        // What was written stays written.
        self.effects = effects;
    }

    /// Queues a change to a file.
    pub fn push_effect(&mut self, e: Effect) {
        self.effects.push(e);
    }

    /// Takes the queued changes to files, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The file a format node's metadata lives in: down its `file`
    /// children to a protocol node's file.
    pub fn image_filename(&self, id: NodeId) -> Option<String> {
        let mut cur = self.nodes.get(&id)?;
        for _ in 0..64 {
            if let Some(f) = &cur.file {
                return Some(f.filename.clone());
            }
            cur = self.nodes.get(&self.child_of(cur, "file")?)?;
        }
        None
    }

    fn child_of(&self, n: &Node, role: &str) -> Option<NodeId> {
        n.children.iter().find(|(r, _)| r == role).map(|(_, c)| *c)
    }

    /// `qcow2_inactivate()` of a closing node: a writable qcow2 node's
    /// persistent bitmaps that are neither read-only nor inconsistent are
    /// stored in its image (newest first, QEMU's list order), and released.
    fn store_on_close(&mut self, id: NodeId) {
        if self.store_bitmaps(id) {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.bitmaps.retain(|b| !b.persistent);
            }
        }
    }

    /// `qcow2_store_persistent_dirty_bitmaps()`: queues the store of a
    /// writable qcow2 node's persistent, writable, consistent bitmaps;
    /// whether there were any.
    fn store_bitmaps(&mut self, id: NodeId) -> bool {
        let Some(n) = self.nodes.get(&id) else {
            return false;
        };
        if n.driver != "qcow2" || n.read_only {
            return false;
        }
        let bitmaps: Vec<PersistBitmap> = n
            .bitmaps
            .iter()
            .rev()
            .filter(|b| b.persistent && !b.readonly && !b.inconsistent)
            .filter_map(|b| {
                Some(PersistBitmap {
                    name: b.name.clone()?,
                    granularity: b.granularity,
                    enabled: b.recording,
                })
            })
            .collect();
        if bitmaps.is_empty() {
            return false;
        }
        // What the image's directory then lists: the stored entries
        // rewritten (no longer in use), the new ones appended.
        if let Some(q) = self.nodes.get_mut(&id).and_then(|n| n.qcow2.as_mut()) {
            for b in &bitmaps {
                let entry = StoredBitmap {
                    name: b.name.clone(),
                    granularity: b.granularity,
                    in_use: false,
                    auto: b.enabled,
                };
                match q.bitmaps.iter_mut().find(|s| s.name == b.name) {
                    Some(s) => *s = entry,
                    None => q.bitmaps.push(entry),
                }
            }
        }
        if let Some(filename) = self.image_filename(id) {
            self.effects
                .push(Effect::StoreBitmaps { filename, bitmaps });
        }
        true
    }

    /// `bdrv_close_all()` as the process exits: every node stores its
    /// persistent bitmaps.
    pub fn close_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.store_on_close(id);
        }
    }

    /// A file changed on disk: the nodes opened on it see its new size.
    pub fn refresh_file(&mut self, facts: &FileFacts) {
        for n in self.nodes.values_mut() {
            if let Some(f) = n.file.as_mut().filter(|f| f.filename == facts.filename) {
                f.size = facts.size;
                f.allocated = facts.allocated;
                n.size = facts.size.div_ceil(512) * 512;
            }
        }
    }

    /// A node, for changes that keep the graph's shape (bitmaps, flags).
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(&id)
    }

    /// The child in `role`, if any.
    pub fn child(&self, id: NodeId, role: &str) -> Option<NodeId> {
        self.nodes
            .get(&id)?
            .children
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, c)| *c)
    }

    /// The next generated name QEMU would give (`#block` + counter + two
    /// digits QEMU draws at random; here from a deterministic sequence).
    fn generate_name(&mut self) -> String {
        let n = self.next_auto;
        self.next_auto += 1;
        // A fixed LCG over the counter: deterministic, and like QEMU's two
        // random digits it does not follow the counter.
        let r = (n
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
            >> 33)
            % 100;
        format!("#block{n}{r:02}")
    }

    fn remove_unreferenced(&mut self, id: NodeId) {
        self.store_on_close(id);
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        for n in self.nodes.values_mut() {
            n.bitmaps.retain(|b| b.owner != Some(id));
        }
        for (_, child) in node.children {
            let held = self.is_held(child);
            let owned = self.nodes.get(&child).is_some_and(|c| c.monitor_owned);
            if !held && !owned {
                self.remove_unreferenced(child);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(driver: &str) -> Node {
        Node {
            name: String::new(),
            driver: driver.into(),
            strong_options: QDict::new(),
            read_only: false,
            auto_read_only: false,
            force_share: false,
            unmap: false,
            size: 1 << 30,
            cache: Cache::default(),
            detect_zeroes: "off".into(),
            children: vec![],
            monitor_owned: true,
            file: None,
            qcow2: None,
            bitmaps: vec![],
            implicit: false,
            perm_options: PermOptions::default(),
        }
    }

    fn add(
        g: &mut Graph,
        name: &str,
        children: Vec<(String, NodeId)>,
        owned: bool,
    ) -> Result<NodeId, GraphError> {
        g.insert(NewNode {
            name: Some(name.into()),
            node: Node {
                children,
                monitor_owned: owned,
                ..plain("null-co")
            },
        })
    }

    #[test]
    fn names_are_checked_in_qemus_order() {
        let mut g = Graph::new();
        add(&mut g, "a", vec![], true).unwrap();
        assert_eq!(
            g.check_new_name("1a"),
            Err(GraphError::InvalidName("1a".into()))
        );
        assert_eq!(
            g.check_new_name("a"),
            Err(GraphError::Duplicate("a".into()))
        );
        assert_eq!(g.check_new_name(&"x".repeat(32)), Err(GraphError::TooLong));
        assert_eq!(g.check_new_name(&"x".repeat(31)), Ok(()));
        assert!(
            name_is_wellformed("a-b_c.d9")
                && !name_is_wellformed("#block1")
                && !name_is_wellformed("")
        );
    }

    #[test]
    fn deleting_frees_children_nothing_else_holds() {
        let mut g = Graph::new();
        let file = g
            .insert(NewNode {
                name: None,
                node: Node {
                    monitor_owned: false,
                    ..plain("file")
                },
            })
            .unwrap();
        let shared = add(&mut g, "shared", vec![], true).unwrap();
        let named_file = add(&mut g, "f", vec![], true).unwrap();
        add(
            &mut g,
            "top",
            vec![("file".into(), file), ("backing".into(), shared)],
            true,
        )
        .unwrap();
        add(&mut g, "top2", vec![("file".into(), named_file)], true).unwrap();
        assert_eq!(
            g.delete("shared"),
            Err(GraphError::BusyBacking {
                node: "shared".into(),
                parent: "top".into()
            })
        );
        let file_name = g.node(file).unwrap().name.clone();
        assert_eq!(
            g.delete(&file_name),
            Err(GraphError::NotMonitorOwned(file_name.clone()))
        );
        assert_eq!(g.delete("f"), Err(GraphError::InUse("f".into())));
        g.delete("top2").unwrap();
        g.delete("top").unwrap();
        // The implicit protocol node went with its parent; the monitor's node stays.
        assert_eq!(
            g.newest_first()
                .map(|(_, n)| n.name.as_str())
                .collect::<Vec<_>>(),
            ["f", "shared"]
        );
        assert_eq!(g.delete("top"), Err(GraphError::NotFound("top".into())));
    }

    #[test]
    fn listing_is_newest_first_and_generated_names_are_not_reused() {
        let mut g = Graph::new();
        let a = g
            .insert(NewNode {
                name: None,
                node: plain("null-co"),
            })
            .unwrap();
        let _ = g
            .insert(NewNode {
                name: None,
                node: plain("null-co"),
            })
            .unwrap();
        g.nodes.remove(&a);
        let _ = g
            .insert(NewNode {
                name: None,
                node: plain("null-co"),
            })
            .unwrap();
        let names: Vec<_> = g.newest_first().map(|(_, n)| n.name.clone()).collect();
        assert!(
            names[0].starts_with("#block2") && names[1].starts_with("#block1"),
            "{names:?}"
        );
        assert!(names.iter().all(|n| n.len() == "#block1".len() + 2));
    }
}
