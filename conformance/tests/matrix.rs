//! `qmp-conform matrix`: the README's table of differences between QEMU
//! versions is the one the goldens give today, the mock shows the same
//! differences as real QEMU, and (with `QMP_CONFORM_REAL=1` and the real
//! builds) a live run of real QEMU gives the goldens' table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::matrix::{
    build, current_block, discrepancies, discrepancies_markdown, golden_columns, readme_block,
    version_label, Column, Table,
};
use conformance::play::PlayOptions;
use conformance::report::KnownDivergences;
use conformance::suite;
use conformance::target::{InProcess, LaunchSpec, Process};
use mock_qemu::profile::{Flavor, Version};

const REGENERATE: &str =
    "cargo run -q -p conformance --bin qmp-conform -- matrix --from-goldens --markdown --update README.md";

#[test]
fn readme_table_is_current() {
    let fixtures = suite::fixtures_dir();
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("reading README.md");
    let current = current_block(&readme).expect("README.md has the matrix markers");
    let fresh = readme_block(&fixtures, Flavor::Qsd).expect("building the table from goldens");
    if current != fresh {
        let diff = similar::TextDiff::from_lines(current, &fresh)
            .unified_diff()
            .header("README.md", "from the goldens")
            .to_string();
        panic!("README.md's table of differences is stale; regenerate it with\n  {REGENERATE}\n\n{diff}");
    }
}

fn goldens_table(flavor: Flavor) -> (Table, Vec<Version>) {
    let fixtures = suite::fixtures_dir();
    let columns = golden_columns(&fixtures, flavor, &Version::ALL, &[]).expect("goldens");
    let versions = Version::ALL
        .into_iter()
        .filter(|v| columns.iter().any(|c| c.label == version_label(*v)))
        .collect();
    (build(&columns), versions)
}

fn assert_same(expected: &Table, actual: &Table, what: &str) {
    assert_same_except(expected, actual, what, &[]);
}

/// As [`assert_same`], leaving out differences seen only in `excused`
/// cases (the mock's known divergences, listed with a reason in
/// fixtures/known-divergences/mock.txt).
fn assert_same_except(expected: &Table, actual: &Table, what: &str, excused: &[String]) {
    let d: Vec<_> = discrepancies(expected, actual)
        .into_iter()
        .filter(|d| {
            let case = d.seen.split('#').next().unwrap_or_default();
            case.is_empty() || !excused.iter().any(|e| e == case)
        })
        .collect();
    assert!(
        d.is_empty(),
        "{what} shows other differences than the goldens ({} of them):\n{}",
        d.len(),
        discrepancies_markdown(&d, ("goldens", what))
    );
}

/// Runs a test body on a thread with a large stack: a whole suite's play
/// futures are deep in debug builds (the default 2 MiB test thread
/// overflowed in CI once the suites grew).
fn on_big_stack(body: fn()) {
    let t = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(body)
        .expect("spawning the test thread");
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn the_mock_shows_the_same_differences() {
    on_big_stack(the_mock_shows_the_same_differences_body);
}

fn the_mock_shows_the_same_differences_body() {
    let fixtures = suite::fixtures_dir();
    let scenarios = suite::scenarios(&fixtures).expect("scenarios");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for flavor in [Flavor::Qsd, Flavor::System] {
        let (expected, versions) = goldens_table(flavor);
        assert!(
            versions.len() >= 2,
            "goldens of two versions at least ({flavor})"
        );
        let mut columns: Vec<Column> = Vec::new();
        for v in versions {
            let mut target = InProcess::new(v, flavor).expect("mock");
            // Boxed: a whole suite's state is large for a test thread's stack.
            let c = rt
                .block_on(Box::pin(Column::from_target(
                    version_label(v),
                    &mut target,
                    &scenarios,
                    flavor,
                    &[],
                    &PlayOptions::default(),
                    |_| {},
                )))
                .expect("playing against the mock");
            columns.push(c);
        }
        let actual = build(&columns);
        assert!(!expected.rows.is_empty());
        let known = KnownDivergences::load(&fixtures, "mock").expect("known divergences");
        let excused: Vec<String> = scenarios
            .iter()
            .filter(|s| {
                Version::ALL.iter().any(|v| {
                    known
                        .reason(&format!("{}/{flavor}/{}", v.name(), s.id))
                        .is_some()
                })
            })
            .map(|s| s.id.clone())
            .collect();
        assert_same_except(
            &expected,
            &actual,
            &format!("the mock ({flavor})"),
            &excused,
        );
    }
}

/// The real build of a version (the variables `ci/fetch-qemu.sh` prints).
fn real_binary(version: Version) -> Option<PathBuf> {
    let v = version_label(version).replace('.', "_");
    std::env::var_os(format!("QEMU_QSD_{v}"))
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

#[test]
fn a_live_run_of_real_qemu_gives_the_goldens_table() {
    on_big_stack(a_live_run_body);
}

fn a_live_run_body() {
    let (expected, versions) = goldens_table(Flavor::Qsd);
    let builds: Vec<(Version, PathBuf)> = versions
        .iter()
        .filter_map(|&v| Some((v, real_binary(v)?)))
        .collect();
    if std::env::var("QMP_CONFORM_REAL").ok().as_deref() != Some("1")
        || builds.len() != versions.len()
    {
        eprintln!(
            "skipped: needs QMP_CONFORM_REAL=1 and QEMU_QSD_5_2, QEMU_QSD_7_2, QEMU_QSD_10_0"
        );
        return;
    }
    let fixtures = suite::fixtures_dir();
    let scenarios = suite::scenarios(&fixtures).expect("scenarios");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let columns: Vec<Column> = builds
        .iter()
        .map(|(v, bin)| {
            rt.block_on(Box::pin(async {
                let mut t = Process::launch(LaunchSpec::real_qemu(bin, Flavor::Qsd)).await?;
                let opts = PlayOptions {
                    timeout: Duration::from_secs(5),
                    drop_duplicate_greeting: true,
                };
                let c = Column::from_target(
                    version_label(*v),
                    &mut t,
                    &scenarios,
                    Flavor::Qsd,
                    &[],
                    &opts,
                    |_| {},
                )
                .await;
                t.stop().await;
                c
            }))
            .expect("playing against real QEMU")
        })
        .collect();
    assert_same(&expected, &build(&columns), "real QEMU played live");
}
