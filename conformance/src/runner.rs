//! Running golden cases against a target and reporting.

use std::path::Path;

use anyhow::{Context, Result};

use crate::compare::{compare, Mismatch, Mode};
use crate::normalize::Normalizer;
use crate::play::{play_with_retries, PlayOptions, Unmet};
use crate::scenario::Scenario;
use crate::target::Target;
use crate::transcript::Transcript;

/// The outcome of one case.
#[derive(Debug)]
pub enum Outcome {
    /// Matches the golden transcript.
    Pass,
    /// Differs.
    Fail(Box<Mismatch>),
    /// The target did not meet the scenario's own expectations (`<-`,
    /// `expect-statuses`); the transcript may differ too.
    Unmet {
        /// What was not met, in scenario order.
        unmet: Vec<Unmet>,
        /// The transcript's first difference, if any.
        mismatch: Option<Box<Mismatch>>,
    },
    /// Could not be run (target failed, timeout, …).
    Error(String),
}

/// Plays `scenario` on `target` and compares with the golden file.
pub async fn run_case(
    scenario: &Scenario,
    golden_path: &Path,
    target: &mut dyn Target,
    opts: &PlayOptions,
    mode: Mode,
) -> Outcome {
    match run_case_inner(scenario, golden_path, target, opts, mode).await {
        Ok(o) => o,
        Err(e) => Outcome::Error(format!("{e:#}")),
    }
}

async fn run_case_inner(
    scenario: &Scenario,
    golden_path: &Path,
    target: &mut dyn Target,
    opts: &PlayOptions,
    mode: Mode,
) -> Result<Outcome> {
    let text = std::fs::read_to_string(golden_path)
        .with_context(|| format!("reading {}", golden_path.display()))?;
    let golden =
        Transcript::parse(&text).with_context(|| format!("parsing {}", golden_path.display()))?;
    let played = play_with_retries(scenario, target, opts, 3).await?;
    let an = Normalizer {
        workdirs: target
            .workdir()
            .map(|w| vec![w.display().to_string()])
            .unwrap_or_default(),
    };
    let mismatch = compare(
        &golden,
        &Normalizer::default(),
        &played.transcript,
        &an,
        mode,
    )
    .err();
    Ok(match (played.unmet, mismatch) {
        (unmet, mismatch) if !unmet.is_empty() => Outcome::Unmet { unmet, mismatch },
        (_, Some(m)) => Outcome::Fail(m),
        (_, None) => Outcome::Pass,
    })
}

/// Renders an outcome for humans; `None` for a pass.
pub fn describe_outcome(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Pass => None,
        Outcome::Fail(m) => Some(describe_failure(m)),
        Outcome::Unmet { unmet, mismatch } => {
            let mut s = describe_unmet(unmet);
            if let Some(m) = mismatch {
                s.push_str("and the transcript differs: ");
                s.push_str(&describe_failure(m));
            }
            Some(s)
        }
        Outcome::Error(e) => Some(e.clone()),
    }
}

/// Renders unmet expectations, one block each.
pub fn describe_unmet(unmet: &[Unmet]) -> String {
    let mut s = format!(
        "{} expectation{} of the scenario not met:\n",
        unmet.len(),
        if unmet.len() == 1 { "" } else { "s" }
    );
    for u in unmet {
        s.push_str(&format!("{u}\n"));
    }
    s
}

/// Renders a failure for humans.
pub fn describe_failure(m: &Mismatch) -> String {
    let mut s = format!("first difference at entry {}: {}\n", m.index + 1, m.what);
    if let Some(e) = &m.expected {
        s.push_str(&format!("  expected (real QEMU): {e}\n"));
    }
    if let Some(a) = &m.actual {
        s.push_str(&format!("  actual:               {a}\n"));
    }
    s.push_str(&m.diff);
    s
}
