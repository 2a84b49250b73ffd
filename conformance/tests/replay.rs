//! Replays every golden transcript under `fixtures/` (recorded from real
//! QEMU) against mock-qemu with the matching profile: one trial per
//! (profile, case, target).
//!
//! Targets:
//! - `mock`: mock-qemu in this process, compared byte for byte (framing,
//!   separators, escapes, member order) after normalization;
//! - `mock-bin`: the mock-qemu binary, launched as a launcher would;
//! - `qemu`: the real QEMU binary of that profile, compared as JSON. These
//!   trials run when `QMP_CONFORM_REAL=1` and the binary is known (the
//!   variables `ci/fetch-qemu.sh` prints: `QEMU_QSD_10_0`, `QEMU_SYS_7_2`, …);
//!   otherwise they are listed as ignored. They catch a fixture that no
//!   longer matches real QEMU.
//!
//! A difference is a mock bug (or a changed QEMU), never a fixture to edit.
//! A case listed in `fixtures/known-divergences/<mock|qemu>.txt` passes
//! when it differs (the reason is on the list) and fails once it stops
//! differing, so the lists only shrink (as `qmp-conform run` does).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conformance::compare::Mode;
use conformance::play::PlayOptions;
use conformance::report::KnownDivergences;
use conformance::runner::{describe_failure, describe_outcome, run_case, Outcome};
use conformance::scenario::Scenario;
use conformance::suite;
use conformance::target::{InProcess, LaunchSpec, Process, Target};
use libtest_mimic::{Arguments, Failed, Trial};
use mock_qemu::profile::{Flavor, Version};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mock,
    MockBin,
    Qemu,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Mock => "mock",
            Kind::MockBin => "mock-bin",
            Kind::Qemu => "qemu",
        }
    }
}

/// The variable naming the real binary of a profile (see ci/fetch-qemu.sh).
fn real_binary(version: Version, flavor: Flavor) -> Option<PathBuf> {
    let v = match version {
        Version::V5_2 => "5_2",
        Version::V7_2 => "7_2",
        Version::V10_0 => "10_0",
    };
    let f = match flavor {
        Flavor::Qsd => "QSD",
        Flavor::System => "SYS",
    };
    std::env::var_os(format!("QEMU_{f}_{v}"))
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

fn run(
    kind: Kind,
    version: Version,
    flavor: Flavor,
    scenario: &Scenario,
    golden: &Path,
) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (mut target, mode, opts): (Box<dyn Target>, Mode, PlayOptions) = match kind {
            Kind::Mock => (
                Box::new(InProcess::new(version, flavor).map_err(|e| format!("{e:#}"))?),
                Mode::Bytes,
                PlayOptions::default(),
            ),
            Kind::MockBin => {
                let spec = LaunchSpec::mock_binary(
                    &conformance::target::built_mock_binary()?,
                    version,
                    flavor,
                );
                (
                    Box::new(Process::launch(spec).await.map_err(|e| format!("{e:#}"))?),
                    Mode::Bytes,
                    PlayOptions::default(),
                )
            }
            Kind::Qemu => {
                let bin = real_binary(version, flavor).ok_or("no real binary")?;
                let spec = LaunchSpec::real_qemu(&bin, flavor);
                let opts = PlayOptions {
                    drop_duplicate_greeting: true,
                    ..PlayOptions::default()
                };
                (
                    Box::new(Process::launch(spec).await.map_err(|e| format!("{e:#}"))?),
                    Mode::Json,
                    opts,
                )
            }
        };
        let outcome = run_case(scenario, golden, target.as_mut(), &opts, mode).await;
        match outcome {
            Outcome::Pass => Ok(()),
            Outcome::Fail(m) => Err(format!(
                "{} differs from real QEMU ({}):\n{}",
                target.describe(),
                golden.display(),
                describe_failure(&m)
            )
            .into()),
            Outcome::Unmet { .. } => Err(format!(
                "{}: {}",
                target.describe(),
                describe_outcome(&outcome).unwrap_or_default()
            )
            .into()),
            Outcome::Error(e) => Err(format!("{}: {e}", target.describe()).into()),
        }
    })
}

fn main() {
    let args = Arguments::from_args();
    let fixtures = suite::fixtures_dir();
    let scenarios: Arc<Vec<Scenario>> =
        Arc::new(suite::scenarios(&fixtures).expect("reading scenarios"));
    let real = std::env::var("QMP_CONFORM_REAL").is_ok_and(|v| v == "1");
    let known_mock =
        Arc::new(KnownDivergences::load(&fixtures, "mock").expect("reading known divergences"));
    let known_qemu =
        Arc::new(KnownDivergences::load(&fixtures, "qemu").expect("reading known divergences"));
    let mut trials = Vec::new();
    let profiles = suite::recorded_profiles(&fixtures);
    assert!(
        profiles.len() >= 3,
        "expected recorded profiles for 5.2, 7.2 and 10.0 under {}",
        fixtures.display()
    );
    for (version, flavor) in profiles {
        let goldens = suite::goldens(&fixtures, version, flavor).expect("listing goldens");
        for (id, golden) in goldens {
            let idx = scenarios.iter().position(|s| s.id == id);
            let id = Arc::new(id);
            for kind in [Kind::Mock, Kind::MockBin, Kind::Qemu] {
                let name = format!("{}/{flavor}/{id}@{}", version.name(), kind.name());
                let known = match kind {
                    Kind::Mock | Kind::MockBin => &known_mock,
                    Kind::Qemu => &known_qemu,
                };
                let listed = known
                    .reason(&format!("{}/{flavor}/{id}", version.name()))
                    .map(str::to_owned);
                let list = match kind {
                    Kind::Mock | Kind::MockBin => "mock",
                    Kind::Qemu => "qemu",
                };
                let scenarios = Arc::clone(&scenarios);
                let golden = golden.clone();
                let id = Arc::clone(&id);
                let ignored =
                    matches!(kind, Kind::Qemu) && !(real && real_binary(version, flavor).is_some());
                let trial = Trial::test(name, move || {
                    // A golden without its scenario is an orphan: re-record or delete it.
                    let i = idx.ok_or_else(|| {
                        format!("golden {} has no scenario {id}.qmp", golden.display())
                    })?;
                    let result = run(kind, version, flavor, &scenarios[i], &golden);
                    match (result, &listed) {
                        (result, None) => result,
                        // A known divergence: differing is expected.
                        (Err(_), Some(_)) => Ok(()),
                        (Ok(()), Some(reason)) => Err(format!(
                            "listed as a known divergence ({reason}) but passes: remove it from fixtures/known-divergences/{list}.txt"
                        )
                        .into()),
                    }
                })
                .with_kind(kind.name())
                .with_ignored_flag(ignored);
                trials.push(trial);
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
