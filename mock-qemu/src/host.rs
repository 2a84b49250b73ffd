//! Effects outside the model: image files and the sockets a QEMU process
//! serves besides its monitors (the NBD server). Commands reach them only
//! through [`HostIo`]: a launched mock plugs in [`RealHostIo`]; the default,
//! [`NoHostIo`], touches nothing (fuzzing, unit tests), so no input can make
//! a sandboxed core create or read files.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use crate::image::{self, ImageError};
use crate::model::graph::{FileFacts, PersistBitmap, Qcow2Facts};
use crate::nbd;

/// Where the NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdListen {
    /// A unix socket path.
    Unix(String),
    /// A TCP host and port.
    Tcp(String, u16),
}

/// What an export serves when clients read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportSource {
    /// Zeroes (null-co / null-aio).
    Zeroes,
    /// The bytes of a raw file.
    File(String),
    /// Reads fail (formats whose data the mock does not serve yet).
    Refuse,
}

/// An export as NBD clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedExport {
    /// Export name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Clients may not write.
    pub read_only: bool,
    /// Data.
    pub source: ExportSource,
}

/// The host side: image files and the NBD server.
pub trait HostIo: Debug + Send {
    /// Opens a file for a `file` node.
    fn open_file(&mut self, filename: &str) -> Result<FileFacts, ImageError>;
    /// Reads a qcow2 header.
    fn read_qcow2(&mut self, filename: &str) -> Result<Qcow2Facts, ImageError>;
    /// Creates an empty qcow2 image, with a backing file and format.
    fn create_qcow2(
        &mut self,
        filename: &str,
        size: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError>;
    /// Rewrites a qcow2 header's backing file name and format.
    fn set_qcow2_backing(
        &mut self,
        filename: &str,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError>;
    /// Where a qcow2 image holds data: (bytes, first guest offset). Without
    /// a real disk: none.
    fn qcow2_allocation(&mut self, _filename: &str) -> Result<(u64, Option<u64>), ImageError> {
        Ok((0, None))
    }
    /// Marks every cluster of a qcow2 image as reading zero (what a full
    /// backup of unallocated data writes). Without a real disk: nothing.
    fn qcow2_mark_zero(&mut self, _filename: &str) -> Result<(), ImageError> {
        Ok(())
    }
    /// Stores persistent bitmaps in a qcow2 image as its node closes.
    /// Without a real disk: nothing.
    fn store_qcow2_bitmaps(
        &mut self,
        _filename: &str,
        _bitmaps: &[PersistBitmap],
    ) -> Result<(), ImageError> {
        Ok(())
    }
    /// Marks the bitmaps stored in a qcow2 image in use (a writable open).
    fn mark_qcow2_bitmaps_in_use(&mut self, _filename: &str) -> Result<(), ImageError> {
        Ok(())
    }
    /// Removes a persistent bitmap from a qcow2 image.
    fn remove_qcow2_bitmap(&mut self, _filename: &str, _name: &str) -> Result<(), ImageError> {
        Ok(())
    }
    /// Creates (or truncates) a plain file (`blockdev-create` of `file`).
    /// Without a real disk nothing can be created.
    fn create_file(&mut self, filename: &str, _size: u64) -> Result<(), ImageError> {
        Err(ImageError::Create {
            path: filename.to_owned(),
            reason: "Permission denied".into(),
        })
    }
    /// Starts listening; `Err` holds QEMU's error text.
    fn nbd_start(&mut self, addr: &NbdListen, max_connections: u32) -> Result<(), String>;
    /// Stops listening and drops clients.
    fn nbd_stop(&mut self);
    /// Makes an export visible to clients.
    fn nbd_publish(&mut self, export: PublishedExport);
    /// Removes an export.
    fn nbd_unpublish(&mut self, name: &str);
}

/// Touches nothing: files do not exist, sockets are pretended (fuzzing,
/// unit tests).
#[derive(Debug, Default)]
pub struct NoHostIo;

fn absent(filename: &str) -> ImageError {
    ImageError::Open {
        path: filename.to_owned(),
        reason: "No such file or directory".into(),
    }
}

impl HostIo for NoHostIo {
    fn open_file(&mut self, filename: &str) -> Result<FileFacts, ImageError> {
        Err(absent(filename))
    }
    fn read_qcow2(&mut self, filename: &str) -> Result<Qcow2Facts, ImageError> {
        Err(absent(filename))
    }
    fn create_qcow2(
        &mut self,
        filename: &str,
        _size: u64,
        _backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        Err(ImageError::Open {
            path: filename.to_owned(),
            reason: "Permission denied".into(),
        })
    }
    fn set_qcow2_backing(
        &mut self,
        _filename: &str,
        _backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        Ok(())
    }
    fn nbd_start(&mut self, _addr: &NbdListen, _max: u32) -> Result<(), String> {
        Ok(())
    }
    fn nbd_stop(&mut self) {}
    fn nbd_publish(&mut self, _export: PublishedExport) {}
    fn nbd_unpublish(&mut self, _name: &str) {}
}

/// The real host: image files on disk and a real NBD server.
#[derive(Debug, Default)]
pub struct RealHostIo {
    exports: nbd::ExportTable,
    server: Option<nbd::NbdServer>,
    /// The folder relative file names resolve against (a process's working
    /// directory); `None`: the process's own.
    base: Option<PathBuf>,
}

impl RealHostIo {
    /// A host whose relative file names resolve against `dir`, as if the
    /// process ran there (a mock in another program's process).
    pub fn in_dir(dir: &Path) -> Self {
        RealHostIo {
            base: Some(dir.to_owned()),
            ..RealHostIo::default()
        }
    }

    /// Where a file name given over QMP is on disk.
    fn path(&self, name: &str) -> String {
        match &self.base {
            Some(b) if !Path::new(name).is_absolute() => b.join(name).display().to_string(),
            _ => name.to_owned(),
        }
    }
}

/// An error about the resolved path, worded with the name as given.
fn as_given(e: ImageError, name: &str) -> ImageError {
    match e {
        ImageError::Open { reason, .. } => ImageError::Open {
            path: name.to_owned(),
            reason,
        },
        ImageError::Create { reason, .. } => ImageError::Create {
            path: name.to_owned(),
            reason,
        },
        other => other,
    }
}

impl HostIo for RealHostIo {
    fn open_file(&mut self, filename: &str) -> Result<FileFacts, ImageError> {
        let facts = image::open_file(&self.path(filename)).map_err(|e| as_given(e, filename))?;
        Ok(FileFacts {
            filename: filename.to_owned(),
            ..facts
        })
    }
    fn read_qcow2(&mut self, filename: &str) -> Result<Qcow2Facts, ImageError> {
        let mut facts =
            image::read_qcow2(&self.path(filename)).map_err(|e| as_given(e, filename))?;
        // A relative backing name resolves against the image's name as given.
        facts.full_backing = facts
            .backing_file
            .as_deref()
            .map(|b| image::full_backing_name(b, Path::new(filename)));
        Ok(facts)
    }
    fn create_qcow2(
        &mut self,
        filename: &str,
        size: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        image::create_qcow2(&self.path(filename), size, backing).map_err(|e| as_given(e, filename))
    }
    fn set_qcow2_backing(
        &mut self,
        filename: &str,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        image::set_qcow2_backing(&self.path(filename), backing).map_err(|e| as_given(e, filename))
    }
    fn create_file(&mut self, filename: &str, size: u64) -> Result<(), ImageError> {
        image::create_file(&self.path(filename), size).map_err(|e| as_given(e, filename))
    }
    fn qcow2_mark_zero(&mut self, filename: &str) -> Result<(), ImageError> {
        image::qcow2_mark_zero(&self.path(filename)).map_err(|e| as_given(e, filename))
    }
    fn store_qcow2_bitmaps(
        &mut self,
        filename: &str,
        bitmaps: &[PersistBitmap],
    ) -> Result<(), ImageError> {
        image::store_qcow2_bitmaps(&self.path(filename), bitmaps).map_err(|e| as_given(e, filename))
    }
    fn mark_qcow2_bitmaps_in_use(&mut self, filename: &str) -> Result<(), ImageError> {
        image::mark_qcow2_bitmaps_in_use(&self.path(filename)).map_err(|e| as_given(e, filename))
    }
    fn remove_qcow2_bitmap(&mut self, filename: &str, name: &str) -> Result<(), ImageError> {
        image::remove_qcow2_bitmap(&self.path(filename), name).map_err(|e| as_given(e, filename))
    }
    fn qcow2_allocation(&mut self, filename: &str) -> Result<(u64, Option<u64>), ImageError> {
        image::qcow2_allocation(&self.path(filename)).map_err(|e| as_given(e, filename))
    }
    fn nbd_start(&mut self, addr: &NbdListen, max: u32) -> Result<(), String> {
        let (a, shown) = match addr {
            NbdListen::Unix(p) => (nbd::NbdAddr::Unix(self.path(p).into()), p.clone()),
            NbdListen::Tcp(h, port) => {
                // QEMU binds what it is given; the mock keeps an empty host on loopback.
                let host = if h.is_empty() {
                    "127.0.0.1".to_owned()
                } else {
                    h.clone()
                };
                (
                    nbd::NbdAddr::Tcp(host.clone(), *port),
                    format!("{host}:{port}"),
                )
            }
        };
        let server = nbd::NbdServer::start(&a, self.exports.clone(), max)
            .map_err(|e| format!("Failed to bind socket to {shown}: {}", image::strerror(&e)))?;
        self.server = Some(server);
        Ok(())
    }
    fn nbd_stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
    fn nbd_publish(&mut self, e: PublishedExport) {
        let data = match e.source {
            ExportSource::Zeroes => nbd::ExportData::Zeroes,
            ExportSource::File(f) => nbd::ExportData::RawFile(self.path(&f).into()),
            ExportSource::Refuse => nbd::ExportData::Refuse,
        };
        self.exports.insert(nbd::Export {
            name: e.name,
            description: e.description,
            size: e.size / 512 * 512,
            read_only: e.read_only,
            data,
        });
    }
    fn nbd_unpublish(&mut self, name: &str) {
        self.exports.remove(name);
    }
}
