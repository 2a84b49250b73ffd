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

/// Rewrites the backing file name and the backing-format extension of a
/// qcow2 image, as QEMU's `qcow2_change_backing_file()` does: header
/// extensions are rewritten and the name follows them in the first cluster.
pub fn set_qcow2_backing(filename: &str, backing: Option<(&str, &str)>) -> Result<(), ImageError> {
    use std::io::{Seek, SeekFrom, Write};
    let err = |e: std::io::Error| ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(filename)
        .map_err(err)?;
    let mut buf = Vec::new();
    Read::by_ref(&mut f)
        .take(HEADER_READ as u64)
        .read_to_end(&mut buf)
        .map_err(err)?;
    let facts = parse_qcow2(&buf, Path::new(filename))?;
    let cluster = usize::try_from(facts.cluster_size)
        .unwrap_or(65536)
        .min(buf.len());
    let header_len = facts.header_length;
    if header_len < 72 || header_len > cluster {
        return Err(ImageError::BadQcow2(format!(
            "qcow2 header length {header_len} is invalid"
        )));
    }
    // Keep every extension but the backing format; then ours; then the end.
    let mut exts: Vec<u8> = Vec::new();
    let mut at = header_len;
    while at + 8 <= cluster {
        let (magic, len) = (be32(&buf, at), be32(&buf, at + 4) as usize);
        let padded = len.div_ceil(8) * 8;
        if magic == 0 || at + 8 + padded > cluster {
            break;
        }
        if magic != EXT_BACKING_FORMAT {
            exts.extend_from_slice(&buf[at..at + 8 + padded]);
        }
        at += 8 + padded;
    }
    if let Some((_, format)) = backing {
        let padded = format.len().div_ceil(8) * 8;
        exts.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        exts.extend_from_slice(&(format.len() as u32).to_be_bytes());
        exts.extend_from_slice(format.as_bytes());
        exts.resize(exts.len() + padded - format.len(), 0);
    }
    exts.extend_from_slice(&[0u8; 8]);
    let name = backing.map_or(&[][..], |(n, _)| n.as_bytes());
    let name_at = header_len + exts.len();
    if name_at + name.len() > cluster {
        return Err(ImageError::BadQcow2("Backing file name too long".into()));
    }
    let mut first = buf[..cluster].to_vec();
    first[header_len..].fill(0);
    first[header_len..name_at].copy_from_slice(&exts);
    first[name_at..name_at + name.len()].copy_from_slice(name);
    let (off, len) = if name.is_empty() {
        (0u64, 0u32)
    } else {
        (name_at as u64, name.len() as u32)
    };
    first[8..16].copy_from_slice(&off.to_be_bytes());
    first[16..20].copy_from_slice(&len.to_be_bytes());
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(&first).map_err(err)?;
    f.sync_all().map_err(err)
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
    if version >= 3 && buf.len() < 104 {
        return Err(ImageError::BadQcow2("qcow2 header too short".into()));
    }
    let (incompatible, compatible, refcount_order, header_len) = if version >= 3 {
        (
            be64(buf, 72),
            be64(buf, 80),
            be32(buf, 96),
            be32(buf, 100) as usize,
        )
    } else {
        (0, 0, 4, 72)
    };
    if version >= 3 && header_len < 104 {
        return Err(ImageError::BadQcow2("qcow2 header too short".into()));
    }
    if !(9..=21).contains(&cluster_bits) {
        return Err(ImageError::BadQcow2(format!(
            "Unsupported cluster size: 2^{cluster_bits}"
        )));
    }
    if header_len > 1usize << cluster_bits {
        return Err(ImageError::BadQcow2(
            "qcow2 header exceeds cluster size".into(),
        ));
    }
    let compression_type = if version >= 3 && header_len > 104 && buf.len() > 104 {
        buf[104]
    } else {
        0
    };
    // Offsets come from the file: every sum is checked (a fuzzed header
    // found the overflow).
    let backing_file = match backing_offset.checked_add(backing_len) {
        Some(end) if backing_offset != 0 && backing_len > 0 && end <= buf.len() => {
            Some(String::from_utf8_lossy(&buf[backing_offset..end]).into_owned())
        }
        _ => None,
    };
    // Header extensions follow the header.
    let mut backing_format = None;
    let mut at = header_len;
    while at + 8 <= buf.len() {
        let (magic, len) = (be32(buf, at), be32(buf, at + 4) as usize);
        let Some(end) = (at + 8).checked_add(len).filter(|e| *e <= buf.len()) else {
            break;
        };
        if magic == 0 {
            break;
        }
        if magic == EXT_BACKING_FORMAT {
            backing_format = Some(String::from_utf8_lossy(&buf[at + 8..end]).into_owned());
        }
        at = match (at + 8).checked_add(len.div_ceil(8) * 8) {
            Some(next) => next,
            None => break,
        };
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
        header_length: header_len,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, backing_offset: u64, backing_len: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&version.to_be_bytes());
        b[8..16].copy_from_slice(&backing_offset.to_be_bytes());
        b[16..20].copy_from_slice(&backing_len.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b
    }

    #[test]
    fn hostile_header_offsets_are_refused_not_panicked_on() {
        // Found by the qcow2 fuzz target: offset + length overflowed.
        let q = parse_qcow2(&header(3, u64::MAX, 8), Path::new("/x")).unwrap();
        assert_eq!(q.backing_file, None);
        let mut b = header(3, 0, 0);
        // An extension whose length runs past the buffer.
        b[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_qcow2(&b, Path::new("/x")).unwrap().backing_format,
            None
        );
        assert!(matches!(
            parse_qcow2(&b[..10], Path::new("/x")),
            Err(ImageError::NotQcow2)
        ));
    }

    #[test]
    fn a_relative_backing_name_resolves_against_the_image_folder() {
        let mut b = header(3, 200, 6);
        b[200..206].copy_from_slice(b"base.q");
        let q = parse_qcow2(&b, Path::new("/imgs/top.qcow2")).unwrap();
        assert_eq!(q.backing_file.as_deref(), Some("base.q"));
        assert_eq!(q.full_backing.as_deref(), Some("/imgs/base.q"));
        assert_eq!(q.size, 1 << 20);
        assert_eq!(q.cluster_size, 65536);
    }
}
