//! Images on disk: what opening a `file` node or a `qcow2` header reads.
//!
//! This is the only place that touches image files; the graph model gets
//! the facts as plain data ([`crate::model::graph::ImageFacts`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::model::graph::{FileFacts, Qcow2Facts};

/// Why an image could not be opened. The command layer words these as QEMU.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// open()/stat() failed; the text is `strerror(errno)`.
    #[error("Could not open '{path}': {reason}")]
    Open {
        /// The filename as given.
        path: String,
        /// `strerror` text.
        reason: String,
    },
    /// The file is not a qcow2 image (bad magic).
    #[error("Image is not in qcow2 format")]
    NotQcow2,
    /// A qcow2 header field QEMU would refuse.
    #[error("{0}")]
    BadQcow2(String),
}

/// Creates an empty qcow2 image (QEMU's defaults: v3, 64 KiB clusters,
/// 16-bit refcounts) with an optional backing file and format in its header.
pub fn create_qcow2(
    filename: &str,
    size: u64,
    backing: Option<(&str, &str)>,
) -> Result<(), ImageError> {
    use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
    let err = |e: std::io::Error| ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let file = imago::file::File::create_open(
        StorageCreateOptions::new()
            .filename(filename)
            .size(0)
            .overwrite(true),
    )
    .map_err(err)?;
    let mut b = imago::qcow2::Qcow2::<imago::file::File>::create_builder(file).size(size);
    if let Some((name, format)) = backing {
        b = b.backing(name.to_owned(), format.to_owned());
    }
    b.create().map_err(err)
}

/// `strerror()` text of an I/O error, without Rust's " (os error N)".
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// What opening a file reads: its size and allocated bytes.
pub fn open_file(filename: &str) -> Result<FileFacts, ImageError> {
    let err = |e: std::io::Error| ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let f = File::open(filename).map_err(err)?;
    let m = f.metadata().map_err(err)?;
    Ok(FileFacts {
        filename: filename.to_owned(),
        size: m.len(),
        allocated: m.blocks() * 512,
    })
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

const QCOW2_MAGIC: u32 = 0x5146_49fb;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Largest header area read (QEMU limits the header and extensions to a cluster).
const HEADER_READ: usize = 64 * 1024;

/// Reads a qcow2 header and the extensions the mock reports.
pub fn read_qcow2(filename: &str) -> Result<Qcow2Facts, ImageError> {
    let err = |e: std::io::Error| ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let mut f = File::open(filename).map_err(err)?;
    let mut buf = Vec::with_capacity(4096);
    f.by_ref()
        .take(HEADER_READ as u64)
        .read_to_end(&mut buf)
        .map_err(err)?;
    parse_qcow2(&buf, Path::new(filename))
}

/// Parses a qcow2 header (`buf` = the start of the file).
pub fn parse_qcow2(buf: &[u8], path: &Path) -> Result<Qcow2Facts, ImageError> {
    if buf.len() < 72 || be32(buf, 0) != QCOW2_MAGIC {
        return Err(ImageError::NotQcow2);
    }
    let version = be32(buf, 4);
    if !(2..=3).contains(&version) {
        return Err(ImageError::BadQcow2(format!(
            "Unsupported qcow2 version {version}"
        )));
    }
    let backing_offset = be64(buf, 8) as usize;
    let backing_len = be32(buf, 16) as usize;
    let cluster_bits = be32(buf, 20);
    let size = be64(buf, 24);
    let (incompatible, compatible, refcount_order, header_len) = if version >= 3 && buf.len() >= 104
    {
        (
            be64(buf, 72),
            be64(buf, 80),
            be32(buf, 96),
            be32(buf, 100) as usize,
        )
    } else {
        (0, 0, 4, 72)
    };
    let compression_type = if version >= 3 && header_len > 104 && buf.len() > 104 {
        buf[104]
    } else {
        0
    };
    let backing_file =
        if backing_offset != 0 && backing_len > 0 && backing_offset + backing_len <= buf.len() {
            Some(
                String::from_utf8_lossy(&buf[backing_offset..backing_offset + backing_len])
                    .into_owned(),
            )
        } else {
            None
        };
    // Header extensions follow the header.
    let mut backing_format = None;
    let mut at = header_len;
    while at + 8 <= buf.len() {
        let (magic, len) = (be32(buf, at), be32(buf, at + 4) as usize);
        if magic == 0 || at + 8 + len > buf.len() {
            break;
        }
        if magic == EXT_BACKING_FORMAT {
            backing_format = Some(String::from_utf8_lossy(&buf[at + 8..at + 8 + len]).into_owned());
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    let full_backing = backing_file.as_ref().map(|b| {
        if b.starts_with('/') || b.contains(':') {
            b.clone()
        } else {
            path.parent()
                .unwrap_or(Path::new(""))
                .join(b)
                .display()
                .to_string()
        }
    });
    Ok(Qcow2Facts {
        version,
        size,
        cluster_size: 1u64 << cluster_bits.min(30),
        backing_file,
        full_backing,
        backing_format,
        dirty: incompatible & 1 != 0,
        corrupt: incompatible & 2 != 0,
        extended_l2: incompatible & 16 != 0,
        lazy_refcounts: compatible & 1 != 0,
        refcount_bits: 1u32 << refcount_order.min(6),
        compression_zstd: compression_type == 1,
    })
}
