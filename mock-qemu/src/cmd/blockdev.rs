//! Node management: `blockdev-add`, `blockdev-del`, `query-named-block-nodes`.
//!
//! Drivers: `file`, `raw`, `qcow2`, `null-co`, `null-aio`, the filters
//! `throttle`, `copy-on-read`, `copy-before-write`, `blkdebug`, and
//! `snapshot-access`. Other drivers answer with the explicit
//! not-implemented error naming the driver.

use super::desc;
use super::{not_implemented, Context, Return};
use crate::model::graph::{
    Bitmap, Cache, Graph, NewNode, Node, NodeId, PERM_READ, PERM_RESIZE, PERM_WRITE,
};
use crate::profile::Version;
use crate::qmp::error::QmpError;
use crate::qmp::json::{to_json, to_json_with};
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
        if self
            .args
            .get("node-name")
            .and_then(QObject::as_str)
            .is_none()
        {
            return Err(QmpError::generic(desc::ROOT_NEEDS_NODE_NAME));
        }
        let mut opener = Opener::new(ctx);
        match opener.open(&self.args, false, true) {
            Ok(_) => Ok(QObject::Dict(QDict::new())),
            Err(e) => {
                // What a failed open created is freed again.
                opener.rollback();
                Err(e)
            }
        }
    }
}

/// What a node's options default to: a child's come from its parent
/// (`bdrv_inherited_options()`, `bdrv_backing_options()`), a top-level
/// node's from `blockdev-add`'s defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Inherited {
    read_only: bool,
    auto_read_only: bool,
    direct: bool,
    no_flush: bool,
    force_share: bool,
    /// `discard=unmap` (children default to it, a top-level node does not).
    unmap: bool,
}

impl Inherited {
    /// A top-level node (`blockdev-add`, or a node QEMU opens itself).
    pub(super) fn top(read_only: bool) -> Self {
        Inherited {
            read_only,
            ..Inherited::default()
        }
    }

    /// What a `file` (or other non-COW) child of `parent` inherits: cache
    /// modes, force-share, read-only and auto-read-only; discard unmap.
    fn child_of(parent: &Node) -> Self {
        Inherited {
            read_only: parent.read_only,
            auto_read_only: parent.auto_read_only,
            direct: parent.cache.direct,
            no_flush: parent.cache.no_flush,
            force_share: parent.force_share,
            unmap: true,
        }
    }

    /// What a backing (COW) child of `parent` gets: read-only unless it
    /// says otherwise, never auto-read-only; cache modes and force-share
    /// inherited.
    fn backing_of(parent: &Node) -> Self {
        Inherited {
            read_only: true,
            auto_read_only: false,
            ..Inherited::child_of(parent)
        }
    }
}

/// Opens a node definition and its children, as `bdrv_open_inherit()`:
/// the `file` child first, then the node itself (its name), then `backing`.
pub(super) struct Opener<'c, 'a> {
    ctx: &'c mut Context<'a>,
    created: Vec<NodeId>,
    /// Backing files being opened from image headers, outermost first.
    backing_files: Vec<String>,
}

/// Implicit backing chains deeper than this are refused (a mock limit).
const MAX_IMPLICIT_CHAIN: usize = 1000;

impl Opener<'_, '_> {
    fn unsupported(&self, driver: &str) -> QmpError {
        QmpError::generic(format!(
            "mock-qemu: blockdev-add driver '{driver}' is not implemented by the mock for profile {} (it exists in that QEMU)",
            self.ctx.profile.label()
        ))
    }

    /// A child given by reference (a node name) or inline.
    fn child(&mut self, def: &QObject, inherit: Inherited) -> Result<NodeId, QmpError> {
        match def {
            QObject::Str(name) => self
                .ctx
                .machine
                .graph()
                .find(name)
                .ok_or_else(|| desc::node_lookup(self.ctx.profile.version(), name, name)),
            QObject::Dict(d) => self.open_inherit(d, inherit, false),
            _ => Err(self.unsupported("?")),
        }
    }

    /// `bdrv_assign_node_name()`'s checks, made when QEMU makes them
    /// (after the `file` child opened, before the driver's own work).
    fn check_name(&self, name: Option<&str>) -> Result<(), QmpError> {
        if let Some(n) = name {
            let v = self.ctx.profile.version();
            self.ctx
                .machine
                .graph()
                .check_new_name(n)
                .map_err(|e| desc::graph_error(v, &e))?;
        }
        Ok(())
    }

    /// A filter over its `file` child (`throttle`, `copy-on-read`,
    /// `copy-before-write`) or `snapshot-access`: the child first, then
    /// the name, then what the driver's open checks.
    fn open_filter(
        &mut self,
        a: &QDict,
        name: Option<String>,
        mut node: Node,
    ) -> Result<NodeId, QmpError> {
        let Some(file_def) = a.get("file") else {
            return Err(QmpError::generic("Parameter 'file' is missing"));
        };
        let file = self.child(file_def, Inherited::child_of(&node))?;
        open_checks(&node)?;
        self.check_name(name.as_deref())?;
        node.size = self.ctx.machine.graph().node(file).map_or(0, |f| f.size);
        node.strong_options.put("driver", node.driver.clone());
        self.check_writable_child(&node, "file", file)?;
        node.children.push(("file".into(), file));
        let mut target = None;
        match node.driver.as_str() {
            "throttle" => {
                let group = a.get_str("throttle-group").unwrap_or_default();
                let known = self
                    .ctx
                    .machine
                    .objects()
                    .get(group)
                    .is_some_and(|o| o.qom_type == "throttle-group");
                if !known {
                    return Err(QmpError::generic(format!(
                        "Throttle group '{group}' does not exist"
                    )));
                }
                node.strong_options.put("throttle-group", group);
            }
            "copy-before-write" => {
                let def = a.get("target").cloned().unwrap_or(QObject::Null);
                let t = self.child(&def, Inherited::child_of(&node))?;
                self.check_writable_child(&node, "target", t)?;
                node.children.push(("target".into(), t));
                target = Some(t);
            }
            _ => {}
        }
        let id = self.insert(name, node)?;
        if let Some(t) = target {
            let v = self.ctx.profile.version();
            let graph = self.ctx.machine.graph_mut();
            let full = graph.node(id).map_or(0, |n| n.size);
            copy_before_write_bitmaps(graph, v, id, file, t, full);
        }
        Ok(id)
    }

    /// Attaching `child` to the new `node` in `role`: a read-only child
    /// refuses a parent that writes to it, unchanged writes included
    /// (`bdrv_node_refresh_perm`; copy-on-read over a read-only node).
    fn check_writable_child(&self, node: &Node, role: &str, child: NodeId) -> Result<(), QmpError> {
        let v = self.ctx.profile.version();
        let Some(c) = self.ctx.machine.graph().node(child) else {
            return Ok(());
        };
        let p = crate::model::perms::new_node_edge(node, role, c.force_share, v);
        let writes = crate::model::graph::PERM_WRITE | crate::model::perms::PERM_WRITE_UNCHANGED;
        if c.read_only && p.perm & writes != 0 {
            return Err(QmpError::generic(desc::NODE_READ_ONLY));
        }
        Ok(())
    }

    /// `blkdebug`: its name, then its `image` child; its rules and limits
    /// are strong options (flattened as QEMU keeps them).
    fn open_blkdebug(
        &mut self,
        a: &QDict,
        name: Option<String>,
        mut node: Node,
    ) -> Result<NodeId, QmpError> {
        let Some(image_def) = a.get("image") else {
            return Err(QmpError::generic("Parameter 'image' is missing"));
        };
        let mut strong = QDict::new();
        strong.put("driver", "blkdebug");
        for (k, v) in a.iter_inserted() {
            match k {
                "config" | "align" | "max-transfer" | "opt-write-zero" | "max-write-zero"
                | "opt-discard" | "max-discard" => strong.put(k, v.clone()),
                "inject-error" | "set-state" => flatten(&mut strong, k, v),
                _ => {}
            }
        }
        node.strong_options = strong;
        let perm_list = |key: &str| {
            crate::model::perms::from_qapi_names(
                a.get(key)
                    .and_then(|l| match l {
                        QObject::List(l) => {
                            Some(l.iter().filter_map(QObject::as_str).collect::<Vec<_>>())
                        }
                        _ => None,
                    })
                    .unwrap_or_default(),
            )
        };
        node.perm_options.take = perm_list("take-child-perms");
        node.perm_options.unshare = perm_list("unshare-child-perms");
        open_checks(&node)?;
        let inherit = Inherited::child_of(&node);
        // Named (listed) before blkdebug_open() opens the image.
        let id = self.insert(name, node)?;
        let image = self.child(image_def, inherit)?;
        self.check_attach(id, "image", image)?;
        let size = self.ctx.machine.graph().node(image).map_or(0, |f| f.size);
        let graph = self.ctx.machine.graph_mut();
        if let Some(n) = graph.node_mut(id) {
            n.size = size;
        }
        graph.attach(id, "image", image);
        Ok(id)
    }

    /// `bdrv_attach_child_noperm()`'s loop check, for a child opened after
    /// its parent took its name (blkdebug's `image`, a `backing`): a
    /// reference to the parent itself (or a node above it) is refused.
    fn check_attach(&self, parent: NodeId, role: &str, child: NodeId) -> Result<(), QmpError> {
        let graph = self.ctx.machine.graph();
        if !graph.reaches(child, parent) {
            return Ok(());
        }
        let name = |n: NodeId| graph.node(n).map(|n| n.name.clone()).unwrap_or_default();
        Err(QmpError::generic(format!(
            "Making '{}' a {role} child of '{}' would create a cycle",
            name(child),
            name(parent)
        )))
    }

    fn insert(&mut self, name: Option<String>, node: Node) -> Result<NodeId, QmpError> {
        let v = self.ctx.profile.version();
        let id = self
            .ctx
            .machine
            .graph_mut()
            .insert(NewNode { name, node })
            .map_err(|e| desc::graph_error(v, &e))?;
        self.created.push(id);
        Ok(id)
    }

    /// An opener for one command; on failure, [`Opener::rollback`] frees
    /// what it created.
    pub(super) fn new<'c2, 'a2>(ctx: &'c2 mut Context<'a2>) -> Opener<'c2, 'a2> {
        Opener {
            ctx,
            created: Vec::new(),
            backing_files: Vec::new(),
        }
    }

    /// Frees the nodes this opener created.
    pub(super) fn rollback(&mut self) {
        let created = std::mem::take(&mut self.created);
        self.ctx.machine.graph_mut().discard(&created);
    }

    /// Opens a node at the top level (`blockdev-add`, or a node QEMU
    /// opens itself), read-only if `read_only`; `top`: monitor-owned.
    pub(super) fn open(
        &mut self,
        a: &QDict,
        read_only: bool,
        top: bool,
    ) -> Result<NodeId, QmpError> {
        self.open_inherit(a, Inherited::top(read_only), top)
    }

    fn open_inherit(
        &mut self,
        a: &QDict,
        inherit: Inherited,
        top: bool,
    ) -> Result<NodeId, QmpError> {
        let driver = a
            .get("driver")
            .and_then(QObject::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = a
            .get("node-name")
            .and_then(QObject::as_str)
            .map(str::to_owned);
        let mut node = common_with(&driver, a, inherit);
        node.monitor_owned = top;
        match driver.as_str() {
            "null-co" | "null-aio" => {
                open_checks(&node)?;
                self.check_name(name.as_deref())?;
                // null_file_open().
                if int_opt(a, "latency-ns").is_some_and(|l| l < 0) {
                    return Err(QmpError::generic("latency-ns is invalid"));
                }
                node = null_node(node, a);
                self.insert(name, node)
            }
            "throttle" | "copy-on-read" | "copy-before-write" | "snapshot-access" => {
                self.open_filter(a, name, node)
            }
            "blkdebug" => self.open_blkdebug(a, name, node),
            "file" => {
                open_checks(&node)?;
                let filename = a
                    .get("filename")
                    .and_then(QObject::as_str)
                    .unwrap_or_default();
                let facts = self
                    .ctx
                    .host
                    .open_file(filename)
                    .map_err(|e| QmpError::generic(e.to_string()))?;
                // bdrv_getlength() counts whole 512-byte sectors.
                node.size = facts.size.div_ceil(512) * 512;
                node.file = Some(facts);
                self.insert(name, node)
            }
            "raw" | "qcow2" => {
                let Some(file_def) = a.get("file") else {
                    return Err(self.unsupported(&driver));
                };
                let file = self.child(file_def, Inherited::child_of(&node))?;
                open_checks(&node)?;
                if driver == "raw" {
                    // raw passes its child through: its size is the child's
                    // (less an offset, or the size given; then the child is
                    // a data child, not a filtered one).
                    self.check_name(name.as_deref())?;
                    let child_size = self.ctx.machine.graph().node(file).map_or(0, |f| f.size);
                    let offset = int_opt(a, "offset").and_then(|o| u64::try_from(o).ok());
                    let size = int_opt(a, "size").and_then(|o| u64::try_from(o).ok());
                    node.perm_options.raw_data_child = offset.is_some() || size.is_some();
                    node.size = size.unwrap_or(child_size.saturating_sub(offset.unwrap_or(0)));
                    node.children.push(("file".into(), file));
                    return self.insert(name, node);
                }
                // The image is read through filters (blkdebug's `image`).
                let graph = self.ctx.machine.graph();
                let mut protocol = file;
                while let Some(n) = graph.node(protocol).filter(|n| n.file.is_none()) {
                    match n.children.iter().find(|(r, _)| r == "file" || r == "image") {
                        Some((_, c)) if is_filter(&n.driver) => protocol = *c,
                        _ => break,
                    }
                }
                let facts = graph.node(protocol).and_then(|f| f.file.clone());
                let Some(facts) = facts else {
                    return Err(self.unsupported("qcow2 over a non-file node"));
                };
                // The node's name is taken before its driver reads the image.
                self.check_name(name.as_deref())?;
                // Attaching the file child (bdrv_open_file_child()) updates
                // its permissions: a writable format node writes its
                // metadata, which a read-only child refuses; then the
                // child's users must agree, then the file locks.
                let graph = self.ctx.machine.graph();
                let v = self.ctx.profile.version();
                // Attaching the file child: its users must agree with the
                // new one, then a writable node needs a writable child.
                let new = Graph::qcow2_file_edge(
                    &Node {
                        name: name.clone().unwrap_or_default(),
                        ..node.clone()
                    },
                    graph.node(file).is_some_and(|f| f.force_share),
                    v,
                );
                let users = graph.users(file, &self.ctx.machine.block_users(v), v);
                if let Some(c) = graph.perm_conflict(file, &new, &users, v < Version::V7_2) {
                    return Err(desc::perm_conflict(v, &c, &new));
                }
                if !node.read_only && graph.node(file).is_some_and(|f| f.read_only) {
                    return Err(QmpError::generic(desc::NODE_READ_ONLY));
                }
                // A metadata child is not shared for writing, and written
                // when writable.
                let force_share = graph.node(file).is_some_and(|f| f.force_share);
                let mut want = graph.locks(protocol);
                want.perm |= PERM_READ
                    | if node.read_only {
                        0
                    } else {
                        PERM_WRITE | PERM_RESIZE
                    };
                if !force_share {
                    want.unshared |= PERM_WRITE | PERM_RESIZE;
                }
                if let Some(msg) = graph.lock_conflict(protocol, want) {
                    return Err(QmpError::generic(msg));
                }
                let header = self
                    .ctx
                    .host
                    .read_qcow2(&facts.filename)
                    .map_err(|e| QmpError::generic(e.to_string()))?;
                node.size = header.size;
                node.children.push(("file".into(), file));
                let implicit_backing = match a.get("backing") {
                    None => header
                        .full_backing
                        .clone()
                        .map(|b| (b, header.backing_format.clone())),
                    Some(_) => None,
                };
                // qcow2_load_dirty_bitmaps(): the image's persistent bitmaps,
                // recording if stored so and the node is writable, read-only
                // on a read-only node; one found in use is inconsistent. A
                // writable node marks the others in use in the image.
                let mark_in_use = !node.read_only && header.bitmaps.iter().any(|b| !b.in_use);
                node.bitmaps = header
                    .bitmaps
                    .iter()
                    .map(|b| Bitmap {
                        name: Some(b.name.clone()),
                        granularity: b.granularity,
                        persistent: true,
                        // An inconsistent bitmap is disabled
                        // (bdrv_dirty_bitmap_set_inconsistent()).
                        recording: b.auto && !node.read_only && !b.in_use,
                        count: 0,
                        busy: false,
                        readonly: node.read_only,
                        inconsistent: b.in_use,
                        locked: false,
                        tracks_progress: false,
                        owner: None,
                    })
                    .collect();
                node.qcow2 = Some(header);
                let backing_inherit = Inherited::backing_of(&node);
                let id = self.insert(name, node)?;
                if mark_in_use {
                    self.ctx.machine.graph_mut().push_effect(
                        crate::model::Effect::MarkBitmapsInUse {
                            filename: facts.filename.clone(),
                        },
                    );
                }
                let backing = match a.get("backing") {
                    Some(QObject::Null) => None,
                    Some(def) => Some(
                        self.child(def, backing_inherit)
                            .map_err(|e| backing_error(v, e))?,
                    ),
                    None => match implicit_backing {
                        Some((path, fmt)) => {
                            Some(self.open_backing_file(&path, fmt.as_deref(), backing_inherit)?)
                        }
                        None => None,
                    },
                };
                if let Some(b) = backing {
                    self.check_attach(id, "backing", b)?;
                    self.ctx.machine.graph_mut().attach(id, "backing", b);
                }
                Ok(id)
            }
            _ => Err(self.unsupported(&driver)),
        }
    }

    /// The backing file named in an image header, opened read-only with
    /// generated names (format from the header, else probed).
    fn open_backing_file(
        &mut self,
        path: &str,
        format: Option<&str>,
        inherit: Inherited,
    ) -> Result<NodeId, QmpError> {
        // Real QEMU recurses without end on a chain that loops back (10.0
        // spins and grows until killed); the mock refuses it instead.
        if self.backing_files.iter().any(|p| p == path)
            || self.backing_files.len() >= MAX_IMPLICIT_CHAIN
        {
            return Err(QmpError::generic(format!(
                "mock-qemu: the backing chain loops back to '{path}' (or is deeper than {MAX_IMPLICIT_CHAIN}); real QEMU would not return"
            )));
        }
        let mut file = QDict::new();
        file.put("driver", "file");
        file.put("filename", path);
        let format = match format {
            Some(f) => f.to_owned(),
            None => match self.ctx.host.read_qcow2(path) {
                Ok(_) => "qcow2".to_owned(),
                Err(_) => "raw".to_owned(),
            },
        };
        let mut def = QDict::new();
        def.put("driver", format);
        def.put("file", file);
        let v = self.ctx.profile.version();
        self.backing_files.push(path.to_owned());
        let r = self
            .open_inherit(&def, inherit, false)
            .map_err(|e| backing_error(v, e));
        self.backing_files.pop();
        r
    }
}

/// An anonymous bitmap a driver or job makes, owned by node `owner`.
pub(super) fn anonymous_bitmap(
    owner: NodeId,
    granularity: u64,
    count: u64,
    recording: bool,
) -> Bitmap {
    Bitmap {
        name: None,
        granularity,
        persistent: false,
        recording,
        count,
        owner: Some(owner),
        busy: false,
        readonly: false,
        inconsistent: false,
        locked: false,
        tracks_progress: false,
    }
}

/// The anonymous bitmaps a `copy-before-write` node makes: block-copy's
/// copy bitmap (`to_copy` bytes still to copy; on the source child up to
/// 7.2, on the filter since), then the filter's done and access bitmaps
/// (7.2 on). Cluster size: the target's, at least 64 KiB. A 5.2
/// `backup-top` has only the copy bitmap, on the source.
pub(super) fn copy_before_write_bitmaps(
    graph: &mut Graph,
    v: Version,
    cbw: NodeId,
    source: NodeId,
    target: NodeId,
    to_copy: u64,
) {
    let size = graph.node(cbw).map_or(0, |n| n.size);
    let target_cluster = graph
        .node(target)
        .and_then(|t| t.qcow2.as_ref())
        .map_or(0, |q| q.cluster_size);
    let granularity = target_cluster.max(1 << 16);
    let whole = |bytes: u64| bytes.div_ceil(granularity) * granularity;
    let copy = Bitmap {
        tracks_progress: true,
        ..anonymous_bitmap(cbw, granularity, whole(to_copy), false)
    };
    let copy_on = if v <= Version::V7_2 { source } else { cbw };
    if let Some(n) = graph.node_mut(copy_on) {
        n.bitmaps.push(copy);
    }
    if v < Version::V7_2 {
        return;
    }
    if let Some(n) = graph.node_mut(cbw) {
        n.bitmaps.push(anonymous_bitmap(cbw, granularity, 0, false));
        n.bitmaps
            .push(anonymous_bitmap(cbw, granularity, whole(size), false));
    }
}

/// Reads a file node's facts again (after the mock wrote its file).
pub(super) fn refresh_file(ctx: &mut Context<'_>, file_node: NodeId) {
    let Some(name) = ctx
        .machine
        .graph()
        .node(file_node)
        .and_then(|n| n.file.as_ref())
        .map(|f| f.filename.clone())
    else {
        return;
    };
    if let Ok(facts) = ctx.host.open_file(&name) {
        if let Some(n) = ctx.machine.graph_mut().node_mut(file_node) {
            n.size = facts.size.div_ceil(512) * 512;
            n.file = Some(facts);
        }
    }
}

/// `qdict_flatten()` of one option: `key.0.member` for lists of dicts.
fn flatten(out: &mut QDict, prefix: &str, v: &QObject) {
    match v {
        QObject::Dict(d) => {
            for (k, v) in d.iter_inserted() {
                flatten(out, &format!("{prefix}.{k}"), v);
            }
        }
        QObject::List(l) => {
            for (i, v) in l.iter().enumerate() {
                flatten(out, &format!("{prefix}.{i}"), v);
            }
        }
        _ => out.put(prefix, v.clone()),
    }
}

/// The options every driver shares, for a top-level node.
pub(super) fn common(driver: &str, a: &QDict, read_only: bool) -> Node {
    common_with(driver, a, Inherited::top(read_only))
}

/// The options every driver shares; what `a` does not set comes from
/// `inherit`.
fn common_with(driver: &str, a: &QDict, inherit: Inherited) -> Node {
    let cache = a.get("cache").and_then(QObject::as_dict);
    let cache_opt = |key| cache.and_then(|c| bool_opt(c, key));
    Node {
        name: String::new(),
        driver: driver.to_owned(),
        strong_options: QDict::new(),
        read_only: bool_opt(a, "read-only").unwrap_or(inherit.read_only),
        auto_read_only: bool_opt(a, "auto-read-only").unwrap_or(inherit.auto_read_only),
        force_share: bool_opt(a, "force-share").unwrap_or(inherit.force_share),
        unmap: a.get_str("discard").map_or(inherit.unmap, |d| d == "unmap"),
        size: 0,
        cache: Cache {
            direct: cache_opt("direct").unwrap_or(inherit.direct),
            no_flush: cache_opt("no-flush").unwrap_or(inherit.no_flush),
        },
        detect_zeroes: a
            .get("detect-zeroes")
            .and_then(QObject::as_str)
            .unwrap_or("off")
            .to_owned(),
        children: Vec::new(),
        monitor_owned: false,
        file: None,
        qcow2: None,
        bitmaps: Vec::new(),
        implicit: false,
        perm_options: Default::default(),
    }
}

/// `bdrv_open_common()`'s checks of the shared options, made before the
/// node is named and its driver opens it.
fn open_checks(node: &Node) -> Result<(), QmpError> {
    if node.force_share && !node.read_only {
        return Err(QmpError::generic(
            "force-share=on can only be used with read-only images",
        ));
    }
    if node.detect_zeroes == "unmap" && !node.unmap {
        return Err(QmpError::generic(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        ));
    }
    Ok(())
}

/// An error opening a backing child (`bdrv_open_backing_file()`).
fn backing_error(_v: Version, e: QmpError) -> QmpError {
    QmpError::new(e.class, format!("Could not open backing file: {}", e.desc))
}

fn null_node(node: Node, a: &QDict) -> Node {
    let mut strong = QDict::new();
    strong.put("driver", node.driver.clone());
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
        ..node
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
        // A node a running job works on is blocked (op blocker), checked
        // after bdrv_has_blk() (a node with a BlockBackend is "in use").
        if let Some(id) = ctx.machine.graph().find(&self.node_name) {
            if !ctx.machine.graph().backends().any(|(_, n)| n == id) {
                super::jobs::check_not_blocked(ctx, id)?;
            }
        }
        ctx.machine
            .graph_mut()
            .delete(&self.node_name)
            .map_err(|e| desc::graph_error(version, &e))?;
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `query-block`: BlockBackends that have a name or a device, oldest
/// first. Exports' backends are anonymous; devices' are listed with the
/// device's id (or path) as `qdev` and their node, below any implicit job
/// filter, as `inserted`.
#[derive(Debug)]
pub struct QueryBlock;

impl QueryBlock {
    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let graph = ctx.machine.graph();
        let mut list = Vec::new();
        for (owner, node) in graph.backends() {
            let Some(qdev) = owner.strip_prefix(crate::model::devices::BACKEND_PREFIX) else {
                continue;
            };
            // bdrv_skip_implicit_filters().
            let mut node = node;
            while graph.node(node).is_some_and(|n| n.implicit) {
                match graph
                    .child(node, "file")
                    .or_else(|| graph.child(node, "backing"))
                {
                    Some(c) => node = c,
                    None => break,
                }
            }
            let mut d = QDict::new();
            d.put("device", "");
            d.put("qdev", qdev);
            d.put("type", "unknown");
            d.put("removable", false);
            d.put("locked", false);
            d.put("inserted", node_info(ctx, node, false)?);
            d.put("io-status", "ok");
            list.push(QObject::Dict(d));
        }
        Ok(shape::reply(
            ctx.profile.schema(),
            "query-block",
            QObject::List(list),
        ))
    }
}

/// `query-blockstats`: per disk (a BlockBackend with a device), or with
/// `query-nodes` per named node, oldest first. The mock models no guest
/// I/O, so every counter is what QEMU shows before any: zero.
#[derive(Debug)]
pub struct QueryBlockstats {
    query_nodes: bool,
}

impl QueryBlockstats {
    /// From the checked arguments.
    pub fn new(args: &QDict) -> Self {
        QueryBlockstats {
            query_nodes: bool_opt(args, "query-nodes").unwrap_or(false),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let graph = ctx.machine.graph();
        let mut list = Vec::new();
        if self.query_nodes {
            let mut ids: Vec<NodeId> = graph.newest_first().map(|(id, _)| id).collect();
            ids.reverse();
            for id in ids {
                list.push(QObject::Dict(bds_stats(graph, id, false)));
            }
        } else {
            for (owner, node) in graph.backends() {
                let Some(qdev) = owner.strip_prefix(crate::model::devices::BACKEND_PREFIX) else {
                    continue;
                };
                let mut d = bds_stats(graph, node, true);
                d.put("device", "");
                d.put("qdev", qdev);
                list.push(QObject::Dict(d));
            }
        }
        Ok(shape::reply(
            ctx.profile.schema(),
            "query-blockstats",
            QObject::List(list),
        ))
    }
}

/// `bdrv_query_bds_stats()`: a node's stats (BlockBackend accounting at
/// the BlockBackend level), its data child as `parent`, and at that level
/// its backing chain as `backing`. Implicit filters are skipped there.
fn bds_stats(graph: &Graph, id: NodeId, blk_level: bool) -> QDict {
    bds_stats_inner(graph, id, blk_level, blk_level)
}

/// `accounted`: the stats are a BlockBackend's (its accounting flags are
/// on); the nodes below report their own, with the flags off.
fn bds_stats_inner(graph: &Graph, id: NodeId, blk_level: bool, accounted: bool) -> QDict {
    let mut id = id;
    if blk_level {
        while graph.node(id).is_some_and(|n| n.implicit) {
            match graph
                .child(id, "file")
                .or_else(|| graph.child(id, "backing"))
            {
                Some(c) => id = c,
                None => break,
            }
        }
    }
    let mut stats = QDict::new();
    for k in [
        "rd_bytes",
        "wr_bytes",
        "zone_append_bytes",
        "unmap_bytes",
        "rd_operations",
        "wr_operations",
        "zone_append_operations",
        "flush_operations",
        "unmap_operations",
        "rd_total_time_ns",
        "wr_total_time_ns",
        "zone_append_total_time_ns",
        "flush_total_time_ns",
        "unmap_total_time_ns",
        "wr_highest_offset",
        "rd_merged",
        "wr_merged",
        "zone_append_merged",
        "unmap_merged",
        "failed_rd_operations",
        "failed_wr_operations",
        "failed_zone_append_operations",
        "failed_flush_operations",
        "failed_unmap_operations",
        "invalid_rd_operations",
        "invalid_wr_operations",
        "invalid_zone_append_operations",
        "invalid_flush_operations",
        "invalid_unmap_operations",
    ] {
        stats.put(k, 0i64);
    }
    stats.put("account_invalid", accounted);
    stats.put("account_failed", accounted);
    stats.put("timed_stats", QObject::List(Vec::new()));
    let mut d = QDict::new();
    d.put("stats", stats);
    let Some(node) = graph.node(id) else {
        return d;
    };
    d.put("node-name", node.name.clone());
    if node.driver == "file" || node.driver == "host_device" {
        let mut spec = QDict::new();
        spec.put("driver", node.driver.clone());
        spec.put("discard-nb-ok", 0i64);
        spec.put("discard-nb-failed", 0i64);
        spec.put("discard-bytes-ok", 0i64);
        d.put("driver-specific", spec);
    }
    // bdrv_primary_child(), else the first data or filtered child.
    let parent = graph.child(id, "file").or_else(|| {
        is_filter(&node.driver)
            .then(|| graph.child(id, "backing"))
            .flatten()
    });
    if let Some(p) = parent {
        d.put("parent", bds_stats_inner(graph, p, blk_level, false));
    }
    if blk_level {
        if let Some(b) = graph
            .child(id, "backing")
            .filter(|_| !is_filter(&node.driver))
        {
            d.put("backing", bds_stats_inner(graph, b, blk_level, false));
        }
    }
    d
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
        let key = if self.flat {
            "query-named-block-nodes:flat"
        } else {
            "query-named-block-nodes"
        };
        let generation = ctx.machine.graph_generation();
        if let Some(text) = ctx.cache.get(key, generation) {
            return Ok(QObject::Raw(text));
        }
        let reply = self.build(ctx)?;
        let text: std::sync::Arc<str> =
            to_json_with(&reply, crate::core::json_style(ctx.profile)).into();
        ctx.cache.put(key, generation, std::sync::Arc::clone(&text));
        Ok(QObject::Raw(text))
    }

    fn build(&self, ctx: &Context<'_>) -> Result<Return, QmpError> {
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

/// Drivers QEMU marks `is_filter`: they pass their `file` child's data
/// (and its `get_info`) through.
pub(super) fn is_filter(driver: &str) -> bool {
    matches!(
        driver,
        "throttle"
            | "copy-on-read"
            | "copy-before-write"
            | "blkdebug"
            | "mirror_top"
            | "commit_top"
            | "backup-top"
    )
}

/// Job filters whose filtered child is their `backing`.
fn filters_backing(driver: &str) -> bool {
    matches!(driver, "mirror_top" | "commit_top" | "backup-top")
}

/// Drivers with a `protocol_name`, whose exact file name a format node on
/// top may take over.
fn is_protocol(driver: &str) -> bool {
    matches!(driver, "file" | "null-co" | "null-aio" | "blkdebug")
}

/// The primary child (`file`, blkdebug's `image`, a job filter's
/// `backing`).
fn file_child<'g>(graph: &'g Graph, node: &Node) -> Option<&'g Node> {
    let backing = filters_backing(&node.driver);
    node.children
        .iter()
        .find(|(r, _)| r == "file" || r == "image" || (backing && r == "backing"))
        .and_then(|(_, c)| graph.node(*c))
}

/// `bdrv_backing_overridden()`: the backing child is not the one the image
/// header names (given explicitly to another node, or cut with `null`).
fn backing_overridden(graph: &Graph, node: &Node) -> bool {
    let header = node.qcow2.as_ref().and_then(|q| q.full_backing.as_deref());
    let backing = node
        .children
        .iter()
        .find(|(r, _)| r == "backing")
        .and_then(|(_, c)| graph.node(*c));
    match (header, backing) {
        (None, None) => false,
        (Some(h), Some(b)) => filename(graph, b) != h,
        _ => true,
    }
}

/// `bs->exact_filename` after `bdrv_refresh_filename()`: the name that
/// reopens exactly this node, if a plain one does.
fn exact_filename(graph: &Graph, node: &Node) -> Option<String> {
    if let Some(f) = &node.file {
        return Some(f.filename.clone());
    }
    if node.implicit {
        // An implicit job filter copies its child's names.
        return file_child(graph, node).map(|c| filename(graph, c));
    }
    match node.driver.as_str() {
        // null_refresh_filename(): no option but the driver (recorded:
        // `read-zeroes` alone gives a json: name).
        "null-co" | "null-aio" => node
            .strong_options
            .iter()
            .all(|(k, _)| matches!(k, "driver" | "filename"))
            .then(|| format!("{}://", node.driver)),
        // cbw and snapshot-access name themselves after their file child.
        "copy-before-write" | "snapshot-access" | "mirror_top" | "commit_top" | "backup-top" => {
            file_child(graph, node).map(|c| filename(graph, c))
        }
        d if is_filter(d) || is_protocol(d) => None,
        _ => {
            let child = file_child(graph, node)?;
            let own_strong = node.strong_options.iter().any(|(k, _)| k != "driver");
            if !is_protocol(&child.driver) || own_strong || backing_overridden(graph, node) {
                return None;
            }
            exact_filename(graph, child)
        }
    }
}

/// `bs->full_open_options`: the node's strong options and its children's
/// (the backing child only when overridden), for `json:` names.
fn full_open_options(graph: &Graph, node: &Node) -> QDict {
    let mut d = QDict::new();
    if let Some(f) = &node.file {
        d.put("driver", "file");
        d.put("filename", f.filename.clone());
        return d;
    }
    for (k, v) in node.strong_options.iter_inserted() {
        d.put(k, v.clone());
    }
    if d.get("driver").is_none() {
        d.put("driver", node.driver.clone());
    }
    let overridden = backing_overridden(graph, node);
    // bs->children lists the newest child first.
    for (role, c) in node.children.iter().rev() {
        if role == "backing" && !overridden {
            continue;
        }
        if let Some(child) = graph.node(*c) {
            d.put(role.clone(), full_open_options(graph, child));
        }
    }
    if overridden && !node.children.iter().any(|(r, _)| r == "backing") {
        d.put("backing", QObject::Null);
    }
    d
}

/// The node's file name as QEMU reports it: its exact name when one
/// reopens it, else a `json:{…}` pseudo-protocol name of its options.
pub(super) fn filename(graph: &Graph, node: &Node) -> String {
    exact_filename(graph, node).unwrap_or_else(|| {
        format!(
            "json:{}",
            to_json(&QObject::Dict(full_open_options(graph, node)))
        )
    })
}

/// Bytes the node's file occupies on disk (`bdrv_get_allocated_file_size`):
/// a protocol driver's own answer (none from `blkdebug`), a filter's
/// child's, a format's `file` child's.
fn allocated(graph: &Graph, node: &Node) -> Option<u64> {
    if let Some(f) = &node.file {
        return Some(f.allocated);
    }
    match node.driver.as_str() {
        "null-co" | "null-aio" => Some(0),
        "blkdebug" => None,
        _ => file_child(graph, node).map_or(Some(0), |c| allocated(graph, c)),
    }
}

/// What `bdrv_get_info()` gives: (cluster size, dirty flag), passed
/// through filters; `None` where the driver has no `get_info`.
fn get_info(graph: &Graph, node: &Node) -> Option<(Option<u64>, bool)> {
    if let Some(q) = &node.qcow2 {
        return Some((Some(q.cluster_size), q.dirty));
    }
    match node.driver.as_str() {
        "null-co" | "null-aio" | "snapshot-access" => None,
        // raw_co_get_info() asks its file child too.
        d if is_filter(d) || d == "raw" => file_child(graph, node).and_then(|c| get_info(graph, c)),
        _ => Some((None, false)),
    }
}

/// `ImageInfo`, with `backing-image` nested when `nested`.
fn image_info(graph: &Graph, id: NodeId, nested: bool) -> Option<QDict> {
    let node = graph.node(id)?;
    let mut image = QDict::new();
    image.put("filename", filename(graph, node));
    image.put("format", node.driver.clone());
    image.put("virtual-size", node.size);
    if let Some(a) = allocated(graph, node) {
        image.put("actual-size", a);
    }
    if let Some((cluster, dirty)) = get_info(graph, node) {
        if let Some(c) = cluster {
            image.put("cluster-size", c);
        }
        image.put("dirty-flag", dirty);
    }
    if node.file.is_some() {
        image.put("format-specific", specific("file", QDict::new()));
    }
    if let Some(q) = &node.qcow2 {
        let mut data = QDict::new();
        data.put("compat", if q.version >= 3 { "1.1" } else { "0.10" });
        // Every version reports the compression type, v2 images too.
        data.put(
            "compression-type",
            if q.compression_zstd { "zstd" } else { "zlib" },
        );
        if q.version >= 3 {
            data.put("lazy-refcounts", q.lazy_refcounts);
        }
        data.put("refcount-bits", i64::from(q.refcount_bits));
        if q.version >= 3 {
            data.put("corrupt", q.corrupt);
            data.put("extended-l2", q.extended_l2);
        }
        // The image's bitmap directory: a writable node marked every
        // bitmap in use when it opened.
        if !q.bitmaps.is_empty() {
            let list = q
                .bitmaps
                .iter()
                .map(|b| {
                    let mut flags = Vec::new();
                    if b.in_use || !node.read_only {
                        flags.push(QObject::from("in-use"));
                    }
                    if b.auto {
                        flags.push(QObject::from("auto"));
                    }
                    let mut m = QDict::new();
                    m.put("name", b.name.clone());
                    m.put("granularity", b.granularity);
                    m.put("flags", QObject::List(flags));
                    QObject::Dict(m)
                })
                .collect();
            data.put("bitmaps", QObject::List(list));
        }
        image.put("format-specific", specific("qcow2", data));
        if let Some(b) = &q.backing_file {
            image.put("backing-filename", b.clone());
        }
        if let Some(b) = &q.full_backing {
            image.put("full-backing-filename", b.clone());
        }
        if let Some(f) = &q.backing_format {
            image.put("backing-filename-format", f.clone());
        }
    }
    if nested {
        if let Some(b) = graph
            .child(id, "backing")
            .and_then(|b| image_info(graph, b, true))
        {
            image.put("backing-image", b);
        }
    }
    Some(image)
}

fn specific(kind: &str, data: QDict) -> QDict {
    let mut d = QDict::new();
    d.put("type", kind);
    d.put("data", data);
    d
}

/// `BlockDeviceInfo` with every member any supported version has; the
/// schema projection keeps the profile's.
fn node_info(ctx: &Context<'_>, id: NodeId, flat: bool) -> Result<QDict, QmpError> {
    let graph = ctx.machine.graph();
    let (Some(node), Some(image)) = (graph.node(id), image_info(graph, id, !flat)) else {
        return Err(not_implemented(ctx.profile, "query-named-block-nodes"));
    };
    let mut depth = 0i64;
    if !flat {
        let mut cur = id;
        while let Some(b) = graph.child(cur, "backing") {
            depth += 1;
            cur = b;
        }
    }
    let mut cache = QDict::new();
    cache.put("writeback", true);
    cache.put("direct", node.cache.direct);
    cache.put("no-flush", node.cache.no_flush);
    let mut d = QDict::new();
    d.put("file", filename(graph, node));
    d.put("node-name", node.name.clone());
    d.put("ro", node.read_only);
    d.put("drv", node.driver.clone());
    // bdrv_cow_bs(): filters have no COW child.
    let backing = graph
        .child(id, "backing")
        .filter(|_| !is_filter(&node.driver))
        .and_then(|b| graph.node(b));
    if let Some(b) = backing {
        d.put("backing_file", filename(graph, b));
    }
    d.put("backing_file_depth", depth);
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
    if !node.bitmaps.is_empty() {
        let list = node
            .bitmaps
            .iter()
            .rev()
            .map(|b| {
                let mut m = QDict::new();
                if let Some(n) = &b.name {
                    m.put("name", n.clone());
                }
                m.put("recording", b.recording);
                m.put("persistent", b.persistent);
                m.put("busy", b.busy);
                // Dropped from the schema after 5.2; the projection decides.
                m.put(
                    "status",
                    if b.inconsistent {
                        "inconsistent"
                    } else if b.busy && b.locked {
                        "locked"
                    } else if b.busy {
                        "frozen"
                    } else if b.recording {
                        "active"
                    } else {
                        "disabled"
                    },
                );
                m.put("granularity", b.granularity);
                m.put("count", b.count);
                if b.inconsistent {
                    m.put("inconsistent", true);
                }
                QObject::Dict(m)
            })
            .collect();
        d.put("dirty-bitmaps", QObject::List(list));
    }
    Ok(d)
}
