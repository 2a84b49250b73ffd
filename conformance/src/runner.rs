//! Running golden cases against a target and reporting.

use std::path::Path;

use anyhow::{Context, Result};

use crate::compare::{compare, Mismatch, Mode};
use crate::normalize::Normalizer;
use crate::play::{play_with_retries, PlayOptions};
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
    let actual = play_with_retries(scenario, target, opts, 3).await?;
    let an = Normalizer {
        workdirs: target
            .workdir()
            .map(|w| vec![w.display().to_string()])
            .unwrap_or_default(),
    };
    Ok(
        match compare(&golden, &Normalizer::default(), &actual, &an, mode) {
            Ok(()) => Outcome::Pass,
            Err(m) => Outcome::Fail(m),
        },
    )
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
