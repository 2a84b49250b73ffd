//! Normalization: what real QEMU varies from run to run is masked before
//! two transcripts are compared. Each rule is documented in
//! `fixtures/README.md` (section "Normalization").
//!
//! 1. Event `timestamp` values become `{"seconds": 0, "microseconds": 0}`.
//! 2. The target's private work folder is written `<workdir>`.
//! 3. Generated node names (`#block` + a counter + two random digits in
//!    QEMU) become `#block~1`, `#block~2`, … in order of first appearance in
//!    the transcript ([`auto_node_names`]).
//! 4. Job progress events are compared as a sequence of their own
//!    ([`float_job_events`]): where they fall among replies and requests is
//!    timing.
//!
//! 5. A vCPU's host thread id in `query-cpus-fast` (`{"thread-id": N,
//!    "props": …}`) becomes 0: it is the emulator's thread, a new one each
//!    run (the topology's own `thread-id` inside `props` stays).
//!
//! Rules for job progress, generated node names and drain pairs come with
//! the graph and job suites.

use crate::transcript::{Entry, Transcript};

/// Context for one transcript's normalization.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    /// Absolute paths to replace with `<workdir>`, longest first.
    pub workdirs: Vec<String>,
}

impl Normalizer {
    /// Normalizes one received line's text (bytes stay comparable: only
    /// the masked spans change).
    pub fn line(&self, line: &str) -> String {
        let mut s = mask_vcpu_threads(&mask_timestamps(line));
        for w in &self.workdirs {
            if !w.is_empty() {
                s = s.replace(w.as_str(), "<workdir>");
            }
        }
        s
    }
}

/// A transcript's entries with rules 1–3 applied to the received lines
/// (timestamps, work folder, generated node names); job events stay where
/// they arrived (see [`float_job_events`] and [`drop_drain_pairs`]).
pub fn entries(t: &Transcript, n: &Normalizer) -> Vec<Entry> {
    let mut entries: Vec<Entry> = t
        .entries
        .iter()
        .map(|e| match e {
            Entry::Recv(l) => Entry::Recv(n.line(l)),
            Entry::RecvBadFraming(l) => Entry::RecvBadFraming(n.line(l)),
            other => other.clone(),
        })
        .collect();
    let mut received: Vec<&mut String> = entries
        .iter_mut()
        .filter_map(|e| match e {
            Entry::Recv(l) | Entry::RecvBadFraming(l) => Some(l),
            _ => None,
        })
        .collect();
    auto_node_names(&mut received);
    entries
}

/// Whether a received line is a job's progress event, which QEMU sends
/// whenever the job gets there: `JOB_STATUS_CHANGE` (except `created` and
/// `running`, which always precede the starting command's reply) and every
/// `BLOCK_JOB_*` event.
pub fn is_job_progress_event(line: &str) -> bool {
    if line.contains("\"event\": \"BLOCK_JOB_") {
        return true;
    }
    line.contains("\"event\": \"JOB_STATUS_CHANGE\"")
        && !line.contains("\"status\": \"created\"")
        && !line.contains("\"status\": \"running\"")
}

/// The job a job event is about (`data.id`, or `data.device` for the
/// `BLOCK_JOB_*` events).
fn job_of_event(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let d = &v["data"];
    d["id"]
        .as_str()
        .or_else(|| d["device"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A job's status change: (job id, status).
fn job_status(line: &str) -> Option<(String, String)> {
    if !line.contains("\"event\": \"JOB_STATUS_CHANGE\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let d = v.get("data")?;
    Some((
        d.get("id")?.as_str()?.to_owned(),
        d.get("status")?.as_str()?.to_owned(),
    ))
}

/// Removes drain pairs: a job's `paused` whose next status change is
/// `running`. QEMU drains jobs around graph changes (a filter inserted, a
/// BlockBackend attached or detached for an export), and how many pairs a
/// change costs is an implementation detail that differs between versions
/// (reference §4.8). A user's `job-pause` … `job-resume` collapses the same
/// way on both sides; the commands' replies stay compared.
pub fn drop_drain_pairs(entries: Vec<Entry>) -> Vec<Entry> {
    let statuses: Vec<Option<(String, String)>> = entries
        .iter()
        .map(|e| match e {
            Entry::Recv(l) => job_status(l),
            _ => None,
        })
        .collect();
    let mut drop = vec![false; entries.len()];
    for (i, s) in statuses.iter().enumerate() {
        let Some((id, status)) = s else { continue };
        // A ready job's drain pair is standby → ready.
        let back = match status.as_str() {
            "paused" => "running",
            "standby" => "ready",
            _ => continue,
        };
        if drop[i] {
            continue;
        }
        let next = statuses
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, s)| s.as_ref().is_some_and(|(j, _)| j == id));
        if let Some((k, Some((_, st)))) = next {
            if st == back {
                drop[i] = true;
                drop[k] = true;
            }
        }
    }
    entries
        .into_iter()
        .zip(drop)
        .filter_map(|(e, d)| (!d).then_some(e))
        .collect()
}

/// Moves job progress events out of line: they are compared as their own
/// sequence, after everything else, in the order they arrived.
///
/// When a job's asynchronous events reach the client relative to replies and
/// to the client's next requests is timing: a fast job emits `ready`, or its
/// whole run, before or after the command's reply (reference §1.8). Their
/// order among themselves, and every other line's position, are compared.
pub fn float_job_events(entries: Vec<Entry>) -> Vec<Entry> {
    let entries = drop_drain_pairs(entries);
    let (mut floating, mut fixed): (Vec<Entry>, Vec<Entry>) = entries
        .into_iter()
        .partition(|e| matches!(e, Entry::Recv(l) if is_job_progress_event(l)));
    // Jobs that run at the same time finish in an order that is timing
    // (two backups of one transaction reach `waiting` either way round):
    // each job's events keep their order, jobs are taken by id.
    floating.sort_by_key(|e| match e {
        Entry::Recv(l) => job_of_event(l),
        _ => String::new(),
    });
    fixed.extend(floating);
    fixed
}

/// Renames generated node names by order of first appearance, across the
/// received lines of one transcript.
pub fn auto_node_names(lines: &mut [&mut String]) {
    const P: &str = "#block";
    let mut seen: Vec<String> = Vec::new();
    for line in lines.iter_mut() {
        if !line.contains(P) {
            continue;
        }
        let mut out = String::with_capacity(line.len());
        let mut rest = line.as_str();
        while let Some(pos) = rest.find(P) {
            let digits = rest[pos + P.len()..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            out.push_str(&rest[..pos + P.len()]);
            if digits == 0 {
                rest = &rest[pos + P.len()..];
                continue;
            }
            let name = &rest[pos..pos + P.len() + digits];
            let k = match seen.iter().position(|s| s == name) {
                Some(k) => k + 1,
                None => {
                    seen.push(name.to_owned());
                    seen.len()
                }
            };
            out.push_str(&format!("~{k}"));
            rest = &rest[pos + P.len() + digits..];
        }
        out.push_str(rest);
        **line = out;
    }
}

/// Replaces a vCPU's host thread id (`{"thread-id": N, "props"`) with 0.
fn mask_vcpu_threads(line: &str) -> String {
    const KEY: &str = "{\"thread-id\": ";
    const NEXT: &str = ", \"props\"";
    if !line.contains(NEXT) {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(KEY) {
        out.push_str(&rest[..pos + KEY.len()]);
        let after = &rest[pos + KEY.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(NEXT) {
            out.push('0');
            rest = &after[digits..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces every `"timestamp": {…}` object's contents.
fn mask_timestamps(line: &str) -> String {
    const KEY: &str = "\"timestamp\": {";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(KEY) {
        out.push_str(&rest[..pos + KEY.len()]);
        let after = &rest[pos + KEY.len()..];
        match after.find('}') {
            Some(end) => {
                out.push_str("\"seconds\": 0, \"microseconds\": 0");
                rest = &after[end..];
            }
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_progress_events_float_but_keep_their_order() {
        let ev = |s: &str| {
            Entry::Recv(format!(
                "{{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {{\"status\": \"{s}\"}}}}"
            ))
        };
        let reply = Entry::Recv("{\"return\": {}}".into());
        let e = vec![
            ev("created"),
            ev("running"),
            ev("ready"),
            reply.clone(),
            Entry::Sent("q".into()),
            ev("null"),
        ];
        assert_eq!(
            float_job_events(e),
            vec![
                ev("created"),
                ev("running"),
                reply,
                Entry::Sent("q".into()),
                ev("ready"),
                ev("null")
            ]
        );
    }

    #[test]
    fn drain_pairs_go_other_transitions_stay() {
        let ev = |id: &str, s: &str| {
            Entry::Recv(format!(
                "{{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {{\"status\": \"{s}\", \"id\": \"{id}\"}}}}"
            ))
        };
        let reply = Entry::Recv("{\"return\": {}}".into());
        let e = vec![
            ev("a", "running"),
            ev("a", "paused"),
            ev("b", "paused"),
            reply.clone(),
            ev("a", "running"),
            ev("b", "aborting"),
            ev("a", "paused"),
            ev("a", "concluded"),
        ];
        assert_eq!(
            drop_drain_pairs(e),
            vec![
                ev("a", "running"),
                ev("b", "paused"),
                reply,
                ev("b", "aborting"),
                ev("a", "paused"),
                ev("a", "concluded"),
            ]
        );
    }

    #[test]
    fn generated_node_names_are_numbered_by_first_appearance() {
        let mut a = String::from(r##"{"node-name": "#block233", "x": "#block149"}"##);
        let mut b = String::from(r##"["#block149", "#block", "#block233x"]"##);
        auto_node_names(&mut [&mut a, &mut b]);
        assert_eq!(a, r##"{"node-name": "#block~1", "x": "#block~2"}"##);
        assert_eq!(b, r##"["#block~2", "#block", "#block~1x"]"##);
    }

    #[test]
    fn vcpu_host_threads_are_masked_topology_stays() {
        let n = Normalizer::default();
        assert_eq!(
            n.line(r#"{"return": [{"thread-id": 15288, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "cpu-index": 0}]}"#),
            r#"{"return": [{"thread-id": 0, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "cpu-index": 0}]}"#
        );
        let other = r#"{"return": {"thread-id": 7, "x": 1}}"#;
        assert_eq!(n.line(other), other);
    }

    #[test]
    fn timestamps_and_workdir_are_masked() {
        let n = Normalizer {
            workdirs: vec!["/tmp/abc".into()],
        };
        assert_eq!(
            n.line(r#"{"timestamp": {"seconds": 17, "microseconds": 5}, "event": "X", "data": {"f": "/tmp/abc/a.qcow2"}}"#),
            r#"{"timestamp": {"seconds": 0, "microseconds": 0}, "event": "X", "data": {"f": "<workdir>/a.qcow2"}}"#
        );
    }
}
