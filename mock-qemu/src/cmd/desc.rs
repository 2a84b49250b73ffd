//! Error texts of the block layer, per profile.
//!
//! A `desc` is protocol data: each text here is what the named QEMU versions
//! send, as the recorded fixtures show (`fixtures/qemu-*/…/blockdev/`). Where
//! QEMU reworded a message, the version decides.

use crate::model::graph::{perm_names, EdgePerm, GraphError, PermConflict, PermUser};
use crate::profile::Version;
use crate::qmp::error::QmpError;

/// The text QEMU gives for a graph rule, in the profile's wording.
pub fn graph_error(v: Version, e: &GraphError) -> QmpError {
    // QEMU 6.x reworded the node-name messages (5.2 → 7.2 recordings).
    let old = v < Version::V7_2;
    QmpError::generic(match e {
        GraphError::InvalidName(_) if old => "Invalid node name".to_owned(),
        GraphError::InvalidName(n) => format!("Invalid node-name: '{n}'"),
        GraphError::Duplicate(_) if old => "Duplicate node name".to_owned(),
        GraphError::Duplicate(n) => format!("Duplicate nodes with node-name='{n}'"),
        GraphError::TooLong => "Node name too long".to_owned(),
        GraphError::NotFound(n) if old => format!("Cannot find node {n}"),
        GraphError::NotFound(n) => format!("Failed to find node with node-name='{n}'"),
        GraphError::BusyBacking { node, parent } => {
            format!("Node '{node}' is busy: node is used as backing hd of '{parent}'")
        }
        GraphError::NotMonitorOwned(n) => format!("Node {n} is not owned by the monitor"),
        GraphError::InUse(n) => format!("Block device {n} is in use"),
        GraphError::HasBackend(n) => format!("Node {n} is in use"),
    })
}

/// `bdrv_lookup_bs(device, node)` found nothing. References that may name
/// either (`file: "X"`, `node: "X"`) pass the same string twice; node-only
/// lookups (`node-name` of blockdev-snapshot-sync) pass an empty device.
pub fn node_lookup(v: Version, device: &str, node: &str) -> QmpError {
    QmpError::generic(if v < Version::V7_2 {
        format!("Cannot find device={device} nor node_name={node}")
    } else {
        format!("Cannot find device='{device}' nor node-name='{node}'")
    })
}

/// `qmp_get_root_bs()`: a mirror's source (and an internal snapshot's
/// node) must have no node above it; BlockBackends (exports, devices) do
/// not count.
pub fn not_a_root_node() -> QmpError {
    QmpError::generic("Need a root block node")
}

/// The error a mirror job fails with when source and target sizes differ
/// (5.2 only had the errno text).
pub fn mirror_size_mismatch(v: Version) -> String {
    if v < Version::V7_2 {
        "Invalid argument".to_owned()
    } else {
        "Source and target image have different sizes".to_owned()
    }
}

/// `blockdev-add` without a node name at the top level (all versions).
pub const ROOT_NEEDS_NODE_NAME: &str = "'node-name' must be specified for the root node";

/// A user needs to write to a read-only node (`bdrv_node_refresh_perm`,
/// all versions).
pub const NODE_READ_ONLY: &str = "Block node is read-only";

/// `blockdev-snapshot-sync` by node name without `snapshot-node-name`
/// (5.2 said "node name").
pub fn overlay_name_missing(v: Version) -> &'static str {
    if v < Version::V7_2 {
        "New overlay node name missing"
    } else {
        "New overlay node-name missing"
    }
}

/// `blockdev-snapshot-sync` with a `snapshot-node-name` that names a node
/// or device already.
pub fn overlay_name_in_use(v: Version) -> &'static str {
    if v < Version::V7_2 {
        "New overlay node name already in use"
    } else {
        "New overlay node-name already in use"
    }
}

/// A permission conflict between a new user of a node and one it has
/// (`bdrv_a_allow_b`; 5.2's `bdrv_check_update_perm`). `new` describes the
/// new user.
pub fn perm_conflict(v: Version, c: &PermConflict, new: &EdgePerm) -> QmpError {
    let perms = perm_names(c.perms);
    let node = &c.node;
    if v < Version::V7_2 {
        let user = match &c.existing.user {
            PermUser::Backend => "a block device".to_owned(),
            PermUser::Device(d) => format!("block device '{d}'"),
            PermUser::Node(n) | PermUser::Job(n) => n.clone(),
        };
        let role = &c.existing.role;
        return QmpError::generic(if c.new_needs {
            format!("Conflicts with use by {user} as '{role}', which does not allow '{perms}' on {node}")
        } else {
            format!("Conflicts with use by {user} as '{role}', which uses '{perms}' on {node}")
        });
    }
    let desc = |e: &EdgePerm| match &e.user {
        PermUser::Backend => "an unnamed block device".to_owned(),
        PermUser::Device(d) => format!("block device '{d}'"),
        PermUser::Node(n) => format!("node '{n}'"),
        PermUser::Job(j) => j.clone(),
    };
    let (required, unshared) = if c.new_needs {
        (new, &c.existing)
    } else {
        (&c.existing, new)
    };
    QmpError::generic(format!(
        "Permission conflict on node '{node}': permissions '{perms}' are both required by {} (uses node '{node}' as '{}' child) and unshared by {} (uses node '{node}' as '{}' child).",
        desc(required),
        required.role,
        desc(unshared),
        unshared.role
    ))
}
