//! `qmp-conform`: record real QEMU, run scenario suites against any target,
//! check QMP clients (`client`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use conformance::client::{self, CheckOptions, ClientUnderTest};
use conformance::compare::Mode;
use conformance::matrix::{
    build, discrepancies, discrepancies_markdown, golden_columns, replace_block, version_label,
    Column, README_BEGIN, README_END,
};
use conformance::play::PlayOptions;
use conformance::report::{write_json, write_junit, CaseResult, KnownDivergences, Verdict};
use conformance::runner::{describe_outcome, run_case, Outcome};
use conformance::suite;
use conformance::target::{InProcess, LaunchSpec, Process, Socket, Target};
use mock_qemu::profile::{Flavor, Version};

#[derive(Parser, Debug)]
#[command(
    name = "qmp-conform",
    about = "QMP conformance: record real QEMU, replay against any target"
)]
struct Cli {
    /// The fixtures folder (default: the repository's).
    #[arg(long, global = true)]
    fixtures: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Play the recorded cases against a target and compare with the goldens.
    Run {
        /// mock | mock-bin:PATH | qemu:PATH | unix:PATH | tcp:HOST:PORT
        #[arg(long, default_value = "mock")]
        target: String,
        /// qemu-5.2,qemu-7.2,qemu-10.0 or all
        #[arg(long, default_value = "all")]
        profile: String,
        /// qsd,system or all
        #[arg(long, default_value = "all")]
        flavor: String,
        /// Only cases whose `profile/flavor/suite/case` contains this (repeatable).
        #[arg(long)]
        filter: Vec<String>,
        /// Leave out cases whose `profile/flavor/suite/case` contains this (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
        /// Run the K-th of N shares of the selected cases (CI sharding).
        #[arg(long, value_name = "K/N")]
        partition: Option<String>,
        /// List the selected cases without running them.
        #[arg(long)]
        list: bool,
        /// Also write a JUnit XML report.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Also write a JSON report.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Play QEMU's side for a QMP client and judge it, one case per
    /// `fixtures/clients/*.txt` (see README, "Checking a client").
    Client {
        /// Run this shell command once per case; `{socket}` becomes the path
        /// of a fresh unix socket (also in $QMP_CONFORM_SOCKET).
        #[arg(long, value_name = "CMD", conflicts_with = "listen")]
        exec: Option<String>,
        /// Listen on this unix socket instead; the client connects once per case.
        #[arg(long, value_name = "PATH")]
        listen: Option<PathBuf>,
        /// The impersonated QEMU: qemu-5.2, qemu-7.2, qemu-10.0.
        #[arg(long, default_value = "qemu-10.0")]
        profile: String,
        /// qsd or system.
        #[arg(long, default_value = "qsd")]
        flavor: String,
        /// Only cases whose id contains this (repeatable).
        #[arg(long)]
        filter: Vec<String>,
        /// Longest one case may take, in seconds (a timeout fails the case).
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        timeout: f64,
        /// While a job runs, move the virtual clock by a second this often.
        #[arg(long, default_value_t = 100, value_name = "MS")]
        tick_ms: u64,
        /// List the selected cases without running them.
        #[arg(long)]
        list: bool,
        /// Write each case's wire log (what went each way) into this folder.
        #[arg(long, value_name = "DIR")]
        wire_log: Option<PathBuf>,
        /// Also write a JUnit XML report.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Also write a JSON report.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Play the scenarios against several QEMU versions (or take their
    /// goldens) and print the behaviours that differ between them.
    Matrix {
        /// A real QEMU build: `[FLAVOR-]VERSION=PATH` (`qsd-5.2=/path/to/qemu-storage-daemon`),
        /// repeatable. Default: $QEMU_QSD_5_2, $QEMU_QSD_7_2, $QEMU_QSD_10_0
        /// (`QEMU_SYS_*` with `--flavor system`), those that are set.
        #[arg(long, value_name = "[FLAVOR-]VERSION=PATH")]
        qemu: Vec<String>,
        /// Build the table from the recorded profiles and golden transcripts
        /// instead: nothing is launched (fast, deterministic).
        #[arg(long, conflicts_with = "qemu")]
        from_goldens: bool,
        /// qsd or system.
        #[arg(long, default_value = "qsd")]
        flavor: String,
        /// Versions for --from-goldens and --mock: qemu-5.2,qemu-7.2,qemu-10.0 or all.
        #[arg(long, default_value = "all")]
        profile: String,
        /// Also play every scenario against the mock with the same versions'
        /// profiles and compare its table with this one (exit status 1 when
        /// the mock shows different differences).
        #[arg(long)]
        mock: bool,
        /// Only scenarios whose id contains this (repeatable).
        #[arg(long)]
        filter: Vec<String>,
        /// Print markdown instead of aligned text.
        #[arg(long)]
        markdown: bool,
        /// Write the markdown table into FILE between its
        /// `<!-- qmp-conform matrix: … -->` markers (the README's copy).
        #[arg(long, value_name = "FILE")]
        update: Option<PathBuf>,
    },
    /// Launch a real QEMU, record its profile data and every scenario's transcript.
    Record {
        /// The QEMU binary (qemu-storage-daemon or qemu-system-x86_64).
        #[arg(long)]
        qemu: PathBuf,
        /// `qsd` or `system` (default: from the binary's name).
        #[arg(long)]
        flavor: Option<String>,
        /// Record only scenarios whose id contains one of these (the
        /// profile is always re-recorded); others' transcripts stay as they are.
        #[arg(long)]
        filter: Vec<String>,
    },
}

fn parse_list<T>(s: &str, all: &[T]) -> Result<Vec<T>>
where
    T: Copy + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    if s == "all" {
        return Ok(all.to_vec());
    }
    s.split(',')
        .map(|x| x.parse::<T>().map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qmp-conform: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("qmp-conform: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn real_main(cli: Cli) -> Result<bool> {
    let fixtures = cli.fixtures.unwrap_or_else(suite::fixtures_dir);
    match cli.cmd {
        Cmd::Record {
            qemu,
            flavor,
            filter,
        } => {
            let name = qemu
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let flavor: Flavor = match flavor {
                Some(f) => f.parse()?,
                None if name.contains("qemu-system") => Flavor::System,
                None => Flavor::Qsd,
            };
            let mut scenarios = suite::scenarios(&fixtures)?;
            if !filter.is_empty() {
                scenarios.retain(|s| filter.iter().any(|f| s.id.contains(f.as_str())));
            }
            let (id, n) =
                conformance::record::record_all(&qemu, flavor, &scenarios, &fixtures).await?;
            println!(
                "recorded {n} transcripts and the profile of {} into {}",
                id.describe,
                suite::profile_dir(&fixtures, id.version, flavor).display()
            );
            Ok(true)
        }
        Cmd::Matrix {
            qemu,
            from_goldens,
            flavor,
            profile,
            mock,
            filter,
            markdown,
            update,
        } => {
            let o = MatrixOptions {
                qemu,
                from_goldens,
                flavor: flavor.parse()?,
                versions: parse_list::<Version>(&profile, &Version::ALL)?,
                mock,
                filters: filter,
                markdown,
                update,
            };
            matrix(&fixtures, &o).await
        }
        Cmd::Client {
            exec,
            listen,
            profile,
            flavor,
            filter,
            timeout,
            tick_ms,
            list,
            wire_log,
            junit,
            json,
        } => {
            let client = match (exec, listen) {
                _ if list => None,
                (Some(c), None) => Some(ClientUnderTest::Exec(c)),
                (None, Some(p)) => Some(ClientUnderTest::Listen(p)),
                _ => bail!("qmp-conform client needs --exec CMD or --listen PATH"),
            };
            if !(timeout > 0.0 && timeout.is_finite()) {
                bail!("--timeout needs a positive number of seconds");
            }
            let opts = CheckOptions {
                version: profile.parse()?,
                flavor: flavor.parse()?,
                timeout: Duration::from_secs_f64(timeout),
                tick: Duration::from_millis(tick_ms.max(1)),
                wire_log,
            };
            check_client(&fixtures, client.as_ref(), &opts, &filter, junit, json).await
        }
        Cmd::Run {
            target,
            profile,
            flavor,
            filter,
            exclude,
            partition,
            list,
            junit,
            json,
        } => {
            let o = RunOptions {
                target: &target,
                versions: parse_list::<Version>(&profile, &Version::ALL)?,
                flavors: parse_list::<Flavor>(&flavor, &[Flavor::Qsd, Flavor::System])?,
                filters: filter,
                excludes: exclude,
                partition: partition.as_deref().map(parse_partition).transpose()?,
                list,
                junit,
                json,
            };
            run(&fixtures, &o).await
        }
    }
}

/// Mock targets played at once by `qmp-conform run`.
const MOCK_WORKERS: usize = 4;

/// Plays the cases on `workers` targets of each profile at once; returns
/// each case's outcome by its index in `all`.
async fn play_concurrently(
    all: &[(Version, Flavor, String, std::path::PathBuf)],
    scenarios: &[conformance::scenario::Scenario],
    spec: &str,
    workers: usize,
) -> Result<std::collections::BTreeMap<usize, Outcome>> {
    let mut out = std::collections::BTreeMap::new();
    let mut profiles: Vec<(Version, Flavor)> = Vec::new();
    for (v, f, _, _) in all {
        if !profiles.contains(&(*v, *f)) {
            profiles.push((*v, *f));
        }
    }
    for (version, flavor) in profiles {
        let cases: Vec<(usize, conformance::scenario::Scenario, std::path::PathBuf)> = all
            .iter()
            .enumerate()
            .filter(|(_, (v, f, _, _))| (*v, *f) == (version, flavor))
            .filter_map(|(i, (_, _, id, golden))| {
                let s = scenarios.iter().find(|s| &s.id == id)?;
                Some((i, s.clone(), golden.clone()))
            })
            .collect();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (mut target, opts) = make_target(spec, version, flavor).await?;
            let mine: Vec<_> = cases.iter().skip(w).step_by(workers).cloned().collect();
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for (i, s, golden) in mine {
                    let outcome = match target.restart().await {
                        Ok(()) => run_case(&s, &golden, target.as_mut(), &opts, Mode::Bytes).await,
                        Err(e) => Outcome::Error(format!("restarting the target: {e:#}")),
                    };
                    done.push((i, outcome));
                }
                done
            }));
        }
        for t in tasks {
            out.extend(t.await.context("a worker stopped")?);
        }
    }
    Ok(out)
}

async fn make_target(
    spec: &str,
    version: Version,
    flavor: Flavor,
) -> Result<(Box<dyn Target>, PlayOptions)> {
    let quick = PlayOptions {
        timeout: Duration::from_secs(5),
        drop_duplicate_greeting: false,
    };
    let real = PlayOptions {
        timeout: Duration::from_secs(5),
        drop_duplicate_greeting: true,
    };
    Ok(if spec == "mock" {
        (Box::new(InProcess::new(version, flavor)?), quick)
    } else if let Some(p) = spec.strip_prefix("mock-bin:") {
        (
            Box::new(Process::launch(LaunchSpec::mock_binary(p.as_ref(), version, flavor)).await?),
            quick,
        )
    } else if let Some(p) = spec.strip_prefix("qemu:") {
        (
            Box::new(Process::launch(LaunchSpec::real_qemu(p.as_ref(), flavor)).await?),
            real,
        )
    } else if let Some(p) = spec.strip_prefix("unix:") {
        (Box::new(Socket::Unix(p.into())), real)
    } else if let Some(a) = spec.strip_prefix("tcp:") {
        (Box::new(Socket::Tcp(a.into())), real)
    } else {
        bail!("unknown target '{spec}' (mock, mock-bin:PATH, qemu:PATH, unix:PATH, tcp:HOST:PORT)")
    })
}

/// What `qmp-conform run` was asked to do.
struct RunOptions<'a> {
    target: &'a str,
    versions: Vec<Version>,
    flavors: Vec<Flavor>,
    filters: Vec<String>,
    excludes: Vec<String>,
    partition: Option<(usize, usize)>,
    list: bool,
    junit: Option<PathBuf>,
    json: Option<PathBuf>,
}

fn parse_partition(s: &str) -> Result<(usize, usize)> {
    let (k, n) = s.split_once('/').context("--partition takes K/N")?;
    let (k, n): (usize, usize) = (k.parse()?, n.parse()?);
    if n == 0 || k == 0 || k > n {
        bail!("--partition K/N needs 1 <= K <= N");
    }
    Ok((k, n))
}

async fn run(fixtures: &std::path::Path, o: &RunOptions<'_>) -> Result<bool> {
    let scenarios = suite::scenarios(fixtures)?;
    let kind = if o.target == "mock" || o.target.starts_with("mock-bin:") {
        "mock"
    } else {
        "qemu"
    };
    let known = KnownDivergences::load(fixtures, kind)?;
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut results: Vec<CaseResult> = Vec::new();
    // Every case of every selected profile, filtered, then this partition's share.
    let mut all = Vec::new();
    for &(version, flavor) in suite::recorded_profiles(fixtures)
        .iter()
        .filter(|(v, f)| o.versions.contains(v) && o.flavors.contains(f))
    {
        for (id, golden) in suite::goldens(fixtures, version, flavor)? {
            let full = format!("{}/{flavor}/{id}", version.name());
            let included =
                o.filters.is_empty() || o.filters.iter().any(|f| full.contains(f.as_str()));
            let excluded = o.excludes.iter().any(|x| full.contains(x.as_str()));
            if included && !excluded {
                all.push((version, flavor, id, golden));
            }
        }
    }
    if let Some((k, n)) = o.partition {
        all = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n == k - 1)
            .map(|(_, c)| c)
            .collect();
    }
    let total = all.len();
    // The mock is many independent cases: play them on a few targets at
    // once (setup steps wait on qemu-img), then report in order.
    let mut precomputed: std::collections::BTreeMap<usize, Outcome> =
        std::collections::BTreeMap::new();
    if kind == "mock" && !o.list {
        precomputed = play_concurrently(&all, &scenarios, o.target, MOCK_WORKERS).await?;
    }
    let mut current: Option<(Box<dyn Target>, PlayOptions, Mode)> = None;
    let mut last: Option<(Version, Flavor)> = None;
    for (n, (version, flavor, id, golden)) in all.into_iter().enumerate() {
        let profile = format!("{}/{flavor}", version.name());
        if last != Some((version, flavor)) {
            last = Some((version, flavor));
            writeln!(out, "== {profile} against {}", o.target)?;
            if !o.list {
                let (t, opts) = make_target(o.target, version, flavor).await?;
                let mode = if kind == "mock" {
                    Mode::Bytes
                } else {
                    Mode::Json
                };
                current = Some((t, opts, mode));
            }
        }
        if o.list {
            writeln!(out, "  {id}")?;
            continue;
        }
        let Some((target, opts, mode)) = current.as_mut() else {
            continue;
        };
        let case_started = Instant::now();
        let scenario = scenarios.iter().find(|s| s.id == id);
        let outcome = match (precomputed.remove(&n), scenario) {
            (Some(o), _) => o,
            (None, None) => Outcome::Error("golden transcript has no scenario file".into()),
            (None, Some(s)) => match target.restart().await {
                Ok(()) => run_case(s, &golden, target.as_mut(), opts, *mode).await,
                Err(e) => Outcome::Error(format!("restarting the target: {e:#}")),
            },
        };
        let failure = describe_outcome(&outcome);
        let listed = known.reason(&format!("{profile}/{id}"));
        let verdict = match (failure, listed) {
            (None, None) => Verdict::Pass,
            (Some(d), None) => Verdict::Fail(d),
            (Some(_), Some(r)) => Verdict::KnownFail(r.to_owned()),
            (None, Some(r)) => Verdict::UnexpectedPass(format!(
                "listed as a known divergence ({r}) but passes: remove it from fixtures/known-divergences/{kind}.txt"
            )),
        };
        let description = scenario.map(|s| s.description.clone()).unwrap_or_default();
        match &verdict {
            Verdict::Pass => writeln!(out, "  ok   {id}")?,
            Verdict::KnownFail(r) => writeln!(out, "  known {id}: {r}")?,
            Verdict::Skipped(r) => writeln!(out, "  skip {id}: {r}")?,
            Verdict::Fail(d) | Verdict::UnexpectedPass(d) => {
                writeln!(out, "  FAIL {id}: {description}\n{}", indent(d))?
            }
        }
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r[{}/{total}] {profile} {id}\x1b[K", n + 1);
        }
        results.push(CaseResult {
            profile,
            id,
            description,
            checks: scenario.map(|s| s.checks.clone()).unwrap_or_default(),
            verdict,
            time: case_started.elapsed(),
        });
    }
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r\x1b[K");
    }
    if o.list {
        return Ok(true);
    }
    let failed = results.iter().filter(|r| r.verdict.fails_run()).count();
    let known_n = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::KnownFail(_)))
        .count();
    writeln!(
        out,
        "\nqmp-conform: {} in {:.2}s",
        o.target,
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "{} passed, {failed} failed, {known_n} known divergences",
        results.len() - failed - known_n
    )?;
    if let Some(p) = &o.junit {
        write_junit(p, o.target, &results)?;
    }
    if let Some(p) = &o.json {
        write_json(p, o.target, &results)?;
    }
    Ok(failed == 0)
}

/// `qmp-conform client`: the selected client checks, a human report, and
/// the JUnit/JSON files; no client: list the cases.
async fn check_client(
    fixtures: &std::path::Path,
    client: Option<&ClientUnderTest>,
    opts: &CheckOptions,
    filters: &[String],
    junit: Option<PathBuf>,
    json: Option<PathBuf>,
) -> Result<bool> {
    let cases: Vec<_> = client::cases(fixtures)?
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.id.contains(f.as_str())))
        .collect();
    let mut out = std::io::stdout().lock();
    let Some(client) = client else {
        // --list
        for c in &cases {
            writeln!(out, "  {}: {}", c.id, c.description)?;
        }
        return Ok(true);
    };
    let target = client.describe();
    let profile = format!("{}/{}", opts.version.name(), opts.flavor);
    writeln!(out, "== client checks ({profile}) against {target}")?;
    if let ClientUnderTest::Listen(p) = client {
        writeln!(
            out,
            "   listening on {}: connect the client once per case ({} cases)",
            p.display(),
            cases.len()
        )?;
    }
    out.flush()?;
    let started = Instant::now();
    let results = client::run_checks(&cases, client, opts, |r| {
        let id = &r.id;
        let secs = r.time.as_secs_f64();
        let _ = match &r.verdict {
            Verdict::Pass => writeln!(out, "  ok   {id} ({secs:.2}s)"),
            Verdict::Skipped(why) => writeln!(out, "  skip {id}: {why}"),
            Verdict::Fail(why) | Verdict::KnownFail(why) | Verdict::UnexpectedPass(why) => {
                write!(out, "  FAIL {id}: {}\n{}", r.description, indent(why))
            }
        };
        let _ = out.flush();
    })
    .await?;
    let failed = results.iter().filter(|r| r.verdict.fails_run()).count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Skipped(_)))
        .count();
    writeln!(
        out,
        "\nqmp-conform client: {target} in {:.2}s",
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        out,
        "{} passed, {failed} failed, {skipped} skipped",
        results.len() - failed - skipped
    )?;
    if let Some(p) = &junit {
        write_junit(p, &target, &results)?;
    }
    if let Some(p) = &json {
        write_json(p, &target, &results)?;
    }
    Ok(failed == 0)
}

/// A failure's text for the human report: indented, and on a terminal
/// (unless `NO_COLOR` is set) the diff's lines coloured as `git diff` does
/// (golden red, actual green, hunk headers cyan).
fn indent(s: &str) -> String {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    s.lines()
        .map(|l| {
            let code = match l.as_bytes().first() {
                _ if !colour || l.starts_with("---") || l.starts_with("+++") => None,
                Some(b'-') => Some("31"),
                Some(b'+') => Some("32"),
                Some(b'@') => Some("36"),
                _ => None,
            };
            match code {
                Some(c) => format!("       \x1b[{c}m{l}\x1b[0m\n"),
                None => format!("       {l}\n"),
            }
        })
        .collect()
}

/// What `qmp-conform matrix` was asked to do.
struct MatrixOptions {
    qemu: Vec<String>,
    from_goldens: bool,
    flavor: Flavor,
    versions: Vec<Version>,
    mock: bool,
    filters: Vec<String>,
    markdown: bool,
    update: Option<PathBuf>,
}

/// `--qemu [FLAVOR-]VERSION=PATH`.
fn parse_qemu_arg(arg: &str, flavor: Flavor) -> Result<(Version, PathBuf)> {
    let (label, path) = arg
        .split_once('=')
        .with_context(|| format!("--qemu {arg}: expected [FLAVOR-]VERSION=PATH"))?;
    let (f, v) = match label.rsplit_once('-') {
        Some((f, v)) if f != "qemu" => (Some(f), v),
        _ => (None, label),
    };
    if let Some(f) = f {
        let f: Flavor = if f == "sys" {
            Flavor::System
        } else {
            f.parse()?
        };
        if f != flavor {
            bail!("--qemu {arg}: a {f} build, but the matrix is of --flavor {flavor}");
        }
    }
    Ok((v.parse()?, PathBuf::from(path)))
}

/// The real builds to play: `--qemu`, else the `QEMU_*` variables of
/// `ci/fetch-qemu.sh` that are set.
fn real_builds(o: &MatrixOptions) -> Result<Vec<(Version, PathBuf)>> {
    if !o.qemu.is_empty() {
        return o.qemu.iter().map(|a| parse_qemu_arg(a, o.flavor)).collect();
    }
    let f = match o.flavor {
        Flavor::Qsd => "QSD",
        Flavor::System => "SYS",
    };
    let builds: Vec<(Version, PathBuf)> = o
        .versions
        .iter()
        .filter_map(|&v| {
            let var = format!("QEMU_{f}_{}", version_label(v).replace('.', "_"));
            std::env::var_os(var).map(|p| (v, PathBuf::from(p)))
        })
        .collect();
    if builds.len() < 2 {
        bail!(
            "qmp-conform matrix needs two builds or more: --qemu {}-VERSION=PATH (repeated), the QEMU_{f}_* variables of ci/fetch-qemu.sh, or --from-goldens",
            o.flavor
        );
    }
    Ok(builds)
}

async fn matrix(fixtures: &std::path::Path, o: &MatrixOptions) -> Result<bool> {
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |label: String| {
        move |what: &str| {
            if what.contains("expectation not met") {
                eprintln!("{}note: {what}", if tty { "\r\x1b[K" } else { "" });
            } else if tty {
                eprint!("\r{label}: {what}\x1b[K");
            }
        }
    };
    let scenarios = suite::scenarios(fixtures)?;
    let (columns, source, versions) = if o.from_goldens {
        let c = golden_columns(fixtures, o.flavor, &o.versions, &o.filters)?;
        let v: Vec<Version> = o
            .versions
            .iter()
            .copied()
            .filter(|v| suite::recorded_profiles(fixtures).contains(&(*v, o.flavor)))
            .collect();
        (
            c,
            "the recorded golden transcripts and profiles".to_owned(),
            v,
        )
    } else {
        let mut columns = Vec::new();
        let mut versions = Vec::new();
        let mut names = Vec::new();
        for (v, path) in real_builds(o)? {
            let label = version_label(v);
            let mut t = Process::launch(LaunchSpec::real_qemu(&path, o.flavor)).await?;
            let opts = PlayOptions {
                timeout: Duration::from_secs(5),
                drop_duplicate_greeting: true,
            };
            let c = Column::from_target(
                label,
                &mut t,
                &scenarios,
                o.flavor,
                &o.filters,
                &opts,
                progress(label.to_owned()),
            )
            .await?;
            t.stop().await;
            columns.push(c);
            versions.push(v);
            names.push(path.display().to_string());
        }
        (
            columns,
            format!("live runs of {}", names.join(", ")),
            versions,
        )
    };
    if tty {
        eprint!("\r\x1b[K");
    }
    if columns.len() < 2 {
        bail!(
            "nothing to compare: fewer than two builds of flavor {}",
            o.flavor
        );
    }
    let table = build(&columns);
    let mut out = std::io::stdout().lock();
    let flavor = o.flavor;
    if o.markdown {
        writeln!(out, "## QMP differences between QEMU versions ({flavor})\n")?;
        writeln!(out, "From {source}.\n")?;
        out.write_all(table.markdown().as_bytes())?;
    } else {
        writeln!(
            out,
            "QMP differences between QEMU versions ({flavor}), from {source}\n"
        )?;
        out.write_all(table.text().as_bytes())?;
    }
    let mut ok = true;
    if o.mock {
        let mut mock = Vec::new();
        for &v in &versions {
            let label = version_label(v);
            let mut t = InProcess::new(v, o.flavor)?;
            let c = Column::from_target(
                label,
                &mut t,
                &scenarios,
                o.flavor,
                &o.filters,
                &PlayOptions::default(),
                progress(format!("mock {label}")),
            )
            .await?;
            mock.push(c);
        }
        if tty {
            eprint!("\r\x1b[K");
        }
        let mock_table = build(&mock);
        let d = discrepancies(&table, &mock_table);
        let places: usize = table.rows.iter().map(|r| r.seen.len().max(1)).sum();
        let head = "mock-qemu (in process, the same versions' profiles) against this table";
        if o.markdown {
            writeln!(out, "## {head}\n")?;
        } else {
            writeln!(out, "== {head}")?;
        }
        if d.is_empty() {
            writeln!(
                out,
                "The mock shows the same differences: {} rows, {places} observations.",
                table.rows.len()
            )?;
        } else {
            ok = false;
            writeln!(
                out,
                "The mock differs in {} of {places} observations:\n",
                d.len()
            )?;
            out.write_all(discrepancies_markdown(&d, ("real", "mock")).as_bytes())?;
        }
    }
    if let Some(path) = &o.update {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let block = format!("{README_BEGIN}\n{}{README_END}", table.markdown());
        let new = replace_block(&text, &block).with_context(|| format!("in {}", path.display()))?;
        if new != text {
            std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("qmp-conform matrix: table written into {}", path.display());
    }
    eprintln!(
        "qmp-conform matrix: {} rows over {} builds in {:.2}s",
        table.rows.len(),
        columns.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}
