//! The state model: sans-IO, deterministic, no tokio, no JSON.
//!
//! [`Machine`] is what one QEMU process holds. The block graph and the job
//! engine grow here; commands reach it only through its domain operations,
//! and what it wants to tell clients goes into its outbox as [`ModelEvent`]s.

pub mod clock;
pub mod devices;
pub mod exports;
pub mod graph;
pub mod jobs;
pub mod objects;
pub mod perms;
pub mod vm;

use clock::{VirtualClock, VirtualTime};
use graph::{Graph, NodeId};
use jobs::{Job, JobError, JobStatus};

/// The run state of the impersonated process (system emulator's `query-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, never run.
    Prelaunch,
    /// Running.
    Running,
    /// Stopped by `stop`.
    Paused,
    /// Shutting down after `quit` or a signal.
    Shutdown,
}

/// Something the model reports to every negotiated client.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// `SHUTDOWN` (system emulator).
    Shutdown {
        /// Whether the guest asked for it.
        guest: bool,
        /// `host-qmp-quit`, `host-signal`, …
        reason: &'static str,
    },
    /// `STOP` (system emulator).
    Stop,
    /// `RESET` (system emulator).
    Reset {
        /// Whether the guest asked for it.
        guest: bool,
        /// `host-qmp-system-reset`, …
        reason: &'static str,
    },
    /// `RESUME` (system emulator).
    Resume,
    /// `JOB_STATUS_CHANGE`.
    JobStatusChange {
        /// The job id.
        id: String,
        /// The new status name.
        status: &'static str,
    },
    /// `BLOCK_JOB_COMPLETED` (with `error` when it failed).
    BlockJobCompleted {
        /// The job id (QEMU calls it `device`).
        device: String,
        /// `len`.
        len: u64,
        /// `offset`.
        offset: u64,
        /// `speed`.
        speed: u64,
        /// `type`.
        kind: &'static str,
        /// Failure text.
        error: Option<String>,
    },
    /// `BLOCK_JOB_READY`.
    BlockJobReady {
        /// The job id (`device`).
        device: String,
        /// `len`.
        len: u64,
        /// `offset`.
        offset: u64,
        /// `speed`.
        speed: u64,
        /// `type`.
        kind: &'static str,
    },
    /// `BLOCK_JOB_CANCELLED`.
    BlockJobCancelled {
        /// The job id (`device`).
        device: String,
        /// `len`.
        len: u64,
        /// `offset`.
        offset: u64,
        /// `speed`.
        speed: u64,
        /// `type`.
        kind: &'static str,
    },
    /// `BLOCK_JOB_ERROR`.
    BlockJobError {
        /// The job id.
        device: String,
        /// `read` or `write`.
        operation: &'static str,
        /// `report`, `ignore` or `stop`.
        action: &'static str,
    },
    /// Mock-only (strict mode): a command used an image a commit
    /// invalidated. Wire name `X_MOCK_INVALIDATED_IMAGE_USE`.
    InvalidatedImageUse {
        /// What used it (`a new overlay`, `an export`, …).
        what: String,
        /// The image file.
        image: String,
        /// The commit job that invalidated it.
        job: String,
    },
    /// `BLOCK_JOB_PENDING`.
    BlockJobPending {
        /// `type`.
        kind: &'static str,
        /// The job id.
        id: String,
    },
    /// `BLOCK_EXPORT_DELETED`.
    BlockExportDeleted {
        /// The export id.
        id: String,
    },
    /// `DEVICE_DELETED`.
    DeviceDeleted {
        /// The qdev id (absent for an anonymous device).
        device: Option<String>,
        /// The QOM path.
        path: String,
    },
}

/// QEMU's rate-limit slice (`BLOCK_JOB_SLICE_TIME`), in microseconds.
const SLICE_US: u64 = 100_000;

/// A fault injected by the mock-only `x-mock-inject-fault` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// The node whose reads or writes fail.
    pub node: String,
    /// `read` or `write`.
    pub operation: &'static str,
    /// The error text (`strerror` of EIO or ENOSPC).
    pub error: String,
    /// It is ENOSPC (`on-*-error: enospc` stops on it).
    pub nospace: bool,
    /// Progress (bytes) at which a job meets it.
    pub at: u64,
    /// Fires once, then the node works again.
    pub once: bool,
}

/// A change to a file the model asks the host layer to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Rewrite a qcow2 header's backing file name and format (`None`:
    /// no backing file).
    SetBacking {
        /// The image file.
        filename: String,
        /// New backing name and format.
        backing: Option<(String, String)>,
    },
    /// A qcow2 node closed: store its persistent bitmaps in the image
    /// (`qcow2_store_persistent_dirty_bitmaps()`), newest first.
    StoreBitmaps {
        /// The image file.
        filename: String,
        /// The bitmaps.
        bitmaps: Vec<graph::PersistBitmap>,
    },
    /// A writable qcow2 node opened: the bitmaps stored in the image are
    /// marked in use (`qcow2_load_dirty_bitmaps()`).
    MarkBitmapsInUse {
        /// The image file.
        filename: String,
    },
    /// A persistent bitmap was removed: it leaves the image's bitmap
    /// directory at once (`qcow2_co_remove_persistent_dirty_bitmap()`).
    RemoveBitmap {
        /// The image file.
        filename: String,
        /// The bitmap.
        name: String,
    },
}

/// The file name QEMU reports for a node (its file child's for formats).
fn graph_filename(g: &Graph, node: &graph::Node) -> String {
    if let Some(f) = &node.file {
        return f.filename.clone();
    }
    node.children
        .iter()
        .find(|(r, _)| r == "file")
        .and_then(|(_, c)| g.node(*c))
        .map_or_else(String::new, |c| graph_filename(g, c))
}

/// An event with the virtual time it happened at.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// When.
    pub at: VirtualTime,
    /// What.
    pub event: ModelEvent,
    /// Raised after the command's reply went out (QEMU finished the work
    /// asynchronously), rather than while the command ran.
    pub after_reply: bool,
}

/// One simulated QEMU process.
#[derive(Debug)]
pub struct Machine {
    clock: VirtualClock,
    /// Jobs in creation order.
    jobs: Vec<Job>,
    graph: Graph,
    /// Bumped by every mutable access to the graph (reply caches key on it).
    graph_generation: u64,
    exports: exports::Exports,
    objects: objects::Objects,
    devices: devices::Devices,
    /// Strict mode is on.
    strict: bool,
    /// Faults injected with `x-mock-inject-fault` / `--mock-fault`.
    injected: Vec<InjectedFault>,
    /// Inside a `transaction`: jobs created but not started yet.
    deferred: Option<Vec<String>>,
    /// Next `completion-mode: grouped` transaction id.
    next_txn: u64,
    /// Image files a completed commit left stale, with the job that did it
    /// (reference §3.11; only consulted in strict mode).
    invalidated: std::collections::BTreeMap<String, String>,
    run_state: RunState,
    quit_requested: bool,
    outbox: Vec<Stamped>,
    /// `None`: instant mode. `Some(bytes_per_second)`: stepped mode, jobs
    /// progress only as virtual time passes, at their `speed` or else at
    /// this simulated throughput.
    stepped: Option<u64>,
    /// Chardevs and migration capabilities.
    vm: vm::Vm,
}

impl Machine {
    /// A fresh machine whose clock starts at `epoch`.
    pub fn new(epoch: VirtualTime, start_paused: bool) -> Self {
        Machine {
            clock: VirtualClock::new(epoch),
            jobs: Vec::new(),
            graph: Graph::new(),
            graph_generation: 0,
            exports: exports::Exports::default(),
            objects: objects::Objects::default(),
            devices: devices::Devices::default(),
            strict: false,
            injected: Vec::new(),
            deferred: None,
            next_txn: 0,
            invalidated: std::collections::BTreeMap::new(),
            run_state: if start_paused {
                RunState::Prelaunch
            } else {
                RunState::Running
            },
            quit_requested: false,
            outbox: Vec::new(),
            stepped: None,
            vm: vm::Vm::default(),
        }
    }

    /// Chardevs and migration capabilities.
    pub fn vm(&self) -> &vm::Vm {
        &self.vm
    }

    /// Chardevs and migration capabilities, to change.
    pub fn vm_mut(&mut self) -> &mut vm::Vm {
        &mut self.vm
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// `x-mock-inject-fault`: jobs started from now on that read `node`
    /// (`operation` read) or write it (write) meet `errno` at progress `at`.
    pub fn inject_fault(&mut self, fault: InjectedFault) {
        self.injected.push(fault);
    }

    /// The faults injected with `x-mock-inject-fault`.
    pub fn injected_faults(&self) -> &[InjectedFault] {
        &self.injected
    }

    /// Turns strict mode on or off.
    pub fn set_strict(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// In strict mode: the job that invalidated the image of node `id` (or
    /// of the node it reads through, for a format node), if one did.
    pub fn invalidated_by(&self, id: graph::NodeId) -> Option<(&str, &str)> {
        if !self.strict {
            return None;
        }
        let node = self.graph.node(id)?;
        let file = node
            .file
            .as_ref()
            .map(|f| f.filename.as_str())
            .or_else(|| {
                let f = self.graph.child(id, "file")?;
                self.graph
                    .node(f)?
                    .file
                    .as_ref()
                    .map(|f| f.filename.as_str())
            })?;
        self.invalidated
            .get_key_value(file)
            .map(|(f, j)| (f.as_str(), j.as_str()))
    }

    /// Marks the images of `nodes` as invalidated by job `job`.
    fn invalidate(&mut self, nodes: &[graph::NodeId], job: &str) {
        for id in nodes {
            let file = self
                .graph
                .child(*id, "file")
                .and_then(|f| self.graph.node(f))
                .and_then(|f| f.file.as_ref())
                .map(|f| f.filename.clone());
            if let Some(f) = file {
                self.invalidated.insert(f, job.to_owned());
            }
        }
    }

    /// User-created objects.
    pub fn objects(&self) -> &objects::Objects {
        &self.objects
    }

    /// User-created objects, to add or remove.
    pub fn objects_mut(&mut self) -> &mut objects::Objects {
        &mut self.objects
    }

    /// Moves virtual time forward.
    pub fn advance(&mut self, micros: u64) {
        self.clock.advance(micros);
        let Some(throughput) = self.stepped else {
            return;
        };
        for job in self
            .jobs
            .iter_mut()
            .filter(|j| j.status == JobStatus::Running && !j.user_paused)
        {
            let done = if job.speed > 0 {
                // QEMU's rate limit: `speed` per second in slices of
                // 100 ms; the quota of a slice is spent when it ends, and
                // is at least one byte (ratelimit_set_speed()).
                let total = job.slice_us + micros;
                job.slice_us = total % SLICE_US;
                u128::from(total / SLICE_US) * u128::from((job.speed / 10).max(1))
            } else {
                u128::from(throughput) * u128::from(micros) / 1_000_000
            };
            // A job stops where its fault is.
            let end = job.fault.as_ref().map_or(job.len, |f| f.at.min(job.len));
            job.offset = end.min(
                job.offset
                    .saturating_add(u64::try_from(done).unwrap_or(u64::MAX)),
            );
        }
        // Jobs that got to the end move on now, during the advancing command.
        self.move_jobs(false);
    }

    /// Stepped mode (`Some(bytes per second)` of simulated throughput for
    /// jobs without a speed limit) or instant mode (`None`).
    pub fn set_stepped(&mut self, throughput: Option<u64>) {
        self.stepped = throughput;
    }

    /// The job with this id, if one exists (concluded ones included until
    /// dismissed).
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// Every job, newest first (QEMU's job list order).
    pub fn jobs_newest_first(&self) -> impl Iterator<Item = &Job> {
        self.jobs.iter().rev()
    }

    /// The job (not concluded yet) whose op blockers are on `node`
    /// (`block_job_add_bdrv()` blocks every operation on what a job
    /// holds): its main node (a backup's is its filter, not its source),
    /// its filter, a commit's top and base, a mirror's or backup's target,
    /// a `drive-*` target it opened. Newest job first.
    pub fn blocking_job(&self, node: NodeId) -> Option<&Job> {
        self.jobs_newest_first()
            .filter(|j| j.status < JobStatus::Concluded)
            .find(|j| {
                (j.node == node && j.kind != jobs::JobKind::Backup)
                    || j.filter == Some(node)
                    || j.top == Some(node)
                    || (j.base == Some(node) && j.kind != jobs::JobKind::Stream)
                    || j.owned_target == Some(node)
            })
    }

    /// Checks a new job's id (`job_create`): syntax, then uniqueness.
    pub fn check_job_id(&self, id: &str) -> Result<(), JobError> {
        if !graph::name_is_wellformed(id) {
            return Err(JobError::InvalidId(id.to_owned()));
        }
        if self.job(id).is_some() {
            return Err(JobError::IdInUse(id.to_owned()));
        }
        Ok(())
    }

    /// Creates a job (undefined → created) and starts it (→ running), with
    /// their events, before the starting command answers.
    pub fn start_job(&mut self, job: Job) -> Result<(), JobError> {
        let id = self.create_job(job)?;
        if let Some(d) = self.deferred.as_mut() {
            // A transaction starts its jobs once every action succeeded.
            d.push(id);
            return Ok(());
        }
        self.set_status(&id, JobStatus::Running, false)
    }

    /// A `transaction` begins: jobs its actions create start at its end.
    pub fn begin_transaction(&mut self) {
        self.deferred = Some(Vec::new());
    }

    /// Whether jobs being created now wait for a transaction's end.
    pub fn in_transaction(&self) -> bool {
        self.deferred.is_some()
    }

    /// Every action succeeded: the jobs start — in action order up to 7.2,
    /// last first in 10.0 (recorded) — and with `grouped` they finish
    /// together.
    pub fn commit_transaction(&mut self, grouped: bool, last_first: bool) {
        let mut ids = self.deferred.take().unwrap_or_default();
        if grouped && !ids.is_empty() {
            let txn = self.next_txn;
            self.next_txn += 1;
            for id in &ids {
                if let Some(j) = self.job_mut(id) {
                    j.txn = Some(txn);
                }
            }
        }
        if last_first {
            ids.reverse();
        }
        for id in ids {
            let _ = self.set_status(&id, JobStatus::Running, false);
        }
    }

    /// An action failed: the jobs created so far go away unstarted.
    /// They abort unstarted: aborting, concluded, null (no CANCELLED
    /// event; recorded in transaction/aborted-with-backup).
    pub fn abort_transaction(&mut self) {
        for id in self.deferred.take().unwrap_or_default() {
            for to in [JobStatus::Aborting, JobStatus::Concluded, JobStatus::Null] {
                let _ = self.set_status(&id, to, false);
            }
        }
    }

    /// The members of job `id`'s grouped transaction, newest first (QEMU's
    /// list order), or just `id`.
    fn group_of(&self, id: &str) -> Vec<String> {
        match self.job(id).and_then(|j| j.txn) {
            Some(t) => self
                .jobs
                .iter()
                .rev()
                .filter(|j| j.txn == Some(t))
                .map(|j| j.id.clone())
                .collect(),
            None => vec![id.to_owned()],
        }
    }

    /// `job_create`: checks the id, adds the job, reports `created`.
    fn create_job(&mut self, job: Job) -> Result<String, JobError> {
        self.check_job_id(&job.id)?;
        let id = job.id.clone();
        let backend_seq = self.graph.claim_backend_seq();
        self.jobs.push(Job {
            status: JobStatus::Undefined,
            backend_seq,
            ..job
        });
        self.set_status(&id, JobStatus::Created, false)?;
        Ok(id)
    }

    fn job_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    /// A job created and then refused before it started (a check QEMU makes
    /// after `job_create`, such as a negative speed): `created`, then `null`.
    pub fn create_and_drop_job(&mut self, job: Job) -> Result<(), JobError> {
        let id = self.create_job(job)?;
        self.set_status(&id, JobStatus::Null, false)
    }

    /// Moves a job to `to` with its `JOB_STATUS_CHANGE` (during the command,
    /// or after its reply). `null` removes the job.
    pub fn set_status(
        &mut self,
        id: &str,
        to: JobStatus,
        after_reply: bool,
    ) -> Result<(), JobError> {
        let Some(job) = self.job_mut(id) else {
            return Ok(());
        };
        let from = job.status;
        if !jobs::transition_allowed(from, to) {
            return Err(JobError::BadTransition(
                id.to_owned(),
                from.name(),
                to.name(),
            ));
        }
        job.status = to;
        if matches!(
            to,
            JobStatus::Waiting | JobStatus::Pending | JobStatus::Aborting | JobStatus::Concluded
        ) {
            self.note_held(id);
        }
        let Some(job) = self.job_mut(id) else {
            return Ok(());
        };
        if to == JobStatus::Concluded {
            let job = job.clone();
            self.clean_job(&job);
        }
        let event = ModelEvent::JobStatusChange {
            id: id.to_owned(),
            status: to.name(),
        };
        self.emit_at(event, after_reply);
        if to == JobStatus::Null {
            // A filter the concluded job still held goes with it, unless
            // something took it meanwhile (an export of the filter node
            // itself): the job drops its reference and the node lives on,
            // as reference counting has it (real 7.2/10.0 crash on such a
            // graph; the mock must stay consistent).
            let kept = self
                .job(id)
                .and_then(|j| j.filter)
                .filter(|f| self.graph.node(*f).is_some());
            if let Some(f) = kept {
                if !self.graph.is_held(f) {
                    self.graph.remove_filter(f, None);
                }
                self.graph_generation += 1;
            }
            self.jobs.retain(|j| j.id != id);
        }
        Ok(())
    }

    /// Instant mode: every running job does all its work now, in QEMU's
    /// event order, and stops where QEMU would wait for the user
    /// (`pending` without auto-finalize, `concluded` without auto-dismiss).
    /// Its events follow the reply of the command that ran.
    pub fn run_jobs(&mut self) {
        self.move_jobs(true);
    }

    /// Moves every job that can move: cancelled ones, failed ones, and
    /// running ones whose work is done (all of it, in instant mode).
    fn move_jobs(&mut self, after_reply: bool) {
        self.move_jobs_inner(after_reply);
        // Exports follow their BlockBackends, which job filters and
        // pivots moved.
        self.exports.follow_backends(self.graph.backends());
    }

    fn move_jobs_inner(&mut self, after_reply: bool) {
        let instant = self.stepped.is_none();
        let movable: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.status < JobStatus::Aborting)
            .filter(|j| j.cancel_requested || !j.user_paused)
            .filter(|j| {
                j.cancel_requested
                    || (j.status == JobStatus::Running
                        && !j.until_cancelled
                        && (instant
                            || j.offset >= j.len
                            || j.fails_with.is_some()
                            || j.fault.as_ref().is_some_and(|f| j.offset >= f.at)))
                    || (j.status == JobStatus::Ready && j.complete_requested)
            })
            .map(|j| j.id.clone())
            .collect();
        for id in movable {
            let Some(job) = self.job_mut(&id) else {
                continue;
            };
            if job.cancel_requested && job.txn.is_some() {
                // A grouped transaction's jobs are cancelled together.
                for member in self.group_of(&id) {
                    if let Some(m) = self.job_mut(&member) {
                        if m.status < JobStatus::Aborting {
                            m.cancel_requested = true;
                            self.cancel_one(&member, after_reply);
                        }
                    }
                }
                continue;
            }
            if job.cancel_requested {
                self.cancel_one(&id, after_reply);
                continue;
            }
            if let Some(fault) = job.fault.clone() {
                self.hit_fault(&id, &fault, after_reply);
                continue;
            }
            if let Some(err) = job.fails_with.take() {
                // Failed before doing any work: aborting, COMPLETED with the
                // error, concluded, null (if auto-dismiss).
                job.error = Some(err);
                if job.kind == jobs::JobKind::Create {
                    // blockdev_create_run() counts its one step done
                    // whatever the driver returned.
                    job.offset = job.len;
                }
                let _ = self.set_status(&id, JobStatus::Aborting, after_reply);
                if let Some(job) = self.job(&id).cloned() {
                    if job.kind.is_block_job() {
                        self.emit_at(
                            ModelEvent::BlockJobCompleted {
                                device: id.clone(),
                                len: 0,
                                offset: 0,
                                speed: job.speed,
                                kind: job.kind.name(),
                                error: job.error.clone(),
                            },
                            after_reply,
                        );
                    }
                    let _ = self.set_status(&id, JobStatus::Concluded, after_reply);
                    if job.auto_dismiss {
                        let _ = self.set_status(&id, JobStatus::Null, after_reply);
                    }
                }
                continue;
            }
            if instant {
                job.offset = job.len;
            }
            // The work is done: block-copy's copy bitmap is empty.
            if let Some(f) = job.filter {
                self.graph.clear_progress_bitmaps(f);
            }
            let Some(job) = self.job_mut(&id) else {
                continue;
            };
            if job.status == JobStatus::Running && job.waits_for_complete {
                // In sync: ready, then BLOCK_JOB_READY; wait for complete.
                let ready = ModelEvent::BlockJobReady {
                    device: id.clone(),
                    len: job.len,
                    offset: job.offset,
                    speed: job.speed,
                    kind: job.kind.name(),
                };
                let _ = self.set_status(&id, JobStatus::Ready, after_reply);
                self.emit_at(ready, after_reply);
                continue;
            }
            let _ = self.set_status(&id, JobStatus::Waiting, after_reply);
            let group = self.group_of(&id);
            if group.len() > 1 {
                self.complete_group(&group, after_reply);
                continue;
            }
            let _ = self.set_status(&id, JobStatus::Pending, after_reply);
            let auto = self.job(&id).is_some_and(|j| j.auto_finalize);
            if auto {
                let _ = self.finalize_job(&id, after_reply);
            } else if let Some(j) = self.job(&id).filter(|j| j.kind.is_block_job()) {
                let event = ModelEvent::BlockJobPending {
                    kind: j.kind.name(),
                    id: id.clone(),
                };
                self.emit_at(event, after_reply);
            }
        }
    }

    /// A job meets an I/O error (a blkdebug rule, an injected fault): it
    /// reports BLOCK_JOB_ERROR and acts as its `on-source-error` (reads) or
    /// `on-target-error` (writes) says.
    fn hit_fault(&mut self, id: &str, fault: &jobs::Fault, after_reply: bool) {
        let Some(job) = self.job_mut(id) else {
            return;
        };
        job.offset = fault.at;
        if fault.once {
            job.fault = None;
        }
        let action = if fault.operation == "write" {
            job.on_target_error
        } else {
            job.on_source_error
        };
        let event = ModelEvent::BlockJobError {
            device: id.to_owned(),
            operation: fault.operation,
            action: action.event_name(),
        };
        match action {
            jobs::ErrorAction::Stop => {
                job.user_paused = true;
                job.io_status = if fault.nospace { "nospace" } else { "failed" };
                self.emit_at(event, after_reply);
                let _ = self.set_status(id, JobStatus::Paused, after_reply);
            }
            jobs::ErrorAction::Ignore => {
                // QEMU retries the failed chunk without end (and without
                // end of BLOCK_JOB_ERROR events): the job never finishes.
                job.until_cancelled = true;
                job.fault = None;
                self.emit_at(event, after_reply);
            }
            jobs::ErrorAction::Report => {
                job.error = Some(fault.error.clone());
                let (len, offset, speed, kind) = (job.len, job.offset, job.speed, job.kind.name());
                let dismiss = job.auto_dismiss;
                self.emit_at(event, after_reply);
                let _ = self.set_status(id, JobStatus::Aborting, after_reply);
                self.emit_at(
                    ModelEvent::BlockJobCompleted {
                        device: id.to_owned(),
                        len,
                        offset,
                        speed,
                        kind,
                        error: Some(fault.error.clone()),
                    },
                    after_reply,
                );
                let _ = self.set_status(id, JobStatus::Concluded, after_reply);
                if dismiss {
                    let _ = self.set_status(id, JobStatus::Null, after_reply);
                }
            }
        }
    }

    /// Cancels one job: aborting, BLOCK_JOB_CANCELLED, concluded, null. A
    /// paused job is resumed first (it reports `running`).
    fn cancel_one(&mut self, id: &str, after_reply: bool) {
        if self.job(id).is_some_and(|j| j.status == JobStatus::Paused) {
            let _ = self.set_status(id, JobStatus::Running, after_reply);
        }
        let Some(job) = self.job_mut(id) else {
            return;
        };
        let cancelled = ModelEvent::BlockJobCancelled {
            device: id.to_owned(),
            len: job.len,
            offset: job.offset,
            speed: job.speed,
            kind: job.kind.name(),
        };
        let dismiss = job.auto_dismiss;
        let block = job.kind.is_block_job();
        // job->ret = -ECANCELED: query-jobs shows its text.
        job.error = Some("Operation canceled".to_owned());
        // job_cancel_async() resumes a paused job: it leaves its pause
        // point back in the status it paused in.
        job.user_paused = false;
        let resumed = match job.status {
            JobStatus::Paused => Some(JobStatus::Running),
            JobStatus::Standby => Some(JobStatus::Ready),
            _ => None,
        };
        if let Some(back) = resumed {
            let _ = self.set_status(id, back, after_reply);
        }
        let _ = self.set_status(id, JobStatus::Aborting, after_reply);
        if block {
            self.emit_at(cancelled, after_reply);
        }
        let _ = self.set_status(id, JobStatus::Concluded, after_reply);
        if dismiss {
            let _ = self.set_status(id, JobStatus::Null, after_reply);
        }
    }

    /// A grouped transaction's jobs wait for each other; once all are
    /// `waiting` they go `pending` together (newest first), then finalize
    /// together if all auto-finalize, else each reports BLOCK_JOB_PENDING.
    fn complete_group(&mut self, group: &[String], after_reply: bool) {
        let all_waiting = group
            .iter()
            .all(|m| self.job(m).is_some_and(|j| j.status == JobStatus::Waiting));
        if !all_waiting {
            return;
        }
        let auto = group
            .iter()
            .all(|m| self.job(m).is_some_and(|j| j.auto_finalize));
        for m in group {
            let _ = self.set_status(m, JobStatus::Pending, after_reply);
            if !auto {
                if let Some(j) = self.job(m).filter(|j| j.kind.is_block_job()) {
                    let event = ModelEvent::BlockJobPending {
                        kind: j.kind.name(),
                        id: m.clone(),
                    };
                    self.emit_at(event, after_reply);
                }
            }
        }
        if auto {
            for m in group {
                let _ = self.finalize_one(m, after_reply);
            }
        }
    }

    /// Finalizes a pending job: applies its graph change, reports
    /// `BLOCK_JOB_COMPLETED`, concludes, and goes away if auto-dismiss.
    /// In a grouped transaction every member finalizes (newest first).
    pub fn finalize_job(&mut self, id: &str, after_reply: bool) -> Result<(), JobError> {
        for m in self.group_of(id) {
            self.finalize_one(&m, after_reply)?;
        }
        Ok(())
    }

    fn finalize_one(&mut self, id: &str, after_reply: bool) -> Result<(), JobError> {
        self.note_held(id);
        let Some(job) = self.job(id).cloned() else {
            return Ok(());
        };
        self.apply_job_result(&job);
        let event = ModelEvent::BlockJobCompleted {
            device: job.id.clone(),
            len: job.len,
            offset: job.offset,
            speed: job.speed,
            kind: job.kind.name(),
            error: job.error.clone(),
        };
        if job.kind.is_block_job() {
            self.emit_at(event, after_reply);
        }
        self.set_status(id, JobStatus::Concluded, after_reply)?;
        if job.auto_dismiss {
            self.set_status(id, JobStatus::Null, after_reply)?;
        }
        Ok(())
    }

    /// Notes the nodes a block job holds ([`Job::held`]) before its end
    /// changes the graph.
    fn note_held(&mut self, id: &str) {
        let Some(job) = self.job(id) else {
            return;
        };
        if job.held.is_some() || !job.kind.is_block_job() {
            return;
        }
        let held = self.job_edge_nodes(job);
        if let Some(j) = self.job_mut(id) {
            j.held = Some(held);
        }
    }

    /// `job_clean()`: the job lets go of what it held — its filter node
    /// (with the bitmaps it owns), a user bitmap, a target it opened.
    fn clean_job(&mut self, job: &Job) {
        // This job (concluded now) lets go of its nodes; others keep theirs.
        self.hold_job_nodes();
        if let Some(f) = job.filter {
            // The filtered child: `file` (copy-on-read, copy-before-write)
            // or `backing` (mirror_top, commit_top, backup-top).
            let filtered = self
                .graph
                .child(f, "file")
                .or_else(|| self.graph.child(f, "backing"));
            // Until the job is dismissed, it still holds some filters out
            // of the graph (recorded in blockdev/block-graph-concluded-jobs
            // and -job-variants): a stream's copy-on-read (childless), and
            // in 5.2, through job->blk, backup-top with its target and
            // mirror_top with its backing (the target after a pivot).
            let legacy = job.version < crate::profile::Version::V7_2;
            let keep: Option<&[&str]> = match self.graph.node(f).map(|n| n.driver.as_str()) {
                Some("copy-on-read") => Some(&[]),
                Some("backup-top") => Some(&["target"]),
                Some("mirror_top") if legacy => Some(&["backing"]),
                _ => None,
            };
            match keep {
                Some(roles) if !job.auto_dismiss => self.graph.detach_filter(f, filtered, roles),
                _ => self.graph.remove_filter(f, filtered),
            }
        }
        if let Some((node, name)) = &job.user_bitmap {
            if let Some(b) = self
                .graph
                .node_mut(*node)
                .and_then(|n| n.bitmaps.iter_mut().find(|b| b.name.as_ref() == Some(name)))
            {
                b.busy = false;
            }
        }
        if let Some(t) = job.owned_target {
            self.graph.free_unused(t);
        }
        // A base the commit reopened read-write goes back to read-only,
        // unless an active commit pivoted its parents onto it (the base
        // then takes the top's read-write state: mirror_exit_common()).
        if let (true, Some(base)) = (job.base_read_only, job.base) {
            let pivoted = job.top == Some(job.node)
                && job.error.is_none()
                && !job.cancel_requested
                && !job.no_pivot;
            if !pivoted {
                self.graph.set_read_only(base);
            }
        }
        // What only the job held goes now (a mirror's source after the
        // pivot, a committed top).
        for n in [Some(job.node), job.top, job.base].into_iter().flatten() {
            self.graph.free_unused(n);
        }
        self.graph_generation += 1;
    }

    /// The graph change a successful job makes when it finalizes.
    fn apply_job_result(&mut self, job: &Job) {
        self.hold_job_nodes();
        match job.kind {
            jobs::JobKind::Backup | jobs::JobKind::Create => {
                // The target gets the data; the graph does not change. A
                // create job wrote its image when it started.
            }
            jobs::JobKind::Mirror => {
                // Pivot: the source's parents (exports, devices) move to the
                // target; in qemu-storage-daemon often nothing holds either
                // (recorded). A soft cancel after ready does not pivot.
                if let (false, Some(target)) = (job.no_pivot, job.base) {
                    // The parents sit on the job's filter while it runs.
                    let from = job.filter.unwrap_or(job.node);
                    self.graph.replace_node(from, target);
                    // bdrv_replace_node(source, target) moved the filter's
                    // own child too.
                    if let Some(f) = job.filter {
                        self.graph.set_backing(f, Some(target));
                    }
                    self.graph.free_unused(job.node);
                    self.graph_generation += 1;
                }
            }
            jobs::JobKind::Commit if job.top == Some(job.node) => {
                // Active commit: the top's parents (on the filter while the
                // job runs) move to the base; in qemu-storage-daemon often
                // nothing holds the top, so the graph stays (recorded).
                if let Some(base) = job.base {
                    // Everything above the base is stale now (§3.11).
                    let mut stale = Vec::new();
                    let mut cur = Some(job.node);
                    while let Some(n) = cur.filter(|n| *n != base) {
                        stale.push(n);
                        cur = self.graph.child(n, "backing");
                    }
                    self.invalidate(&stale, &job.id);
                    self.graph
                        .replace_node(job.filter.unwrap_or(job.node), base);
                    if let Some(f) = job.filter {
                        self.graph.set_backing(f, Some(base));
                    }
                    self.graph_generation += 1;
                }
            }
            jobs::JobKind::Commit => {
                // The overlay above `top` now reads from `base`; `top` and
                // what lies between stay only if something else holds them.
                let (Some(top), Some(base)) = (job.top, job.base) else {
                    return;
                };
                // The intermediates top … base (base excluded) no longer
                // represent any point in time (§3.11).
                let mut stale = Vec::new();
                let mut cur = Some(top);
                while let Some(n) = cur.filter(|n| *n != base) {
                    if Some(n) != job.filter {
                        stale.push(n);
                    }
                    cur = self.graph.child(n, "backing");
                }
                self.invalidate(&stale, &job.id);
                // The overlay above top (past the job's commit_top filter).
                let mut above = job.node;
                let mut cur = job.node;
                while let Some(b) = self.graph.child(cur, "backing") {
                    if b == top {
                        break;
                    }
                    if Some(b) != job.filter {
                        above = b;
                    }
                    cur = b;
                }
                self.graph.set_backing(above, Some(base));
                self.graph.free_unused(top);
                let backing = self
                    .graph
                    .node(base)
                    .map(|b| (graph_filename(&self.graph, b), b.driver.clone()));
                if let Some(file) = self
                    .graph
                    .child(above, "file")
                    .and_then(|f| self.graph.node(f))
                    .and_then(|f| f.file.clone())
                {
                    self.graph.set_header_backing(above, backing.clone());
                    self.graph.push_effect(Effect::SetBacking {
                        filename: file.filename,
                        backing,
                    });
                }
                self.graph_generation += 1;
            }
            jobs::JobKind::Stream => {
                let old = self.graph.child(job.node, "backing");
                // 6.0 on, the old backing file's children keep the
                // permissions the top's backing edge gave them.
                if let (Some(o), true) = (old, job.version >= crate::profile::Version::V7_2) {
                    let users = self.block_users(job.version);
                    let held = perms::PermGraph::new(&self.graph, &users, job.version)
                        .edge(job.node, "backing", o);
                    if let Some(j) = self.job_mut(&job.id) {
                        j.stale_hold = Some((o, held));
                    }
                }
                self.graph.set_backing(job.node, job.base);
                if let Some(old) = old {
                    self.graph.free_unused(old);
                }
                let backing = job
                    .base
                    .and_then(|b| self.graph.node(b))
                    .map(|b| (graph_filename(&self.graph, b), b.driver.clone()));
                if let Some(file) = self
                    .graph
                    .child(job.node, "file")
                    .and_then(|f| self.graph.node(f))
                    .and_then(|f| f.file.clone())
                {
                    self.graph.set_header_backing(job.node, backing.clone());
                    self.graph.push_effect(Effect::SetBacking {
                        filename: file.filename,
                        backing,
                    });
                }
                self.graph_generation += 1;
            }
        }
    }

    /// Takes the effects on files the model asked for, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.graph.take_effects()
    }

    /// The block node graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The block node graph, for changes.
    pub fn graph_mut(&mut self) -> &mut Graph {
        self.graph_generation += 1;
        self.hold_job_nodes();
        &mut self.graph
    }

    /// Tells the graph which nodes running jobs (not concluded yet) hold:
    /// their node, top, base or target, filter and `drive-*` target.
    fn hold_job_nodes(&mut self) {
        let held = self
            .jobs
            .iter()
            .filter(|j| j.status < JobStatus::Concluded)
            .flat_map(|j| {
                let node = (j.node != jobs::NO_NODE).then_some(j.node);
                [node, j.top, j.base, j.filter, j.owned_target]
            })
            .flatten()
            .collect();
        self.graph.set_job_held(held);
    }

    /// The node a block job is created on (`block_job_create`): a
    /// mirror's, an active commit's or a backup's filter, a stream's
    /// copy-on-read filter (6.0 on), else the job's node.
    fn job_main_node(j: &Job) -> NodeId {
        match j.kind {
            jobs::JobKind::Commit if j.top != Some(j.node) => j.node,
            jobs::JobKind::Stream if j.version < crate::profile::Version::V7_2 => j.node,
            _ => j.filter.unwrap_or(j.node),
        }
    }

    /// A mirror, or an active commit (which runs as one).
    fn is_mirror_like(j: &Job) -> bool {
        j.kind == jobs::JobKind::Mirror
            || (j.kind == jobs::JobKind::Commit && j.top == Some(j.node))
    }

    /// The nodes a block job holds (`block_job_add_bdrv`), in the order it
    /// added them: its main node, then per kind a mirror's source, target
    /// and (target in the source's backing chain) what lies between; a
    /// commit's intermediate nodes and base; a stream's active node (6.0
    /// on) and intermediate nodes; a backup's target. Noted when the job's
    /// work ends ([`Job::held`]); worked out from the graph before.
    fn job_edge_nodes(&self, j: &Job) -> Vec<(String, NodeId)> {
        if let Some(h) = &j.held {
            return h.clone();
        }
        let mut out = vec![("main node".to_owned(), Self::job_main_node(j))];
        let limit = self.graph.len() + 1;
        // The nodes strictly between `from` and `to`, down the backing chain.
        let below = |from: Option<NodeId>, to: Option<NodeId>| {
            let mut v = Vec::new();
            let mut cur = from;
            while let Some(n) = cur.filter(|n| Some(*n) != to) {
                if v.len() > limit {
                    break;
                }
                if Some(n) != j.filter {
                    v.push(n);
                }
                cur = self.graph.child(n, "backing");
            }
            v
        };
        match j.kind {
            _ if Self::is_mirror_like(j) => {
                if let Some(target) = j.base {
                    out.push(("source".into(), j.node));
                    out.push(("target".into(), target));
                    if chain_has(&self.graph, j.node, target) {
                        for n in below(self.graph.child(j.node, "backing"), Some(target)) {
                            out.push(("intermediate node".into(), n));
                        }
                    }
                }
            }
            jobs::JobKind::Commit => {
                if let (Some(top), Some(base)) = (j.top, j.base) {
                    for n in below(Some(top), Some(base)) {
                        out.push(("intermediate node".into(), n));
                    }
                    out.push(("base".into(), base));
                }
            }
            jobs::JobKind::Stream => {
                if j.version >= crate::profile::Version::V7_2 {
                    out.push(("active node".into(), j.node));
                }
                for n in below(self.graph.child(j.node, "backing"), j.base) {
                    out.push(("intermediate node".into(), n));
                }
            }
            jobs::JobKind::Backup => {
                if let Some(t) = j.base {
                    out.push(("target".into(), t));
                }
            }
            _ => {}
        }
        out
    }

    /// Every user of the graph that is not a node, with the permissions
    /// it takes: BlockBackends (the devices', the exports', and the ones jobs open) in
    /// creation order, and each block job (newest first) with the nodes it
    /// holds. In 5.2 a job also has a BlockBackend of its own on its main
    /// node (`job->blk`), which carries the permissions later versions put
    /// on the `main node` edge and lives until the job is dismissed. A
    /// concluded job that waits to be dismissed still holds a commit's or
    /// a stream's nodes (and 5.2 a backup's); a mirror let go of its own.
    pub fn block_users(&self, v: crate::profile::Version) -> perms::Users {
        use perms::{all, Backend, JobUse, Perms, PERM_GRAPH_MOD, PERM_WRITE_UNCHANGED};
        const R: u8 = graph::PERM_READ;
        const W: u8 = graph::PERM_WRITE;
        const U: u8 = PERM_WRITE_UNCHANGED;
        const Z: u8 = graph::PERM_RESIZE;
        const G: u8 = PERM_GRAPH_MOD;
        let p = |perm: u8, shared: u8| Perms {
            perm: perm & all(v),
            shared: shared & all(v),
        };
        let inert = Perms::inert(v);
        let mut users = perms::Users::default();
        // (creation order, backends): devices', exports' and jobs'
        // interleaved.
        let mut made: Vec<(u64, Vec<Backend>)> = Vec::new();
        for (owner, node) in self.graph.backends() {
            let perms = match self.graph.device_perms(owner) {
                Some(d) => p(d.perm, d.shared),
                None => {
                    let writable = self
                        .exports
                        .newest_first()
                        .any(|e| e.writable && exports::backend_owner(&e.id) == owner);
                    perms::export_root(writable, v)
                }
            };
            made.push((
                self.graph.backend_seq(owner),
                vec![Backend {
                    owner: owner.to_owned(),
                    node,
                    perms,
                }],
            ));
        }
        let size = |n: NodeId| self.graph.node(n).map_or(0, |n| n.size);
        let mut jobs = Vec::new();
        for j in self
            .jobs
            .iter()
            .filter(|j| j.kind.is_block_job() && j.status != JobStatus::Null)
        {
            let legacy = j.version < crate::profile::Version::V7_2;
            let concluded = j.status >= JobStatus::Concluded;
            let mirror_like = Self::is_mirror_like(j);
            let nodes = self.job_edge_nodes(j);
            let main = nodes.first().map_or(j.node, |(_, n)| *n);
            let main_perms = match j.kind {
                _ if mirror_like => p(R, R | U | W | G),
                jobs::JobKind::Stream if legacy => p(R | U | G, R | U | W),
                _ => inert,
            };
            let mut blks: Vec<(NodeId, Perms)> = Vec::new();
            if legacy {
                // mirror_exit_common() leaves job->blk taking nothing.
                let kept = if concluded && mirror_like {
                    inert
                } else {
                    main_perms
                };
                // Dropping backup-top moved its parents, job->blk among
                // them, to the source (recorded).
                let on = if concluded && j.kind == jobs::JobKind::Backup {
                    j.node
                } else {
                    main
                };
                blks.push((on, kept));
            }
            if !concluded {
                match j.kind {
                    _ if mirror_like => {
                        if let Some(target) = j.base {
                            // mirror_start_job(): a target in the source's
                            // backing chain (active commit) is shared for
                            // reading and writing, and resized if smaller.
                            let (mut tp, mut ts) = (W, U);
                            // drive-mirror does not leave the backing chain
                            // alone (5.2 takes graph-mod for that).
                            if j.owned_target.is_some() {
                                tp |= G;
                            }
                            if chain_has(&self.graph, j.node, target) {
                                if size(j.node) > size(target) {
                                    tp |= Z;
                                }
                                ts |= R | W | G;
                            }
                            blks.push((target, p(tp, ts)));
                        }
                    }
                    jobs::JobKind::Commit => {
                        if let (Some(top), Some(base)) = (j.top, j.base) {
                            let bp = R | W | if size(base) < size(top) { Z } else { 0 };
                            blks.push((base, p(bp, R | U | G)));
                            blks.push((top, inert));
                        }
                    }
                    jobs::JobKind::Stream if !legacy => {
                        blks.push((main, p(R, R | U | W)));
                    }
                    _ => {}
                }
            }
            let keeps_nodes = !concluded
                || match j.kind {
                    _ if mirror_like => false,
                    jobs::JobKind::Backup => legacy,
                    _ => true,
                };
            let edges: Vec<(String, NodeId, Perms)> = if keeps_nodes {
                nodes
                    .into_iter()
                    .map(|(role, n)| {
                        let perms = match role.as_str() {
                            "main node" if !legacy => main_perms,
                            "source" | "active node" => p(0, R | U | W),
                            "intermediate node" if j.kind == jobs::JobKind::Stream => p(0, R | U),
                            "intermediate node" => p(0, U | W),
                            _ => inert,
                        };
                        (role, n, perms)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if mirror_like && !concluded {
                users
                    .commit_mirror_tops
                    .extend(j.filter.filter(|_| j.kind == jobs::JobKind::Commit));
            }
            if let Some((n, p)) = j.stale_hold {
                users.hidden.push((n, p));
            }
            made.push((
                j.backend_seq,
                blks.into_iter()
                    .map(|(node, perms)| Backend {
                        owner: format!("job:{}", j.id),
                        node,
                        perms,
                    })
                    .collect(),
            ));
            jobs.push(JobUse {
                id: j.id.clone(),
                kind: j.kind.name().to_owned(),
                edges,
            });
        }
        jobs.reverse();
        users.jobs = jobs;
        made.sort_by_key(|(seq, _)| *seq);
        users.backends = made.into_iter().flat_map(|(_, b)| b).collect();
        users
    }

    /// Changes whenever the graph may have changed.
    pub fn graph_generation(&self) -> u64 {
        self.graph_generation
    }

    /// Number of jobs that exist.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// A job, for changes (speed, pause flags).
    pub fn job_entry(&mut self, id: &str) -> Option<&mut Job> {
        self.job_mut(id)
    }

    /// Current run state.
    pub fn run_state(&self) -> RunState {
        self.run_state
    }

    /// Whether `quit` (or a signal) asked the process to end.
    pub fn quit_requested(&self) -> bool {
        self.quit_requested
    }

    /// `quit`: the process ends after the reply is sent. The system emulator
    /// then reports `SHUTDOWN`.
    pub fn request_quit(&mut self, emits_shutdown: bool, reason: &'static str) {
        self.quit_requested = true;
        self.run_state = RunState::Shutdown;
        // The process closes every node as it exits.
        self.graph.close_all();
        if emits_shutdown {
            self.emit(ModelEvent::Shutdown {
                guest: false,
                reason,
            });
        }
    }

    /// `stop`.
    pub fn stop(&mut self) {
        if self.run_state == RunState::Running {
            self.run_state = RunState::Paused;
            self.emit(ModelEvent::Stop);
        }
    }

    /// `cont`.
    pub fn cont(&mut self) {
        if matches!(self.run_state, RunState::Paused | RunState::Prelaunch) {
            self.run_state = RunState::Running;
            self.emit(ModelEvent::Resume);
        }
    }

    fn emit(&mut self, event: ModelEvent) {
        self.outbox.push(Stamped {
            after_reply: false,
            at: self.clock.now(),
            event,
        });
    }

    /// Raises an event that QEMU emits once the command has answered.
    pub fn emit_after_reply(&mut self, event: ModelEvent) {
        self.outbox.push(Stamped {
            at: self.clock.now(),
            event,
            after_reply: true,
        });
    }

    fn emit_at(&mut self, event: ModelEvent, after_reply: bool) {
        if after_reply {
            self.emit_after_reply(event);
        } else {
            self.emit(event);
        }
    }

    /// Raises an event now (before the running command's reply).
    pub fn emit_now(&mut self, event: ModelEvent) {
        self.emit(event);
    }

    /// The NBD server and exports.
    pub fn exports(&self) -> &exports::Exports {
        &self.exports
    }

    /// The NBD server and exports, for changes.
    pub fn exports_mut(&mut self) -> &mut exports::Exports {
        &mut self.exports
    }

    /// The guest devices.
    pub fn devices(&self) -> &devices::Devices {
        &self.devices
    }

    /// The guest devices, to change.
    pub fn devices_mut(&mut self) -> &mut devices::Devices {
        &mut self.devices
    }

    /// Graph and exports together (export changes touch both).
    pub fn graph_and_exports(&mut self) -> (&mut Graph, &mut exports::Exports) {
        self.graph_generation += 1;
        self.hold_job_nodes();
        (&mut self.graph, &mut self.exports)
    }

    /// Takes every event raised since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Stamped> {
        std::mem::take(&mut self.outbox)
    }
}

/// Whether `target` is in `from`'s backing chain (below it).
fn chain_has(g: &Graph, from: NodeId, target: NodeId) -> bool {
    let mut cur = g.child(from, "backing");
    let mut steps = 0;
    while let Some(n) = cur {
        if n == target {
            return true;
        }
        steps += 1;
        if steps > g.len() {
            return false;
        }
        cur = g.child(n, "backing");
    }
    false
}
