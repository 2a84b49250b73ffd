//! An in-memory [`HostIo`] for the `session` and `blockops` targets: image files live in a
//! map, so fuzzed requests reach the block graph's file, qcow2 and snapshot
//! code without touching the disk, and every play starts from the same
//! files (the determinism check).
//!
//! A file is its size plus its first bytes (what `read_qcow2` reads); files
//! appear through [`MemHost::insert`] (the `Image`/`File` ops, the
//! `blockops` images), `create_qcow2` (`blockdev-snapshot-sync`,
//! `drive-*` targets, `blockdev-create` of qcow2) and `create_file`
//! (`blockdev-create` of `file`, raw `drive-*` targets). qcow2 headers go through the
//! mock's own [`image::parse_qcow2`], so crafted headers fuzz it too.
//! Rewriting a header's backing file (a finished stream or commit job) goes
//! through the mock's own [`image::set_qcow2_backing`], which only works on
//! a file: [`rewrite_backing`] runs it on a private scratch file (see
//! `scratch_path`), the only file the harness touches. The NBD side is
//! pretended, as `NoHostIo` does.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mock_qemu::host::{HostIo, NbdListen, PublishedExport};
use mock_qemu::image::{self, ImageError};
use mock_qemu::model::graph::{FileFacts, Qcow2Facts};

/// Bytes `read_qcow2` looks at (QEMU reads the header cluster).
const HEADER_READ: usize = 64 << 10;

/// One file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemFile {
    /// Length in bytes.
    pub size: u64,
    /// The first bytes (at most [`HEADER_READ`] are read); the rest is zeroes.
    pub head: Vec<u8>,
}

/// The file map, shared by the harness and the core's host.
pub type Files = Arc<Mutex<BTreeMap<String, MemFile>>>;

/// The in-memory host.
#[derive(Debug, Default, Clone)]
pub struct MemHost {
    files: Files,
}

impl MemFile {
    /// What reading the start of the file returns: the stored bytes, then
    /// zeroes up to the file's end, at most [`HEADER_READ`] bytes.
    pub fn first_bytes(&self) -> Vec<u8> {
        let len = usize::try_from(self.size)
            .unwrap_or(usize::MAX)
            .min(HEADER_READ);
        let mut head = self.head.clone();
        head.resize(len, 0);
        head
    }
}

fn absent(filename: &str) -> ImageError {
    ImageError::Open {
        path: filename.to_owned(),
        reason: "No such file or directory".into(),
    }
}

impl MemHost {
    fn files(&self) -> MutexGuard<'_, BTreeMap<String, MemFile>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file appears (or is replaced).
    pub fn insert(&self, name: &str, file: MemFile) {
        self.files().insert(name.to_owned(), file);
    }

    /// A file's contents, if it exists.
    pub fn get(&self, name: &str) -> Option<MemFile> {
        self.files().get(name).cloned()
    }
}

/// An empty qcow2 v3 image as `qemu-img create -f qcow2` writes it (64 KiB
/// clusters, 16-bit refcounts, three clusters long), with an optional
/// backing file name and backing format extension.
pub fn qcow2_image(size: u64, backing: Option<(&str, &str)>) -> MemFile {
    const HEADER_LEN: u32 = 112;
    let mut h = Vec::with_capacity(512);
    let put32 = |h: &mut Vec<u8>, v: u32| h.extend_from_slice(&v.to_be_bytes());
    let put64 = |h: &mut Vec<u8>, v: u64| h.extend_from_slice(&v.to_be_bytes());
    put32(&mut h, 0x5146_49FB); // magic
    put32(&mut h, 3); // version
    put64(&mut h, 0); // backing_file_offset, patched below
    put32(&mut h, 0); // backing_file_size, patched below
    put32(&mut h, 16); // cluster_bits
    put64(&mut h, size);
    put32(&mut h, 0); // crypt_method
    put32(&mut h, 0); // l1_size
    put64(&mut h, 0x30000); // l1_table_offset
    put64(&mut h, 0x10000); // refcount_table_offset
    put32(&mut h, 1); // refcount_table_clusters
    put32(&mut h, 0); // nb_snapshots
    put64(&mut h, 0); // snapshots_offset
    put64(&mut h, 0); // incompatible_features
    put64(&mut h, 0); // compatible_features
    put64(&mut h, 0); // autoclear_features
    put32(&mut h, 4); // refcount_order
    put32(&mut h, HEADER_LEN);
    h.resize(HEADER_LEN as usize, 0); // compression type zlib, padding
    if let Some((_, format)) = backing {
        put32(&mut h, 0xE279_2ACA);
        put32(&mut h, format.len() as u32);
        h.extend_from_slice(format.as_bytes());
        h.resize(h.len().div_ceil(8) * 8, 0);
    }
    put64(&mut h, 0); // end of extensions
    if let Some((name, _)) = backing {
        let at = h.len() as u64;
        h[8..16].copy_from_slice(&at.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h.extend_from_slice(name.as_bytes());
    }
    MemFile {
        size: 0x30000,
        head: h,
    }
}

/// The scratch file of this thread: in `$MOCK_QEMU_FUZZ_SCRATCH` if set
/// (`ci/fuzz.sh` makes a private folder and removes it), else `/dev/shm`
/// when there is one (no disk writes for `sync_all`), else the temp folder.
/// One fixed name per process and thread, so a run that aborts on a panic
/// leaves at most that one file behind.
fn scratch_path() -> PathBuf {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static PATH: PathBuf = {
            let dir = match std::env::var_os("MOCK_QEMU_FUZZ_SCRATCH") {
                Some(d) => PathBuf::from(d),
                None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
                None => std::env::temp_dir(),
            };
            dir.join(format!(
                "mock-qemu-fuzz-{}-{}.qcow2",
                std::process::id(),
                THREADS.fetch_add(1, Ordering::Relaxed)
            ))
        };
    }
    PATH.with(PathBuf::clone)
}

/// Runs the mock's `image::set_qcow2_backing` on a copy of `head` in a
/// scratch file and returns the rewritten first bytes.
pub fn rewrite_backing(head: &[u8], backing: Option<(&str, &str)>) -> Result<Vec<u8>, ImageError> {
    let path = scratch_path();
    let name = path.display().to_string();
    let io = |e: std::io::Error| ImageError::Open {
        path: name.clone(),
        reason: e.to_string(),
    };
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    std::fs::write(&path, head).map_err(io)?;
    let _remove = Remove(&path);
    image::set_qcow2_backing(&name, backing)?;
    let mut out = Vec::with_capacity(head.len());
    std::fs::File::open(&path)
        .and_then(|f| f.take(HEADER_READ as u64).read_to_end(&mut out))
        .map_err(io)?;
    Ok(out)
}

impl HostIo for MemHost {
    fn open_file(&mut self, filename: &str) -> Result<FileFacts, ImageError> {
        let f = self.get(filename).ok_or_else(|| absent(filename))?;
        Ok(FileFacts {
            filename: filename.to_owned(),
            size: f.size,
            allocated: (f.head.len() as u64).div_ceil(4096) * 4096,
        })
    }

    fn read_qcow2(&mut self, filename: &str) -> Result<Qcow2Facts, ImageError> {
        let f = self.get(filename).ok_or_else(|| absent(filename))?;
        image::parse_qcow2(&f.first_bytes(), Path::new(filename))
    }

    fn create_qcow2(
        &mut self,
        filename: &str,
        size: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        self.insert(filename, qcow2_image(size, backing));
        Ok(())
    }

    fn create_file(&mut self, filename: &str, size: u64) -> Result<(), ImageError> {
        self.insert(
            filename,
            MemFile {
                size,
                head: Vec::new(),
            },
        );
        Ok(())
    }

    fn set_qcow2_backing(
        &mut self,
        filename: &str,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        let f = self.get(filename).ok_or_else(|| absent(filename))?;
        let head = rewrite_backing(&f.first_bytes(), backing)?;
        let size = f.size.max(head.len() as u64);
        self.insert(filename, MemFile { size, head });
        Ok(())
    }

    fn nbd_start(&mut self, _addr: &NbdListen, _max: u32) -> Result<(), String> {
        Ok(())
    }

    fn nbd_stop(&mut self) {}

    fn nbd_publish(&mut self, _export: PublishedExport) {}

    fn nbd_unpublish(&mut self, _name: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_images_read_back_as_written() {
        let mut host = MemHost::default();
        host.create_qcow2("/d/top.qcow2", 1 << 20, Some(("base.img", "raw")))
            .unwrap();
        let facts = host.read_qcow2("/d/top.qcow2").unwrap();
        assert_eq!(facts.size, 1 << 20);
        assert_eq!(facts.version, 3);
        assert_eq!(facts.cluster_size, 65536);
        assert_eq!(facts.backing_file.as_deref(), Some("base.img"));
        assert_eq!(facts.full_backing.as_deref(), Some("/d/base.img"));
        assert_eq!(facts.backing_format.as_deref(), Some("raw"));
        let plain = qcow2_image(512, None);
        host.insert("p", plain);
        assert_eq!(host.read_qcow2("p").unwrap().backing_file, None);
        assert_eq!(host.open_file("p").unwrap().size, 0x30000);
        assert!(host.open_file("nope").is_err());
        host.insert(
            "raw",
            MemFile {
                size: 1 << 20,
                head: vec![],
            },
        );
        assert!(matches!(host.read_qcow2("raw"), Err(ImageError::NotQcow2)));
        host.set_qcow2_backing("/d/top.qcow2", Some(("/e/new.qcow2", "qcow2")))
            .unwrap();
        let facts = host.read_qcow2("/d/top.qcow2").unwrap();
        assert_eq!(facts.backing_file.as_deref(), Some("/e/new.qcow2"));
        assert_eq!(facts.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(facts.size, 1 << 20);
    }
}
