//! QEMU's job state machine as data: statuses, the transition table, the
//! verb table (per version), and the job records.
//!
//! The tables follow `job.c` (`JobSTT`, `JobVerbTable`); the reference
//! notes §4.1–4.3 list them. A transition the table forbids is a mock bug:
//! it is refused (and reported by [`JobError::BadTransition`]) instead of
//! asserting as QEMU does.

use super::graph::NodeId;
use super::perms::Perms;
use crate::profile::Version;

/// `JobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobStatus {
    /// Never visible.
    Undefined,
    /// Created, not started.
    Created,
    /// Working.
    Running,
    /// Paused.
    Paused,
    /// In sync, waiting for complete (mirror, active commit).
    Ready,
    /// Ready but paused.
    Standby,
    /// Work done; waiting for its transaction.
    Waiting,
    /// Waiting to finalize.
    Pending,
    /// Failing or cancelled.
    Aborting,
    /// Finished.
    Concluded,
    /// Being destroyed.
    Null,
}

impl JobStatus {
    /// Every status, in `JobStatus` order (the table's index).
    pub const ALL: [JobStatus; 11] = [
        JobStatus::Undefined,
        JobStatus::Created,
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Ready,
        JobStatus::Standby,
        JobStatus::Waiting,
        JobStatus::Pending,
        JobStatus::Aborting,
        JobStatus::Concluded,
        JobStatus::Null,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Undefined => "undefined",
            JobStatus::Created => "created",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Ready => "ready",
            JobStatus::Standby => "standby",
            JobStatus::Waiting => "waiting",
            JobStatus::Pending => "pending",
            JobStatus::Aborting => "aborting",
            JobStatus::Concluded => "concluded",
            JobStatus::Null => "null",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `JobSTT`: rows from, columns to (U C R P Y S W D X E N).
const TRANSITIONS: [[u8; 11]; 11] = [
    /* U */ [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    /* C */ [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1],
    /* R */ [0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0],
    /* P */ [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    /* Y */ [0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0],
    /* S */ [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    /* W */ [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
    /* D */ [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
    /* X */ [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
    /* E */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    /* N */ [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
];

/// Whether QEMU allows `from → to`.
pub fn transition_allowed(from: JobStatus, to: JobStatus) -> bool {
    TRANSITIONS[from.index()][to.index()] == 1
}

/// A job verb (`JobVerb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// cancel
    Cancel,
    /// pause
    Pause,
    /// resume
    Resume,
    /// set-speed
    SetSpeed,
    /// complete
    Complete,
    /// finalize
    Finalize,
    /// dismiss
    Dismiss,
    /// change (8.2)
    Change,
}

impl Verb {
    /// The wire name used in error texts.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Cancel => "cancel",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::SetSpeed => "set-speed",
            Verb::Complete => "complete",
            Verb::Finalize => "finalize",
            Verb::Dismiss => "dismiss",
            Verb::Change => "change",
        }
    }
}

/// `JobVerbTable` for a version: may `verb` be applied in `status`?
pub fn verb_allowed(version: Version, verb: Verb, status: JobStatus) -> bool {
    use JobStatus::*;
    let active = matches!(status, Created | Running | Paused | Ready | Standby);
    match verb {
        Verb::Cancel => active || matches!(status, Waiting | Pending),
        Verb::Pause | Verb::Resume | Verb::SetSpeed => active,
        // `complete` in standby arrived in 6.0.
        Verb::Complete => status == Ready || (status == Standby && version >= Version::V7_2),
        Verb::Finalize => status == Pending,
        Verb::Dismiss => status == Concluded,
        Verb::Change => active,
    }
}

/// The kind of a job (`JobType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// block-stream
    Stream,
    /// block-commit
    Commit,
    /// blockdev-mirror
    Mirror,
    /// blockdev-backup
    Backup,
    /// blockdev-create: a plain job, not a block job (no `BLOCK_JOB_*`
    /// events, not in `query-block-jobs`), dismissed by hand.
    Create,
}

impl JobKind {
    /// The wire name (`type`).
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Stream => "stream",
            JobKind::Commit => "commit",
            JobKind::Mirror => "mirror",
            JobKind::Backup => "backup",
            JobKind::Create => "create",
        }
    }

    /// Block jobs report `BLOCK_JOB_*` events and answer `block-job-*`.
    pub fn is_block_job(self) -> bool {
        self != JobKind::Create
    }
}

/// The `node` of a job that works on no node (`blockdev-create`).
pub const NO_NODE: NodeId = NodeId::MAX;

/// One job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `job-id`.
    pub id: String,
    /// Its kind.
    pub kind: JobKind,
    /// Current status.
    pub status: JobStatus,
    /// `auto-finalize`.
    pub auto_finalize: bool,
    /// `auto-dismiss`.
    pub auto_dismiss: bool,
    /// Work to do, in bytes (`len`).
    pub len: u64,
    /// Work done (`offset`).
    pub offset: u64,
    /// Speed limit in bytes per second (0: none).
    pub speed: u64,
    /// The node the job works on (stream: the top).
    pub node: NodeId,
    /// Stream: the node that stays below the top (`None`: the whole chain
    /// is pulled in). Commit: the node committed into.
    pub base: Option<NodeId>,
    /// Commit: the topmost node committed (below `node`).
    pub top: Option<NodeId>,
    /// Paused by the user.
    pub user_paused: bool,
    /// Mirror-like jobs (active commit): they go `ready` and wait for
    /// `complete`.
    pub waits_for_complete: bool,
    /// `complete` was requested (or a soft cancel of a ready mirror, which
    /// completes without pivoting).
    pub complete_requested: bool,
    /// A (hard) cancel was requested.
    pub cancel_requested: bool,
    /// The job will fail once running, with this error (found by the job
    /// itself, e.g. a mirror target of another size).
    pub fails_with: Option<String>,
    /// Failure text, once failed.
    pub error: Option<String>,
    /// The hidden filter node the job inserted above its source
    /// (`mirror_top`, `copy-before-write`, …), removed when it ends, with
    /// the anonymous bitmaps it owns.
    pub filter: Option<NodeId>,
    /// A user bitmap the job holds busy (node, name).
    pub user_bitmap: Option<(NodeId, String)>,
    /// A node the job opened itself (a `drive-*` target): freed when the
    /// job ends unless something else holds it.
    pub owned_target: Option<NodeId>,
    /// Works until cancelled (backup `sync: none`).
    pub until_cancelled: bool,
    /// A soft cancel of a ready mirror: it completes without the pivot.
    pub no_pivot: bool,
    /// The `completion-mode: grouped` transaction it belongs to.
    pub txn: Option<u64>,
    /// Reading the source fails (a blkdebug rule on data the job reads).
    pub fault: Option<Fault>,
    /// `on-source-error` (`on-error` for stream and commit).
    pub on_source_error: ErrorAction,
    /// `on-target-error`.
    pub on_target_error: ErrorAction,
    /// `io-status` in query-block-jobs: `ok`, `failed`, `nospace`.
    pub io_status: &'static str,
    /// Virtual time run in the current rate-limit slice (speed-limited).
    pub slice_us: u64,
    /// A mirror's `copy-mode` is `write-blocking`.
    pub write_blocking: bool,
    /// Where the BlockBackends the job opens (a mirror's target, a
    /// commit's base and top…) stand in the creation order of all
    /// BlockBackends (set when the job is created).
    pub backend_seq: u64,
    /// The version whose job code runs (5.2 jobs have a BlockBackend of
    /// their own on their main node, and keep it until dismissed).
    pub version: Version,
    /// The nodes the job holds (`block_job_add_bdrv`: child name, node),
    /// noted when its work ends, before it changes the graph: a
    /// concluded job that is not dismissed yet may still hold them.
    pub held: Option<Vec<(String, NodeId)>>,
    /// What a finished stream's top took on its old backing file, which
    /// that node's children keep (QEMU 6.0+ does not refresh them) until
    /// the job lets go of it.
    pub stale_hold: Option<(NodeId, Perms)>,
    /// Commit: the base was read-only and the job reopened it read-write;
    /// it goes back to read-only unless an active commit pivoted onto it.
    pub base_read_only: bool,
}

/// An I/O error a job will meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `read` (the source; `on-source-error` applies) or `write` (the
    /// target; `on-target-error`).
    pub operation: &'static str,
    /// The error text (`strerror`).
    pub error: String,
    /// It is ENOSPC (io-status `nospace`; `enospc` actions stop on it).
    pub nospace: bool,
    /// Progress (`offset`) when the job meets it.
    pub at: u64,
    /// The rule fires once (blkdebug `once`).
    pub once: bool,
}

/// `BlockdevOnError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorAction {
    /// Fail the job.
    #[default]
    Report,
    /// Carry on.
    Ignore,
    /// Pause the job (as a user pause) until resumed.
    Stop,
}

impl ErrorAction {
    /// From the QMP value (`enospc` stops only on ENOSPC; with EIO it reports).
    pub fn parse(v: Option<&str>, enospc: bool) -> ErrorAction {
        match v {
            Some("ignore") => ErrorAction::Ignore,
            Some("stop") => ErrorAction::Stop,
            Some("enospc") if enospc => ErrorAction::Stop,
            _ => ErrorAction::Report,
        }
    }

    /// The `action` of BLOCK_JOB_ERROR.
    pub fn event_name(self) -> &'static str {
        match self {
            ErrorAction::Report => "report",
            ErrorAction::Ignore => "ignore",
            ErrorAction::Stop => "stop",
        }
    }
}

impl Job {
    /// A job of `kind` on `node` with `len` bytes of work, QEMU's defaults
    /// otherwise (auto-finalize and auto-dismiss on, no speed limit).
    pub fn new(id: &str, kind: JobKind, node: NodeId, len: u64) -> Job {
        Job {
            id: id.to_owned(),
            kind,
            status: JobStatus::Undefined,
            auto_finalize: true,
            auto_dismiss: true,
            len,
            offset: 0,
            speed: 0,
            node,
            base: None,
            top: None,
            user_paused: false,
            waits_for_complete: false,
            complete_requested: false,
            cancel_requested: false,
            fails_with: None,
            error: None,
            filter: None,
            user_bitmap: None,
            owned_target: None,
            until_cancelled: false,
            no_pivot: false,
            txn: None,
            fault: None,
            on_source_error: ErrorAction::Report,
            on_target_error: ErrorAction::Report,
            io_status: "ok",
            slice_us: 0,
            write_blocking: false,
            backend_seq: 0,
            version: Version::default(),
            held: None,
            stale_hold: None,
            base_read_only: false,
        }
    }
}

/// What the job table refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The id is not an identifier.
    #[error("Invalid job ID '{0}'")]
    InvalidId(String),
    /// The id is taken (by a job not yet dismissed).
    #[error("Job ID '{0}' already in use")]
    IdInUse(String),
    /// The verb is not allowed in the job's status.
    #[error("Job '{id}' in state '{status}' cannot accept command verb '{verb}'")]
    Verb {
        /// The job.
        id: String,
        /// Its status name.
        status: &'static str,
        /// The verb name.
        verb: &'static str,
    },
    /// A transition the table forbids (a mock bug).
    #[error("mock-qemu: job '{0}' cannot go from {1} to {2}")]
    BadTransition(String, &'static str, &'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_qemus_lifecycle() {
        use JobStatus::*;
        let path = [
            Undefined, Created, Running, Waiting, Pending, Concluded, Null,
        ];
        for w in path.windows(2) {
            assert!(transition_allowed(w[0], w[1]), "{:?} -> {:?}", w[0], w[1]);
        }
        assert!(transition_allowed(Aborting, Aborting));
        assert!(!transition_allowed(Running, Concluded));
        assert!(!transition_allowed(Null, Created));
        assert!(
            transition_allowed(Created, Null),
            "a job failing before it starts"
        );
    }

    #[test]
    fn verbs_follow_the_version() {
        assert!(!verb_allowed(
            Version::V5_2,
            Verb::Complete,
            JobStatus::Standby
        ));
        assert!(verb_allowed(
            Version::V10_0,
            Verb::Complete,
            JobStatus::Standby
        ));
        assert!(!verb_allowed(
            Version::V10_0,
            Verb::Finalize,
            JobStatus::Running
        ));
        assert!(verb_allowed(
            Version::V10_0,
            Verb::Dismiss,
            JobStatus::Concluded
        ));
        assert!(!verb_allowed(
            Version::V10_0,
            Verb::Cancel,
            JobStatus::Concluded
        ));
    }
}
