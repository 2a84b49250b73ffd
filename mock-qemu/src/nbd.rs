//! An NBD server: the data plane of QEMU's NBD exports.
//!
//! The QMP side (`nbd-server-start`, `block-export-add`, `nbd-server-add`,
//! `block-export-del`, `nbd-server-stop`) drives it; this module only speaks
//! the wire protocol, as QEMU 10.0's `nbd/server.c` does.
//!
//! # API
//!
//! - [`ExportTable`]: what the QMP side publishes (shared, cheap to clone,
//!   mutable while servers run). [`ExportTable::insert`] /
//!   [`ExportTable::remove`] / [`ExportTable::names`] /
//!   [`ExportTable::client_count`]. Removing an export disconnects its
//!   clients (QEMU's `block-export-del` `mode=hard`; the QMP side refuses
//!   `mode=safe` itself when [`ExportTable::client_count`] is non-zero).
//! - [`Export`] / [`ExportData`]: one export: name, description, size,
//!   read-only, and where reads come from.
//! - [`NbdServer::start`] (or [`NbdServer::start_with`] for
//!   [`NbdServerOptions`], or [`NbdServer::start_inherited`] for an adopted
//!   listening fd): binds synchronously (errors are the `bind`/`listen`
//!   `io::Error`, for the caller to word as QEMU does), then serves on the
//!   current tokio runtime, one task per connection.
//! - [`NbdServer::stop`] (or drop): closes the listener synchronously
//!   (a new `nbd-server-start` on the same address can bind right away),
//!   removes the unix socket file it created, disconnects every client.
//! - [`NbdServer::local_addr`]: the bound address (TCP port 0 in tests).
//! - [`parse_option`]: the sans-IO option parser (exposed for tests).
//!
//! # Protocol
//!
//! Fixed newstyle only (no oldstyle): `NBDMAGIC`, `IHAVEOPT`, handshake
//! flags `FIXED_NEWSTYLE | NO_ZEROES`. Options: `LIST` (one `REP_SERVER`
//! per export, with its description), `ABORT`, `EXPORT_NAME`, `INFO`/`GO`
//! (`INFO_NAME` if requested, `INFO_DESCRIPTION` if set, `INFO_BLOCK_SIZE`
//! 1/4096/32 MiB, `INFO_EXPORT`), `STRUCTURED_REPLY`,
//! `LIST_META_CONTEXT`/`SET_META_CONTEXT` (`base:allocation` only),
//! `STARTTLS` (`ERR_POLICY` "TLS not configured", as QEMU without
//! `tls-creds`); anything else, `EXTENDED_HEADERS` included, gets
//! `ERR_UNSUP`. Error replies carry QEMU's messages ("export '%s' not
//! present", "Inconsistent lengths in option info", ...).
//!
//! Transmission: `READ` (simple reply, or one `OFFSET_DATA` chunk with
//! `DONE`; zero-length reads a `NONE` chunk), `FLUSH` and `CACHE` succeed,
//! `BLOCK_STATUS` answers one extent covering the request, `DISC` closes.
//! `WRITE`/`TRIM`/`WRITE_ZEROES` fail: on a read-only export with EINVAL
//! "Export is read-only" (what QEMU 10.0 sends: its request checker turns
//! EROFS into EINVAL), else with EIO "mock-qemu: writes to NBD exports are
//! not implemented yet" (a `WRITE` payload is read and discarded). Request
//! checks in QEMU's order and words: length > 32 MiB, read-only, "operation
//! past EOF; From: .., Len: .., Size: ..", "unsupported flags for command
//! ..", "invalid request type (N) received". Error messages only travel in
//! structured mode; in simple mode the client gets the errno alone.
//!
//! Transmission flags are QEMU's: `HAS_FLAGS | SEND_FLUSH | SEND_FUA |
//! SEND_CACHE`, `CAN_MULTI_CONN` unless the server allows one connection,
//! `READ_ONLY` or `SEND_TRIM | SEND_WRITE_ZEROES | SEND_FAST_ZERO`, and
//! `SEND_DF` once structured replies are negotiated.
//!
//! # Limits
//!
//! - Client bytes never panic the server, and every read is bounded: fixed
//!   headers; option payloads up to [`MAX_BUFFERED_OPTION`] are buffered,
//!   longer ones (up to [`NBD_MAX_BUFFER_SIZE`], beyond which QEMU drops the
//!   client, and so do we) are discarded in 64 KiB chunks and answered
//!   `ERR_TOO_BIG` (unsupported options get `ERR_UNSUP` whatever their
//!   size); strings up to [`NBD_MAX_STRING_SIZE`]; requests over
//!   [`NBD_MAX_BUFFER_SIZE`] get EINVAL (a `WRITE` that large also closes
//!   the connection, its payload unread, as QEMU does); `WRITE` payloads
//!   are discarded in chunks, never buffered.
//! - Memory per connection: one read buffer of at most 32 MiB while a
//!   `READ` is served (requests are handled one at a time per connection).
//! - `max_connections` (0 = unlimited) caps open connections, negotiating
//!   or not; like QEMU, the server stops accepting at the cap and the next
//!   client waits in the listen backlog.
//! - The handshake must finish within `handshake_max_seconds` (default
//!   10, 0 = no limit; QEMU 10.0's `nbd-server-start` option of that name).
//!   Transmission has no idle timeout (QEMU has none).
//! - A stalled client only stalls its own task.
//!
//! # Left out
//!
//! TLS, extended headers, writes, `OFFSET_HOLE` sparse reads (all data is
//! sent as `OFFSET_DATA`), `qemu:allocation-depth` and dirty-bitmap
//! contexts, real allocation maps (one extent per request: data for
//! [`ExportData::RawFile`] and [`ExportData::Refuse`], hole for
//! [`ExportData::Zeroes`] as null-co reports without `read-zeroes`), request
//! pipelining (replies stay in order), block size alignment beyond 1.

use std::fs::File;
use std::future::poll_fn;
use std::io;
use std::net::ToSocketAddrs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// QEMU's `NBD_MAX_BUFFER_SIZE`: the largest request (and option) length.
pub const NBD_MAX_BUFFER_SIZE: u32 = 32 * 1024 * 1024;
/// QEMU's `NBD_MAX_STRING_SIZE`: the longest export name, description or
/// meta context query.
pub const NBD_MAX_STRING_SIZE: usize = 4096;
/// The largest option payload the server buffers (mock-qemu's limit; QEMU
/// reads options piecewise). An `INFO`/`GO` can legitimately be ~135 KiB.
pub const MAX_BUFFERED_OPTION: u32 = 1024 * 1024;
/// QEMU 10.0's default `handshake-max-seconds`.
pub const DEFAULT_HANDSHAKE_MAX_SECONDS: u32 = 10;
/// The message of the EIO a write to a writable export gets.
pub const WRITE_NOT_IMPLEMENTED: &str = "mock-qemu: writes to NBD exports are not implemented yet";

const DRAIN_CHUNK: usize = 64 * 1024;

// Wire constants (NBD protocol, doc/proto.md).
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS`.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_POLICY: u32 = (1 << 31) | 2;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

/// `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1 << 0;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_TRIM: u16 = 1 << 5;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TF_SEND_DF: u16 = 1 << 7;
const TF_CAN_MULTI_CONN: u16 = 1 << 8;
const TF_SEND_CACHE: u16 = 1 << 10;
const TF_SEND_FAST_ZERO: u16 = 1 << 11;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
const CMD_FLAG_DF: u16 = 1 << 2;
const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

const REPLY_FLAG_DONE: u16 = 1 << 0;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

const STATE_HOLE: u32 = 1 << 0;

const NBD_EIO: u32 = 5;
const NBD_EINVAL: u32 = 22;

const META_BASE_ALLOCATION: &str = "base:allocation";
const META_ID_BASE_ALLOCATION: u32 = 0;

/// QEMU's `nbd_opt_lookup` (10.0 wording).
fn opt_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "export name",
        OPT_ABORT => "abort",
        OPT_LIST => "list",
        OPT_STARTTLS => "starttls",
        OPT_INFO => "info",
        OPT_GO => "go",
        OPT_STRUCTURED_REPLY => "structured reply",
        OPT_LIST_META_CONTEXT => "list meta context",
        OPT_SET_META_CONTEXT => "set meta context",
        OPT_EXTENDED_HEADERS => "extended headers",
        _ => "<unknown>",
    }
}

/// QEMU's `nbd_cmd_lookup`.
fn cmd_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write zeroes",
        CMD_BLOCK_STATUS => "block status",
        _ => "<unknown>",
    }
}

// ---------------------------------------------------------------------------
// Exports

/// Where an export's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportData {
    /// A null-co node: reads return zeros.
    Zeroes,
    /// A raw image or file node: the file's bytes, zeros past its end (up to
    /// the export size). The file is opened at a client's first read.
    RawFile(PathBuf),
    /// Every read fails with EIO.
    Refuse,
}

/// One export, as `block-export-add` (type nbd) publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The export name clients ask for (QEMU: `name`, default the node name).
    pub name: String,
    /// `description`, sent in `LIST` and `INFO`/`GO` replies.
    pub description: Option<String>,
    /// Size in bytes (QEMU aligns the node length down to 512 first; the
    /// caller does that).
    pub size: u64,
    /// `!writable`.
    pub read_only: bool,
    /// Where reads come from.
    pub data: ExportData,
}

#[derive(Debug)]
struct ExportEntry {
    export: Export,
    /// Set when the export is removed: its clients disconnect.
    removed: watch::Sender<bool>,
    /// Clients past `GO`/`EXPORT_NAME` on this export.
    clients: AtomicUsize,
}

/// The exports of the NBD server; shared (clone it) with running servers.
///
/// Listing order is insertion order, as QEMU's.
#[derive(Debug, Clone, Default)]
pub struct ExportTable {
    inner: Arc<Mutex<Vec<Arc<ExportEntry>>>>,
}

impl ExportTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<ExportEntry>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `e`. An export of the same name is replaced (and its clients
    /// disconnected); the QMP side refuses duplicates before calling this.
    pub fn insert(&self, e: Export) {
        let entry = Arc::new(ExportEntry {
            export: e,
            removed: watch::Sender::new(false),
            clients: AtomicUsize::new(0),
        });
        let mut v = self.lock();
        if let Some(pos) = v.iter().position(|x| x.export.name == entry.export.name) {
            let old = std::mem::replace(&mut v[pos], entry);
            old.removed.send_replace(true);
        } else {
            v.push(entry);
        }
    }

    /// Withdraws export `name` and disconnects its clients. False if absent.
    pub fn remove(&self, name: &str) -> bool {
        let mut v = self.lock();
        match v.iter().position(|x| x.export.name == name) {
            Some(pos) => {
                let old = v.remove(pos);
                old.removed.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Export names, in listing order.
    pub fn names(&self) -> Vec<String> {
        self.lock().iter().map(|x| x.export.name.clone()).collect()
    }

    /// A copy of export `name`.
    pub fn get(&self, name: &str) -> Option<Export> {
        self.find(name).map(|e| e.export.clone())
    }

    /// Clients in transmission phase on export `name` (0 if absent).
    pub fn client_count(&self, name: &str) -> usize {
        self.find(name)
            .map_or(0, |e| e.clients.load(Ordering::SeqCst))
    }

    fn find(&self, name: &str) -> Option<Arc<ExportEntry>> {
        self.lock().iter().find(|x| x.export.name == name).cloned()
    }

    fn snapshot(&self) -> Vec<Arc<ExportEntry>> {
        self.lock().clone()
    }
}

/// Counts a client on an export while it lives.
struct ClientGuard(Arc<ExportEntry>);

impl ClientGuard {
    fn new(e: Arc<ExportEntry>) -> Self {
        e.clients.fetch_add(1, Ordering::SeqCst);
        ClientGuard(e)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Option parsing (sans IO)

/// An `INFO`/`GO` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export name.
    pub name: String,
    /// The `NBD_INFO_*` items requested, in order.
    pub requests: Vec<u16>,
}

/// A `LIST_META_CONTEXT`/`SET_META_CONTEXT` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// The export name.
    pub export: String,
    /// The queries, in order (queries over [`NBD_MAX_STRING_SIZE`] are
    /// skipped, as QEMU does).
    pub queries: Vec<String>,
}

/// A parsed client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME` (the name, cut at a NUL as QEMU's C string).
    ExportName(String),
    /// `NBD_OPT_ABORT` (any payload ignored).
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaRequest),
    /// Anything else (the option number).
    Unsupported(u32),
}

/// Why an option is refused: an `NBD_REP_ERR_INVALID` with QEMU's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionReject {
    /// The error message sent to the client.
    pub message: String,
}

/// Reads an option payload piecewise, with QEMU's errors.
struct OptReader<'a> {
    opt: u32,
    buf: &'a [u8],
}

impl<'a> OptReader<'a> {
    fn invalid(message: String) -> OptionReject {
        OptionReject { message }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OptionReject> {
        if n > self.buf.len() {
            return Err(Self::invalid(format!(
                "Inconsistent lengths in option {}",
                opt_name(self.opt)
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, OptionReject> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, OptionReject> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, n: usize) -> Result<String, OptionReject> {
        let b = self.take(n)?;
        if b.contains(&0) {
            return Err(Self::invalid(format!(
                "Unexpected embedded NUL in option {}",
                opt_name(self.opt)
            )));
        }
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// `nbd_opt_read_name`.
    fn name(&mut self) -> Result<String, OptionReject> {
        let len = self.u32()?;
        if len as usize > NBD_MAX_STRING_SIZE {
            return Err(Self::invalid(format!("Invalid name length: {len}")));
        }
        self.string(len as usize)
    }

    fn end(&self) -> Result<(), OptionReject> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(unexpected_length(self.opt))
        }
    }
}

fn unexpected_length(opt: u32) -> OptionReject {
    OptionReject {
        message: format!("option '{}' has unexpected length", opt_name(opt)),
    }
}

/// Parses option `option` with its whole `payload` (the bytes after the
/// 16-byte option header), as QEMU's server reads it.
pub fn parse_option(option: u32, payload: &[u8]) -> Result<ClientOption, OptionReject> {
    let mut r = OptReader {
        opt: option,
        buf: payload,
    };
    let no_payload = |o: ClientOption| {
        if payload.is_empty() {
            Ok(o)
        } else {
            Err(unexpected_length(option))
        }
    };
    match option {
        OPT_EXPORT_NAME => {
            let name = payload.split(|&b| b == 0).next().unwrap_or(&[]);
            Ok(ClientOption::ExportName(
                String::from_utf8_lossy(name).into_owned(),
            ))
        }
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => no_payload(ClientOption::List),
        OPT_STARTTLS => no_payload(ClientOption::StartTls),
        OPT_STRUCTURED_REPLY => no_payload(ClientOption::StructuredReply),
        OPT_INFO | OPT_GO => {
            let name = r.name()?;
            let n = r.u16()?;
            let mut requests = Vec::new();
            for _ in 0..n {
                requests.push(r.u16()?);
            }
            r.end()?;
            let req = InfoRequest { name, requests };
            Ok(if option == OPT_INFO {
                ClientOption::Info(req)
            } else {
                ClientOption::Go(req)
            })
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let export = r.name()?;
            let n = r.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                let len = r.u32()? as usize;
                if len > NBD_MAX_STRING_SIZE {
                    r.take(len)?;
                } else {
                    queries.push(r.string(len)?);
                }
            }
            r.end()?;
            let req = MetaRequest { export, queries };
            Ok(if option == OPT_LIST_META_CONTEXT {
                ClientOption::ListMetaContext(req)
            } else {
                ClientOption::SetMetaContext(req)
            })
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

// ---------------------------------------------------------------------------
// Negotiation (sans IO)

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    ExportName,
    Simple,
    Structured,
}

/// What the connection does after an option.
enum Step {
    Continue,
    Close,
    Go(Arc<ExportEntry>),
}

struct Negotiator {
    table: ExportTable,
    mode: Mode,
    no_zeroes: bool,
    multi_conn: bool,
    /// `SET_META_CONTEXT` result: export name and whether base:allocation.
    meta: Option<(String, bool)>,
}

fn rep(out: &mut Vec<u8>, opt: u32, ty: u32, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&REP_MAGIC.to_be_bytes());
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
}

fn rep_err(out: &mut Vec<u8>, opt: u32, ty: u32, msg: &str) {
    rep(out, opt, ty, &[msg.as_bytes()]);
}

fn info(out: &mut Vec<u8>, opt: u32, item: u16, payload: &[u8]) {
    rep(out, opt, REP_INFO, &[&item.to_be_bytes(), payload]);
}

/// `nbd_sanitize_name`.
fn sanitize(name: &str) -> String {
    if name.len() < 80 {
        return name.to_owned();
    }
    let mut cut = 80;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &name[..cut])
}

fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

impl Negotiator {
    fn export_flags(&self, e: &Export) -> u16 {
        let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_CACHE;
        if self.multi_conn {
            f |= TF_CAN_MULTI_CONN;
        }
        if e.read_only {
            f |= TF_READ_ONLY;
        } else {
            f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
        }
        if self.mode >= Mode::Structured {
            f |= TF_SEND_DF;
        }
        f
    }

    /// Handles one fixed-newstyle option; replies go to `out`.
    fn handle(&mut self, opt: u32, payload: &[u8], out: &mut Vec<u8>) -> Step {
        if opt == OPT_SET_META_CONTEXT && self.mode < Mode::Structured {
            rep_err(
                out,
                opt,
                REP_ERR_INVALID,
                &format!(
                    "request option '{}' when structured reply is not negotiated",
                    opt_name(opt)
                ),
            );
            return Step::Continue;
        }
        let parsed = match parse_option(opt, payload) {
            Ok(p) => p,
            Err(e) => {
                rep_err(out, opt, REP_ERR_INVALID, &e.message);
                return Step::Continue;
            }
        };
        match parsed {
            ClientOption::List => {
                for e in self.table.snapshot() {
                    let name = truncate_str(&e.export.name, NBD_MAX_STRING_SIZE);
                    let desc = e.export.description.as_deref().unwrap_or("");
                    let desc = truncate_str(desc, NBD_MAX_STRING_SIZE);
                    rep(
                        out,
                        opt,
                        REP_SERVER,
                        &[
                            &(name.len() as u32).to_be_bytes(),
                            name.as_bytes(),
                            desc.as_bytes(),
                        ],
                    );
                }
                rep(out, opt, REP_ACK, &[]);
                Step::Continue
            }
            ClientOption::Abort => {
                rep(out, opt, REP_ACK, &[]);
                Step::Close
            }
            ClientOption::ExportName(name) => {
                let Some(e) = self.table.find(&name) else {
                    // No way to tell the client: QEMU drops it.
                    return Step::Close;
                };
                out.extend_from_slice(&e.export.size.to_be_bytes());
                out.extend_from_slice(&self.export_flags(&e.export).to_be_bytes());
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                Step::Go(e)
            }
            ClientOption::Info(req) | ClientOption::Go(req) => self.handle_info(opt, req, out),
            ClientOption::StartTls => {
                rep_err(out, opt, REP_ERR_POLICY, "TLS not configured");
                Step::Continue
            }
            ClientOption::StructuredReply => {
                if self.mode >= Mode::Structured {
                    rep_err(
                        out,
                        opt,
                        REP_ERR_INVALID,
                        "structured reply already negotiated",
                    );
                } else {
                    rep(out, opt, REP_ACK, &[]);
                    self.mode = Mode::Structured;
                }
                Step::Continue
            }
            ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
                let list = opt == OPT_LIST_META_CONTEXT;
                if !list {
                    self.meta = None;
                }
                if self.table.find(&req.export).is_none() {
                    rep_err(
                        out,
                        opt,
                        REP_ERR_UNKNOWN,
                        &format!("export '{}' not present", sanitize(&req.export)),
                    );
                    return Step::Continue;
                }
                let base = (list && req.queries.is_empty())
                    || req.queries.iter().any(|q| match q.strip_prefix("base:") {
                        Some("") => list,
                        Some(rest) => rest == "allocation",
                        None => false,
                    });
                if base {
                    let id = if list { 0 } else { META_ID_BASE_ALLOCATION };
                    rep(
                        out,
                        opt,
                        REP_META_CONTEXT,
                        &[&id.to_be_bytes(), META_BASE_ALLOCATION.as_bytes()],
                    );
                }
                rep(out, opt, REP_ACK, &[]);
                if !list {
                    self.meta = Some((req.export, base));
                }
                Step::Continue
            }
            ClientOption::Unsupported(o) => {
                rep_err(
                    out,
                    opt,
                    REP_ERR_UNSUP,
                    &format!("Unsupported option {o} ({})", opt_name(o)),
                );
                Step::Continue
            }
        }
    }

    fn handle_info(&mut self, opt: u32, req: InfoRequest, out: &mut Vec<u8>) -> Step {
        let Some(e) = self.table.find(&req.name) else {
            rep_err(
                out,
                opt,
                REP_ERR_UNKNOWN,
                &format!("export '{}' not present", sanitize(&req.name)),
            );
            return Step::Continue;
        };
        if req.requests.contains(&INFO_NAME) {
            info(out, opt, INFO_NAME, req.name.as_bytes());
        }
        if let Some(d) = &e.export.description {
            info(
                out,
                opt,
                INFO_DESCRIPTION,
                truncate_str(d, NBD_MAX_STRING_SIZE).as_bytes(),
            );
        }
        let mut sizes = Vec::with_capacity(12);
        sizes.extend_from_slice(&1u32.to_be_bytes());
        sizes.extend_from_slice(&4096u32.to_be_bytes());
        sizes.extend_from_slice(&NBD_MAX_BUFFER_SIZE.to_be_bytes());
        info(out, opt, INFO_BLOCK_SIZE, &sizes);
        let mut ex = Vec::with_capacity(10);
        ex.extend_from_slice(&e.export.size.to_be_bytes());
        ex.extend_from_slice(&self.export_flags(&e.export).to_be_bytes());
        info(out, opt, INFO_EXPORT, &ex);
        rep(out, opt, REP_ACK, &[]);
        if opt == OPT_GO {
            Step::Go(e)
        } else {
            Step::Continue
        }
    }
}

// ---------------------------------------------------------------------------
// Connections

/// Why a connection ends (only logged as the reason; never surfaces).
#[derive(Debug)]
enum End {
    Io,
    Protocol,
}

impl From<io::Error> for End {
    fn from(_: io::Error) -> Self {
        End::Io
    }
}

async fn read_u32<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).await?;
    Ok(u32::from_be_bytes(b))
}

/// Reads and discards `n` bytes, `DRAIN_CHUNK` at a time.
async fn drain<R: AsyncRead + Unpin>(r: &mut R, mut n: u64) -> io::Result<()> {
    let mut buf = vec![0u8; DRAIN_CHUNK.min(n as usize)];
    while n > 0 {
        let k = (n as usize).min(buf.len());
        r.read_exact(&mut buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

struct ConnConfig {
    table: ExportTable,
    multi_conn: bool,
    handshake: Option<Duration>,
}

/// The export a client negotiated, and its transmission state.
struct Session {
    /// Counts the client on its export while the session lives.
    _guard: ClientGuard,
    entry: Arc<ExportEntry>,
    mode: Mode,
    base_allocation: bool,
    file: Option<Arc<File>>,
}

async fn serve_connection<S>(stream: S, cfg: Arc<ConnConfig>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut stream = stream;
    let work = async {
        let negotiated = match cfg.handshake {
            Some(d) => match tokio::time::timeout(d, negotiate(&mut stream, &cfg)).await {
                Ok(r) => r,
                Err(_) => return,
            },
            None => negotiate(&mut stream, &cfg).await,
        };
        let Ok(Some(session)) = negotiated else {
            return;
        };
        let mut removed = session.entry.removed.subscribe();
        tokio::select! {
            _ = transmission(&mut stream, session) => {}
            _ = removed.wait_for(|r| *r) => {}
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
    let _ = stream.shutdown().await;
}

/// The handshake; `Some` once the client entered transmission.
async fn negotiate<S>(s: &mut S, cfg: &ConnConfig) -> Result<Option<Session>, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let mut flags = read_u32(s).await?;
    let fixed = flags & FLAG_C_FIXED_NEWSTYLE != 0;
    let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
    flags &= !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    if flags != 0 {
        // "Unknown client flags 0x%x received"
        return Err(End::Protocol);
    }
    let mut n = Negotiator {
        table: cfg.table.clone(),
        mode: if fixed {
            Mode::Simple
        } else {
            Mode::ExportName
        },
        no_zeroes,
        multi_conn: cfg.multi_conn,
        meta: None,
    };
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; 16];
        s.read_exact(&mut hdr).await?;
        let magic = u64::from_be_bytes(hdr[0..8].try_into().unwrap_or_default());
        let opt = u32::from_be_bytes(hdr[8..12].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(hdr[12..16].try_into().unwrap_or_default());
        if magic != IHAVEOPT || len > NBD_MAX_BUFFER_SIZE {
            return Err(End::Protocol);
        }
        if !fixed && opt != OPT_EXPORT_NAME {
            return Err(End::Protocol);
        }
        out.clear();
        let step = match opt {
            OPT_EXPORT_NAME if len as usize > NBD_MAX_STRING_SIZE => {
                return Err(End::Protocol); // "Bad length received"
            }
            OPT_ABORT => {
                // Reply without reading the payload; the client may be gone.
                rep(&mut out, opt, REP_ACK, &[]);
                let _ = s.write_all(&out).await;
                return Ok(None);
            }
            OPT_EXPORT_NAME
            | OPT_LIST
            | OPT_STARTTLS
            | OPT_INFO
            | OPT_GO
            | OPT_STRUCTURED_REPLY
            | OPT_LIST_META_CONTEXT
            | OPT_SET_META_CONTEXT => {
                if len > MAX_BUFFERED_OPTION {
                    drain(s, u64::from(len)).await?;
                    rep_err(
                        &mut out,
                        opt,
                        REP_ERR_TOO_BIG,
                        &format!(
                            "option '{}' too long for mock-qemu ({len} bytes, limit {MAX_BUFFERED_OPTION})",
                            opt_name(opt)
                        ),
                    );
                    Step::Continue
                } else {
                    let mut payload = vec![0u8; len as usize];
                    s.read_exact(&mut payload).await?;
                    n.handle(opt, &payload, &mut out)
                }
            }
            _ => {
                drain(s, u64::from(len)).await?;
                n.handle(opt, &[], &mut out)
            }
        };
        match step {
            Step::Continue => s.write_all(&out).await?,
            Step::Close => {
                s.write_all(&out).await?;
                return Ok(None);
            }
            Step::Go(entry) => {
                let base_allocation =
                    matches!(&n.meta, Some((name, true)) if *name == entry.export.name);
                // Counted before the final reply: once the client sees it,
                // client_count includes it.
                let session = Session {
                    _guard: ClientGuard::new(entry.clone()),
                    entry,
                    mode: n.mode,
                    base_allocation,
                    file: None,
                };
                s.write_all(&out).await?;
                return Ok(Some(session));
            }
        }
    }
}

/// One client request.
#[derive(Debug, Clone, Copy)]
struct Request {
    flags: u16,
    ty: u16,
    cookie: u64,
    from: u64,
    len: u32,
}

fn simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

fn chunk_header(out: &mut Vec<u8>, flags: u16, ty: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

impl Session {
    /// `nbd_send_generic_reply`: success is a simple reply; an error is a
    /// structured error chunk when negotiated.
    fn generic(&self, out: &mut Vec<u8>, req: &Request, error: u32, msg: &str) {
        if error != 0 && self.mode >= Mode::Structured {
            let msg = truncate_str(msg, NBD_MAX_STRING_SIZE);
            chunk_header(
                out,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                req.cookie,
                6 + msg.len() as u32,
            );
            out.extend_from_slice(&error.to_be_bytes());
            out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            out.extend_from_slice(msg.as_bytes());
        } else {
            simple_reply(out, error, req.cookie);
        }
    }

    /// QEMU's request checks (`nbd_co_receive_request`), after the payload
    /// has been consumed. `Err` is (errno, message).
    fn check(&self, req: &Request) -> Result<(), (u32, String)> {
        let e = &self.entry.export;
        let mut valid = CMD_FLAG_FUA;
        let mut check_rofs = false;
        match req.ty {
            CMD_READ if self.mode >= Mode::Structured => valid |= CMD_FLAG_DF,
            CMD_WRITE | CMD_TRIM => check_rofs = true,
            CMD_WRITE_ZEROES => {
                valid |= CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO;
                check_rofs = true;
            }
            CMD_BLOCK_STATUS => valid |= CMD_FLAG_REQ_ONE,
            _ => {}
        }
        if e.read_only && check_rofs {
            return Err((NBD_EINVAL, "Export is read-only".into()));
        }
        let len = u64::from(req.len);
        if req.from > e.size || len > e.size - req.from {
            // QEMU returns ENOSPC for writes here, but its request loop
            // replies EINVAL to every failed check: keep what it sends.
            return Err((
                NBD_EINVAL,
                format!(
                    "operation past EOF; From: {}, Len: {}, Size: {}",
                    req.from, req.len, e.size
                ),
            ));
        }
        if req.flags & !valid != 0 {
            return Err((
                NBD_EINVAL,
                format!(
                    "unsupported flags for command {} (got 0x{:x})",
                    cmd_name(req.ty),
                    req.flags
                ),
            ));
        }
        Ok(())
    }

    /// Fills `buf` with the export's bytes at `from`.
    async fn read_data(&mut self, from: u64, buf: Vec<u8>) -> (Vec<u8>, io::Result<()>) {
        match &self.entry.export.data {
            ExportData::Zeroes => (buf, Ok(())),
            ExportData::Refuse => (buf, Err(io::Error::from_raw_os_error(libc::EIO))),
            ExportData::RawFile(path) => {
                let path = path.clone();
                let cached = self.file.clone();
                let joined = tokio::task::spawn_blocking(move || {
                    let mut buf = buf;
                    let file = match cached {
                        Some(f) => f,
                        None => match File::open(&path) {
                            Ok(f) => Arc::new(f),
                            Err(e) => return (buf, None, Err(e)),
                        },
                    };
                    let r = read_full_at(&file, from, &mut buf);
                    (buf, Some(file), r)
                })
                .await;
                match joined {
                    Ok((buf, file, r)) => {
                        if file.is_some() {
                            self.file = file;
                        }
                        (buf, r)
                    }
                    Err(_) => (Vec::new(), Err(io::Error::from_raw_os_error(libc::EIO))),
                }
            }
        }
    }
}

/// Reads until `buf` is full or EOF; the rest stays zero.
fn read_full_at(f: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn transmission<S>(s: &mut S, mut sess: Session) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut hdr = [0u8; 28];
        s.read_exact(&mut hdr).await?;
        let be32 = |i: usize| u32::from_be_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let be16 = |i: usize| u16::from_be_bytes([hdr[i], hdr[i + 1]]);
        let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
        if be32(0) != REQUEST_MAGIC {
            return Err(End::Protocol); // "invalid magic (got 0x%x)"
        }
        let req = Request {
            flags: be16(4),
            ty: be16(6),
            cookie: be64(8),
            from: be64(16),
            len: be32(24),
        };
        out.clear();
        if req.ty == CMD_DISC {
            return Ok(());
        }
        let check_length = matches!(req.ty, CMD_READ | CMD_WRITE | CMD_CACHE);
        if check_length && req.len > NBD_MAX_BUFFER_SIZE {
            sess.generic(
                &mut out,
                &req,
                NBD_EINVAL,
                &format!(
                    "len ({}) is larger than max len ({NBD_MAX_BUFFER_SIZE})",
                    req.len
                ),
            );
            s.write_all(&out).await?;
            if req.ty == CMD_WRITE {
                // The payload was not read: the stream is out of sync.
                return Err(End::Protocol);
            }
            continue;
        }
        if req.ty == CMD_WRITE {
            drain(s, u64::from(req.len)).await?;
        }
        if let Err((errno, msg)) = sess.check(&req) {
            sess.generic(&mut out, &req, errno, &msg);
            s.write_all(&out).await?;
            continue;
        }
        match req.ty {
            CMD_READ => {
                let (buf, r) = sess.read_data(req.from, vec![0u8; req.len as usize]).await;
                if r.is_err() {
                    sess.generic(&mut out, &req, NBD_EIO, "reading from file failed");
                    s.write_all(&out).await?;
                } else if sess.mode >= Mode::Structured {
                    if req.len == 0 {
                        chunk_header(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
                        s.write_all(&out).await?;
                    } else {
                        chunk_header(
                            &mut out,
                            REPLY_FLAG_DONE,
                            REPLY_TYPE_OFFSET_DATA,
                            req.cookie,
                            8 + req.len,
                        );
                        out.extend_from_slice(&req.from.to_be_bytes());
                        s.write_all(&out).await?;
                        s.write_all(&buf).await?;
                    }
                } else {
                    simple_reply(&mut out, 0, req.cookie);
                    s.write_all(&out).await?;
                    s.write_all(&buf).await?;
                }
            }
            CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => {
                sess.generic(&mut out, &req, NBD_EIO, WRITE_NOT_IMPLEMENTED);
                s.write_all(&out).await?;
            }
            CMD_FLUSH | CMD_CACHE => {
                sess.generic(&mut out, &req, 0, "");
                s.write_all(&out).await?;
            }
            CMD_BLOCK_STATUS => {
                if req.len == 0 {
                    sess.generic(&mut out, &req, NBD_EINVAL, "need non-zero length");
                } else if !sess.base_allocation {
                    sess.generic(
                        &mut out,
                        &req,
                        NBD_EINVAL,
                        "CMD_BLOCK_STATUS not negotiated",
                    );
                } else {
                    let flags = match sess.entry.export.data {
                        ExportData::Zeroes => STATE_HOLE,
                        _ => 0,
                    };
                    chunk_header(
                        &mut out,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_BLOCK_STATUS,
                        req.cookie,
                        12,
                    );
                    out.extend_from_slice(&META_ID_BASE_ALLOCATION.to_be_bytes());
                    out.extend_from_slice(&req.len.to_be_bytes());
                    out.extend_from_slice(&flags.to_be_bytes());
                }
                s.write_all(&out).await?;
            }
            other => {
                sess.generic(
                    &mut out,
                    &req,
                    NBD_EINVAL,
                    &format!("invalid request type ({other}) received"),
                );
                s.write_all(&out).await?;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Server

/// Where an NBD server listens (QEMU's `SocketAddress`, less `fd` and
/// `vsock`; see [`NbdServer::start_inherited`] for an adopted fd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP host (name or literal) and port; the first address `host`
    /// resolves to is bound.
    Tcp(String, u16),
}

/// Server-wide settings (`nbd-server-start`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdServerOptions {
    /// `max-connections`: 0 = unlimited.
    pub max_connections: u32,
    /// `handshake-max-seconds`: 0 = no limit.
    pub handshake_max_seconds: u32,
}

impl Default for NbdServerOptions {
    fn default() -> Self {
        NbdServerOptions {
            max_connections: 0,
            handshake_max_seconds: DEFAULT_HANDSHAKE_MAX_SECONDS,
        }
    }
}

#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A unix socket file we created: removed at stop if it is still ours.
#[derive(Debug)]
struct OwnedSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A running NBD server. Dropping it stops it, as [`NbdServer::stop`].
#[derive(Debug)]
pub struct NbdServer {
    listener: Arc<Mutex<Option<Listener>>>,
    shutdown: watch::Sender<bool>,
    local: NbdAddr,
    socket_file: Option<OwnedSocket>,
}

fn runtime_check() -> io::Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("NBD server needs a tokio runtime: {e}")))
}

impl NbdServer {
    /// Binds `addr` and serves `exports` on the current tokio runtime, with
    /// default options but `max_connections` (0 = unlimited).
    pub fn start(
        addr: &NbdAddr,
        exports: ExportTable,
        max_connections: u32,
    ) -> io::Result<NbdServer> {
        Self::start_with(
            addr,
            exports,
            NbdServerOptions {
                max_connections,
                ..NbdServerOptions::default()
            },
        )
    }

    /// [`NbdServer::start`] with every option.
    ///
    /// Unix sockets: like QEMU, an existing file at the path is unlinked
    /// first; errors are those of unlink (QEMU: "Failed to unlink socket
    /// %s"), bind ("Failed to bind socket to %s") and listen.
    pub fn start_with(
        addr: &NbdAddr,
        exports: ExportTable,
        opts: NbdServerOptions,
    ) -> io::Result<NbdServer> {
        runtime_check()?;
        match addr {
            NbdAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                let std_l = std::os::unix::net::UnixListener::bind(path)?;
                std_l.set_nonblocking(true)?;
                let meta = std::fs::metadata(path)?;
                let l = UnixListener::from_std(std_l)?;
                let owned = OwnedSocket {
                    path: path.clone(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                };
                Ok(Self::spawn(
                    Listener::Unix(l),
                    NbdAddr::Unix(path.clone()),
                    Some(owned),
                    exports,
                    opts,
                ))
            }
            NbdAddr::Tcp(host, port) => {
                let mut last = None;
                for sa in (host.as_str(), *port).to_socket_addrs()? {
                    match std::net::TcpListener::bind(sa) {
                        Ok(std_l) => {
                            std_l.set_nonblocking(true)?;
                            let local = std_l.local_addr()?;
                            let l = TcpListener::from_std(std_l)?;
                            return Ok(Self::spawn(
                                Listener::Tcp(l),
                                NbdAddr::Tcp(local.ip().to_string(), local.port()),
                                None,
                                exports,
                                opts,
                            ));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        format!("address resolution failed for {host}:{port}"),
                    )
                }))
            }
        }
    }

    /// Serves on an adopted listening socket (`addr.type=fd`).
    pub fn start_inherited(
        listener: crate::sys::Inherited,
        exports: ExportTable,
        opts: NbdServerOptions,
    ) -> io::Result<NbdServer> {
        runtime_check()?;
        match listener {
            crate::sys::Inherited::Unix(l) => {
                l.set_nonblocking(true)?;
                let path = l
                    .local_addr()?
                    .as_pathname()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let l = UnixListener::from_std(l)?;
                Ok(Self::spawn(
                    Listener::Unix(l),
                    NbdAddr::Unix(path),
                    None,
                    exports,
                    opts,
                ))
            }
            crate::sys::Inherited::Tcp(l) => {
                l.set_nonblocking(true)?;
                let local = l.local_addr()?;
                let l = TcpListener::from_std(l)?;
                Ok(Self::spawn(
                    Listener::Tcp(l),
                    NbdAddr::Tcp(local.ip().to_string(), local.port()),
                    None,
                    exports,
                    opts,
                ))
            }
        }
    }

    fn spawn(
        l: Listener,
        local: NbdAddr,
        socket_file: Option<OwnedSocket>,
        exports: ExportTable,
        opts: NbdServerOptions,
    ) -> NbdServer {
        let listener = Arc::new(Mutex::new(Some(l)));
        let (shutdown, _) = watch::channel(false);
        let cfg = Arc::new(ConnConfig {
            table: exports,
            multi_conn: opts.max_connections != 1,
            handshake: (opts.handshake_max_seconds != 0)
                .then(|| Duration::from_secs(u64::from(opts.handshake_max_seconds))),
        });
        let sem = (opts.max_connections != 0)
            .then(|| Arc::new(Semaphore::new(opts.max_connections as usize)));
        tokio::spawn(accept_loop(
            listener.clone(),
            shutdown.subscribe(),
            cfg,
            sem,
        ));
        NbdServer {
            listener,
            shutdown,
            local,
            socket_file,
        }
    }

    /// Where the server listens (the bound port for TCP port 0).
    pub fn local_addr(&self) -> &NbdAddr {
        &self.local
    }

    /// Stops: closes the listener now, removes the unix socket file it
    /// created, and disconnects every client (their tasks end promptly).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let l = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(l);
        if let Some(s) = &self.socket_file {
            if let Ok(m) = std::fs::symlink_metadata(&s.path) {
                if m.dev() == s.dev && m.ino() == s.ino {
                    let _ = std::fs::remove_file(&s.path);
                }
            }
        }
        self.shutdown.send_replace(true);
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Accepts from the shared slot; `None` once the listener is gone.
async fn accept(slot: &Mutex<Option<Listener>>) -> Option<io::Result<Accepted>> {
    poll_fn(|cx| {
        let g = slot.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            None => Poll::Ready(None),
            Some(Listener::Tcp(l)) => l
                .poll_accept(cx)
                .map(|r| Some(r.map(|(s, _)| Accepted::Tcp(s)))),
            Some(Listener::Unix(l)) => l
                .poll_accept(cx)
                .map(|r| Some(r.map(|(s, _)| Accepted::Unix(s)))),
        }
    })
    .await
}

async fn accept_loop(
    slot: Arc<Mutex<Option<Listener>>>,
    mut shutdown: watch::Receiver<bool>,
    cfg: Arc<ConnConfig>,
    sem: Option<Arc<Semaphore>>,
) {
    loop {
        let permit: Option<OwnedSemaphorePermit> = match &sem {
            Some(sem) => tokio::select! {
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            },
            None => None,
        };
        let accepted = tokio::select! {
            a = accept(&slot) => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let conn = match accepted {
            None => return,
            Some(Ok(c)) => c,
            Some(Err(_)) => {
                // EMFILE, ECONNABORTED...: back off briefly, keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let rx = shutdown.clone();
        let cfg = cfg.clone();
        match conn {
            Accepted::Tcp(s) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    serve_connection(s, cfg, rx).await;
                    drop(permit);
                });
            }
            Accepted::Unix(s) => {
                tokio::spawn(async move {
                    serve_connection(s, cfg, rx).await;
                    drop(permit);
                });
            }
        }
    }
}
