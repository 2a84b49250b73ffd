//! `blockdev-create`: a `create` job that writes a new image, for the
//! `file` driver (a new plain file) and `qcow2` (a header written into an
//! existing `file` node). It is a plain job, not a block job, and waits in
//! `concluded` for `job-dismiss` (QEMU creates it with manual dismiss).
//!
//! The image is written when the command runs; what QEMU's job would find
//! wrong (a missing directory, an unaligned size, an unknown node) makes
//! the job fail once it runs, with QEMU's text, as recorded.

use super::{desc, Context, Return};
use crate::model::jobs::{Job, JobKind, NO_NODE};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// `blockdev-create`.
#[derive(Debug)]
pub struct BlockdevCreate {
    args: QDict,
}

impl BlockdevCreate {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        BlockdevCreate { args: a.clone() }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let a = &self.args;
        let empty = QDict::new();
        let opts = match a.get("options") {
            Some(QObject::Dict(d)) => d,
            _ => &empty,
        };
        let driver = opts.get_str("driver").unwrap_or_default();
        if !matches!(driver, "file" | "qcow2") {
            // Drivers without .bdrv_co_create; the other creatable formats
            // (luks, vdi, vmdk, …) are not modelled.
            if matches!(
                driver,
                "luks" | "parallels" | "qcow" | "qed" | "vdi" | "vhdx" | "vmdk" | "vpc"
            ) {
                return Err(super::not_implemented(
                    ctx.profile,
                    &format!("blockdev-create of {driver}"),
                ));
            }
            return Err(QmpError::generic("Driver does not support blockdev-create"));
        }
        let id = a.get_str("job-id").unwrap_or_default().to_owned();
        ctx.machine
            .check_job_id(&id)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        let outcome = match driver {
            "file" => create_file(ctx, opts),
            _ => create_qcow2(ctx, opts),
        };
        let job = Job {
            id,
            auto_dismiss: false,
            fails_with: outcome.err(),
            ..Job::new("", JobKind::Create, NO_NODE, 1)
        };
        ctx.machine
            .start_job(job)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        Ok(QObject::Dict(QDict::new()))
    }
}

fn size_opt(opts: &QDict) -> u64 {
    match opts.get("size") {
        Some(QObject::Num(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// The `file` driver's create: a new plain file of `size` bytes.
fn create_file(ctx: &mut Context<'_>, opts: &QDict) -> Result<(), String> {
    let filename = opts.get_str("filename").unwrap_or_default();
    ctx.host
        .create_file(filename, size_opt(opts))
        .map_err(|e| e.to_string())
}

/// qcow2's create: checks in `qcow2_co_create()`'s order, then the header
/// written into the `file` node's file, whose facts are read again.
fn create_qcow2(ctx: &mut Context<'_>, opts: &QDict) -> Result<(), String> {
    let size = size_opt(opts);
    let v = ctx.profile.version();
    let file = match opts.get("file") {
        Some(QObject::Str(name)) => ctx
            .machine
            .graph()
            .find(name)
            .ok_or_else(|| desc::node_lookup(v, name, name).desc)?,
        _ => {
            return Err(
                "mock-qemu: blockdev-create with an inline file definition is not implemented"
                    .into(),
            )
        }
    };
    if !size.is_multiple_of(512) {
        return Err("Image size must be a multiple of 512 bytes".into());
    }
    if let Some(c) = opts.get("cluster-size") {
        if !matches!(c, QObject::Num(n) if n.as_u64() == Some(65536)) {
            return Err("mock-qemu: blockdev-create of qcow2 with a cluster size other than 64 KiB is not implemented".into());
        }
    }
    let Some(filename) = ctx
        .machine
        .graph()
        .node(file)
        .and_then(|n| n.file.as_ref())
        .map(|f| f.filename.clone())
    else {
        return Err(
            "mock-qemu: blockdev-create of qcow2 over a non-file node is not implemented".into(),
        );
    };
    let backing = opts.get_str("backing-file").map(|b| {
        (
            b.to_owned(),
            opts.get_str("backing-fmt").unwrap_or("raw").to_owned(),
        )
    });
    ctx.host
        .create_qcow2(
            &filename,
            size,
            backing.as_ref().map(|(b, f)| (b.as_str(), f.as_str())),
        )
        .map_err(|e| e.to_string())?;
    // The file node sees the file it now holds.
    super::blockdev::refresh_file(ctx, file);
    Ok(())
}
