//! Effects outside the model: the sockets a QEMU process serves besides its
//! monitors (the NBD server). Commands ask for them through [`HostIo`]; the
//! server layer plugs in real sockets, fuzzing and unit tests plug in
//! [`NoHostIo`], which opens nothing.

use std::fmt::Debug;

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

/// The host side of the NBD server.
pub trait HostIo: Debug + Send {
    /// Starts listening; `Err` holds QEMU's error text.
    fn nbd_start(&mut self, addr: &NbdListen, max_connections: u32) -> Result<(), String>;
    /// Stops listening and drops clients.
    fn nbd_stop(&mut self);
    /// Makes an export visible to clients.
    fn nbd_publish(&mut self, export: PublishedExport);
    /// Removes an export.
    fn nbd_unpublish(&mut self, name: &str);
}

/// Opens nothing, accepts everything (fuzzing, unit tests).
#[derive(Debug, Default)]
pub struct NoHostIo;

impl HostIo for NoHostIo {
    fn nbd_start(&mut self, _addr: &NbdListen, _max: u32) -> Result<(), String> {
        Ok(())
    }
    fn nbd_stop(&mut self) {}
    fn nbd_publish(&mut self, _export: PublishedExport) {}
    fn nbd_unpublish(&mut self, _name: &str) {}
}
