//! Recording from real QEMU: golden transcripts and profile data
//! (including `int-kinds.json`, probed: see [`crate::probe`]).
//!
//! This is the only code that writes under `fixtures/qemu-*/`. It never
//! records from mock-qemu: [`record_all`] refuses a mock target.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mock_qemu::profile::{Flavor, Version};
use mock_qemu::qmp::schema::Schema;

use crate::normalize::Normalizer;
use crate::play::{play_with_retries, LineReader, PlayOptions};
use crate::probe::{probe_int_kinds, IntKinds};
use crate::scenario::Scenario;
use crate::suite::profile_dir;
use crate::target::{LaunchSpec, Process, Target};
use crate::transcript::Entry;

/// What a recording session found out about its QEMU.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Version tag (`qemu-10.0`).
    pub version: Version,
    /// `qemu-storage-daemon 10.0.2 (Debian …)`.
    pub describe: String,
    /// `query-qmp-schema`'s return value.
    pub schema: serde_json::Value,
}

/// Sends a command without arguments and returns its reply line (events
/// and a repeated greeting are skipped).
pub(crate) async fn exchange(
    r: &mut LineReader<tokio::io::ReadHalf<crate::target::BoxedStream>>,
    w: &mut tokio::io::WriteHalf<crate::target::BoxedStream>,
    greeting: &str,
    cmd: &str,
) -> Result<String> {
    crate::play::send_raw(w, format!("{{\"execute\": \"{cmd}\"}}\n").as_bytes()).await?;
    loop {
        let l = r
            .next_line(Duration::from_secs(10))
            .await?
            .with_context(|| format!("connection closed waiting for {cmd}"))?;
        if l.text == greeting {
            continue; // start-up race: a repeated greeting
        }
        if l.text.starts_with("{\"return\"") || l.text.contains("\"error\"") {
            return Ok(l.text);
        }
    }
}

/// Records the profile data (`greeting.json`, `query-version.json`,
/// `query-commands.json`, `query-qmp-schema.json`: the lines exactly as QEMU
/// sent them) and returns the QEMU's identity. `int-kinds.json` is
/// recorded separately, by [`record_int_kinds`].
pub async fn record_profile(
    target: &mut dyn Target,
    flavor: Flavor,
    fixtures: &Path,
    program: &str,
) -> Result<Identity> {
    let stream = target.connect().await?;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = LineReader::new(r);
    let greeting = r
        .next_line(Duration::from_secs(10))
        .await?
        .context("no greeting")?
        .text;
    exchange(&mut r, &mut w, &greeting, "qmp_capabilities").await?;
    let version = exchange(&mut r, &mut w, &greeting, "query-version").await?;
    let commands = exchange(&mut r, &mut w, &greeting, "query-commands").await?;
    let schema = exchange(&mut r, &mut w, &greeting, "query-qmp-schema").await?;
    let v: serde_json::Value = serde_json::from_str(&version)?;
    let q = &v["return"]["qemu"];
    let tag = format!("{}.{}", q["major"], q["minor"]);
    let parsed: Version = tag
        .parse()
        .with_context(|| format!("QEMU {tag} is not a supported profile"))?;
    let pkg = v["return"]["package"]
        .as_str()
        .unwrap_or("")
        .trim()
        .to_owned();
    let describe = format!(
        "{program} {}.{}.{} ({pkg})",
        q["major"], q["minor"], q["micro"]
    );
    let dir = profile_dir(fixtures, parsed, flavor).join("profile");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [
        ("greeting.json", &greeting),
        ("query-version.json", &version),
        ("query-commands.json", &commands),
        ("query-qmp-schema.json", &schema),
    ] {
        std::fs::write(dir.join(name), format!("{text}\n"))
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    let schema: serde_json::Value = serde_json::from_str(&schema)?;
    Ok(Identity {
        version: parsed,
        describe,
        schema: schema
            .get("return")
            .cloned()
            .context("query-qmp-schema failed")?,
    })
}

/// Probes the kind of every `int` argument member (see [`crate::probe`]) on
/// a QEMU launched for it, and writes `profile/int-kinds.json`.
pub async fn record_int_kinds(
    qemu: &Path,
    flavor: Flavor,
    fixtures: &Path,
    id: &Identity,
) -> Result<IntKinds> {
    let start = Instant::now();
    let schema = Schema::from_introspection(&id.schema).context("parsing query-qmp-schema")?;
    let mut target = Process::launch(LaunchSpec::real_qemu(qemu, flavor)).await?;
    let kinds = probe_int_kinds(&mut target, &schema).await;
    target.stop().await;
    let kinds = kinds.context("probing integer kinds")?;
    let path = profile_dir(fixtures, id.version, flavor).join("profile/int-kinds.json");
    let text = serde_json::to_string_pretty(&kinds.to_json(&id.describe))?;
    std::fs::write(&path, format!("{text}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "int kinds of {}: {} int members found, {} classified, {} unresolved ({} requests, {} restarts, {:.1?})",
        id.describe,
        kinds.found(),
        kinds.kinds.len(),
        kinds.unresolved.len(),
        kinds.requests,
        kinds.restarts,
        start.elapsed()
    );
    Ok(kinds)
}

/// Launches `qemu`, records its profile and every applicable scenario.
/// Returns the identity and the number of transcripts written.
pub async fn record_all(
    qemu: &Path,
    flavor: Flavor,
    scenarios: &[Scenario],
    fixtures: &Path,
) -> Result<(Identity, usize)> {
    let program = qemu
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program.contains("mock-qemu") {
        bail!("refusing to record golden transcripts from mock-qemu: fixtures come from real QEMU only");
    }
    let mut target = Process::launch(LaunchSpec::real_qemu(qemu, flavor)).await?;
    let id = record_profile(&mut target, flavor, fixtures, &program).await?;
    record_int_kinds(qemu, flavor, fixtures, &id).await?;
    let opts = PlayOptions {
        timeout: Duration::from_secs(5),
        drop_duplicate_greeting: true,
    };
    let out_root = profile_dir(fixtures, id.version, flavor).join("transcripts");
    let mut n = 0;
    let mut unmet = Vec::new();
    for s in scenarios.iter().filter(|s| s.applies_to(flavor.name())) {
        target.restart().await?;
        let played = play_with_retries(s, &mut target, &opts, 3)
            .await
            .with_context(|| format!("recording {}", s.id))?;
        if !played.unmet.is_empty() {
            // The scenario says what QEMU does; a QEMU that does not do it
            // gets no golden (the old one stays).
            unmet.push(format!(
                "{}: {}",
                s.id,
                crate::runner::describe_unmet(&played.unmet)
            ));
            continue;
        }
        let mut t = played.transcript;
        let norm = Normalizer {
            workdirs: target
                .workdir()
                .map(|w| vec![w.display().to_string()])
                .unwrap_or_default(),
        };
        for e in &mut t.entries {
            if let Entry::Recv(l) | Entry::RecvBadFraming(l) = e {
                // Paths only; timestamps stay as QEMU sent them.
                for w in &norm.workdirs {
                    *l = l.replace(w.as_str(), "<workdir>");
                }
            }
        }
        t.header = vec![
            ("scenario".into(), s.id.clone()),
            ("description".into(), s.description.clone()),
            ("target".into(), id.describe.clone()),
        ];
        if !s.launch.args.is_empty() {
            t.header.push(("args".into(), s.launch.args.join(" ")));
        }
        t.header.extend([(
            "recorded-by".into(),
            "qmp-conform record (never edit by hand; re-record from QEMU)".into(),
        )]);
        let path = out_root.join(format!("{}.out", s.id));
        std::fs::create_dir_all(path.parent().unwrap_or(&out_root))?;
        std::fs::write(&path, t.render()).with_context(|| format!("writing {}", path.display()))?;
        n += 1;
    }
    target.stop().await;
    if !unmet.is_empty() {
        bail!(
            "{} does not meet the expectations of {} scenario(s); their transcripts were not written ({n} others were):\n{}",
            id.describe,
            unmet.len(),
            unmet.join("\n")
        );
    }
    Ok((id, n))
}
