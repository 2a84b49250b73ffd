//! The state model: sans-IO, deterministic, no tokio, no JSON.
//!
//! [`Machine`] is what one QEMU process holds. The block graph and the job
//! engine grow here; commands reach it only through its domain operations,
//! and what it wants to tell clients goes into its outbox as [`ModelEvent`]s.

pub mod clock;
pub mod exports;
pub mod graph;

use std::collections::BTreeMap;

use clock::{VirtualClock, VirtualTime};
use graph::Graph;

/// A job (block-stream, mirror, …). The engine that creates and runs jobs
/// arrives with the jobs issue; the table and its lookups exist already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job id (`job-id`).
    pub id: String,
}

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
    /// `RESUME` (system emulator).
    Resume,
    /// `BLOCK_EXPORT_DELETED`.
    BlockExportDeleted {
        /// The export id.
        id: String,
    },
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
    jobs: BTreeMap<String, Job>,
    graph: Graph,
    /// Bumped by every mutable access to the graph (reply caches key on it).
    graph_generation: u64,
    exports: exports::Exports,
    run_state: RunState,
    quit_requested: bool,
    outbox: Vec<Stamped>,
}

impl Machine {
    /// A fresh machine whose clock starts at `epoch`.
    pub fn new(epoch: VirtualTime, start_paused: bool) -> Self {
        Machine {
            clock: VirtualClock::new(epoch),
            jobs: BTreeMap::new(),
            graph: Graph::new(),
            graph_generation: 0,
            exports: exports::Exports::default(),
            run_state: if start_paused {
                RunState::Prelaunch
            } else {
                RunState::Running
            },
            quit_requested: false,
            outbox: Vec::new(),
        }
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Moves virtual time forward.
    pub fn advance(&mut self, micros: u64) {
        self.clock.advance(micros);
    }

    /// The job with this id, if one exists (concluded ones included until
    /// dismissed).
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// The block node graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The block node graph, for changes.
    pub fn graph_mut(&mut self) -> &mut Graph {
        self.graph_generation += 1;
        &mut self.graph
    }

    /// Changes whenever the graph may have changed.
    pub fn graph_generation(&self) -> u64 {
        self.graph_generation
    }

    /// Number of jobs that exist.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
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

    /// Graph and exports together (export changes touch both).
    pub fn graph_and_exports(&mut self) -> (&mut Graph, &mut exports::Exports) {
        self.graph_generation += 1;
        (&mut self.graph, &mut self.exports)
    }

    /// Takes every event raised since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Stamped> {
        std::mem::take(&mut self.outbox)
    }
}
