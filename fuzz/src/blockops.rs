//! The `blockops` target: stateful fuzzing of the block layer. Arbitrary
//! sequences of typed block operations ([`Op`], derived `Arbitrary`) are
//! turned into QMP commands and sent through [`Core::handle`] as the server
//! does (JSON text through a [`JsonStreamer`], one negotiated session), so
//! the wire, the command layer and the model are exercised together.
//!
//! Names come from small pools (nodes `n0`…`n5`, jobs `j0`…`j3` or the
//! default id `''`, bitmaps `b0`…`b2`, throttle groups `tg0`/`tg1`, exports
//! `e0`/`e1`), so operations often hit objects that exist. Image files live
//! in a [`MemHost`] holding a few qcow2 images (some with backing chains)
//! and a raw file ([`FILES`]); snapshots and `drive-*`/`blockdev-create`
//! targets are created there too.
//!
//! Properties, checked after every command (see [`run`]):
//! 1. no panic (debug assertions and overflow checks on);
//! 2. the graph is acyclic, every child and every BlockBackend, export and
//!    bitmap owner resolves to an existing node, node names are unique and
//!    non-empty; a job that has not concluded holds only nodes that exist
//!    (its node, top, base, filter, target), and busy bitmaps are exactly
//!    those such jobs hold;
//! 3. every `JOB_STATUS_CHANGE` sequence of a job id is a path of the
//!    transition table (`transition_allowed`), from `undefined`, and after
//!    `null` only `created` may follow (a new job with that id); a block
//!    job sends exactly one `BLOCK_JOB_COMPLETED`/`BLOCK_JOB_CANCELLED`
//!    (while `pending` or `aborting`) before `concluded`, `BLOCK_JOB_READY`
//!    only when `ready`, `BLOCK_JOB_PENDING` only when `pending`; a plain
//!    job (`create`) sends no `BLOCK_JOB_*` event; the model's job table
//!    agrees with the statuses the events announced;
//! 4. a dismissed job (status `null`) is gone: after any command that sent
//!    a `null`, `query-jobs` (and any `query-jobs`/`query-block-jobs` the
//!    input asks for) lists exactly the jobs the events say exist, with
//!    those statuses;
//! 5. at the end, after the virtual clock moved far ahead, every job has
//!    finished or waits for the user (ready, paused, pending without
//!    auto-finalize, concluded without auto-dismiss, a `sync: none` backup);
//!    then resuming, cancelling, finalizing and dismissing what is left,
//!    with time advancing, leaves no job at all;
//! 6. every reply is one well-formed QMP reply echoing the request's id, no
//!    reply says `mock-qemu: internal …` ("not implemented by the mock" is
//!    allowed), events are well-formed with timestamps never going back;
//!    a command that failed leaves none of the jobs it created behind;
//! 7. determinism: playing the same input twice gives the same transcript.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use arbitrary::{Arbitrary, Unstructured};
use mock_qemu::core::{Core, CoreConfig, SessionId};
use mock_qemu::model::graph::NodeId;
use mock_qemu::model::jobs::{transition_allowed, JobStatus, NO_NODE};
use mock_qemu::profile::Profile;
use mock_qemu::qmp::json::{to_json, JsonStreamer, Parsed, Style};
use mock_qemu::qmp::qobject::{QDict, QObject};

use crate::memhost::{qcow2_image, MemFile, MemHost};
use crate::session::{check_event, check_reply, Outcome, ProfileChoice, Request};
use crate::wire::parse_one;

/// Writes a value in the byte layout `derive(Arbitrary)` (arbitrary 1.x)
/// reads back, for the seed corpus.
pub trait Encode {
    /// Appends the encoding of `self`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// `derive(Arbitrary)` picks variant `(u32 * count) >> 32`.
fn push_tag(out: &mut Vec<u8>, idx: u32, count: u32) {
    let x = (u64::from(idx) << 32).div_ceil(u64::from(count));
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

impl Encode for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Encode for u16 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(x) => {
                out.push(1);
                x.encode(out);
            }
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for x in self {
            out.push(1); // one more element
            x.encode(out);
        }
        out.push(0);
    }
}

impl Encode for ProfileChoice {
    fn encode(&self, out: &mut Vec<u8>) {
        let i = ProfileChoice::ALL
            .iter()
            .position(|p| p == self)
            .unwrap_or(0);
        push_tag(out, i as u32, ProfileChoice::ALL.len() as u32);
    }
}

/// An enum deriving `Arbitrary` and [`Encode`] (struct or unit variants).
macro_rules! choice {
    ($(#[$m:meta])* pub enum $name:ident {
        $($(#[$vm:meta])* $var:ident $({ $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? })?),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $var $({ $($(#[$fm])* $field: $ty),* })?),*
        }

        impl Encode for $name {
            #[allow(unused_assignments)]
            fn encode(&self, out: &mut Vec<u8>) {
                const COUNT: u32 = [$(stringify!($var)),*].len() as u32;
                let mut idx = 0u32;
                $(
                    if let $name::$var $({ $($field),* })? = self {
                        push_tag(out, idx, COUNT);
                        $($($field.encode(out);)*)?
                        return;
                    }
                    idx += 1;
                )*
                unreachable!("every variant is matched")
            }
        }
    };
}

/// A struct deriving `Arbitrary` and [`Encode`].
macro_rules! record {
    ($(#[$m:meta])* pub struct $name:ident {
        $($(#[$fm:meta])* pub $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty),*
        }

        impl Encode for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                $(self.$field.encode(out);)*
            }
        }
    };
}

/// A name pool: a byte picks one of a few names.
macro_rules! pool {
    ($(#[$m:meta])* $name:ident, $n:expr, |$i:ident| $fmt:expr) => {
        $(#[$m])*
        #[derive(Arbitrary, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub u8);

        impl $name {
            /// The name this byte picks.
            pub fn name(self) -> String {
                let $i = usize::from(self.0) % $n;
                $fmt
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.name())
            }
        }

        impl Encode for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                out.push(self.0);
            }
        }
    };
}

pool!(
    /// A node name: `n0` … `n5`.
    Nd, 6, |i| format!("n{i}")
);
pool!(
    /// A job id: `j0` … `j3`, or `''` (the default id when none is given).
    Jb, 5, |i| if i == 4 { String::new() } else { format!("j{i}") }
);
pool!(
    /// A bitmap name: `b0` … `b2`.
    Bm, 3, |i| format!("b{i}")
);
pool!(
    /// A throttle group id: `tg0`, `tg1`.
    Tg, 2, |i| format!("tg{i}")
);
pool!(
    /// An export id (and NBD name): `e0`, `e1`.
    Ex, 2, |i| format!("e{i}")
);
pool!(
    /// An image file: one of [`FILES`].
    Fl, FILES.len(), |i| FILES[i].to_owned()
);

/// The image files: the first six exist from the start (see
/// [`setup_files`]), the others are names for new images.
pub const FILES: [&str; 9] = [
    "/fz/base.raw",
    "/fz/base.qcow2",
    "/fz/mid.qcow2",
    "/fz/top.qcow2",
    "/fz/over-raw.qcow2",
    "/fz/big.qcow2",
    "/fz/new0.qcow2",
    "/fz/new1.qcow2",
    "/fz/new2.img",
];

/// Virtual size of the pre-made images (except `big.qcow2`: twice that).
pub const IMAGE_SIZE: u64 = 1 << 20;

/// Puts the pre-made images into `host`: a raw file, a qcow2 chain
/// `base.qcow2` ← `mid.qcow2` ← `top.qcow2`, a qcow2 image over the raw
/// file, and a qcow2 image of another size.
pub fn setup_files(host: &MemHost) {
    host.insert(
        FILES[0],
        MemFile {
            size: IMAGE_SIZE,
            head: Vec::new(),
        },
    );
    host.insert(FILES[1], qcow2_image(IMAGE_SIZE, None));
    host.insert(
        FILES[2],
        qcow2_image(IMAGE_SIZE, Some(("base.qcow2", "qcow2"))),
    );
    host.insert(
        FILES[3],
        qcow2_image(IMAGE_SIZE, Some(("mid.qcow2", "qcow2"))),
    );
    host.insert(FILES[4], qcow2_image(IMAGE_SIZE, Some(("base.raw", "raw"))));
    host.insert(FILES[5], qcow2_image(2 * IMAGE_SIZE, None));
}

choice! {
    /// An image format.
    #[derive(Copy)]
    pub enum Fmt {
        /// `qcow2`.
        Qcow2,
        /// `raw`.
        Raw,
    }
}

impl Fmt {
    fn name(self) -> &'static str {
        match self {
            Fmt::Qcow2 => "qcow2",
            Fmt::Raw => "raw",
        }
    }
}

choice! {
    /// The `size` of a `null-co` node.
    #[derive(Copy)]
    pub enum NullSize {
        /// Not given (1 GiB).
        Default,
        /// [`IMAGE_SIZE`], as the pre-made images.
        Image,
        /// Twice that.
        Double,
        /// A qcow2 file's length (`0x30000`), as a raw node over one.
        Header,
    }
}

choice! {
    /// A format node's `backing` option.
    pub enum Backing {
        /// Not given: the image header's backing file is opened.
        Default,
        /// `null`: no backing file.
        Null,
        /// A node by name.
        Node {
            /// The backing node.
            node: Nd,
        },
    }
}

choice! {
    /// A filter driver.
    #[derive(Copy)]
    pub enum FilterKind {
        /// `copy-on-read`.
        CopyOnRead,
        /// `throttle` (needs its throttle group).
        Throttle,
        /// `blkdebug` (over `image`).
        Blkdebug,
        /// `snapshot-access` (over a `copy-before-write` node).
        SnapshotAccess,
        /// `copy-before-write` (with a `target`).
        CopyBeforeWrite,
    }
}

choice! {
    /// A dirty bitmap or mirror granularity.
    #[derive(Copy)]
    pub enum Gran {
        /// 4 KiB.
        K4,
        /// 64 KiB.
        K64,
        /// 1 MiB.
        M1,
        /// 12 KiB: not a power of two.
        NotPow2,
        /// 256 bytes: too small.
        Tiny,
    }
}

impl Gran {
    fn bytes(self) -> u64 {
        match self {
            Gran::K4 => 4096,
            Gran::K64 => 65536,
            Gran::M1 => 1 << 20,
            Gran::NotPow2 => 12288,
            Gran::Tiny => 256,
        }
    }
}

choice! {
    /// A job speed limit (bytes per second).
    #[derive(Copy)]
    pub enum Speed {
        /// 0: none.
        Zero,
        /// 1 byte per second.
        One,
        /// 64 KiB/s.
        K64,
        /// 1 MiB/s.
        M1,
        /// 1 GiB/s.
        G1,
        /// -1: refused.
        Negative,
    }
}

impl Speed {
    fn value(self) -> i64 {
        match self {
            Speed::Zero => 0,
            Speed::One => 1,
            Speed::K64 => 65536,
            Speed::M1 => 1 << 20,
            Speed::G1 => 1 << 30,
            Speed::Negative => -1,
        }
    }
}

record! {
    /// The arguments every job-starting command shares.
    pub struct JobOpts {
        /// `speed`.
        pub speed: Option<Speed>,
        /// `auto-finalize`.
        pub auto_finalize: Option<bool>,
        /// `auto-dismiss`.
        pub auto_dismiss: Option<bool>,
    }
}

choice! {
    /// A mirror's `sync`.
    #[derive(Copy)]
    pub enum MirrorSync {
        /// `full`.
        Full,
        /// `top`.
        Top,
        /// `none`.
        None,
    }
}

choice! {
    /// A backup's `sync`.
    #[derive(Copy)]
    pub enum BackupSync {
        /// `full`.
        Full,
        /// `top`.
        Top,
        /// `none`.
        None,
        /// `incremental`.
        Incremental,
        /// `bitmap`.
        Bitmap,
    }
}

choice! {
    /// `bitmap-mode`.
    #[derive(Copy)]
    pub enum BitmapMode {
        /// `on-success`.
        OnSuccess,
        /// `never`.
        Never,
        /// `always`.
        Always,
    }
}

choice! {
    /// A copy job's target: a node (`blockdev-*`) or a file (`drive-*`).
    pub enum Target {
        /// `blockdev-mirror` / `blockdev-backup` into a node.
        Node {
            /// The target node.
            node: Nd,
        },
        /// `drive-mirror` / `drive-backup` into a file.
        File {
            /// The file.
            file: Fl,
            /// `format`.
            format: Option<Fmt>,
            /// `mode: existing` (else the image is created).
            existing: bool,
            /// drive-mirror's `node-name` for the target.
            node_name: Option<Nd>,
        },
    }
}

record! {
    /// `blockdev-backup` / `drive-backup` arguments.
    pub struct BackupArgs {
        /// `job-id`.
        pub job: Jb,
        /// `device`.
        pub device: Nd,
        /// `target`.
        pub target: Target,
        /// `sync`.
        pub sync: BackupSync,
        /// `bitmap`.
        pub bitmap: Option<Bm>,
        /// `bitmap-mode`.
        pub mode: Option<BitmapMode>,
        /// `filter-node-name`.
        pub filter: Option<Nd>,
        /// Common job options.
        pub opts: JobOpts,
    }
}

choice! {
    /// A dirty bitmap command.
    pub enum BitmapOp {
        /// `block-dirty-bitmap-add`.
        Add {
            /// `node`.
            node: Nd,
            /// `name`.
            name: Bm,
            /// `granularity`.
            granularity: Option<Gran>,
            /// `persistent`.
            persistent: bool,
            /// `disabled`.
            disabled: bool,
        },
        /// `block-dirty-bitmap-remove`.
        Remove {
            /// `node`.
            node: Nd,
            /// `name`.
            name: Bm,
        },
        /// `block-dirty-bitmap-clear`.
        Clear {
            /// `node`.
            node: Nd,
            /// `name`.
            name: Bm,
        },
        /// `block-dirty-bitmap-enable`.
        Enable {
            /// `node`.
            node: Nd,
            /// `name`.
            name: Bm,
        },
        /// `block-dirty-bitmap-disable`.
        Disable {
            /// `node`.
            node: Nd,
            /// `name`.
            name: Bm,
        },
        /// `block-dirty-bitmap-merge` of one source into `target`.
        Merge {
            /// `node`.
            node: Nd,
            /// `target`.
            target: Bm,
            /// The source bitmap.
            source: Bm,
            /// The source's node, when not `node` (`{node, name}` form).
            source_node: Option<Nd>,
        },
    }
}

choice! {
    /// A `blockdev-create` job's options.
    pub enum CreateSpec {
        /// `file`: a new plain file.
        File {
            /// `filename`.
            file: Fl,
            /// `size`.
            size: CreateSize,
        },
        /// `qcow2` over a `file` node.
        Qcow2 {
            /// `file` (a node name).
            file: Nd,
            /// `size`.
            size: CreateSize,
            /// `backing-file`.
            backing: Option<Fl>,
        },
    }
}

choice! {
    /// A `blockdev-create` size.
    #[derive(Copy)]
    pub enum CreateSize {
        /// [`IMAGE_SIZE`].
        Image,
        /// Twice that.
        Double,
        /// 1000: not a multiple of 512.
        Unaligned,
        /// 0.
        Zero,
    }
}

impl CreateSize {
    fn bytes(self) -> u64 {
        match self {
            CreateSize::Image => IMAGE_SIZE,
            CreateSize::Double => 2 * IMAGE_SIZE,
            CreateSize::Unaligned => 1000,
            CreateSize::Zero => 0,
        }
    }
}

choice! {
    /// One action of a `transaction`.
    pub enum Action {
        /// A bitmap action.
        Bitmap {
            /// The bitmap command.
            op: BitmapOp,
        },
        /// `blockdev-snapshot-sync`.
        SnapshotSync {
            /// `node-name`.
            node: Nd,
            /// `snapshot-file`.
            file: Fl,
            /// `snapshot-node-name`.
            snapshot_node: Option<Nd>,
        },
        /// `blockdev-snapshot`.
        Snapshot {
            /// `node`.
            node: Nd,
            /// `overlay`.
            overlay: Nd,
        },
        /// `blockdev-backup` / `drive-backup`.
        Backup {
            /// The arguments.
            backup: BackupArgs,
        },
        /// `abort`.
        Abort,
    }
}

choice! {
    /// A job verb.
    #[derive(Copy)]
    pub enum VerbKind {
        /// pause
        Pause,
        /// resume
        Resume,
        /// cancel
        Cancel,
        /// complete
        Complete,
        /// finalize
        Finalize,
        /// dismiss
        Dismiss,
    }
}

choice! {
    /// A query.
    #[derive(Copy)]
    pub enum QueryKind {
        /// `query-jobs`.
        Jobs,
        /// `query-block-jobs`.
        BlockJobs,
        /// `query-named-block-nodes`.
        NamedNodes,
        /// `query-named-block-nodes` with `flat`.
        NamedNodesFlat,
        /// `query-block`.
        Block,
        /// `query-block-exports`.
        Exports,
    }
}

choice! {
    /// One block operation: one QMP command.
    pub enum Op {
        /// `blockdev-add` of a `null-co` node.
        AddNull {
            /// `node-name`.
            node: Nd,
            /// `size`.
            size: NullSize,
            /// `read-only`.
            read_only: bool,
        },
        /// `blockdev-add` of a format node over an inline `file` node.
        AddImage {
            /// `node-name`.
            node: Nd,
            /// `driver`.
            format: Fmt,
            /// The image file.
            file: Fl,
            /// The `file` node's `node-name`.
            file_node: Option<Nd>,
            /// `backing` (qcow2).
            backing: Backing,
            /// `read-only`.
            read_only: bool,
        },
        /// `blockdev-add` of a `file` node.
        AddFile {
            /// `node-name`.
            node: Nd,
            /// `filename`.
            file: Fl,
        },
        /// `blockdev-add` of a format node over a node given by name.
        AddFormat {
            /// `node-name`.
            node: Nd,
            /// `driver`.
            format: Fmt,
            /// `file`.
            file: Nd,
            /// `backing` (qcow2).
            backing: Backing,
        },
        /// `blockdev-add` of a filter over a node given by name.
        AddFilter {
            /// `node-name`.
            node: Nd,
            /// `driver`.
            kind: FilterKind,
            /// `file` (blkdebug: `image`).
            child: Nd,
            /// copy-before-write's `target`.
            target: Nd,
            /// throttle's `throttle-group`.
            group: Tg,
        },
        /// `object-add` of a throttle group.
        GroupAdd {
            /// `id`.
            group: Tg,
        },
        /// `object-del`.
        GroupDel {
            /// `id`.
            group: Tg,
        },
        /// `blockdev-del`.
        Del {
            /// `node-name`.
            node: Nd,
        },
        /// `blockdev-snapshot-sync`.
        SnapshotSync {
            /// `node-name`.
            node: Nd,
            /// `snapshot-file`.
            file: Fl,
            /// `snapshot-node-name`.
            snapshot_node: Option<Nd>,
            /// `mode: existing`.
            existing: bool,
        },
        /// `blockdev-snapshot`.
        Snapshot {
            /// `node`.
            node: Nd,
            /// `overlay`.
            overlay: Nd,
        },
        /// A dirty bitmap command.
        Bitmap {
            /// The command.
            op: BitmapOp,
        },
        /// `block-stream`.
        Stream {
            /// `job-id`.
            job: Jb,
            /// `device`.
            node: Nd,
            /// `base-node`.
            base: Option<Nd>,
            /// `filter-node-name`.
            filter: Option<Nd>,
            /// Common job options.
            opts: JobOpts,
        },
        /// `block-commit` (active when `top` is the device or omitted).
        Commit {
            /// `job-id`.
            job: Jb,
            /// `device`.
            device: Nd,
            /// `top-node`.
            top: Option<Nd>,
            /// `base-node`.
            base: Option<Nd>,
            /// `filter-node-name`.
            filter: Option<Nd>,
            /// Common job options.
            opts: JobOpts,
        },
        /// `blockdev-mirror` / `drive-mirror`.
        Mirror {
            /// `job-id`.
            job: Jb,
            /// `device`.
            device: Nd,
            /// `target`.
            target: Target,
            /// `sync`.
            sync: MirrorSync,
            /// `granularity`.
            granularity: Option<Gran>,
            /// `filter-node-name` (blockdev-mirror).
            filter: Option<Nd>,
            /// Common job options.
            opts: JobOpts,
        },
        /// `blockdev-backup` / `drive-backup`.
        Backup {
            /// The arguments.
            backup: BackupArgs,
        },
        /// `blockdev-create`.
        Create {
            /// `job-id`.
            job: Jb,
            /// `options`.
            spec: CreateSpec,
        },
        /// `transaction`.
        Transaction {
            /// `actions`.
            actions: Vec<Action>,
        },
        /// `nbd-server-start` on a unix socket.
        NbdStart,
        /// `nbd-server-stop`.
        NbdStop,
        /// `block-export-add` (type nbd) or the legacy `nbd-server-add`.
        ExportAdd {
            /// `id` (and NBD name).
            id: Ex,
            /// `node-name`.
            node: Nd,
            /// `writable`.
            writable: bool,
            /// `nbd-server-add`.
            legacy: bool,
        },
        /// `block-export-del` or the legacy `nbd-server-remove`.
        ExportDel {
            /// `id`.
            id: Ex,
            /// `nbd-server-remove`.
            legacy: bool,
        },
        /// `job-VERB` or `block-job-VERB`.
        Verb {
            /// The verb.
            verb: VerbKind,
            /// `block-job-*` (else `job-*`).
            block: bool,
            /// The job.
            job: Jb,
            /// block-job-cancel's `force`.
            force: bool,
        },
        /// `block-job-set-speed`.
        SetSpeed {
            /// `device`.
            job: Jb,
            /// `speed`.
            speed: Speed,
        },
        /// `x-mock-clock-advance` by `amount << (shift % 40)` microseconds.
        Advance {
            /// Mantissa.
            amount: u16,
            /// Exponent.
            shift: u8,
        },
        /// A query.
        Query {
            /// Which.
            what: QueryKind,
        },
        /// `stop`.
        Stop,
        /// `cont`.
        Cont,
    }
}

choice! {
    /// Simulated throughput of stepped mode, for jobs without a speed.
    #[derive(Copy)]
    pub enum Throughput {
        /// 64 KiB/s.
        Slow,
        /// 16 MiB/s.
        Medium,
        /// 1 GiB/s.
        Fast,
    }
}

choice! {
    /// How jobs run.
    pub enum JobMode {
        /// Instant mode: a job does all its work right after the command.
        Instant,
        /// Stepped mode: jobs progress as the virtual clock advances.
        Stepped {
            /// Simulated throughput.
            throughput: Throughput,
        },
    }
}

record! {
    /// A whole `blockops` input.
    pub struct BlockopsInput {
        /// Which QEMU is impersonated.
        pub profile: ProfileChoice,
        /// Instant or stepped jobs.
        pub mode: JobMode,
        /// What the client does.
        pub ops: Vec<Op>,
    }
}

impl BlockopsInput {
    /// Bytes that `derive(Arbitrary)` decodes back into `self` (checked by
    /// the seed generator and the tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// What the fuzz target sees for `data`.
    pub fn decode(data: &[u8]) -> arbitrary::Result<BlockopsInput> {
        BlockopsInput::arbitrary_take_rest(Unstructured::new(data))
    }
}

/// `common` job arguments into `a`.
fn put_job(a: &mut QDict, job: Jb, opts: &JobOpts) {
    let id = job.name();
    if !id.is_empty() {
        a.put("job-id", id);
    }
    if let Some(s) = opts.speed {
        a.put("speed", s.value());
    }
    if let Some(f) = opts.auto_finalize {
        a.put("auto-finalize", f);
    }
    if let Some(d) = opts.auto_dismiss {
        a.put("auto-dismiss", d);
    }
}

fn node_bitmap(node: Nd, name: Bm) -> QDict {
    let mut a = QDict::new();
    a.put("node", node.name());
    a.put("name", name.name());
    a
}

fn bitmap_command(op: &BitmapOp) -> (&'static str, QDict) {
    match op {
        BitmapOp::Add {
            node,
            name,
            granularity,
            persistent,
            disabled,
        } => {
            let mut a = node_bitmap(*node, *name);
            if let Some(g) = granularity {
                a.put("granularity", g.bytes());
            }
            if *persistent {
                a.put("persistent", true);
            }
            if *disabled {
                a.put("disabled", true);
            }
            ("block-dirty-bitmap-add", a)
        }
        BitmapOp::Remove { node, name } => ("block-dirty-bitmap-remove", node_bitmap(*node, *name)),
        BitmapOp::Clear { node, name } => ("block-dirty-bitmap-clear", node_bitmap(*node, *name)),
        BitmapOp::Enable { node, name } => ("block-dirty-bitmap-enable", node_bitmap(*node, *name)),
        BitmapOp::Disable { node, name } => {
            ("block-dirty-bitmap-disable", node_bitmap(*node, *name))
        }
        BitmapOp::Merge {
            node,
            target,
            source,
            source_node,
        } => {
            let mut a = QDict::new();
            a.put("node", node.name());
            a.put("target", target.name());
            let src = match source_node {
                None => QObject::from(source.name()),
                Some(n) => QObject::Dict(node_bitmap(*n, *source)),
            };
            a.put("bitmaps", vec![src]);
            ("block-dirty-bitmap-merge", a)
        }
    }
}

fn file_target(a: &mut QDict, file: Fl, format: Option<Fmt>, existing: bool) {
    a.put("target", file.name());
    if let Some(f) = format {
        a.put("format", f.name());
    }
    if existing {
        a.put("mode", "existing");
    }
}

fn backup_command(b: &BackupArgs) -> (&'static str, QDict) {
    let mut a = QDict::new();
    put_job(&mut a, b.job, &b.opts);
    a.put("device", b.device.name());
    let name = match &b.target {
        Target::Node { node } => {
            a.put("target", node.name());
            "blockdev-backup"
        }
        Target::File {
            file,
            format,
            existing,
            node_name: _,
        } => {
            file_target(&mut a, *file, *format, *existing);
            "drive-backup"
        }
    };
    a.put(
        "sync",
        match b.sync {
            BackupSync::Full => "full",
            BackupSync::Top => "top",
            BackupSync::None => "none",
            BackupSync::Incremental => "incremental",
            BackupSync::Bitmap => "bitmap",
        },
    );
    if let Some(bm) = b.bitmap {
        a.put("bitmap", bm.name());
    }
    if let Some(m) = b.mode {
        a.put(
            "bitmap-mode",
            match m {
                BitmapMode::OnSuccess => "on-success",
                BitmapMode::Never => "never",
                BitmapMode::Always => "always",
            },
        );
    }
    if let Some(f) = b.filter {
        a.put("filter-node-name", f.name());
    }
    (name, a)
}

fn snapshot_sync_args(node: Nd, file: Fl, snapshot_node: Option<Nd>) -> QDict {
    let mut a = QDict::new();
    a.put("node-name", node.name());
    a.put("snapshot-file", file.name());
    if let Some(s) = snapshot_node {
        a.put("snapshot-node-name", s.name());
    }
    a
}

fn snapshot_args(node: Nd, overlay: Nd) -> QDict {
    let mut a = QDict::new();
    a.put("node", node.name());
    a.put("overlay", overlay.name());
    a
}

fn action(act: &Action) -> QDict {
    let (kind, data) = match act {
        Action::Bitmap { op } => bitmap_command(op),
        Action::SnapshotSync {
            node,
            file,
            snapshot_node,
        } => (
            "blockdev-snapshot-sync",
            snapshot_sync_args(*node, *file, *snapshot_node),
        ),
        Action::Snapshot { node, overlay } => ("blockdev-snapshot", snapshot_args(*node, *overlay)),
        Action::Backup { backup } => backup_command(backup),
        Action::Abort => ("abort", QDict::new()),
    };
    let mut d = QDict::new();
    d.put("type", kind);
    d.put("data", data);
    d
}

fn file_def(file: Fl, node: Option<Nd>) -> QDict {
    let mut f = QDict::new();
    f.put("driver", "file");
    f.put("filename", file.name());
    if let Some(n) = node {
        f.put("node-name", n.name());
    }
    f
}

fn put_backing(a: &mut QDict, format: Fmt, backing: &Backing) {
    if format != Fmt::Qcow2 {
        return;
    }
    match backing {
        Backing::Default => {}
        Backing::Null => a.put("backing", QObject::Null),
        Backing::Node { node } => a.put("backing", node.name()),
    }
}

/// The QMP command (name, arguments) an operation sends.
pub fn command(op: &Op) -> (&'static str, QDict) {
    let mut a = QDict::new();
    let name = match op {
        Op::AddNull {
            node,
            size,
            read_only,
        } => {
            a.put("driver", "null-co");
            a.put("node-name", node.name());
            match size {
                NullSize::Default => {}
                NullSize::Image => a.put("size", IMAGE_SIZE),
                NullSize::Double => a.put("size", 2 * IMAGE_SIZE),
                NullSize::Header => a.put("size", 0x30000u64),
            }
            if *read_only {
                a.put("read-only", true);
            }
            "blockdev-add"
        }
        Op::AddImage {
            node,
            format,
            file,
            file_node,
            backing,
            read_only,
        } => {
            a.put("driver", format.name());
            a.put("node-name", node.name());
            a.put("file", file_def(*file, *file_node));
            put_backing(&mut a, *format, backing);
            if *read_only {
                a.put("read-only", true);
            }
            "blockdev-add"
        }
        Op::AddFile { node, file } => {
            a = file_def(*file, Some(*node));
            "blockdev-add"
        }
        Op::AddFormat {
            node,
            format,
            file,
            backing,
        } => {
            a.put("driver", format.name());
            a.put("node-name", node.name());
            a.put("file", file.name());
            put_backing(&mut a, *format, backing);
            "blockdev-add"
        }
        Op::AddFilter {
            node,
            kind,
            child,
            target,
            group,
        } => {
            a.put("node-name", node.name());
            match kind {
                FilterKind::CopyOnRead => a.put("driver", "copy-on-read"),
                FilterKind::Throttle => {
                    a.put("driver", "throttle");
                    a.put("throttle-group", group.name());
                }
                FilterKind::Blkdebug => a.put("driver", "blkdebug"),
                FilterKind::SnapshotAccess => a.put("driver", "snapshot-access"),
                FilterKind::CopyBeforeWrite => {
                    a.put("driver", "copy-before-write");
                    a.put("target", target.name());
                }
            }
            let key = if *kind == FilterKind::Blkdebug {
                "image"
            } else {
                "file"
            };
            a.put(key, child.name());
            "blockdev-add"
        }
        Op::GroupAdd { group } => {
            a.put("qom-type", "throttle-group");
            a.put("id", group.name());
            "object-add"
        }
        Op::GroupDel { group } => {
            a.put("id", group.name());
            "object-del"
        }
        Op::Del { node } => {
            a.put("node-name", node.name());
            "blockdev-del"
        }
        Op::SnapshotSync {
            node,
            file,
            snapshot_node,
            existing,
        } => {
            a = snapshot_sync_args(*node, *file, *snapshot_node);
            if *existing {
                a.put("mode", "existing");
            }
            "blockdev-snapshot-sync"
        }
        Op::Snapshot { node, overlay } => {
            a = snapshot_args(*node, *overlay);
            "blockdev-snapshot"
        }
        Op::Bitmap { op } => {
            let (name, args) = bitmap_command(op);
            a = args;
            name
        }
        Op::Stream {
            job,
            node,
            base,
            filter,
            opts,
        } => {
            put_job(&mut a, *job, opts);
            a.put("device", node.name());
            if let Some(b) = base {
                a.put("base-node", b.name());
            }
            if let Some(f) = filter {
                a.put("filter-node-name", f.name());
            }
            "block-stream"
        }
        Op::Commit {
            job,
            device,
            top,
            base,
            filter,
            opts,
        } => {
            put_job(&mut a, *job, opts);
            a.put("device", device.name());
            if let Some(t) = top {
                a.put("top-node", t.name());
            }
            if let Some(b) = base {
                a.put("base-node", b.name());
            }
            if let Some(f) = filter {
                a.put("filter-node-name", f.name());
            }
            "block-commit"
        }
        Op::Mirror {
            job,
            device,
            target,
            sync,
            granularity,
            filter,
            opts,
        } => {
            put_job(&mut a, *job, opts);
            a.put("device", device.name());
            a.put(
                "sync",
                match sync {
                    MirrorSync::Full => "full",
                    MirrorSync::Top => "top",
                    MirrorSync::None => "none",
                },
            );
            if let Some(g) = granularity {
                a.put("granularity", g.bytes());
            }
            match target {
                Target::Node { node } => {
                    a.put("target", node.name());
                    if let Some(f) = filter {
                        a.put("filter-node-name", f.name());
                    }
                    "blockdev-mirror"
                }
                Target::File {
                    file,
                    format,
                    existing,
                    node_name,
                } => {
                    file_target(&mut a, *file, *format, *existing);
                    if let Some(n) = node_name {
                        a.put("node-name", n.name());
                    }
                    "drive-mirror"
                }
            }
        }
        Op::Backup { backup } => {
            let (name, args) = backup_command(backup);
            a = args;
            name
        }
        Op::Create { job, spec } => {
            a.put("job-id", job.name());
            let mut o = QDict::new();
            match spec {
                CreateSpec::File { file, size } => {
                    o.put("driver", "file");
                    o.put("filename", file.name());
                    o.put("size", size.bytes());
                }
                CreateSpec::Qcow2 {
                    file,
                    size,
                    backing,
                } => {
                    o.put("driver", "qcow2");
                    o.put("file", file.name());
                    o.put("size", size.bytes());
                    if let Some(b) = backing {
                        o.put("backing-file", b.name());
                        o.put("backing-fmt", if b.0 == 0 { "raw" } else { "qcow2" });
                    }
                }
            }
            a.put("options", o);
            "blockdev-create"
        }
        Op::Transaction { actions } => {
            let list: Vec<QObject> = actions.iter().map(|x| QObject::Dict(action(x))).collect();
            a.put("actions", list);
            "transaction"
        }
        Op::NbdStart => {
            let mut data = QDict::new();
            data.put("path", "/fz/nbd.sock");
            let mut addr = QDict::new();
            addr.put("type", "unix");
            addr.put("data", data);
            a.put("addr", addr);
            "nbd-server-start"
        }
        Op::NbdStop => "nbd-server-stop",
        Op::ExportAdd {
            id,
            node,
            writable,
            legacy,
        } => {
            if *writable {
                a.put("writable", true);
            }
            if *legacy {
                a.put("device", node.name());
                a.put("name", id.name());
                "nbd-server-add"
            } else {
                a.put("type", "nbd");
                a.put("id", id.name());
                a.put("node-name", node.name());
                "block-export-add"
            }
        }
        Op::ExportDel { id, legacy } => {
            if *legacy {
                a.put("name", id.name());
                "nbd-server-remove"
            } else {
                a.put("id", id.name());
                "block-export-del"
            }
        }
        Op::Verb {
            verb,
            block,
            job,
            force,
        } => {
            let (job_name, block_name) = match verb {
                VerbKind::Pause => ("job-pause", "block-job-pause"),
                VerbKind::Resume => ("job-resume", "block-job-resume"),
                VerbKind::Cancel => ("job-cancel", "block-job-cancel"),
                VerbKind::Complete => ("job-complete", "block-job-complete"),
                VerbKind::Finalize => ("job-finalize", "block-job-finalize"),
                VerbKind::Dismiss => ("job-dismiss", "block-job-dismiss"),
            };
            if !*block {
                a.put("id", job.name());
                job_name
            } else {
                let key = match verb {
                    VerbKind::Finalize | VerbKind::Dismiss => "id",
                    _ => "device",
                };
                a.put(key, job.name());
                if *verb == VerbKind::Cancel && *force {
                    a.put("force", true);
                }
                block_name
            }
        }
        Op::SetSpeed { job, speed } => {
            a.put("device", job.name());
            a.put("speed", speed.value());
            "block-job-set-speed"
        }
        Op::Advance { amount, shift } => {
            a.put("microseconds", u64::from(*amount) << (shift % 40));
            "x-mock-clock-advance"
        }
        Op::Query { what } => match what {
            QueryKind::Jobs => "query-jobs",
            QueryKind::BlockJobs => "query-block-jobs",
            QueryKind::NamedNodes => "query-named-block-nodes",
            QueryKind::NamedNodesFlat => {
                a.put("flat", true);
                "query-named-block-nodes"
            }
            QueryKind::Block => "query-block",
            QueryKind::Exports => "query-block-exports",
        },
        Op::Stop => "stop",
        Op::Cont => "cont",
    };
    (name, a)
}

/// What the events said about one job (one instance of an id).
#[derive(Debug, Clone)]
struct Instance {
    status: JobStatus,
    /// A block job (not `blockdev-create`'s plain job).
    block: bool,
    /// `BLOCK_JOB_COMPLETED`/`BLOCK_JOB_CANCELLED` events so far.
    finished: u32,
    /// It reached `running` at least once.
    started: bool,
}

/// Far enough ahead for 1 GiB at 1 byte per second (~143 years).
const FAR_AHEAD: u64 = 1 << 52;

struct Harness {
    core: Core,
    sid: SessionId,
    style: Style,
    streamer: JsonStreamer,
    next_id: i64,
    last_timestamp: (i64, i64),
    /// Jobs that exist according to the events.
    jobs: BTreeMap<String, Instance>,
    /// A `null` was announced since the last `query-jobs` check.
    saw_null: bool,
    transcript: Vec<String>,
}

/// The status named `name`.
fn status_named(name: &str) -> Option<JobStatus> {
    JobStatus::ALL.into_iter().find(|s| s.name() == name)
}

impl Harness {
    fn new(input: &BlockopsInput) -> Harness {
        let (version, flavor) = input.profile.version_flavor();
        let profile = Profile::get(version, flavor)
            .unwrap_or_else(|e| panic!("profile {:?}: {e}", input.profile));
        let stepped = match &input.mode {
            JobMode::Instant => None,
            JobMode::Stepped { throughput } => Some(match throughput {
                Throughput::Slow => 64 << 10,
                Throughput::Medium => 16 << 20,
                Throughput::Fast => 1 << 30,
            }),
        };
        let config = CoreConfig {
            stepped_jobs: stepped,
            ..CoreConfig::default()
        };
        let host = MemHost::default();
        setup_files(&host);
        let mut core = Core::new(profile, &config);
        core.set_host_io(Box::new(host));
        let (sid, _greeting) = core.open_session();
        let mut h = Harness {
            core,
            sid,
            style: input.profile.style(),
            streamer: JsonStreamer::new(),
            next_id: 0,
            last_timestamp: (0, 0),
            jobs: BTreeMap::new(),
            saw_null: false,
            transcript: Vec::new(),
        };
        let (outcome, _) = h.send("qmp_capabilities", QDict::new());
        assert_eq!(outcome, Outcome::Return, "qmp_capabilities failed");
        h
    }

    /// Sends one command as text through the streamer and the core, checks
    /// everything that came back and the state after it; returns the
    /// outcome and, on success, the `return` value.
    fn send(&mut self, command: &str, args: QDict) -> (Outcome, Option<QObject>) {
        let mut req = QDict::new();
        req.put("execute", command);
        if !args.is_empty() {
            req.put("arguments", args);
        }
        req.put("id", self.next_id);
        self.next_id += 1;
        let text = to_json(&QObject::Dict(req));
        self.transcript.push(format!("-> {text}"));
        let mut items = Vec::new();
        self.streamer.feed(text.as_bytes(), &mut items);
        let [item] = <[Parsed; 1]>::try_from(items)
            .unwrap_or_else(|items| panic!("{text} parsed as {items:?}"));
        let request = Request::of(&item);
        let block = command != "blockdev-create";
        let d = self.core.handle(self.sid, item);
        if std::env::var_os("BLOCKOPS_TRACE").is_some() {
            // Reproducing a finding: the conversation, as a scenario would show it.
            eprintln!("-> {text}");
            for line in d.events.iter().chain(&d.reply).chain(&d.after) {
                eprintln!("<- {line}");
            }
        }
        let mut created = Vec::new();
        for line in &d.events {
            self.event(line, "event", block, &mut created);
        }
        let Some(reply) = d.reply else {
            panic!("no reply to {text}");
        };
        let outcome = check_reply(&reply, &request, self.style)
            .unwrap_or_else(|e| panic!("reply {reply} to {text}: {e}"));
        self.transcript.push(format!("<- {reply}"));
        for line in &d.after {
            self.event(line, "after", block, &mut created);
        }
        assert_eq!(d.recipients, [self.sid], "event recipients");
        if let Outcome::Error { desc, .. } = &outcome {
            for id in &created {
                assert!(
                    !self.jobs.contains_key(id),
                    "{text} failed ({desc}) but left job {id:?} it created behind"
                );
            }
        }
        self.check_state(&text);
        let ret = (outcome == Outcome::Return).then(|| {
            let v = parse_one(&reply).unwrap_or_else(|e| panic!("reply {reply}: {e}"));
            v.as_dict()
                .and_then(|d| d.get("return"))
                .cloned()
                .unwrap_or(QObject::Null)
        });
        if let Some(list) = &ret {
            match command {
                "query-jobs" => self.check_job_list(list, "id", false),
                "query-block-jobs" => self.check_job_list(list, "device", true),
                _ => {}
            }
        }
        (outcome, ret)
    }

    /// Checks one event line and follows the jobs it reports on.
    fn event(&mut self, line: &str, when: &str, block: bool, created: &mut Vec<String>) {
        let ts = check_event(line).unwrap_or_else(|e| panic!("event {line}: {e}"));
        assert!(
            ts >= self.last_timestamp,
            "event timestamp {ts:?} before {:?}: {line}",
            self.last_timestamp
        );
        self.last_timestamp = ts;
        self.transcript.push(format!("{when} {line}"));
        let v = parse_one(line).unwrap_or_else(|e| panic!("event {line}: {e}"));
        let d = v.as_dict().expect("checked: an object");
        let name = d.get_str("event").unwrap_or_default();
        let data = d.get("data").and_then(QObject::as_dict);
        let member = |key: &str| -> String {
            data.and_then(|d| d.get_str(key))
                .unwrap_or_else(|| panic!("{name} without a string '{key}': {line}"))
                .to_owned()
        };
        match name {
            "JOB_STATUS_CHANGE" => {
                let id = member("id");
                let status_name = member("status");
                let Some(to) = status_named(&status_name) else {
                    panic!("unknown job status {status_name:?}: {line}");
                };
                let from = self
                    .jobs
                    .get(&id)
                    .map_or(JobStatus::Undefined, |j| j.status);
                assert!(
                    transition_allowed(from, to),
                    "job {id:?}: {} -> {} is not in the transition table: {line}",
                    from.name(),
                    to.name()
                );
                match to {
                    JobStatus::Created => {
                        self.jobs.insert(
                            id.clone(),
                            Instance {
                                status: to,
                                block,
                                finished: 0,
                                started: false,
                            },
                        );
                        created.push(id);
                    }
                    JobStatus::Null => {
                        self.jobs.remove(&id);
                        self.saw_null = true;
                    }
                    _ => {
                        let j = self.jobs.get_mut(&id).expect("known: the table allowed it");
                        if to == JobStatus::Running {
                            j.started = true;
                        }
                        if to == JobStatus::Concluded {
                            // A job a failed transaction takes back before it
                            // ever ran reports neither (recorded in
                            // transaction/aborted-with-backup).
                            let want = u32::from(j.block && j.started);
                            assert_eq!(
                                j.finished, want,
                                "job {id:?} concluded after {} BLOCK_JOB_COMPLETED/CANCELLED events (block job: {})",
                                j.finished, j.block
                            );
                        }
                        j.status = to;
                    }
                }
            }
            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_READY" => {
                let id = member("device");
                let Some(j) = self.jobs.get_mut(&id) else {
                    panic!("{name} for job {id:?}, which does not exist: {line}");
                };
                assert!(j.block, "{name} for a plain job: {line}");
                let allowed: &[JobStatus] = match name {
                    "BLOCK_JOB_COMPLETED" => &[JobStatus::Pending, JobStatus::Aborting],
                    "BLOCK_JOB_CANCELLED" => &[JobStatus::Aborting],
                    _ => &[JobStatus::Ready],
                };
                assert!(
                    allowed.contains(&j.status),
                    "{name} while job {id:?} is {}: {line}",
                    j.status.name()
                );
                if name != "BLOCK_JOB_READY" {
                    j.finished += 1;
                }
            }
            "BLOCK_JOB_PENDING" => {
                let id = member("id");
                let Some(j) = self.jobs.get(&id) else {
                    panic!("{name} for job {id:?}, which does not exist: {line}");
                };
                assert!(
                    j.block && j.status == JobStatus::Pending,
                    "{name} while job {id:?} is {} (block job: {}): {line}",
                    j.status.name(),
                    j.block
                );
            }
            _ => {}
        }
    }

    /// A `query-jobs`/`query-block-jobs` list agrees with the events.
    fn check_job_list(&self, list: &QObject, key: &str, block_only: bool) {
        let QObject::List(items) = list else {
            panic!("job list is not a list: {list:?}");
        };
        let mut listed = BTreeMap::new();
        for item in items {
            let d = item.as_dict().expect("job info is an object");
            let id = d.get_str(key).expect("job info has an id").to_owned();
            let status = d.get_str("status").expect("job info has a status");
            assert!(
                listed.insert(id.clone(), status.to_owned()).is_none(),
                "job {id:?} listed twice"
            );
        }
        let expected: BTreeMap<String, String> = self
            .jobs
            .iter()
            .filter(|(_, j)| !block_only || j.block)
            .map(|(id, j)| (id.clone(), j.status.name().to_owned()))
            .collect();
        assert_eq!(listed, expected, "the job list disagrees with the events");
    }

    /// The graph's and the job table's invariants.
    fn check_state(&self, after: &str) {
        let m = self.core.machine();
        // The job table is what the events announced.
        let mut model = BTreeMap::new();
        for j in m.jobs_newest_first() {
            assert!(
                model.insert(j.id.clone(), j).is_none(),
                "two jobs with id {:?} after {after}",
                j.id
            );
            let Some(t) = self.jobs.get(&j.id) else {
                panic!(
                    "job {:?} exists without a created event, after {after}",
                    j.id
                );
            };
            assert_eq!(
                (t.status, t.block),
                (j.status, j.kind.is_block_job()),
                "job {:?}: the events disagree with the model after {after}",
                j.id
            );
        }
        for id in self.jobs.keys() {
            assert!(
                model.contains_key(id),
                "job {id:?} never reached null but is gone, after {after}"
            );
        }

        // The graph.
        let g = m.graph();
        let ids: BTreeSet<NodeId> = g.newest_first().map(|(id, _)| id).collect();
        let mut names = BTreeSet::new();
        for (id, n) in g.newest_first() {
            assert!(!n.name.is_empty(), "node {id} has no name, after {after}");
            assert!(
                names.insert(n.name.as_str()),
                "two nodes named {:?}, after {after}",
                n.name
            );
            for (role, c) in &n.children {
                assert!(
                    ids.contains(c),
                    "node {:?}'s {role} child {c} does not exist, after {after}",
                    n.name
                );
            }
            for b in &n.bitmaps {
                if let Some(o) = b.owner {
                    assert!(
                        ids.contains(&o),
                        "bitmap {:?} of node {:?} belongs to node {o}, which does not exist, after {after}",
                        b.name,
                        n.name
                    );
                }
            }
        }
        // Acyclic: depth-first, a node on the current path seen again is a cycle.
        let mut state: BTreeMap<NodeId, bool> = BTreeMap::new(); // false: on the path, true: done
        for &root in &ids {
            if state.contains_key(&root) {
                continue;
            }
            let mut stack: Vec<(NodeId, usize)> = vec![(root, 0)];
            state.insert(root, false);
            while let Some((id, i)) = stack.pop() {
                let children = g.node(id).map_or(&[][..], |n| &n.children[..]);
                if let Some((role, c)) = children.get(i) {
                    stack.push((id, i + 1));
                    match state.get(c) {
                        Some(false) => panic!(
                            "cycle in the graph: {:?} reaches {:?} again through {role}, after {after}",
                            g.node(*c).map(|n| n.name.as_str()),
                            g.node(id).map(|n| n.name.as_str())
                        ),
                        Some(true) => {}
                        None => {
                            state.insert(*c, false);
                            stack.push((*c, 0));
                        }
                    }
                } else {
                    state.insert(id, true);
                }
            }
        }
        for (owner, n) in g.backends() {
            assert!(
                ids.contains(&n),
                "BlockBackend {owner:?} is on node {n}, which does not exist, after {after}"
            );
        }
        for e in m.exports().newest_first() {
            assert!(
                ids.contains(&e.node),
                "export {:?} is on node {}, which does not exist, after {after}",
                e.id,
                e.node
            );
        }

        // What live jobs hold exists; busy bitmaps are held by live jobs.
        let mut held = BTreeSet::new();
        for j in model.values().filter(|j| j.status < JobStatus::Concluded) {
            let refs = [
                ("node", (j.node != NO_NODE).then_some(j.node)),
                ("top", j.top),
                ("base/target", j.base),
                ("filter", j.filter),
                ("owned target", j.owned_target),
            ];
            for (what, r) in refs {
                if let Some(r) = r {
                    assert!(
                        ids.contains(&r),
                        "job {:?} ({}) holds node {r} as its {what}, which does not exist, after {after}",
                        j.id,
                        j.status.name()
                    );
                }
            }
            if let Some((node, name)) = &j.user_bitmap {
                let busy = g
                    .node(*node)
                    .and_then(|n| n.bitmaps.iter().find(|b| b.name.as_ref() == Some(name)))
                    .is_some_and(|b| b.busy);
                assert!(
                    busy,
                    "job {:?} holds bitmap {name:?} of node {node}, which is gone or not busy, after {after}",
                    j.id
                );
                held.insert((*node, name.clone()));
            }
        }
        for (id, n) in g.newest_first() {
            for b in n.bitmaps.iter().filter(|b| b.busy) {
                let Some(name) = &b.name else { continue };
                assert!(
                    held.contains(&(id, name.clone())),
                    "bitmap {name:?} of node {:?} is busy but no running job holds it, after {after}",
                    n.name
                );
            }
        }
    }

    /// Runs one operation, then checks `query-jobs` if a job went away.
    fn op(&mut self, op: &Op) {
        let (name, args) = command(op);
        self.send(name, args);
        self.check_dismissed();
    }

    fn check_dismissed(&mut self) {
        if std::mem::take(&mut self.saw_null) {
            self.send("query-jobs", QDict::new());
            self.saw_null = false;
        }
    }

    fn advance(&mut self, micros: u64) {
        let mut a = QDict::new();
        a.put("microseconds", micros);
        let (outcome, _) = self.send("x-mock-clock-advance", a);
        assert_eq!(outcome, Outcome::Return, "x-mock-clock-advance failed");
        self.check_dismissed();
    }

    fn job_verb(&mut self, verb: &str, id: &str) {
        let mut a = QDict::new();
        a.put("id", id);
        let (outcome, _) = self.send(verb, a);
        assert_eq!(
            outcome,
            Outcome::Return,
            "{verb} of job {id:?} failed while draining"
        );
        self.check_dismissed();
    }

    /// Property 5: time makes every job finish or wait for the user; then
    /// the user's verbs end every job.
    fn finish(&mut self) {
        self.advance(FAR_AHEAD);
        for j in self.core.machine().jobs_newest_first() {
            let waits = (j.user_paused && !j.cancel_requested)
                || (matches!(j.status, JobStatus::Ready | JobStatus::Standby)
                    && !j.complete_requested)
                || (j.status == JobStatus::Pending && !j.auto_finalize)
                || (j.status == JobStatus::Concluded && !j.auto_dismiss)
                || (j.status == JobStatus::Running && j.until_cancelled && !j.cancel_requested);
            assert!(
                waits,
                "job {:?} is stuck in {} once time advanced: {j:?}",
                j.id,
                j.status.name()
            );
        }
        for _round in 0..4 {
            let jobs: Vec<String> = self
                .core
                .machine()
                .jobs_newest_first()
                .map(|j| j.id.clone())
                .collect();
            if jobs.is_empty() {
                break;
            }
            for id in jobs {
                let Some(j) = self.core.machine().job(&id) else {
                    continue;
                };
                if j.user_paused {
                    self.job_verb("job-resume", &id);
                }
                let Some(j) = self.core.machine().job(&id) else {
                    continue;
                };
                match j.status {
                    JobStatus::Created
                    | JobStatus::Running
                    | JobStatus::Paused
                    | JobStatus::Ready
                    | JobStatus::Standby
                    | JobStatus::Waiting
                        if !j.cancel_requested =>
                    {
                        self.job_verb("job-cancel", &id)
                    }
                    JobStatus::Pending => self.job_verb("job-finalize", &id),
                    JobStatus::Concluded => self.job_verb("job-dismiss", &id),
                    _ => {}
                }
            }
            self.advance(FAR_AHEAD);
        }
        let left: Vec<String> = self
            .core
            .machine()
            .jobs_newest_first()
            .map(|j| format!("{:?} ({})", j.id, j.status.name()))
            .collect();
        assert!(
            left.is_empty(),
            "jobs left after cancel, finalize, dismiss: {left:?}"
        );
        let (_, list) = self.send("query-jobs", QDict::new());
        assert_eq!(
            list,
            Some(QObject::List(Vec::new())),
            "query-jobs at the end"
        );
    }
}

/// Plays an input once, checking every property; returns the transcript
/// (`-> REQUEST`, `event LINE`, `<- REPLY`, `after LINE`).
pub fn play(input: &BlockopsInput) -> Vec<String> {
    let mut h = Harness::new(input);
    for op in &input.ops {
        h.op(op);
    }
    h.finish();
    h.transcript
}

/// Runs one input through every property, twice (determinism); panics on
/// a violation.
pub fn run(input: &BlockopsInput) {
    let first = play(input);
    let second = play(input);
    assert!(first == second, "the same input gave different transcripts");
}

/// Seeds: each job type's happy path (and the fleecing setup), as
/// operations; [`seed_inputs`] plays them on every profile in both modes.
pub fn seed_ops() -> Vec<(&'static str, Vec<Op>)> {
    let n = Nd;
    let j = Jb;
    let opts = JobOpts {
        speed: None,
        auto_finalize: None,
        auto_dismiss: None,
    };
    let manual = JobOpts {
        speed: Some(Speed::M1),
        auto_finalize: Some(false),
        auto_dismiss: Some(false),
    };
    let image = |node: u8, file: usize, backing: Backing| Op::AddImage {
        node: n(node),
        format: Fmt::Qcow2,
        file: Fl(file as u8),
        file_node: None,
        backing,
        read_only: false,
    };
    let null = |node: u8, size: NullSize| Op::AddNull {
        node: n(node),
        size,
        read_only: false,
    };
    let verb = |verb: VerbKind, job: u8| Op::Verb {
        verb,
        block: false,
        job: j(job),
        force: false,
    };
    let advance = Op::Advance {
        amount: 1000,
        shift: 20,
    };
    let query = |what| Op::Query { what };
    // base.qcow2 (n1) <- mid.qcow2 (n2) <- top.qcow2 (n0), all named.
    let chain = vec![
        image(1, 1, Backing::Null),
        image(2, 2, Backing::Node { node: n(1) }),
        image(0, 3, Backing::Node { node: n(2) }),
    ];
    let backup = |job: u8, target: Target, sync, bitmap: Option<u8>, opts: &JobOpts| Op::Backup {
        backup: BackupArgs {
            job: j(job),
            device: n(0),
            target,
            sync,
            bitmap: bitmap.map(Bm),
            mode: None,
            filter: None,
            opts: opts.clone(),
        },
    };
    let mut out = Vec::new();

    let mut stream = chain.clone();
    stream.extend([
        Op::Stream {
            job: j(0),
            node: n(0),
            base: Some(n(1)),
            filter: None,
            opts: opts.clone(),
        },
        advance.clone(),
        query(QueryKind::Jobs),
        query(QueryKind::NamedNodes),
        image(3, 4, Backing::Default),
        Op::Stream {
            job: j(1),
            node: n(3),
            base: None,
            filter: Some(n(4)),
            opts: manual.clone(),
        },
        advance.clone(),
        verb(VerbKind::Finalize, 1),
        verb(VerbKind::Dismiss, 1),
    ]);
    out.push(("stream", stream));

    let mut commit = chain.clone();
    commit.extend([
        Op::Commit {
            job: j(0),
            device: n(0),
            top: Some(n(2)),
            base: Some(n(1)),
            filter: None,
            opts: opts.clone(),
        },
        advance.clone(),
        query(QueryKind::NamedNodesFlat),
        Op::Commit {
            job: j(1),
            device: n(0),
            top: None,
            base: None,
            filter: Some(n(5)),
            opts: opts.clone(),
        },
        advance.clone(),
        query(QueryKind::BlockJobs),
        verb(VerbKind::Complete, 1),
        advance.clone(),
    ]);
    out.push(("commit", commit));

    out.push((
        "mirror",
        vec![
            null(0, NullSize::Image),
            null(1, NullSize::Image),
            Op::Mirror {
                job: j(0),
                device: n(0),
                target: Target::Node { node: n(1) },
                sync: MirrorSync::Full,
                granularity: None,
                filter: None,
                opts: opts.clone(),
            },
            advance.clone(),
            verb(VerbKind::Pause, 0),
            verb(VerbKind::Resume, 0),
            verb(VerbKind::Complete, 0),
            advance.clone(),
            Op::Mirror {
                job: j(1),
                device: n(1),
                target: Target::File {
                    file: Fl(6),
                    format: Some(Fmt::Qcow2),
                    existing: false,
                    node_name: Some(n(2)),
                },
                sync: MirrorSync::Full,
                granularity: Some(Gran::K64),
                filter: None,
                opts: manual.clone(),
            },
            advance.clone(),
            Op::Verb {
                verb: VerbKind::Cancel,
                block: true,
                job: j(1),
                force: false,
            },
            advance.clone(),
            verb(VerbKind::Finalize, 1),
            verb(VerbKind::Dismiss, 1),
            query(QueryKind::NamedNodes),
        ],
    ));

    out.push((
        "backup",
        vec![
            null(0, NullSize::Image),
            null(1, NullSize::Image),
            Op::Bitmap {
                op: BitmapOp::Add {
                    node: n(0),
                    name: Bm(0),
                    granularity: None,
                    persistent: false,
                    disabled: false,
                },
            },
            backup(
                0,
                Target::Node { node: n(1) },
                BackupSync::Full,
                None,
                &opts,
            ),
            advance.clone(),
            backup(
                1,
                Target::Node { node: n(1) },
                BackupSync::Incremental,
                Some(0),
                &opts,
            ),
            advance.clone(),
            backup(
                2,
                Target::File {
                    file: Fl(8),
                    format: Some(Fmt::Raw),
                    existing: false,
                    node_name: None,
                },
                BackupSync::Full,
                None,
                &manual,
            ),
            Op::SetSpeed {
                job: j(2),
                speed: Speed::G1,
            },
            advance.clone(),
            verb(VerbKind::Finalize, 2),
            verb(VerbKind::Dismiss, 2),
            backup(
                3,
                Target::Node { node: n(1) },
                BackupSync::None,
                None,
                &opts,
            ),
            advance.clone(),
            verb(VerbKind::Cancel, 3),
            query(QueryKind::Jobs),
        ],
    ));

    out.push((
        "create",
        vec![
            Op::Create {
                job: j(0),
                spec: CreateSpec::File {
                    file: Fl(7),
                    size: CreateSize::Zero,
                },
            },
            advance.clone(),
            verb(VerbKind::Dismiss, 0),
            Op::AddFile {
                node: n(0),
                file: Fl(7),
            },
            Op::Create {
                job: j(1),
                spec: CreateSpec::Qcow2 {
                    file: n(0),
                    size: CreateSize::Image,
                    backing: Some(Fl(1)),
                },
            },
            advance.clone(),
            verb(VerbKind::Dismiss, 1),
            Op::AddFormat {
                node: n(1),
                format: Fmt::Qcow2,
                file: n(0),
                backing: Backing::Default,
            },
            query(QueryKind::NamedNodes),
        ],
    ));

    out.push((
        "transaction",
        vec![
            image(0, 1, Backing::Null),
            null(1, NullSize::Image),
            Op::Transaction {
                actions: vec![
                    Action::Bitmap {
                        op: BitmapOp::Add {
                            node: n(0),
                            name: Bm(1),
                            granularity: Some(Gran::K64),
                            persistent: true,
                            disabled: false,
                        },
                    },
                    Action::Backup {
                        backup: BackupArgs {
                            job: j(0),
                            device: n(0),
                            target: Target::Node { node: n(1) },
                            sync: BackupSync::Full,
                            bitmap: None,
                            mode: None,
                            filter: None,
                            opts: opts.clone(),
                        },
                    },
                ],
            },
            advance.clone(),
            Op::Transaction {
                actions: vec![
                    Action::SnapshotSync {
                        node: n(0),
                        file: Fl(6),
                        snapshot_node: Some(n(2)),
                    },
                    Action::Abort,
                ],
            },
            Op::SnapshotSync {
                node: n(0),
                file: Fl(7),
                snapshot_node: Some(n(3)),
                existing: false,
            },
            query(QueryKind::NamedNodes),
        ],
    ));

    out.push((
        "fleecing",
        vec![
            image(0, 1, Backing::Null),
            image(1, 5, Backing::Null),
            Op::AddImage {
                node: n(2),
                format: Fmt::Qcow2,
                file: Fl(2),
                file_node: None,
                backing: Backing::Node { node: n(0) },
                read_only: false,
            },
            Op::AddFilter {
                node: n(3),
                kind: FilterKind::CopyBeforeWrite,
                child: n(0),
                target: n(2),
                group: Tg(0),
            },
            Op::AddFilter {
                node: n(4),
                kind: FilterKind::SnapshotAccess,
                child: n(3),
                target: n(3),
                group: Tg(0),
            },
            Op::NbdStart,
            Op::ExportAdd {
                id: Ex(0),
                node: n(4),
                writable: false,
                legacy: false,
            },
            query(QueryKind::Exports),
            Op::GroupAdd { group: Tg(1) },
            Op::AddFilter {
                node: n(5),
                kind: FilterKind::Throttle,
                child: n(1),
                target: n(1),
                group: Tg(1),
            },
            Op::ExportDel {
                id: Ex(0),
                legacy: false,
            },
            Op::NbdStop,
            Op::Del { node: n(4) },
            Op::Del { node: n(3) },
            query(QueryKind::NamedNodes),
        ],
    ));
    out
}

/// Every seed on every profile, in instant and in stepped mode.
pub fn seed_inputs() -> Vec<(String, BlockopsInput)> {
    let mut out = Vec::new();
    for (name, ops) in seed_ops() {
        for profile in ProfileChoice::ALL {
            for (mode_name, mode) in [
                ("instant", JobMode::Instant),
                (
                    "stepped",
                    JobMode::Stepped {
                        throughput: Throughput::Medium,
                    },
                ),
            ] {
                out.push((
                    format!("{name}-{profile:?}-{mode_name}"),
                    BlockopsInput {
                        profile,
                        mode,
                        ops: ops.clone(),
                    },
                ));
            }
        }
    }
    out
}

/// A seed's bytes, checked to decode back into the seed.
pub fn encode_seed(input: &BlockopsInput) -> Result<Vec<u8>, String> {
    let bytes = input.to_bytes();
    match BlockopsInput::decode(&bytes) {
        Ok(back) if back == *input => Ok(bytes),
        other => Err(format!(
            "the arbitrary crate no longer decodes blockops seeds as encoded: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (request, reply) pairs of a transcript.
    fn exchanges(t: &[String]) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        let mut req = None;
        for l in t {
            if let Some(r) = l.strip_prefix("-> ") {
                req = Some(r);
            } else if let (Some(r), Some(reply)) = (req, l.strip_prefix("<- ")) {
                out.push((r, reply));
                req = None;
            }
        }
        out
    }

    #[test]
    fn seeds_round_trip_through_arbitrary() {
        for (name, input) in seed_inputs() {
            encode_seed(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn seed_commands_succeed_on_10_0() {
        for (name, input) in seed_inputs() {
            let t = play(&input);
            if !matches!(input.profile, ProfileChoice::System10_0) {
                continue;
            }
            for (req, reply) in exchanges(&t) {
                let starts_job = [
                    "block-stream",
                    "block-commit",
                    "blockdev-mirror",
                    "drive-mirror",
                    "blockdev-backup",
                    "drive-backup",
                    "blockdev-create",
                    "transaction",
                    "blockdev-add",
                ]
                .iter()
                .any(|c| req.contains(&format!("\"execute\": \"{c}\"")));
                let aborts = req.contains("\"abort\"");
                if starts_job && !aborts {
                    assert!(
                        reply.starts_with("{\"return\"") || reply.contains("\"return\": "),
                        "{name}: {req} -> {reply}"
                    );
                }
            }
        }
    }

    #[test]
    fn regressions_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/blockops");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return; // no findings yet
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let input =
                BlockopsInput::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run(&input);
        }
    }

    #[test]
    fn seeds_pass() {
        for (name, input) in seed_inputs() {
            let first = play(&input);
            assert!(!first.is_empty(), "{name}");
            assert_eq!(first, play(&input), "{name}: not deterministic");
        }
    }
}
