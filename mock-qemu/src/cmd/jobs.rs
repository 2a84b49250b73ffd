//! Job verbs and queries: `job-*`, `block-job-*`, `query-jobs`,
//! `query-block-jobs`.
//!
//! The lookups are QEMU's: `job-*` find a job by id (`GenericError: Job not
//! found`), `block-job-*` find a *block* job by id (`DeviceNotActive: Block
//! job 'X' not found`), before any other check. The job engine that creates
//! jobs comes with the jobs issue; until a command can start one, the table is
//! empty and a found job would get the explicit not-implemented error.

use serde::Deserialize;

use super::{not_implemented, parse_args, Context, Return};
use crate::model::jobs::{verb_allowed, Job, JobError, JobStatus, Verb};
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::{QDict, QObject};
use crate::qmp::shape;

/// Starts a job a command built, with the arguments every job-starting
/// command shares (`job-id` — default `''`, as no BlockBackend names exist
/// —, `speed`, `auto-finalize`, `auto-dismiss`), in QEMU's order: the id is
/// checked, the job is created, a negative speed destroys it again
/// (`created`, `null`, then the error), else it starts.
pub(super) fn start(ctx: &mut Context<'_>, args: &QDict, job: Job) -> Result<Return, QmpError> {
    start_or_drop(ctx, args, job, Ok(()))
}

/// [`start`], for a command whose next step after creating the job can
/// fail (`late`): the job is then destroyed again (`created`, `null`) and
/// the command reports that error, as QEMU's `job_early_fail()`.
pub(super) fn start_or_drop(
    ctx: &mut Context<'_>,
    args: &QDict,
    job: Job,
    late: Result<(), QmpError>,
) -> Result<Return, QmpError> {
    let speed = match args.get("speed") {
        Some(QObject::Num(crate::qmp::qobject::QNum::I64(s))) => *s,
        _ => 0,
    };
    let explicit_false = |k: &str| matches!(args.get(k), Some(QObject::Bool(false)));
    let job = Job {
        id: args.get_str("job-id").unwrap_or("").to_owned(),
        speed: u64::try_from(speed).unwrap_or(0),
        auto_finalize: !explicit_false("auto-finalize"),
        auto_dismiss: !explicit_false("auto-dismiss"),
        version: ctx.profile.version(),
        ..job
    };
    let err = |e: JobError| QmpError::generic(e.to_string());
    ctx.machine.check_job_id(&job.id).map_err(err)?;
    if speed < 0 {
        ctx.machine.create_and_drop_job(job).map_err(err)?;
        return Err(QmpError::generic(
            "Parameter 'speed' expects a non-negative value",
        ));
    }
    if let Err(e) = late {
        ctx.machine.create_and_drop_job(job).map_err(err)?;
        return Err(e);
    }
    ctx.machine.start_job(job).map_err(err)?;
    Ok(QObject::Dict(QDict::new()))
}

/// The name check of a job's filter node (`filter-node-name`), which QEMU
/// makes when it opens the filter: before creating the job (stream,
/// mirror, active commit, backup) or right after (intermediate commit).
pub(super) fn check_filter_name(ctx: &Context<'_>, name: Option<&str>) -> Result<(), QmpError> {
    match name {
        Some(n) => ctx
            .machine
            .graph()
            .check_new_name(n)
            .map_err(|e| super::desc::graph_error(ctx.profile.version(), &e)),
        None => Ok(()),
    }
}

/// Inserts the hidden filter node a job puts above its source
/// (`mirror_top`, `copy-before-write`, …; named `filter-node-name`, else
/// generated and implicit) and gives it to the job, which removes it when
/// it ends. With `takes_parents`, the source's parents (nodes, exports)
/// move to the filter (`bdrv_insert_node`).
pub(super) fn insert_filter(
    ctx: &mut Context<'_>,
    job_id: &str,
    driver: &str,
    children: Vec<(String, crate::model::graph::NodeId)>,
    name: Option<&str>,
    takes_parents: bool,
) -> Result<crate::model::graph::NodeId, QmpError> {
    let v = ctx.profile.version();
    // The filtered child (the source): any but a copy filter's target.
    let source = children
        .iter()
        .find(|(r, _)| r != "target")
        .map(|(_, c)| *c);
    let size = source
        .and_then(|c| ctx.machine.graph().node(c))
        .map_or(0, |n| n.size);
    let mut node = super::blockdev::common(driver, &QDict::new(), false);
    node.size = size;
    node.children = children;
    node.implicit = name.is_none();
    // commit_top only reads (the overlay above keeps writing to it).
    node.read_only = driver == "commit_top";
    node.strong_options.put("driver", driver);
    let id = ctx
        .machine
        .graph_mut()
        .insert(crate::model::graph::NewNode {
            name: name.map(str::to_owned),
            node,
        })
        .map_err(|e| super::desc::graph_error(v, &e))?;
    if let (true, Some(s)) = (takes_parents, source) {
        ctx.machine.graph_mut().replace_node(s, id);
    }
    if let Some(j) = ctx.machine.job_entry(job_id) {
        j.filter = Some(id);
    }
    Ok(id)
}

/// `device` and `target` of a copying job (mirror, backup), looked up as
/// `bdrv_lookup_bs(name, name)`.
pub(super) fn source_and_target(
    ctx: &Context<'_>,
    args: &QDict,
) -> Result<(crate::model::graph::NodeId, crate::model::graph::NodeId), QmpError> {
    let v = ctx.profile.version();
    let graph = ctx.machine.graph();
    let find = |key: &str| {
        let name = args.get_str(key).unwrap_or_default();
        graph
            .find(name)
            .ok_or_else(|| super::desc::node_lookup(v, name, name))
    };
    Ok((find("device")?, find("target")?))
}

/// The read error a job copying `src` meets, if a `blkdebug` node on the
/// source's read path has a `read_aio` rule and the image holds data to
/// read (zero and unallocated clusters are not read). Its progress then:
/// up to 5.2 the job stops at the first data cluster; later block-copy
/// finishes every other chunk first (recorded in jobs/io-errors).
pub(super) fn source_fault(
    ctx: &mut Context<'_>,
    src: crate::model::graph::NodeId,
    len: u64,
) -> Option<crate::model::jobs::Fault> {
    let graph = ctx.machine.graph();
    let mut rule = None;
    let mut image = None;
    for id in read_path(graph, src) {
        let n = graph.node(id)?;
        if n.driver == "blkdebug" {
            let o = &n.strong_options;
            for i in 0.. {
                let key = |k: &str| format!("inject-error.{i}.{k}");
                let Some(event) = o.get_str(&key("event")) else {
                    break;
                };
                if event == "read_aio" && rule.is_none() {
                    let errno = match o.get(&key("errno")) {
                        Some(QObject::Num(n)) => n.as_u64().unwrap_or(5),
                        _ => 5,
                    };
                    let once = matches!(o.get(&key("once")), Some(QObject::Bool(true)));
                    rule = Some((errno, once));
                }
            }
        }
        if let Some(f) = &n.file {
            image = Some(f.filename.clone());
        }
    }
    let (errno, once) = rule?;
    let (bytes, first) = ctx.host.qcow2_allocation(&image?).ok()?;
    if bytes == 0 || len == 0 {
        return None;
    }
    let errno = i32::try_from(errno).unwrap_or(5);
    Some(crate::model::jobs::Fault {
        operation: "read",
        error: crate::image::strerror(&std::io::Error::from_raw_os_error(errno)),
        nospace: errno == libc::ENOSPC,
        at: if ctx.profile.version() < crate::profile::Version::V7_2 {
            first.unwrap_or(0)
        } else {
            len.saturating_sub(bytes)
        },
        once,
    })
}

/// The nodes a job reads through from `id` (itself, then its `file` /
/// `image` children down to the protocol node).
fn read_path(
    graph: &crate::model::graph::Graph,
    id: crate::model::graph::NodeId,
) -> Vec<crate::model::graph::NodeId> {
    let mut out = Vec::new();
    let mut cur = Some(id);
    while let Some((c, n)) = cur.and_then(|c| Some((c, graph.node(c)?))) {
        out.push(c);
        cur = n
            .children
            .iter()
            .find(|(r, _)| r == "file" || r == "image")
            .map(|(_, c)| *c);
    }
    out
}

/// The fault a copying job from `src` to `dst` meets: a blkdebug read
/// rule on data it reads, else a fault injected with `x-mock-inject-fault`
/// on a node it reads (the source's path) or writes (the target's).
pub(super) fn job_fault(
    ctx: &mut Context<'_>,
    src: crate::model::graph::NodeId,
    dst: Option<crate::model::graph::NodeId>,
    len: u64,
) -> Option<crate::model::jobs::Fault> {
    if let Some(f) = source_fault(ctx, src, len) {
        return Some(f);
    }
    let graph = ctx.machine.graph();
    let names = |id| {
        read_path(graph, id)
            .into_iter()
            .filter_map(|n| graph.node(n).map(|n| n.name.clone()))
            .collect::<Vec<_>>()
    };
    let reads = names(src);
    let writes = dst.map(names).unwrap_or_default();
    ctx.machine
        .injected_faults()
        .iter()
        .find(|f| match f.operation {
            "write" => writes.contains(&f.node),
            _ => reads.contains(&f.node),
        })
        .map(|f| crate::model::jobs::Fault {
            operation: f.operation,
            error: f.error.clone(),
            nospace: f.nospace,
            at: f.at.min(len),
            once: f.once,
        })
}

/// What a copying job (mirror, backup) gets from its arguments and the
/// graph about errors: the fault it will meet, and its `on-source-error`
/// and `on-target-error` actions (`enospc` stops only on ENOSPC).
pub(super) fn fault_and_actions(
    ctx: &mut Context<'_>,
    args: &QDict,
    src: crate::model::graph::NodeId,
    dst: crate::model::graph::NodeId,
    len: u64,
) -> (
    Option<crate::model::jobs::Fault>,
    crate::model::jobs::ErrorAction,
    crate::model::jobs::ErrorAction,
) {
    let fault = job_fault(ctx, src, Some(dst), len);
    let nospace = fault.as_ref().is_some_and(|f| f.nospace);
    let action = |k: &str| crate::model::jobs::ErrorAction::parse(args.get_str(k), nospace);
    (fault, action("on-source-error"), action("on-target-error"))
}

/// A node named by argument `key` (a node name or a device name).
pub(super) fn lookup(
    ctx: &Context<'_>,
    args: &QDict,
    key: &str,
) -> Result<crate::model::graph::NodeId, QmpError> {
    let v = ctx.profile.version();
    let name = args.get_str(key).unwrap_or_default();
    ctx.machine
        .graph()
        .find(name)
        .ok_or_else(|| super::desc::node_lookup(v, name, name))
}

/// `bdrv_op_is_blocked()`: a node a running job holds (its node, filter,
/// target, …: `Machine::blocking_job`) is busy for other operations.
pub(super) fn check_not_blocked(
    ctx: &Context<'_>,
    node: crate::model::graph::NodeId,
) -> Result<(), QmpError> {
    let Some(j) = ctx.machine.blocking_job(node) else {
        return Ok(());
    };
    let name = ctx
        .machine
        .graph()
        .node(node)
        .map(|n| n.name.clone())
        .unwrap_or_default();
    Err(QmpError::generic(format!(
        "Node '{name}' is busy: block device is in use by block job: {}",
        j.kind.name()
    )))
}

/// Which family a verb belongs to, which decides its lookup error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `job-pause`, `job-resume`, … (`id`).
    Job,
    /// `block-job-pause`, … (`device`, or `id` for finalize/dismiss/change).
    BlockJob,
}

/// A verb applied to one job.
#[derive(Debug)]
pub struct JobVerb {
    name: String,
    family: Family,
    target: String,
    force: bool,
    speed: i64,
    /// block-job-change's `copy-mode` (its default: background).
    copy_mode: String,
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

impl JobVerb {
    /// Parses a schema-checked verb.
    pub fn parse(name: &str, family: Family, args: serde_json::Value) -> Result<Self, QmpError> {
        let force = args
            .get("force")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let speed = args
            .get("speed")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let copy_mode = args
            .get("copy-mode")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("background")
            .to_owned();
        let t: Target = parse_args(args)?;
        let target = t.device.or(t.id).unwrap_or_default();
        Ok(JobVerb {
            name: name.to_owned(),
            family,
            target,
            force,
            speed,
            copy_mode,
        })
    }

    fn verb(&self) -> Option<Verb> {
        let base = self
            .name
            .trim_start_matches("block-")
            .trim_start_matches("job-");
        Some(match base {
            "pause" => Verb::Pause,
            "resume" => Verb::Resume,
            "cancel" => Verb::Cancel,
            "complete" => Verb::Complete,
            "finalize" => Verb::Finalize,
            "dismiss" => Verb::Dismiss,
            "set-speed" => Verb::SetSpeed,
            "change" => Verb::Change,
            _ => return None,
        })
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let found = ctx
            .machine
            .job(&self.target)
            .filter(|j| self.family == Family::Job || j.kind.is_block_job())
            .cloned();
        let Some(job) = found else {
            return Err(match self.family {
                Family::Job => QmpError::generic("Job not found"),
                Family::BlockJob => QmpError::new(
                    ErrorClass::DeviceNotActive,
                    format!("Block job '{}' not found", self.target),
                ),
            });
        };
        let Some(verb) = self.verb() else {
            return Err(not_implemented(ctx.profile, &self.name));
        };
        let version = ctx.profile.version();
        let verb_check = |status: JobStatus| -> Result<(), QmpError> {
            if verb_allowed(version, verb, status) {
                Ok(())
            } else {
                Err(QmpError::generic(
                    JobError::Verb {
                        id: job.id.clone(),
                        status: status.name(),
                        verb: verb.name(),
                    }
                    .to_string(),
                ))
            }
        };
        let done = || Ok(QObject::Dict(QDict::new()));
        let err = |e: JobError| QmpError::generic(e.to_string());
        match verb {
            Verb::Resume => {
                // Checked before the verb (job.c): the user pause flag.
                if !job.user_paused {
                    return Err(QmpError::generic("Can't resume a job that was not paused"));
                }
                verb_check(job.status)?;
                let back = match job.status {
                    JobStatus::Standby => JobStatus::Ready,
                    JobStatus::Paused => JobStatus::Running,
                    other => other,
                };
                if let Some(j) = ctx.machine.job_entry(&job.id) {
                    j.user_paused = false;
                    j.io_status = "ok";
                }
                if back != job.status {
                    ctx.machine.set_status(&job.id, back, false).map_err(err)?;
                }
                done()
            }
            Verb::Cancel if self.family == Family::BlockJob && !self.force && job.user_paused => {
                Err(QmpError::generic(format!(
                    "The block job for device '{}' is currently paused",
                    job.id
                )))
            }
            Verb::Pause => {
                verb_check(job.status)?;
                if job.user_paused {
                    return Err(QmpError::generic("Job is already paused"));
                }
                let to = match job.status {
                    // QEMU 5.2 moved an idle ready job to standby only at its
                    // next pause point, which never came (recorded).
                    JobStatus::Ready if version < crate::profile::Version::V7_2 => JobStatus::Ready,
                    JobStatus::Ready => JobStatus::Standby,
                    JobStatus::Running => JobStatus::Paused,
                    other => other,
                };
                if let Some(j) = ctx.machine.job_entry(&job.id) {
                    j.user_paused = true;
                }
                if to != job.status {
                    ctx.machine.set_status(&job.id, to, false).map_err(err)?;
                }
                done()
            }
            Verb::SetSpeed => {
                verb_check(job.status)?;
                if self.speed < 0 {
                    return Err(QmpError::generic(
                        "Parameter 'speed' expects a non-negative value",
                    ));
                }
                if let Some(j) = ctx.machine.job_entry(&job.id) {
                    j.speed = u64::try_from(self.speed).unwrap_or(0);
                }
                done()
            }
            Verb::Finalize => {
                verb_check(job.status)?;
                ctx.machine.finalize_job(&job.id, false).map_err(err)?;
                done()
            }
            Verb::Dismiss => {
                verb_check(job.status)?;
                ctx.machine
                    .set_status(&job.id, JobStatus::Null, false)
                    .map_err(err)?;
                done()
            }
            Verb::Complete => {
                verb_check(job.status)?;
                if !job.waits_for_complete || job.complete_requested {
                    return Err(QmpError::generic(format!(
                        "The active block job '{}' cannot be completed",
                        job.id
                    )));
                }
                // The job finishes after the reply (run_jobs).
                if let Some(j) = ctx.machine.job_entry(&job.id) {
                    j.complete_requested = true;
                }
                done()
            }
            Verb::Cancel => {
                verb_check(job.status)?;
                let soft = self.family == Family::BlockJob && !self.force;
                if let Some(j) = ctx.machine.job_entry(&job.id) {
                    if soft && j.status == JobStatus::Ready && j.waits_for_complete {
                        // A soft cancel of a ready job completes it without
                        // the pivot.
                        j.complete_requested = true;
                        j.no_pivot = true;
                    } else {
                        j.cancel_requested = true;
                    }
                }
                done()
            }
            Verb::Change => {
                verb_check(job.status)?;
                if job.kind != crate::model::jobs::JobKind::Mirror {
                    return Err(not_implemented(
                        ctx.profile,
                        &format!("{} of a {} job", self.name, job.kind.name()),
                    ));
                }
                // mirror_change(): the options are read as a mirror's
                // whatever `type` says; only background → write-blocking.
                let wanted = self.copy_mode == "write-blocking";
                if job.write_blocking && !wanted {
                    return Err(QmpError::generic(format!(
                        "Change to copy mode '{}' is not implemented",
                        self.copy_mode
                    )));
                }
                if let Some(j) = ctx.machine.job_entry(&job.id) {
                    j.write_blocking |= wanted;
                }
                done()
            }
        }
    }
}

/// `query-jobs` / `query-block-jobs`.
#[derive(Debug)]
pub struct QueryJobs {
    name: &'static str,
}

impl QueryJobs {
    /// The query named `name`.
    pub fn new(name: &'static str) -> Self {
        QueryJobs { name }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let block = self.name == "query-block-jobs";
        let list = ctx
            .machine
            .jobs_newest_first()
            .filter(|j| !block || j.kind.is_block_job())
            .map(|j| {
                let mut d = QDict::new();
                if block {
                    d.put("type", j.kind.name());
                    d.put("device", j.id.clone());
                    d.put("len", j.len);
                    d.put("offset", j.offset);
                    d.put("busy", false);
                    d.put("paused", j.user_paused);
                    d.put("speed", j.speed);
                    d.put("io-status", j.io_status);
                    d.put(
                        "ready",
                        matches!(j.status, JobStatus::Ready | JobStatus::Standby),
                    );
                    d.put("status", j.status.name());
                    d.put("auto-finalize", j.auto_finalize);
                    d.put("auto-dismiss", j.auto_dismiss);
                    if j.kind == crate::model::jobs::JobKind::Mirror {
                        // 10.0's schema has it; the projection drops it for older ones.
                        d.put("actively-synced", false);
                    }
                } else {
                    d.put("id", j.id.clone());
                    d.put("type", j.kind.name());
                    d.put("status", j.status.name());
                    d.put("current-progress", j.offset);
                    d.put("total-progress", j.len);
                }
                if let Some(e) = &j.error {
                    d.put("error", e.clone());
                }
                QObject::Dict(d)
            })
            .collect();
        Ok(shape::reply(
            ctx.profile.schema(),
            self.name,
            QObject::List(list),
        ))
    }
}
