//! `qmp-conform`: record real QEMU, run scenario suites against any target.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use conformance::compare::Mode;
use conformance::play::PlayOptions;
use conformance::runner::{describe_failure, run_case, Outcome};
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
        /// `mock` (in process, default), `mock-bin:PATH`, `qemu:PATH`, `unix:PATH`, `tcp:HOST:PORT`.
        #[arg(long, default_value = "mock")]
        target: String,
        /// Profile(s) whose goldens to use: `qemu-10.0`, … or `all`.
        #[arg(long, default_value = "all")]
        profile: String,
        /// Flavor(s): `qsd`, `system` or `all`.
        #[arg(long, default_value = "all")]
        flavor: String,
        /// Only cases whose id contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// List the cases without running them.
        #[arg(long)]
        list: bool,
    },
    /// Launch a real QEMU, record its profile data and every scenario's transcript.
    Record {
        /// The QEMU binary (qemu-storage-daemon or qemu-system-x86_64).
        #[arg(long)]
        qemu: PathBuf,
        /// `qsd` or `system` (default: from the binary's name).
        #[arg(long)]
        flavor: Option<String>,
    },
}

fn parse_list<T: std::str::FromStr>(s: &str, all: &[T]) -> Result<Vec<T>>
where
    T: Copy,
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
        Cmd::Record { qemu, flavor } => {
            let name = qemu
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let flavor: Flavor = match flavor {
                Some(f) => f.parse()?,
                None if name.contains("qemu-system") => Flavor::System,
                None => Flavor::Qsd,
            };
            let scenarios = suite::scenarios(&fixtures)?;
            let (id, n) =
                conformance::record::record_all(&qemu, flavor, &scenarios, &fixtures).await?;
            println!(
                "recorded {n} transcripts and the profile of {} into {}",
                id.describe,
                suite::profile_dir(&fixtures, id.version, flavor).display()
            );
            Ok(true)
        }
        Cmd::Run {
            target,
            profile,
            flavor,
            filter,
            list,
        } => {
            let versions = parse_list::<Version>(&profile, &Version::ALL)?;
            let flavors = parse_list::<Flavor>(&flavor, &[Flavor::Qsd, Flavor::System])?;
            run(
                &fixtures,
                &target,
                &versions,
                &flavors,
                filter.as_deref(),
                list,
            )
            .await
        }
    }
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

async fn run(
    fixtures: &std::path::Path,
    target_spec: &str,
    versions: &[Version],
    flavors: &[Flavor],
    filter: Option<&str>,
    list: bool,
) -> Result<bool> {
    let scenarios = suite::scenarios(fixtures)?;
    let (mut passed, mut failed) = (0usize, 0usize);
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    for &(version, flavor) in suite::recorded_profiles(fixtures)
        .iter()
        .filter(|(v, f)| versions.contains(v) && flavors.contains(f))
    {
        let cases: Vec<_> = suite::goldens(fixtures, version, flavor)?
            .into_iter()
            .filter(|(id, _)| filter.is_none_or(|f| id.contains(f)))
            .collect();
        if cases.is_empty() {
            continue;
        }
        writeln!(
            out,
            "== {version}/{flavor}: {} cases against {target_spec}",
            cases.len()
        )?;
        if list {
            for (id, _) in &cases {
                writeln!(out, "  {id}")?;
            }
            continue;
        }
        let (mut target, opts) = make_target(target_spec, version, flavor).await?;
        let mode = if target_spec == "mock" || target_spec.starts_with("mock-bin:") {
            Mode::Bytes
        } else {
            Mode::Json
        };
        for (id, golden) in cases {
            let Some(s) = scenarios.iter().find(|s| s.id == id) else {
                writeln!(out, "  FAIL {id}: golden transcript has no scenario file")?;
                failed += 1;
                continue;
            };
            target.restart().await.context("restarting the target")?;
            match run_case(s, &golden, target.as_mut(), &opts, mode).await {
                Outcome::Pass => {
                    passed += 1;
                    writeln!(out, "  ok   {id}")?;
                }
                Outcome::Fail(m) => {
                    failed += 1;
                    writeln!(
                        out,
                        "  FAIL {id}: {}\n{}",
                        s.description,
                        indent(&describe_failure(&m))
                    )?;
                }
                Outcome::Error(e) => {
                    failed += 1;
                    writeln!(out, "  FAIL {id}: {e}")?;
                }
            }
        }
    }
    writeln!(
        out,
        "\nqmp-conform: {target_spec} in {:.2}s",
        started.elapsed().as_secs_f64()
    )?;
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(failed == 0)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("       {l}\n")).collect()
}
