//! A strict shape check by a third-party client library: every greeting,
//! reply and event mock-qemu sends across the scenario suites is decoded
//! with the typed QMP structs of the Rust `qapi` crate (qapi-rs, its types
//! generated from one QEMU's schema), as a Rust management tool would.
//!
//! For each profile with recordings and each scenario with a golden
//! transcript of that profile, the scenario is played against mock-qemu in
//! this process; each `return` is paired with the command it answers and
//! decoded into that command's `Ok` type, each event line into the crate's
//! `Event` enum, each error into its `Error`, the greeting into its
//! `QapiCapabilities`. A decoded value is serialized back: a member of the
//! line that the crate's type does not carry is a failure too (the crate's
//! structs would silently drop it).
//!
//! Each scenario is followed by queries of the state it left
//! ([`END_STATE_QUERIES`]), shapes no golden shows in that state.
//!
//! A failure is a shape bug of the mock — unless the golden transcript of
//! real QEMU fails the same way (same message, same kind of line) in the
//! same case (for the end-state replies: in any case of the profile): then
//! the crate's schema (one QEMU version) differs from that QEMU version,
//! counted as a crate/version mismatch and reported, not failed. Replies to commands the crate does not know are skipped and
//! counted, by name.
//!
//! One trial per profile; each prints its summary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use conformance::play::{play_with_retries, PlayOptions};
use conformance::scenario::{self, Scenario, Step};
use conformance::suite;
use conformance::target::InProcess;
use conformance::transcript::{Entry, Transcript};
use libtest_mimic::{Arguments, Failed, Trial};
use mock_qemu::profile::{Flavor, Version};
use qapi::qmp;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Decodes `v` as `T`, then checks that serializing it back keeps every
/// member of `v`: the problems, one per decode error or member dropped.
fn check<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), Vec<String>> {
    let t: T = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        vec![format!(
            "{}: {}",
            unindexed(&e.path().to_string()),
            e.inner()
        )]
    })?;
    let back = serde_json::to_value(&t).map_err(|e| vec![format!("serializing back: {e}")])?;
    let mut dropped = BTreeSet::new();
    dropped_members(v, &back, &mut String::new(), &mut dropped);
    if dropped.is_empty() {
        Ok(())
    } else {
        Err(dropped
            .into_iter()
            .map(|p| format!("member {p} is not in the crate's type"))
            .collect())
    }
}

/// A path without its array indices (`[3].x` → `[].x`): one message per
/// shape, however many elements have it.
fn unindexed(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// Paths (without indices) of the object members of `orig` that `back`
/// lacks. A `null` member is not counted: the crate reads an optional
/// member that is `null` as absent (QEMU sends `"default": null` in
/// introspection, `"id": null` is echoed), which is the same value.
fn dropped_members(orig: &Value, back: &Value, path: &mut String, out: &mut BTreeSet<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                match b.get(k) {
                    Some(bv) => dropped_members(v, bv, path, out),
                    None if v.is_null() => {}
                    None => {
                        out.insert(path.clone());
                    }
                }
                path.truncate(len);
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (v, bv) in o.iter().zip(b) {
                let len = path.len();
                path.push_str("[]");
                dropped_members(v, bv, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Decodes the `return` value of command `name` with the crate's type for
/// it; `None` when the crate (or this list) does not know the command.
#[allow(deprecated)] // nbd-server-add/-remove, drive-backup: deprecated, still served
fn decode_return(name: &str, ret: &Value) -> Option<Result<(), Vec<String>>> {
    macro_rules! commands {
        ($($n:literal => $t:ident,)*) => {
            match name {
                $($n => Some(check::<<qmp::$t as qapi::Command>::Ok>(ret)),)*
                _ => None,
            }
        };
    }
    commands! {
        "qmp_capabilities" => qmp_capabilities,
        "query-version" => query_version,
        "query-commands" => query_commands,
        "query-qmp-schema" => query_qmp_schema,
        "query-status" => query_status,
        "quit" => quit,
        "stop" => stop,
        "cont" => cont,
        "blockdev-add" => blockdev_add,
        "blockdev-del" => blockdev_del,
        "query-block" => query_block,
        "query-named-block-nodes" => query_named_block_nodes,
        "blockdev-snapshot-sync" => blockdev_snapshot_sync,
        "blockdev-snapshot" => blockdev_snapshot,
        "nbd-server-start" => nbd_server_start,
        "nbd-server-stop" => nbd_server_stop,
        "nbd-server-add" => nbd_server_add,
        "nbd-server-remove" => nbd_server_remove,
        "block-export-add" => block_export_add,
        "block-export-del" => block_export_del,
        "query-block-exports" => query_block_exports,
        "object-add" => object_add,
        "object-del" => object_del,
        "block-dirty-bitmap-add" => block_dirty_bitmap_add,
        "block-dirty-bitmap-remove" => block_dirty_bitmap_remove,
        "block-dirty-bitmap-clear" => block_dirty_bitmap_clear,
        "block-dirty-bitmap-enable" => block_dirty_bitmap_enable,
        "block-dirty-bitmap-disable" => block_dirty_bitmap_disable,
        "block-dirty-bitmap-merge" => block_dirty_bitmap_merge,
        "transaction" => transaction,
        "block-commit" => block_commit,
        "blockdev-create" => blockdev_create,
        "blockdev-backup" => blockdev_backup,
        "drive-backup" => drive_backup,
        "blockdev-mirror" => blockdev_mirror,
        "drive-mirror" => drive_mirror,
        "block-stream" => block_stream,
        "query-jobs" => query_jobs,
        "query-block-jobs" => query_block_jobs,
        "job-pause" => job_pause,
        "job-resume" => job_resume,
        "job-cancel" => job_cancel,
        "job-complete" => job_complete,
        "job-finalize" => job_finalize,
        "job-dismiss" => job_dismiss,
        "block-job-pause" => block_job_pause,
        "block-job-resume" => block_job_resume,
        "block-job-cancel" => block_job_cancel,
        "block-job-complete" => block_job_complete,
        "block-job-finalize" => block_job_finalize,
        "block-job-dismiss" => block_job_dismiss,
        "block-job-set-speed" => block_job_set_speed,
        "block-job-change" => block_job_change,
    }
}

/// What one transcript gave.
#[derive(Debug, Default)]
struct Tally {
    /// Lines decoded, by kind (`greeting`, `return`, `error`, `event`).
    decoded: BTreeMap<&'static str, usize>,
    /// Skipped lines, by reason.
    skipped: BTreeMap<String, usize>,
    /// Failures: (what the line was, the decode error) → one line as an example.
    failed: BTreeMap<(String, String), String>,
    /// The failures of each line that failed.
    failed_lines: Vec<Vec<(String, String)>>,
}

impl Tally {
    fn record(&mut self, kind: &'static str, what: String, line: &str, r: Result<(), Vec<String>>) {
        match r {
            Ok(()) => *self.decoded.entry(kind).or_default() += 1,
            Err(errors) => {
                let keys: Vec<_> = errors.into_iter().map(|e| (what.clone(), e)).collect();
                for k in &keys {
                    self.failed
                        .entry(k.clone())
                        .or_insert_with(|| line.to_owned());
                }
                self.failed_lines.push(keys);
            }
        }
    }

    fn skip(&mut self, why: String) {
        *self.skipped.entry(why).or_default() += 1;
    }
}

/// A command sent: its name and id.
#[derive(Debug)]
struct Sent {
    name: String,
    id: Option<Value>,
}

/// The command of a message sent, if it is one.
fn command_of(v: &Value) -> Option<Sent> {
    let o = v.as_object()?;
    let name = o
        .get("execute")
        .or_else(|| o.get("exec-oob"))?
        .as_str()?
        .to_owned();
    Some(Sent {
        name,
        id: o.get("id").cloned(),
    })
}

/// Bytes sent and not yet a whole message.
#[derive(Debug, Default)]
struct SendBuffer {
    bytes: Vec<u8>,
}

impl SendBuffer {
    /// Adds `bytes` and parses what is complete (as standard JSON: QEMU
    /// also takes single quotes, which this does not follow). The messages
    /// that are commands, or `None` when the bytes are not plain JSON: the
    /// server's replies to them cannot be told apart by this test.
    fn feed(&mut self, bytes: &[u8]) -> Option<Vec<Sent>> {
        self.bytes.extend_from_slice(bytes);
        let mut stream = serde_json::Deserializer::from_slice(&self.bytes).into_iter::<Value>();
        let mut sent = Vec::new();
        let mut consumed = 0;
        let ok = loop {
            match stream.next() {
                None => {
                    consumed = self.bytes.len();
                    break true;
                }
                Some(Ok(v)) => {
                    consumed = stream.byte_offset();
                    sent.extend(command_of(&v));
                }
                Some(Err(e)) if e.is_eof() => break true,
                Some(Err(_)) => break false,
            }
        };
        if ok {
            self.bytes.drain(..consumed);
            Some(sent)
        } else {
            self.bytes.clear();
            None
        }
    }
}

/// Decodes every received line of a transcript.
///
/// Pairing: every `->` and `send` step is synchronised (all its replies
/// arrive before the next step is sent), so a reply answers one of the
/// commands sent since the last synchronised step: the one with its id,
/// or, without an id, the oldest id-less one. After bytes that are not
/// plain JSON, id-less replies cannot be told apart: their `return`s are
/// skipped until the next `->` step.
fn decode(t: &Transcript) -> Tally {
    let mut tally = Tally::default();
    let mut pending: Vec<Sent> = Vec::new();
    let mut buffer = SendBuffer::default();
    let mut garbage = false;
    let mut last_synced = true;
    for e in &t.entries {
        let line = match e {
            Entry::Sent(text) | Entry::SentRaw(text) => {
                if last_synced {
                    pending.clear();
                    garbage = false;
                }
                let bytes = match e {
                    Entry::Sent(_) => {
                        // A `->` step is synchronised.
                        last_synced = true;
                        format!("{text}\n").into_bytes()
                    }
                    _ => {
                        // `send` and `send-partial` look alike here:
                        // assume the step was not synchronised.
                        last_synced = false;
                        scenario::unescape(text).unwrap_or_else(|_| vec![0])
                    }
                };
                match buffer.feed(&bytes) {
                    Some(sent) => pending.extend(sent),
                    None => garbage = true,
                }
                continue;
            }
            Entry::Reconnect => {
                pending.clear();
                buffer = SendBuffer::default();
                garbage = false;
                last_synced = true;
                continue;
            }
            Entry::Recv(l) | Entry::RecvBadFraming(l) => l,
            Entry::Setup(_) | Entry::Closed | Entry::Directive(_) => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tally.skip("not JSON".into());
            continue;
        };
        let Some(o) = v.as_object() else {
            tally.skip("not an object".into());
            continue;
        };
        if o.contains_key("QMP") {
            tally.record(
                "greeting",
                "greeting".into(),
                line,
                check::<qmp::QapiCapabilities>(&v),
            );
        } else if let Some(name) = o.get("event").and_then(Value::as_str) {
            let r = check::<qmp::Event>(&v);
            match r {
                Err(e)
                    if e.iter()
                        .any(|e| e.contains(&format!("unknown variant `{name}`"))) =>
                {
                    tally.skip(format!("event {name} unknown to the crate"));
                }
                r => tally.record("event", format!("event {name}"), line, r),
            }
        } else if o.contains_key("error") {
            let i = match o.get("id") {
                Some(id) => pending.iter().position(|s| s.id.as_ref() == Some(id)),
                None if garbage => None,
                None => pending.iter().position(|s| s.id.is_none()),
            };
            let what = match i {
                Some(i) => format!("error of {}", pending.remove(i).name),
                None => "error".into(),
            };
            tally.record("error", what, line, check::<qapi::Error>(&v));
        } else if let Some(ret) = o.get("return") {
            let i = match o.get("id") {
                Some(id) => pending.iter().position(|s| s.id.as_ref() == Some(id)),
                None if garbage => None,
                None => pending.iter().position(|s| s.id.is_none()),
            };
            let Some(i) = i else {
                tally.skip(
                    "a return after bytes that are not plain JSON (single quotes, control bytes)"
                        .into(),
                );
                continue;
            };
            let name = pending.remove(i).name;
            match decode_return(&name, ret) {
                Some(r) => tally.record("return", format!("return of {name}"), line, r),
                None => tally.skip(format!("return of {name}, unknown to the crate")),
            }
        } else {
            tally.skip("neither greeting, event, return nor error".into());
        }
    }
    tally
}

/// Queries sent after each scenario's last step, in the state it left
/// (jobs waiting in READY or paused, bitmaps, exports, snapshots): shapes
/// no golden shows in that state.
const END_STATE_QUERIES: &[&str] = &[
    "query-named-block-nodes",
    "query-block",
    "query-jobs",
    "query-block-jobs",
    "query-block-exports",
    "query-status",
];

/// The scenario followed by [`END_STATE_QUERIES`] (each synchronised).
fn with_end_state_queries(s: &Scenario) -> Scenario {
    let mut s = s.clone();
    for q in END_STATE_QUERIES {
        let text = format!("{{\"execute\": \"{q}\", \"id\": \"end-state\"}}");
        s.steps.push(Step::Send {
            bytes: format!("{text}\n").into_bytes(),
            sync: true,
            display: text,
            vars: vec![],
            line: 0,
        });
    }
    s
}

/// The summary of one profile.
#[derive(Debug, Default)]
struct Summary {
    cases: usize,
    decoded: BTreeMap<&'static str, usize>,
    skipped: BTreeMap<String, usize>,
    /// Failures real QEMU's golden shares: (what, error) → cases.
    mismatches: BTreeMap<(String, String), BTreeSet<String>>,
    /// Cases whose end state was queried (the others closed the connection).
    end_state_cases: usize,
    /// Lines whose every failure real QEMU's golden shares.
    mismatch_lines: usize,
    /// Lines with a failure of the mock alone.
    bug_lines: usize,
    /// Failures of the mock alone: case, what, error, the line.
    mock_bugs: Vec<String>,
    /// Cases that could not be played.
    errors: Vec<String>,
}

fn run_profile(
    version: Version,
    flavor: Flavor,
    scenarios: &[Scenario],
    fixtures: &Path,
) -> Result<Summary, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut sum = Summary::default();
    let goldens = suite::goldens(fixtures, version, flavor).map_err(|e| format!("{e:#}"))?;
    // What real QEMU's goldens of this profile fail on anywhere: the
    // end-state replies have no golden line of their own.
    let mut cases = Vec::new();
    let mut profile_wide = BTreeSet::new();
    for (id, golden) in goldens {
        let Some(scenario) = scenarios.iter().find(|s| s.id == id) else {
            continue;
        };
        let text = std::fs::read_to_string(&golden).map_err(|e| e.to_string())?;
        let golden = Transcript::parse(&text).map_err(|e| format!("{e:#}"))?;
        let real = decode(&golden);
        profile_wide.extend(real.failed.keys().cloned());
        cases.push((id, scenario, real));
    }
    for (id, scenario, real) in cases {
        sum.cases += 1;
        let play = |s: Scenario| {
            rt.block_on(async {
                let mut target = InProcess::new(version, flavor)?;
                play_with_retries(&s, &mut target, &PlayOptions::default(), 1).await
            })
        };
        // A scenario that ends with the connection closed has no end state
        // to query: it is played as it is.
        let played = match play(with_end_state_queries(scenario)) {
            Ok(p) => {
                sum.end_state_cases += 1;
                Ok(p)
            }
            Err(_) => play(scenario.clone()),
        };
        let played = match played {
            Ok(p) => p,
            Err(e) => {
                sum.errors.push(format!("{id}: {e:#}"));
                continue;
            }
        };
        let mine = decode(&played.transcript);
        let shared = |k: &(String, String)| {
            real.failed.contains_key(k)
                || (k.0.starts_with("return of ") && profile_wide.contains(k))
        };
        for (k, n) in mine.decoded {
            *sum.decoded.entry(k).or_default() += n;
        }
        for (k, n) in mine.skipped {
            *sum.skipped.entry(k).or_default() += n;
        }
        for keys in &mine.failed_lines {
            if keys.iter().all(shared) {
                sum.mismatch_lines += 1;
            } else {
                sum.bug_lines += 1;
            }
        }
        for (key, line) in mine.failed {
            if shared(&key) {
                sum.mismatches.entry(key).or_default().insert(id.clone());
            } else {
                sum.mock_bugs
                    .push(format!("{id}: {}: {}\n    {line}", key.0, key.1));
            }
        }
    }
    Ok(sum)
}

fn report(label: &str, s: &Summary) -> String {
    let mut out = String::new();
    let total: usize = s.decoded.values().sum();
    let skipped: usize = s.skipped.values().sum();
    let mism: usize = s.mismatches.len();
    out.push_str(&format!(
        "qapi crate, {label}: {} cases ({} with end-state queries), {total} lines decoded {:?}, {skipped} skipped, {} lines with crate/version mismatches ({mism} kinds), {} lines with mock shape bugs ({} kinds)\n",
        s.cases,
        s.end_state_cases,
        s.decoded,
        s.mismatch_lines,
        s.bug_lines,
        s.mock_bugs.len()
    ));
    for (why, n) in &s.skipped {
        out.push_str(&format!("  skipped {n}: {why}\n"));
    }
    for ((what, err), cases) in &s.mismatches {
        let list: Vec<_> = cases.iter().take(3).map(String::as_str).collect();
        out.push_str(&format!(
            "  version mismatch (real QEMU too), {what}: {err} [{} case(s): {}{}]\n",
            cases.len(),
            list.join(", "),
            if cases.len() > 3 { ", …" } else { "" }
        ));
    }
    out
}

/// The checker itself: shape errors are found and pairing follows ids.
fn self_test() -> Result<(), Failed> {
    let t = Transcript::parse(concat!(
        "<- {\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\n",
        "-> {\"execute\": \"qmp_capabilities\"}\n",
        "<- {\"return\": {}}\n",
        "=> \"{\\\"execute\\\": \\\"query-jobs\\\", \\\"id\\\": 1}{\\\"execute\\\": \\\"query-block-jobs\\\", \\\"id\\\": 2}\"\n",
        "<- {\"return\": [], \"id\": 2}\n",
        "<- {\"return\": [{\"id\": \"j\", \"type\": \"mirror\", \"status\": \"running\", \"current-progress\": 1, \"total-progress\": 2, \"extra\": 1}], \"id\": 1}\n",
        "-> {\"execute\": \"query-block-jobs\"}\n",
        "<- {\"return\": [{\"device\": \"j\"}]}\n",
        "<- {\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"sleeping\", \"id\": \"j\"}}\n",
        "<- {\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"NO_SUCH_EVENT\"}\n",
        "<- {\"error\": {\"class\": \"NoSuchClass\", \"desc\": \"x\"}}\n",
    ))
    .map_err(|e| format!("{e:#}"))?;
    let tally = decode(&t);
    let got: BTreeSet<(&str, &str)> = tally
        .failed
        .keys()
        .map(|(w, e)| (w.as_str(), e.split(',').next().unwrap_or(e)))
        .collect();
    let want: BTreeSet<(&str, &str)> = [
        (
            "return of query-jobs",
            "member [].extra is not in the crate's type",
        ),
        ("return of query-block-jobs", "[]: missing field `type`"),
        // Internally tagged: serde loses the path inside the event.
        ("event JOB_STATUS_CHANGE", ".: unknown variant `sleeping`"),
        ("error", "error.class: unknown variant `NoSuchClass`"),
    ]
    .into();
    if got != want || tally.skipped.len() != 1 {
        return Err(format!(
            "the checker found {:#?}, skipped {:?}",
            tally.failed, tally.skipped
        )
        .into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let fixtures = suite::fixtures_dir();
    let scenarios: Arc<Vec<Scenario>> =
        Arc::new(suite::scenarios(&fixtures).expect("reading scenarios"));
    let fixtures = Arc::new(fixtures);
    let trials = suite::recorded_profiles(&fixtures)
        .into_iter()
        .map(|(version, flavor)| {
            let scenarios = Arc::clone(&scenarios);
            let fixtures = Arc::clone(&fixtures);
            let label = format!("{}/{flavor}", version.name());
            Trial::test(format!("qapi-crate/{label}"), move || {
                let s = run_profile(version, flavor, &scenarios, &fixtures)?;
                print!("{}", report(&label, &s));
                let mut bad = Vec::new();
                bad.extend(s.errors.iter().map(|e| format!("not played: {e}")));
                bad.extend(s.mock_bugs.iter().map(|e| format!("mock shape bug: {e}")));
                if s.cases == 0 {
                    bad.push("no case played".into());
                }
                if bad.is_empty() {
                    Ok(())
                } else {
                    Err(Failed::from(bad.join("\n")))
                }
            })
        })
        .chain([Trial::test("qapi-crate/self-test", self_test)])
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
