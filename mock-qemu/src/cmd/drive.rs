//! What `drive-mirror` and `drive-backup` share: a target given as a file
//! name, which QEMU creates (`mode: absolute-paths`, the default, with a
//! backing file that depends on `sync`) or opens as it is (`mode:
//! existing`), and then opens as a node the job holds (freed when the job
//! ends, unless something else took it, such as a pivot's parents).

use super::blockdev::{filename, Opener};
use super::{not_implemented, Context};
use crate::model::graph::NodeId;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// A command that failed after opening its `drive-*` target lets go of
/// the node again (the file QEMU created stays on disk).
pub(super) fn release_on_error<T>(
    ctx: &mut Context<'_>,
    opened: Option<NodeId>,
    r: Result<T, QmpError>,
) -> Result<T, QmpError> {
    if let (Err(_), Some(node)) = (&r, opened) {
        ctx.machine.graph_mut().free_unused(node);
    }
    r
}

/// A target a `drive-*` command opened.
pub(super) struct DriveTarget {
    /// Its node.
    pub node: NodeId,
    /// QEMU created the image (a new image reads as zeroes).
    pub created: bool,
}

/// Creates (unless `mode: existing`) and opens the target of `src`.
/// drive-mirror's `node-name` names the node; drive-backup (`backup`)
/// opens it with `detect-zeroes` and `discard` set to `unmap`.
pub(super) fn open_target(
    ctx: &mut Context<'_>,
    a: &QDict,
    src: NodeId,
    sync: &str,
    backup: bool,
) -> Result<DriveTarget, QmpError> {
    let path = a.get_str("target").unwrap_or_default().to_owned();
    let existing = a.get_str("mode") == Some("existing");
    let graph = ctx.machine.graph();
    let Some(source) = graph.node(src) else {
        return Err(not_implemented(
            ctx.profile,
            "drive target of a missing node",
        ));
    };
    let size = source.size;
    let format = match a.get_str("format") {
        Some(f) => Some(f.to_owned()),
        None if existing => None,
        None => Some(source.driver.clone()),
    };
    // The new image's backing file: none for full, the source's backing
    // for top, the source itself for none.
    let backing = match sync {
        "top" => graph
            .child(src, "backing")
            .and_then(|b| graph.node(b))
            .map(|b| (filename(graph, b), b.driver.clone())),
        "none" => Some((filename(graph, source), source.driver.clone())),
        _ => None,
    };
    if !existing {
        let made = match format.as_deref() {
            Some("qcow2") => ctx.host.create_qcow2(
                &path,
                size,
                backing.as_ref().map(|(n, f)| (n.as_str(), f.as_str())),
            ),
            Some("raw") => ctx.host.create_file(&path, size),
            Some(other) => {
                return Err(not_implemented(
                    ctx.profile,
                    &format!("creating a {other} target"),
                ))
            }
            None => return Err(not_implemented(ctx.profile, "a target without a format")),
        };
        made.map_err(|e| QmpError::generic(e.to_string()))?;
    }
    let format = match format {
        Some(f) => f,
        None => match ctx.host.read_qcow2(&path) {
            Ok(_) => "qcow2".to_owned(),
            Err(_) => "raw".to_owned(),
        },
    };
    let mut file = QDict::new();
    file.put("driver", "file");
    file.put("filename", path);
    let mut def = QDict::new();
    def.put("driver", format.clone());
    if let Some(n) = a.get_str("node-name") {
        def.put("node-name", n);
    }
    def.put("file", file);
    if backup {
        // drive-backup opens its target with these (recorded: the target
        // node shows detect_zeroes "unmap").
        def.put("discard", "unmap");
        def.put("detect-zeroes", "unmap");
    }
    if format == "qcow2" {
        // Opened without its backing file (BDRV_O_NO_BACKING).
        def.put("backing", QObject::Null);
    }
    let mut opener = Opener::new(ctx);
    let node = match opener.open(&def, false, false) {
        Ok(id) => id,
        Err(e) => {
            opener.rollback();
            return Err(e);
        }
    };
    Ok(DriveTarget {
        node,
        created: !existing,
    })
}
