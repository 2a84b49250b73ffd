//! Images on disk: what opening a `file` node or a `qcow2` header reads.
//!
//! This is the only place that touches image files; the graph model gets
//! the facts as plain data ([`crate::model::graph::ImageFacts`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::model::graph::{FileFacts, PersistBitmap, Qcow2Facts, StoredBitmap};

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
    /// creat() failed (`blockdev-create` of a `file`).
    #[error("Could not create '{path}': {reason}")]
    Create {
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

/// Creates (or truncates) a plain file of `size` bytes, as the `file`
/// driver's `blockdev-create` does without preallocation.
pub fn create_file(filename: &str, size: u64) -> Result<(), ImageError> {
    let err = |e: std::io::Error| ImageError::Create {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(filename)
        .map_err(err)?;
    f.set_len(size).map_err(err)
}

/// The feature name table QEMU writes into every image it creates
/// (type, bit, name).
const FEATURE_NAMES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;

/// Creates an empty qcow2 image laid out as QEMU's `qcow2_co_create()`
/// lays it out (v3, 64 KiB clusters, 16-bit refcounts): header cluster,
/// refcount table, refcount block, then the L1 table grown to `size`, so
/// the file has QEMU's length (196,616 bytes for 1 MiB), which management
/// tools see as the file node's size. imago writes a valid image with
/// another layout; tests open ours with imago and `qemu-img check`.
pub fn create_qcow2(
    filename: &str,
    size: u64,
    backing: Option<(&str, &str)>,
) -> Result<(), ImageError> {
    use std::io::Write;
    const CLUSTER: u64 = 1 << 16;
    let err = |e: std::io::Error| ImageError::Create {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    // One L2 table maps cluster/8 clusters.
    let l1_size = size.div_ceil(CLUSTER * (CLUSTER / 8));
    let l1_bytes = l1_size * 8;
    let l1_clusters = l1_bytes.div_ceil(CLUSTER);
    let l1_offset = if l1_size > 0 { 3 * CLUSTER } else { 0 };
    let mut exts = Vec::new();
    // qcow2_update_header() order: backing format, feature table, end.
    if let Some((_, format)) = backing {
        exts.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        exts.extend_from_slice(&(format.len() as u32).to_be_bytes());
        exts.extend_from_slice(format.as_bytes());
        exts.resize(exts.len().div_ceil(8) * 8, 0);
    }
    exts.extend_from_slice(&EXT_FEATURE_TABLE.to_be_bytes());
    exts.extend_from_slice(&((FEATURE_NAMES.len() * 48) as u32).to_be_bytes());
    for (kind, bit, name) in FEATURE_NAMES {
        let mut entry = [0u8; 48];
        entry[0] = kind;
        entry[1] = bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        exts.extend_from_slice(&entry);
    }
    exts.extend_from_slice(&[0u8; 8]);
    let header_len: usize = 112;
    let name = backing.map_or(&[][..], |(n, _)| n.as_bytes());
    let name_at = header_len + exts.len();
    if name_at + name.len() > CLUSTER as usize {
        return Err(ImageError::BadQcow2("Backing file name too long".into()));
    }
    let mut img = vec![0u8; (3 * CLUSTER) as usize];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    img[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut img, 4, 3);
    if backing.is_some() {
        put64(&mut img, 8, name_at as u64);
        put32(&mut img, 16, name.len() as u32);
    }
    put32(&mut img, 20, 16);
    put64(&mut img, 24, size);
    put32(&mut img, 36, l1_size as u32);
    put64(&mut img, 40, l1_offset);
    put64(&mut img, 48, CLUSTER);
    put32(&mut img, 56, 1);
    put32(&mut img, 96, 4);
    put32(&mut img, 100, header_len as u32);
    img[header_len..name_at].copy_from_slice(&exts);
    img[name_at..name_at + name.len()].copy_from_slice(name);
    // Refcount table: one block at cluster 2, counting every cluster used.
    put64(&mut img, CLUSTER as usize, 2 * CLUSTER);
    for c in 0..3 + l1_clusters as usize {
        img[(2 * CLUSTER) as usize + 2 * c + 1] = 1;
    }
    // The L1 table (all zero) ends the file.
    img.resize(img.len() + l1_bytes as usize, 0);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(filename)
        .map_err(err)?;
    f.write_all(&img).map_err(err)
}

/// Where a qcow2 image holds data of its own: (bytes in allocated data
/// clusters, guest offset of the first one). Zero-flagged and unallocated
/// clusters read without touching data (what a job copying the image skips
/// reading).
pub fn qcow2_allocation(filename: &str) -> Result<(u64, Option<u64>), ImageError> {
    use std::io::{Seek, SeekFrom};
    let err = |e: std::io::Error| ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let mut f = std::fs::File::open(filename).map_err(err)?;
    let mut head = Vec::new();
    Read::by_ref(&mut f)
        .take(HEADER_READ as u64)
        .read_to_end(&mut head)
        .map_err(err)?;
    if head.len() < 112 {
        return Ok((0, None));
    }
    let facts = parse_qcow2(&head, Path::new(filename))?;
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let cluster = facts.cluster_size;
    let l1_size = u64::from(be32(&head, 36)).min(1 << 24);
    let l1_offset = be64(&head, 40);
    let mut l1 = vec![0u8; usize::try_from(l1_size * 8).unwrap_or(0)];
    f.seek(SeekFrom::Start(l1_offset)).map_err(err)?;
    f.read_exact(&mut l1).map_err(err)?;
    let per_l2 = cluster / 8;
    let mut l2 = vec![0u8; usize::try_from(cluster).unwrap_or(0)];
    let (mut bytes, mut first) = (0u64, None);
    for i in 0..l1_size {
        let l2_at = be64(&l1, usize::try_from(i * 8).unwrap_or(0)) & 0x00ff_ffff_ffff_fe00;
        if l2_at == 0 {
            continue;
        }
        f.seek(SeekFrom::Start(l2_at)).map_err(err)?;
        f.read_exact(&mut l2).map_err(err)?;
        for e in 0..per_l2 {
            let entry = be64(&l2, usize::try_from(e * 8).unwrap_or(0));
            // Bit 0: reads as zero; bits 9-55: the host cluster.
            if entry & 1 == 0 && entry & 0x00ff_ffff_ffff_fe00 != 0 {
                let guest = (i * per_l2 + e) * cluster;
                if guest < facts.size {
                    bytes += cluster.min(facts.size - guest);
                    first.get_or_insert(guest);
                }
            }
        }
    }
    Ok((bytes, first))
}

/// Opens an image to change it, with its first bytes (header and
/// extensions) read.
fn open_for_rewrite(filename: &str) -> Result<(std::fs::File, Vec<u8>), ImageError> {
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
    Ok((f, buf))
}

/// What a full backup of unallocated data leaves in a qcow2 (v3) target:
/// every guest cluster reads as zero through L2 tables whose entries carry
/// the zero flag, one L2 cluster per unmapped L1 entry, allocated at the
/// end of the file and counted in the first refcount block (QEMU writes
/// exactly this: `qemu-img map` then shows the range as zero).
pub fn qcow2_mark_zero(filename: &str) -> Result<(), ImageError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let err = |e: std::io::Error| ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(&e),
    };
    let (mut f, head) = open_for_rewrite(filename)?;
    if head.len() < 112 {
        return Ok(());
    }
    let facts = parse_qcow2(&head, Path::new(filename))?;
    if facts.version < 3 {
        return Ok(());
    }
    let cluster = facts.cluster_size;
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let l1_size = u64::from(be32(&head, 36));
    let l1_offset = be64(&head, 40);
    let reftable = be64(&head, 48);
    let mut rt = [0u8; 8];
    f.seek(SeekFrom::Start(reftable)).map_err(err)?;
    f.read_exact(&mut rt).map_err(err)?;
    let refblock = u64::from_be_bytes(rt);
    let refbits = facts.refcount_bits;
    if refblock == 0 || refbits != 16 || l1_offset == 0 {
        return Ok(());
    }
    let mut l1 = vec![0u8; usize::try_from(l1_size * 8).unwrap_or(0)];
    f.seek(SeekFrom::Start(l1_offset)).map_err(err)?;
    f.read_exact(&mut l1).map_err(err)?;
    let entries_per_l2 = cluster / 8;
    let guest_clusters = facts.size.div_ceil(cluster);
    let mut next = f.seek(SeekFrom::End(0)).map_err(err)?.div_ceil(cluster);
    for i in 0..l1_size {
        let at = usize::try_from(i * 8).unwrap_or(0);
        if be64(&l1, at) != 0 {
            continue;
        }
        // One refcount block of 16-bit entries covers cluster/2 clusters.
        if next >= cluster / 2 {
            break;
        }
        let first = i * entries_per_l2;
        let n = guest_clusters.saturating_sub(first).min(entries_per_l2);
        let mut l2 = vec![0u8; usize::try_from(cluster).unwrap_or(0)];
        for e in 0..usize::try_from(n).unwrap_or(0) {
            l2[e * 8 + 7] = 1;
        }
        let l2_at = next * cluster;
        f.seek(SeekFrom::Start(l2_at)).map_err(err)?;
        f.write_all(&l2).map_err(err)?;
        f.seek(SeekFrom::Start(refblock + next * 2)).map_err(err)?;
        f.write_all(&1u16.to_be_bytes()).map_err(err)?;
        l1[at..at + 8].copy_from_slice(&(l2_at | 1 << 63).to_be_bytes());
        next += 1;
    }
    f.seek(SeekFrom::Start(l1_offset)).map_err(err)?;
    f.write_all(&l1).map_err(err)
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
    let (mut f, buf) = open_for_rewrite(filename)?;
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
    // The backing format first (qcow2_update_header()'s order), then every
    // other extension kept, then the end.
    let mut exts: Vec<u8> = Vec::new();
    if let Some((_, format)) = backing {
        let padded = format.len().div_ceil(8) * 8;
        exts.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        exts.extend_from_slice(&(format.len() as u32).to_be_bytes());
        exts.extend_from_slice(format.as_bytes());
        exts.resize(exts.len() + padded - format.len(), 0);
    }
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
const EXT_BITMAPS: u32 = 0x2385_2875;
/// The most of a bitmap directory the mock reads (65535 entries of a
/// 1023-byte name each fit).
const MAX_BITMAP_DIRECTORY: u64 = 64 * 1024 * 1024;
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
    let mut facts = parse_qcow2(&buf, Path::new(filename))?;
    if let Some((offset, size)) = facts
        .bitmap_directory
        .filter(|(_, size)| *size <= MAX_BITMAP_DIRECTORY)
    {
        use std::io::{Seek, SeekFrom};
        let mut dir = Vec::new();
        f.seek(SeekFrom::Start(offset)).map_err(err)?;
        f.take(size).read_to_end(&mut dir).map_err(err)?;
        facts.bitmaps = parse_bitmap_directory(&dir);
    }
    Ok(facts)
}

/// The entries of a qcow2 bitmap directory (`Qcow2BitmapDirEntry`): each
/// is 24 bytes, then extra data, then the name, padded to 8 bytes.
pub fn parse_bitmap_directory(dir: &[u8]) -> Vec<StoredBitmap> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 24 <= dir.len() {
        let flags = be32(dir, at + 12);
        let granularity_bits = u32::from(dir[at + 17]);
        let name_size = usize::from(u16::from_be_bytes([dir[at + 18], dir[at + 19]]));
        let extra = be32(dir, at + 20) as usize;
        let Some(name_at) = (at + 24).checked_add(extra) else {
            break;
        };
        let Some(end) = name_at.checked_add(name_size).filter(|e| *e <= dir.len()) else {
            break;
        };
        out.push(StoredBitmap {
            name: String::from_utf8_lossy(&dir[name_at..end]).into_owned(),
            granularity: 1u64 << granularity_bits.min(63),
            in_use: flags & 1 != 0,
            auto: flags & 2 != 0,
        });
        at += (24 + extra + name_size).div_ceil(8) * 8;
    }
    out
}

/// A backing file name as QEMU completes it (`bdrv_get_full_backing_filename`):
/// absolute names and protocol names as they are, relative ones against the
/// image's folder (as the image was named).
pub fn full_backing_name(backing: &str, image: &Path) -> String {
    if backing.starts_with('/') || backing.contains(':') {
        backing.to_owned()
    } else {
        image
            .parent()
            .unwrap_or(Path::new(""))
            .join(backing)
            .display()
            .to_string()
    }
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
    let mut bitmap_directory = None;
    let autoclear = if version >= 3 { be64(buf, 88) } else { 0 };
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
        // Honoured only while the autoclear bit says the extension is
        // valid (an older writer clears it).
        if magic == EXT_BITMAPS && len >= 24 && autoclear & 1 != 0 {
            let be64 = |at: usize| u64::from_be_bytes(buf[at..at + 8].try_into().unwrap_or([0; 8]));
            bitmap_directory = Some((be64(at + 8 + 16), be64(at + 8 + 8)));
        }
        at = match (at + 8).checked_add(len.div_ceil(8) * 8) {
            Some(next) => next,
            None => break,
        };
    }
    let full_backing = backing_file.as_deref().map(|b| full_backing_name(b, path));
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
        bitmap_directory,
        bitmaps: Vec::new(),
    })
}

/// Bitmap directory entry flag: the bitmap was open for writing.
const BME_IN_USE: u32 = 1;
/// Bitmap directory entry flag: recording when loaded.
const BME_AUTO: u32 = 2;
/// Offset bits of a bitmap table entry.
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// qcow2's limits on the bitmap directory (`QCOW2_MAX_BITMAPS`,
/// `QCOW2_MAX_BITMAP_DIRECTORY_SIZE`).
const MAX_BITMAPS: usize = 65535;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;

/// One entry of a bitmap directory, as `Qcow2Bitmap` holds it.
#[derive(Debug, Clone)]
struct DirEntry {
    table_offset: u64,
    table_size: u32,
    flags: u32,
    granularity_bits: u8,
    name: String,
    /// To be (re)written from the node's bitmap: (granularity, enabled).
    store: Option<(u64, bool)>,
}

/// A qcow2 image opened to change its metadata the way QEMU's qcow2
/// driver does: a cluster allocator over the refcounts
/// (`alloc_clusters_noref`: first fit from the lowest index, as a freshly
/// opened image's `free_cluster_index`), writes kept in order and made at
/// the end, so a layout the mock cannot reproduce leaves the file as it was.
struct Qcow2Meta {
    f: File,
    /// The first cluster (header, extensions, backing name).
    head: Vec<u8>,
    cluster_bits: u32,
    refcount_order: u32,
    size: u64,
    reftable: Vec<u64>,
    /// Refcount blocks read (and changed), by offset.
    refblocks: std::collections::BTreeMap<u64, Vec<u8>>,
    dirty_blocks: std::collections::BTreeSet<u64>,
    free_index: u64,
    autoclear: u64,
    nb_bitmaps: u32,
    dir_offset: u64,
    dir_size: u64,
    /// Writes to make, in order.
    writes: Vec<(u64, Vec<u8>)>,
    /// Freed bitmap data clusters (QEMU discards them: `QCOW2_DISCARD_ALWAYS`).
    discards: Vec<u64>,
}

impl Qcow2Meta {
    /// Opens `filename` (`None`: not a qcow2 v3 image the mock can change).
    fn open(filename: &str) -> Result<Option<Self>, ImageError> {
        let (mut f, head) = open_for_rewrite(filename)?;
        let Ok(facts) = parse_qcow2(&head, Path::new(filename)) else {
            return Ok(None);
        };
        let cluster = facts.cluster_size;
        if facts.version < 3 || (head.len() as u64) < cluster.min(HEADER_READ as u64) {
            return Ok(None);
        }
        let cluster_bits = cluster.trailing_zeros();
        let refcount_order = facts.refcount_bits.trailing_zeros();
        let reftable_offset = be64(&head, 48);
        let reftable_clusters = u64::from(be32(&head, 56));
        if reftable_clusters > 64 || !reftable_offset.is_multiple_of(cluster) {
            return Ok(None);
        }
        let mut rt = vec![0u8; usize::try_from(reftable_clusters << cluster_bits).unwrap_or(0)];
        read_at(&mut f, reftable_offset, &mut rt).map_err(|e| io_err(filename, &e))?;
        let reftable = rt.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let (dir_offset, dir_size) = facts.bitmap_directory.unwrap_or((0, 0));
        let nb_bitmaps = if facts.bitmap_directory.is_some() {
            bitmaps_ext_count(&head, facts.header_length)
        } else {
            0
        };
        Ok(Some(Qcow2Meta {
            f,
            head: head[..usize::try_from(cluster).unwrap_or(0).min(head.len())].to_vec(),
            cluster_bits,
            refcount_order,
            size: facts.size,
            reftable,
            refblocks: std::collections::BTreeMap::new(),
            dirty_blocks: std::collections::BTreeSet::new(),
            free_index: 0,
            autoclear: be64(&head, 88),
            nb_bitmaps,
            dir_offset,
            dir_size,
            writes: Vec::new(),
            discards: Vec::new(),
        }))
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Clusters one refcount block covers, as a power of two.
    fn block_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }

    /// The refcount block covering cluster `index` (`None`: unallocated).
    fn refblock(&mut self, index: u64) -> std::io::Result<Option<u64>> {
        let Some(&entry) = usize::try_from(index >> self.block_bits())
            .ok()
            .and_then(|i| self.reftable.get(i))
        else {
            return Ok(None);
        };
        let at = entry & !(self.cluster() - 1) & BME_OFFSET_MASK;
        if at == 0 {
            return Ok(None);
        }
        if !self.refblocks.contains_key(&at) {
            let mut b = vec![0u8; usize::try_from(self.cluster()).unwrap_or(0)];
            read_at(&mut self.f, at, &mut b)?;
            self.refblocks.insert(at, b);
        }
        Ok(Some(at))
    }

    fn refcount(&mut self, index: u64) -> std::io::Result<u64> {
        let Some(at) = self.refblock(index)? else {
            return Ok(0);
        };
        let bits = 1u64 << self.refcount_order;
        let i = index & ((1 << self.block_bits()) - 1);
        let b = &self.refblocks[&at];
        let bit = i * bits;
        let byte = usize::try_from(bit / 8).unwrap_or(0);
        Ok(match bits {
            8 => u64::from(b[byte]),
            16 => u64::from(u16::from_be_bytes([b[byte], b[byte + 1]])),
            32 => u64::from(be32(b, byte)),
            64 => be64(b, byte),
            // Sub-byte widths: bit 0 is the lowest of the byte.
            _ => (u64::from(b[byte]) >> (bit % 8)) & ((1 << bits) - 1),
        })
    }

    /// Changes cluster `index`'s refcount by `delta` (`update_refcount`).
    fn add_refcount(&mut self, index: u64, delta: i64) -> Result<(), String> {
        let at = self
            .refblock(index)
            .map_err(|e| strerror(&e))?
            .ok_or("a new refcount block would be needed")?;
        let old = self.refcount(index).map_err(|e| strerror(&e))?;
        let bits = 1u64 << self.refcount_order;
        let max = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let new = old
            .checked_add_signed(delta)
            .filter(|n| *n <= max)
            .ok_or("refcount overflow")?;
        let i = index & ((1 << self.block_bits()) - 1);
        let bit = i * bits;
        let byte = usize::try_from(bit / 8).unwrap_or(0);
        let b = self.refblocks.get_mut(&at).ok_or("refcount block")?;
        match bits {
            8 => b[byte] = new as u8,
            16 => b[byte..byte + 2].copy_from_slice(&(new as u16).to_be_bytes()),
            32 => b[byte..byte + 4].copy_from_slice(&(new as u32).to_be_bytes()),
            64 => b[byte..byte + 8].copy_from_slice(&new.to_be_bytes()),
            _ => {
                let shift = bit % 8;
                let mask = (((1u64 << bits) - 1) << shift) as u8;
                b[byte] = (b[byte] & !mask) | (((new << shift) as u8) & mask);
            }
        }
        self.dirty_blocks.insert(at);
        if new == 0 && index < self.free_index {
            self.free_index = index;
        }
        Ok(())
    }

    /// `qcow2_alloc_clusters()`: the first run of free clusters from
    /// `free_cluster_index`, counted once.
    fn alloc(&mut self, bytes: u64) -> Result<u64, String> {
        let n = bytes.div_ceil(self.cluster()).max(1);
        'retry: loop {
            let start = self.free_index;
            for _ in 0..n {
                let i = self.free_index;
                self.free_index += 1;
                if self.refcount(i).map_err(|e| strerror(&e))? != 0 {
                    continue 'retry;
                }
            }
            for i in start..start + n {
                self.add_refcount(i, 1)?;
            }
            return Ok(start << self.cluster_bits);
        }
    }

    /// `qcow2_free_clusters()` of the clusters `[offset, offset + bytes)`.
    fn free(&mut self, offset: u64, bytes: u64) -> Result<(), String> {
        let first = offset >> self.cluster_bits;
        let last = offset
            .checked_add(bytes.max(1) - 1)
            .ok_or("cluster offset out of range")?
            >> self.cluster_bits;
        for i in first..=last {
            self.add_refcount(i, -1)?;
        }
        Ok(())
    }

    fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
        read_at(&mut self.f, offset, &mut b).map_err(|e| strerror(&e))?;
        Ok(b)
    }

    /// `bitmap_list_load()`: the directory the header extension points to.
    fn load_dir(&mut self) -> Result<Vec<DirEntry>, String> {
        if self.nb_bitmaps == 0 {
            return Ok(Vec::new());
        }
        if self.dir_size > MAX_BITMAP_DIRECTORY {
            return Err("Requested bitmap directory size is too big".into());
        }
        let dir = self.read(self.dir_offset, self.dir_size)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 24 <= dir.len() {
            let name_size = usize::from(u16::from_be_bytes([dir[at + 18], dir[at + 19]]));
            let extra = be32(&dir, at + 20) as usize;
            let name_at = at + 24 + extra;
            let Some(name) = dir.get(name_at..name_at + name_size) else {
                return Err("Broken bitmap directory".into());
            };
            // check_dir_entry(): what QEMU refuses to load.
            let (table_offset, table_size) = (be64(&dir, at), be32(&dir, at + 8));
            let bits = dir[at + 17];
            if table_size == 0
                || table_offset == 0
                || !table_offset.is_multiple_of(self.cluster())
                || u64::from(table_size) << self.cluster_bits > 0x2000_0000
                || !(9..=31).contains(&bits)
                || dir[at + 16] != 1
            {
                return Err(format!(
                    "Bitmap '{}' doesn't satisfy the constraints",
                    String::from_utf8_lossy(name)
                ));
            }
            out.push(DirEntry {
                table_offset,
                table_size,
                flags: be32(&dir, at + 12),
                granularity_bits: dir[at + 17],
                name: String::from_utf8_lossy(name).into_owned(),
                store: None,
            });
            at += (24 + extra + name_size).div_ceil(8) * 8;
        }
        if out.len() != self.nb_bitmaps as usize {
            return Err("Broken bitmap directory".into());
        }
        Ok(out)
    }

    /// A bitmap table's entries.
    fn load_table(&mut self, offset: u64, size: u32) -> Result<Vec<u64>, String> {
        let b = self.read(offset, u64::from(size) * 8)?;
        Ok(b.chunks_exact(8).map(|c| be64(c, 0)).collect())
    }

    /// `free_bitmap_clusters()`: the data clusters, then the table.
    fn free_table(&mut self, offset: u64, size: u32) -> Result<(), String> {
        if offset == 0 {
            return Ok(());
        }
        for e in self.load_table(offset, size)? {
            let at = e & BME_OFFSET_MASK;
            if at != 0 {
                self.free(at, self.cluster())?;
                self.discards.push(at);
            }
        }
        self.free(offset, u64::from(size) * 8)
    }

    /// `store_bitmap()` of an empty bitmap: no data clusters (an empty
    /// bitmap has no dirty chunk), the table allocated and written.
    /// `old`: the table of the stored version, whose data clusters are
    /// copied (the mock keeps no bits of its own).
    fn store_bitmap(
        &mut self,
        e: &mut DirEntry,
        granularity: u64,
        old: Option<(u64, u32)>,
    ) -> Result<(), String> {
        // bdrv_dirty_bitmap_serialization_size(): whole 64-bit words.
        let bits = self.size.div_ceil(granularity);
        let bytes = bits.div_ceil(64) * 8;
        let tb_size = bytes.div_ceil(self.cluster()).max(1);
        let mut table = vec![0u64; usize::try_from(tb_size).map_err(|e| e.to_string())?];
        if let Some((offset, size)) = old.filter(|(o, s)| *o != 0 && u64::from(*s) == tb_size) {
            for (i, entry) in self.load_table(offset, size)?.into_iter().enumerate() {
                let at = entry & BME_OFFSET_MASK;
                if at != 0 {
                    let data = self.read(at, self.cluster())?;
                    let new = self.alloc(self.cluster())?;
                    self.writes.push((new, data));
                    table[i] = new;
                }
            }
        }
        let tb_offset = self.alloc(tb_size * 8)?;
        let mut raw = Vec::with_capacity(table.len() * 8);
        for t in &table {
            raw.extend_from_slice(&t.to_be_bytes());
        }
        self.writes.push((tb_offset, raw));
        e.table_offset = tb_offset;
        e.table_size = u32::try_from(tb_size).map_err(|e| e.to_string())?;
        e.flags = 0;
        Ok(())
    }

    /// The directory's bytes (`bitmap_list_store()`).
    fn dir_bytes(list: &[DirEntry]) -> Vec<u8> {
        let mut dir = Vec::new();
        for e in list {
            let start = dir.len();
            dir.extend_from_slice(&e.table_offset.to_be_bytes());
            dir.extend_from_slice(&e.table_size.to_be_bytes());
            dir.extend_from_slice(&e.flags.to_be_bytes());
            dir.push(1);
            dir.push(e.granularity_bits);
            dir.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
            dir.extend_from_slice(&0u32.to_be_bytes());
            dir.extend_from_slice(e.name.as_bytes());
            dir.resize(start + (24 + e.name.len()).div_ceil(8) * 8, 0);
        }
        dir
    }

    /// `update_ext_header_and_dir()`: a new directory (none for an empty
    /// list), the header pointing to it, the old one freed.
    fn replace_dir(&mut self, list: &[DirEntry]) -> Result<(), String> {
        let (old_offset, old_size) = (self.dir_offset, self.dir_size);
        if list.is_empty() {
            self.autoclear &= !1;
            (self.dir_offset, self.dir_size, self.nb_bitmaps) = (0, 0, 0);
        } else {
            if list.len() > MAX_BITMAPS {
                return Err("Too many persistent bitmaps".into());
            }
            let dir = Self::dir_bytes(list);
            let at = self.alloc(dir.len() as u64)?;
            self.dir_size = dir.len() as u64;
            self.dir_offset = at;
            self.nb_bitmaps = list.len() as u32;
            self.writes.push((at, dir));
            self.autoclear |= 1;
        }
        self.write_header()?;
        if old_size > 0 {
            self.free(old_offset, old_size)?;
        }
        Ok(())
    }

    /// `qcow2_update_header()`: the first cluster rewritten whole, its
    /// extensions in QEMU's order (backing format, external data file,
    /// encryption, feature table, bitmaps, the unknown ones), then the
    /// backing file name.
    fn write_header(&mut self) -> Result<(), String> {
        let head = &self.head;
        let header_len = be32(head, 100) as usize;
        if header_len < 104 || header_len > head.len() {
            return Err("qcow2 header length is invalid".into());
        }
        let mut known: [Vec<u8>; 4] = Default::default();
        let mut unknown = Vec::new();
        let mut at = header_len;
        while at + 8 <= head.len() {
            let (magic, len) = (be32(head, at), be32(head, at + 4) as usize);
            let padded = len.div_ceil(8) * 8;
            if magic == 0 || at + 8 + padded > head.len() {
                break;
            }
            let ext = &head[at..at + 8 + padded];
            match magic {
                EXT_BACKING_FORMAT => known[0] = ext.to_vec(),
                EXT_DATA_FILE => known[1] = ext.to_vec(),
                EXT_CRYPTO => known[2] = ext.to_vec(),
                EXT_FEATURE_TABLE => known[3] = ext.to_vec(),
                EXT_BITMAPS => {}
                _ => unknown.extend_from_slice(ext),
            }
            at += 8 + padded;
        }
        let mut exts: Vec<u8> = known.concat();
        if self.nb_bitmaps > 0 {
            exts.extend_from_slice(&EXT_BITMAPS.to_be_bytes());
            exts.extend_from_slice(&24u32.to_be_bytes());
            exts.extend_from_slice(&self.nb_bitmaps.to_be_bytes());
            exts.extend_from_slice(&0u32.to_be_bytes());
            exts.extend_from_slice(&self.dir_size.to_be_bytes());
            exts.extend_from_slice(&self.dir_offset.to_be_bytes());
        }
        exts.extend_from_slice(&unknown);
        exts.extend_from_slice(&[0u8; 8]);
        let (name_off, name_len) = (be64(head, 8) as usize, be32(head, 16) as usize);
        let name = match name_off.checked_add(name_len) {
            Some(end) if name_off != 0 && end <= head.len() => head[name_off..end].to_vec(),
            _ => Vec::new(),
        };
        let name_at = header_len + exts.len();
        if name_at + name.len() > head.len() {
            return Err("header extensions do not fit the first cluster".into());
        }
        let mut first = head[..header_len].to_vec();
        first.resize(head.len(), 0);
        first[header_len..name_at].copy_from_slice(&exts);
        first[name_at..name_at + name.len()].copy_from_slice(&name);
        if !name.is_empty() {
            first[8..16].copy_from_slice(&(name_at as u64).to_be_bytes());
        }
        first[88..96].copy_from_slice(&self.autoclear.to_be_bytes());
        self.head = first.clone();
        self.writes.push((0, first));
        Ok(())
    }

    /// Makes every planned write, then the changed refcount blocks, then
    /// discards the freed bitmap data clusters.
    fn commit(mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        for (at, bytes) in std::mem::take(&mut self.writes) {
            self.f.seek(SeekFrom::Start(at))?;
            self.f.write_all(&bytes)?;
        }
        for at in &self.dirty_blocks {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&self.refblocks[at])?;
        }
        for at in &self.discards {
            crate::sys::punch_hole(&self.f, *at, 1 << self.cluster_bits)?;
        }
        self.f.sync_all()
    }
}

fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    // Past the end of the file reads as zeroes (a sparse tail).
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    buf[got..].fill(0);
    Ok(())
}

fn io_err(filename: &str, e: &std::io::Error) -> ImageError {
    ImageError::Open {
        path: filename.to_owned(),
        reason: strerror(e),
    }
}

/// The bitmaps extension's `nb_bitmaps`.
fn bitmaps_ext_count(head: &[u8], header_len: usize) -> u32 {
    let mut at = header_len;
    while at + 8 <= head.len() {
        let (magic, len) = (be32(head, at), be32(head, at + 4) as usize);
        if magic == 0 {
            break;
        }
        if magic == EXT_BITMAPS && len >= 4 && at + 12 <= head.len() {
            return be32(head, at + 8);
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    0
}

/// What storing bitmaps could not do (the file is left as it was).
fn store_error(filename: &str, what: String) -> ImageError {
    ImageError::BadQcow2(format!("{filename}: {what}"))
}

/// `qcow2_store_persistent_dirty_bitmaps()` at close: the node's
/// persistent, writable, consistent bitmaps (newest first, QEMU's list
/// order) are written into the image — bitmaps the directory lacks are
/// appended, stored ones (in use since the node opened) get new tables
/// and their old ones are freed after the new directory is in place.
/// The mock holds no dirty bits: a bitmap is stored empty, or with the
/// data clusters it was loaded with.
pub fn store_qcow2_bitmaps(filename: &str, bitmaps: &[PersistBitmap]) -> Result<(), ImageError> {
    if bitmaps.is_empty() {
        return Ok(());
    }
    let Some(mut m) = Qcow2Meta::open(filename)? else {
        return Ok(());
    };
    let fail = |w: String| store_error(filename, w);
    let mut list = m.load_dir().map_err(fail)?;
    let mut drop_tables = Vec::new();
    for b in bitmaps {
        let bits = b.granularity.trailing_zeros();
        if !(9..=31).contains(&bits) || b.name.len() > 1023 {
            return Err(fail(format!(
                "Bitmap '{}' doesn't satisfy the constraints",
                b.name
            )));
        }
        match list.iter_mut().find(|e| e.name == b.name) {
            None => list.push(DirEntry {
                table_offset: 0,
                table_size: 0,
                flags: 0,
                granularity_bits: bits as u8,
                name: b.name.clone(),
                store: Some((b.granularity, b.enabled)),
            }),
            Some(e) if e.flags & BME_IN_USE == 0 => {
                return Err(fail(format!(
                    "Bitmap '{}' already exists in the image",
                    b.name
                )));
            }
            Some(e) => {
                drop_tables.push((e.table_offset, e.table_size));
                e.granularity_bits = bits as u8;
                e.store = Some((b.granularity, b.enabled));
            }
        }
    }
    for e in &mut list {
        let Some((granularity, enabled)) = e.store else {
            continue;
        };
        let old = (e.table_offset != 0).then_some((e.table_offset, e.table_size));
        m.store_bitmap(e, granularity, old).map_err(fail)?;
        e.flags = if enabled { BME_AUTO } else { 0 };
    }
    m.replace_dir(&list).map_err(fail)?;
    for (offset, size) in drop_tables {
        m.free_table(offset, size).map_err(fail)?;
    }
    m.commit().map_err(|e| io_err(filename, &e))
}

/// `qcow2_load_dirty_bitmaps()` on a writable node: every stored bitmap
/// not yet marked is flagged in use, the directory rewritten in place
/// (`update_ext_header_and_dir_in_place()`), the header rewritten.
pub fn mark_qcow2_bitmaps_in_use(filename: &str) -> Result<(), ImageError> {
    let Some(mut m) = Qcow2Meta::open(filename)? else {
        return Ok(());
    };
    let fail = |w: String| store_error(filename, w);
    let mut list = m.load_dir().map_err(fail)?;
    if list.iter().all(|e| e.flags & BME_IN_USE != 0) {
        return Ok(());
    }
    for e in &mut list {
        e.flags |= BME_IN_USE;
    }
    let dir = Qcow2Meta::dir_bytes(&list);
    if dir.len() as u64 != m.dir_size {
        return Err(fail("bitmap directory size changed".into()));
    }
    m.writes.push((m.dir_offset, dir));
    m.write_header().map_err(fail)?;
    m.commit().map_err(|e| io_err(filename, &e))
}

/// `qcow2_co_remove_persistent_dirty_bitmap()`: the bitmap leaves the
/// directory (a new one is written, or none when it was the last), then
/// its clusters are freed. A name the image does not hold changes nothing.
pub fn remove_qcow2_bitmap(filename: &str, name: &str) -> Result<(), ImageError> {
    let Some(mut m) = Qcow2Meta::open(filename)? else {
        return Ok(());
    };
    let fail = |w: String| store_error(filename, w);
    let mut list = m.load_dir().map_err(fail)?;
    let Some(i) = list.iter().position(|e| e.name == name) else {
        return Ok(());
    };
    let gone = list.remove(i);
    m.replace_dir(&list).map_err(fail)?;
    m.free_table(gone.table_offset, gone.table_size)
        .map_err(fail)?;
    m.commit().map_err(|e| io_err(filename, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full backup's zero-flagged L2 table, byte for byte as QEMU 10.0
    /// leaves it (recorded with real qemu-storage-daemon: L1[0] =
    /// 0x8000000000040000, 16 zero entries, refcount of cluster 4).
    #[test]
    fn marking_zero_writes_qemus_l2_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.qcow2").display().to_string();
        create_qcow2(&p, 1 << 20, None).unwrap();
        qcow2_mark_zero(&p).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 327_680);
        assert_eq!(
            &b[0x30000..0x30008],
            &0x8000_0000_0004_0000u64.to_be_bytes()
        );
        assert_eq!(&b[0x20008..0x2000a], &[0, 1]);
        for e in 0..16 {
            assert_eq!(
                &b[0x40000 + e * 8..0x40000 + e * 8 + 8],
                &1u64.to_be_bytes()
            );
        }
        assert!(b[0x40000 + 16 * 8..].iter().all(|&x| x == 0));
        // Idempotent: a second full backup allocates nothing more.
        qcow2_mark_zero(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap().len(), 327_680);
        if let Ok(out) = std::process::Command::new("qemu-img")
            .args(["check", &p])
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// Byte for byte what `qemu-img create -f qcow2` writes, for images
    /// with and without a backing file, and of a size whose L1 table
    /// spans clusters; and readable by imago (an independent reader).
    #[test]
    fn created_images_are_qemus_layout() {
        let dir = tempfile::tempdir().unwrap();
        type Case<'a> = (&'a str, u64, Option<(&'a str, &'a str)>);
        let cases: [Case; 3] = [
            ("plain", 1 << 20, None),
            ("overlay", 1 << 20, Some(("/base/image.qcow2", "qcow2"))),
            ("huge", 5 << 40, Some(("b.raw", "raw"))),
        ];
        for (name, size, backing) in cases {
            let ours = dir.path().join(format!("{name}.mine"));
            let ours_s = ours.display().to_string();
            create_qcow2(&ours_s, size, backing).unwrap();
            let facts = read_qcow2(&ours_s).unwrap();
            assert_eq!(facts.size, size);
            assert_eq!(facts.backing_file.as_deref(), backing.map(|b| b.0));
            assert_eq!(facts.backing_format.as_deref(), backing.map(|b| b.1));
            {
                use imago::{Storage, StorageOpenOptions};
                let file =
                    imago::file::File::open(StorageOpenOptions::new().filename(&ours_s)).unwrap();
                let q = imago::qcow2::Qcow2::<imago::file::File>::open_image(file, false).unwrap();
                assert_eq!(imago::FormatAccess::new(q).size(), size);
            }
            let theirs = dir.path().join(format!("{name}.qemu"));
            let mut cmd = std::process::Command::new("qemu-img");
            cmd.args(["create", "-q", "-f", "qcow2", "-u"]);
            if let Some((b, f)) = backing {
                cmd.args(["-b", b, "-F", f]);
            }
            cmd.arg(&theirs).arg(size.to_string());
            match cmd.status() {
                Ok(s) if s.success() => {
                    let (a, b) = (
                        std::fs::read(&ours).unwrap(),
                        std::fs::read(&theirs).unwrap(),
                    );
                    assert_eq!(a.len(), b.len(), "{name}: file length");
                    assert!(a == b, "{name}: bytes differ from qemu-img's");
                }
                _ => eprintln!("qemu-img not available: layout compared by length only"),
            }
        }
    }

    fn pb(name: &str, granularity: u64, enabled: bool) -> PersistBitmap {
        PersistBitmap {
            name: name.into(),
            granularity,
            enabled,
        }
    }

    /// Runs qemu-img; `false` when it is not installed.
    fn qemu_img(args: &[&str]) -> bool {
        match std::process::Command::new("qemu-img").args(args).output() {
            Ok(o) => {
                assert!(
                    o.status.success(),
                    "qemu-img {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Storing, marking in use and removing persistent bitmaps leave the
    /// bytes QEMU 10.0 leaves (`qemu-img bitmap` runs the same qcow2 code
    /// as a storage daemon: open read-write, marking stored bitmaps in use;
    /// the change; close, storing every bitmap again), and images
    /// `qemu-img check` finds clean: 64 KiB and 4 KiB clusters, 1-bit
    /// refcounts, an image with a backing file (its name and format
    /// extension kept around the bitmaps extension).
    #[test]
    fn bitmaps_are_stored_as_qemu_stores_them() {
        let cases: [(&str, &[&str]); 4] = [
            ("plain", &[]),
            ("small-clusters", &["-o", "cluster_size=4096"]),
            ("one-bit-refcounts", &["-o", "refcount_bits=1"]),
            ("overlay", &["-u", "-b", "base.raw", "-F", "raw"]),
        ];
        for (name, opts) in cases {
            let dir = tempfile::tempdir().unwrap();
            let at = |n: &str| dir.path().join(n).display().to_string();
            let (mine, theirs) = (at("mine.qcow2"), at("theirs.qcow2"));
            let mut args = vec!["create", "-q", "-f", "qcow2"];
            args.extend_from_slice(opts);
            args.extend_from_slice(&[&theirs, "1M"]);
            if !qemu_img(&args) {
                eprintln!("qemu-img not available: skipped");
                return;
            }
            if name == "overlay" {
                qemu_img(&["create", "-q", "-f", "raw", &at("base.raw"), "1M"]);
            }
            if name == "plain" {
                // The mock's own images start the same.
                create_qcow2(&mine, 1 << 20, None).unwrap();
            } else {
                std::fs::copy(&theirs, &mine).unwrap();
            }
            bitmap_sequence(name, &mine, &theirs);
        }
    }

    fn bitmap_sequence(case: &str, mine: &str, theirs: &str) {
        let same = |step: &str| {
            let (a, b) = (std::fs::read(mine).unwrap(), std::fs::read(theirs).unwrap());
            assert_eq!(a.len(), b.len(), "{case}, {step}: file length");
            assert!(a == b, "{case}, {step}: bytes differ from QEMU's");
            assert!(
                qemu_img(&["check", "-q", mine]),
                "{case}, {step}: qemu-img check"
            );
        };
        let cluster = read_qcow2(mine).unwrap().cluster_size;
        // A new disabled bitmap, default granularity (the cluster size).
        store_qcow2_bitmaps(mine, &[pb("p", cluster, false)]).unwrap();
        qemu_img(&["bitmap", "--add", "--disable", theirs, "p"]);
        same("add disabled");
        if case == "plain" {
            assert_eq!(std::fs::metadata(mine).unwrap().len(), 327_712);
        }
        // Another, enabled, 512 B: the stored one is marked in use on
        // open and stored anew (newest first) at close.
        mark_qcow2_bitmaps_in_use(mine).unwrap();
        store_qcow2_bitmaps(mine, &[pb("second", 512, true), pb("p", cluster, false)]).unwrap();
        qemu_img(&["bitmap", "--add", "-g", "512", theirs, "second"]);
        same("add enabled");
        // Enabling a stored bitmap.
        mark_qcow2_bitmaps_in_use(mine).unwrap();
        store_qcow2_bitmaps(mine, &[pb("p", cluster, true), pb("second", 512, true)]).unwrap();
        qemu_img(&["bitmap", "--enable", theirs, "p"]);
        same("enable");
        // Removing one: a new directory at once, the rest stored at close.
        mark_qcow2_bitmaps_in_use(mine).unwrap();
        remove_qcow2_bitmap(mine, "second").unwrap();
        store_qcow2_bitmaps(mine, &[pb("p", cluster, true)]).unwrap();
        qemu_img(&["bitmap", "--remove", theirs, "second"]);
        same("remove one");
        // Removing the last: no directory, no extension, autoclear off.
        mark_qcow2_bitmaps_in_use(mine).unwrap();
        remove_qcow2_bitmap(mine, "p").unwrap();
        qemu_img(&["bitmap", "--remove", theirs, "p"]);
        same("remove last");
        assert!(read_qcow2(mine).unwrap().bitmaps.is_empty());
    }

    /// Changing bitmaps in a damaged image fails or does something, never
    /// panics: bytes of the header, refcount table and block, bitmap table
    /// and directory overwritten (a fixed pseudo-random sequence).
    #[test]
    fn damaged_images_do_not_panic_the_bitmap_writer() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.qcow2").display().to_string();
        create_qcow2(&good, 1 << 20, None).unwrap();
        store_qcow2_bitmaps(&good, &[pb("a", 65536, true), pb("b", 512, false)]).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        // Where the metadata is: header, reftable, refblock, tables, directory.
        let spots: [std::ops::Range<usize>; 5] = [
            0..0x220,
            0x10000..0x10010,
            0x20000..0x20010,
            0x40000..0x40008,
            0x60000..bytes.len(),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let bad = dir.path().join("bad.qcow2").display().to_string();
        for round in 0..400 {
            let mut b = bytes.clone();
            for _ in 0..1 + round % 4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let r = &spots[(seed % 5) as usize];
                let at = r.start + (seed >> 8) as usize % (r.end - r.start);
                b[at] = (seed >> 40) as u8;
            }
            std::fs::write(&bad, &b).unwrap();
            let _ = mark_qcow2_bitmaps_in_use(&bad);
            let _ = store_qcow2_bitmaps(&bad, &[pb("a", 65536, true), pb("c", 1 << 31, true)]);
            let _ = remove_qcow2_bitmap(&bad, "b");
            let _ = read_qcow2(&bad);
        }
    }

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
