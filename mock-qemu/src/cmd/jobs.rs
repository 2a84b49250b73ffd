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
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::QObject;

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
        let t: Target = parse_args(args)?;
        let target = t.device.or(t.id).unwrap_or_default();
        Ok(JobVerb {
            name: name.to_owned(),
            family,
            target,
        })
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        if ctx.machine.job(&self.target).is_none() {
            return Err(match self.family {
                Family::Job => QmpError::generic("Job not found"),
                Family::BlockJob => QmpError::new(
                    ErrorClass::DeviceNotActive,
                    format!("Block job '{}' not found", self.target),
                ),
            });
        }
        Err(not_implemented(ctx.profile, &self.name))
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
        if ctx.machine.job_count() == 0 {
            return Ok(QObject::List(Vec::new()));
        }
        Err(not_implemented(ctx.profile, self.name))
    }
}
