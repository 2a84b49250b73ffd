//! Stepped job mode: jobs progress with the virtual clock, at their speed
//! limit or the simulated throughput, and wall time does not depend on size.

use std::sync::Arc;

use mock_qemu::core::{Core, CoreConfig, SessionId};
use mock_qemu::profile::{Flavor, Profile, Version};
use mock_qemu::qmp::json::{JsonStreamer, Parsed};
use serde_json::{json, Value};

struct Session {
    core: Core,
    sid: SessionId,
}

impl Session {
    fn new(stepped: Option<u64>) -> Session {
        let profile = Profile::get(Version::V10_0, Flavor::Qsd).unwrap();
        let mut core = Core::new(
            Arc::clone(&profile),
            &CoreConfig {
                stepped_jobs: stepped,
                ..CoreConfig::default()
            },
        );
        let (sid, _) = core.open_session();
        let mut s = Session { core, sid };
        assert_eq!(
            s.cmd(json!({"execute": "qmp_capabilities"})).1,
            json!({"return": {}})
        );
        s
    }

    /// Sends one command; returns (events before and after the reply, reply).
    fn cmd(&mut self, v: Value) -> (Vec<Value>, Value) {
        let mut items = Vec::new();
        JsonStreamer::new().feed(v.to_string().as_bytes(), &mut items);
        let item = items.pop().unwrap();
        assert!(matches!(item, Parsed::Value(_)));
        let d = self.core.handle(self.sid, item);
        let parse = |l: &String| serde_json::from_str::<Value>(l).unwrap();
        let mut events: Vec<Value> = d.events.iter().map(parse).collect();
        events.extend(d.after.iter().map(parse));
        (events, parse(d.reply.as_ref().unwrap()))
    }

    fn statuses(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e["event"].as_str().unwrap() {
                "JOB_STATUS_CHANGE" => e["data"]["status"].as_str().unwrap().to_owned(),
                other => other.to_owned(),
            })
            .collect()
    }

    fn progress(&mut self) -> u64 {
        let (_, r) = self.cmd(json!({"execute": "query-jobs"}));
        r["return"][0]["current-progress"].as_u64().unwrap()
    }

    fn advance(&mut self, micros: u64) -> Vec<String> {
        let (ev, r) = self
            .cmd(json!({"execute": "x-mock-clock-advance", "arguments": {"microseconds": micros}}));
        assert_eq!(r, json!({"return": {}}));
        Session::statuses(&ev)
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn a_speed_limited_job_advances_with_the_virtual_clock() {
    let mut s = Session::new(Some(1 << 30));
    // A backup copies the whole node (a stream of a node without a backing
    // file would have nothing to do).
    for n in ["n", "t"] {
        s.cmd(json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": n, "size": 1000 * MIB}}));
    }
    let (ev, r) = s.cmd(json!({"execute": "blockdev-backup", "arguments": {"job-id": "j", "device": "n", "target": "t", "sync": "full", "speed": 100 * MIB}}));
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(
        Session::statuses(&ev),
        ["created", "running", "paused", "running"],
        "the start and its drain pair, nothing more until time passes"
    );
    assert_eq!(s.progress(), 0);
    // The rate limit works in slices of 100 ms (10 MiB each here).
    assert!(s.advance(50_000).is_empty());
    assert_eq!(s.progress(), 0, "half a slice moves nothing");
    assert!(s.advance(50_000).is_empty());
    assert_eq!(s.progress(), 10 * MIB, "one slice's quota");
    assert!(s.advance(4_900_000).is_empty());
    assert_eq!(s.progress(), 500 * MIB, "5 s at 100 MiB/s");
    // Paused jobs do not progress.
    s.cmd(json!({"execute": "job-pause", "arguments": {"id": "j"}}));
    s.advance(60_000_000);
    assert_eq!(s.progress(), 500 * MIB);
    s.cmd(json!({"execute": "job-resume", "arguments": {"id": "j"}}));
    let done = s.advance(5_000_000);
    assert_eq!(
        done,
        [
            "waiting",
            "pending",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
}

#[test]
fn a_one_tebibyte_mirror_goes_ready_after_its_simulated_copy_time() {
    let mut s = Session::new(Some(1 << 30));
    for n in ["src", "dst"] {
        s.cmd(json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": n, "size": 1u64 << 40}}));
    }
    // An export stands in for the guest: the pivot moves it (recorded in
    // jobs/mirror-pivot-export).
    s.cmd(json!({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "/nonexistent/nbd.sock"}}}}));
    let (_, r) = s.cmd(json!({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0", "node-name": "src"}}));
    assert_eq!(r, json!({"return": {}}));
    let exported = |s: &mut Session| {
        let (_, r) = s.cmd(json!({"execute": "query-block-exports"}));
        r["return"][0]["node-name"].as_str().unwrap().to_owned()
    };
    s.cmd(json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m", "device": "src", "target": "dst", "sync": "full"}}));
    assert!(
        s.advance(1_000_000_000).is_empty(),
        "1000 s at 1 GiB/s is not yet 1 TiB"
    );
    assert!(
        exported(&mut s).starts_with("#block"),
        "while the job runs the export sits on its mirror_top filter"
    );
    assert_eq!(s.advance(24_000_000), ["ready", "BLOCK_JOB_READY"]);
    let (ev, _) = s.cmd(json!({"execute": "job-complete", "arguments": {"id": "m"}}));
    assert_eq!(
        Session::statuses(&ev),
        [
            "waiting",
            "pending",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
    assert_eq!(exported(&mut s), "dst", "the pivot moved the export");
    let (_, r) = s.cmd(json!({"execute": "blockdev-del", "arguments": {"node-name": "src"}}));
    assert_eq!(r, json!({"return": {}}), "nothing holds the old source");
}

#[test]
fn instant_mode_needs_no_clock() {
    let mut s = Session::new(None);
    s.cmd(json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n"}}));
    let (ev, _) = s.cmd(
        json!({"execute": "block-stream", "arguments": {"job-id": "j", "device": "n", "speed": 1}}),
    );
    assert_eq!(
        Session::statuses(&ev),
        [
            "created",
            "running",
            "waiting",
            "pending",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
    let (_, r) =
        s.cmd(json!({"execute": "x-mock-clock-advance", "arguments": {"microseconds": -1}}));
    assert_eq!(r["error"]["class"], "GenericError");
}

/// Mock-only fault injection: a write error at 256 MiB on the target of a
/// mirror stops it there with `on-target-error: enospc` and ENOSPC
/// (io-status nospace, BLOCK_JOB_ERROR); a resume goes on (the fault fired
/// once); with report the job fails with QEMU's text.
#[test]
fn an_injected_fault_stops_a_job_where_its_progress_meets_it() {
    let mut s = Session::new(Some(1 << 30));
    for n in ["src", "dst", "dst2"] {
        s.cmd(json!({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": n, "size": 1u64 << 30}}));
    }
    let (_, r) = s.cmd(json!({"execute": "x-mock-inject-fault", "arguments": {"node-name": "dst", "operation": "write", "errno": "ENOSPC", "offset": 256 * MIB, "once": true}}));
    assert_eq!(r, json!({"return": {}}));
    s.cmd(json!({"execute": "blockdev-mirror", "arguments": {"job-id": "m", "device": "src", "target": "dst", "sync": "full", "on-target-error": "enospc"}}));
    // 0.2 s at 1 GiB/s: 204.8 MiB, not there yet.
    assert!(s.advance(200_000).is_empty());
    let (ev, _) =
        s.cmd(json!({"execute": "x-mock-clock-advance", "arguments": {"microseconds": 100_000}}));
    assert_eq!(ev[0]["event"], "BLOCK_JOB_ERROR");
    assert_eq!(
        ev[0]["data"],
        json!({"device": "m", "operation": "write", "action": "stop"})
    );
    assert_eq!(Session::statuses(&ev[1..]), ["paused"]);
    let (_, r) = s.cmd(json!({"execute": "query-block-jobs"}));
    assert_eq!(r["return"][0]["io-status"], "nospace");
    assert_eq!(r["return"][0]["offset"], 256 * MIB);
    assert_eq!(r["return"][0]["paused"], true);
    s.cmd(json!({"execute": "block-job-resume", "arguments": {"device": "m"}}));
    assert_eq!(s.advance(1_000_000), ["ready", "BLOCK_JOB_READY"]);
    // A mirror's source is busy for other jobs (its op blockers): the
    // mirror ends before a backup reads src.
    s.cmd(json!({"execute": "block-job-cancel", "arguments": {"device": "m"}}));

    let (_, r) = s.cmd(json!({"execute": "x-mock-inject-fault", "arguments": {"node-name": "src", "operation": "read"}}));
    assert_eq!(r, json!({"return": {}}));
    // At offset 0 the error comes right after the command's reply.
    let (ev, _) = s.cmd(json!({"execute": "blockdev-backup", "arguments": {"job-id": "b", "device": "src", "target": "dst2", "sync": "full"}}));
    let names = Session::statuses(&ev);
    let at = names.iter().position(|e| e == "BLOCK_JOB_ERROR").unwrap();
    assert_eq!(
        names[at..],
        [
            "BLOCK_JOB_ERROR",
            "aborting",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
    let completed = ev
        .iter()
        .find(|e| e["event"] == "BLOCK_JOB_COMPLETED")
        .unwrap();
    assert_eq!(completed["data"]["error"], "Input/output error");
    let (_, r) = s.cmd(json!({"execute": "query-jobs"}));
    assert!(
        r["return"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["id"] != "b"),
        "the failed backup is gone (auto-dismiss): {r}"
    );
    let (_, r) = s.cmd(json!({"execute": "x-mock-inject-fault", "arguments": {"node-name": "src", "operation": "sideways"}}));
    assert_eq!(
        r["error"]["desc"],
        "mock-qemu: x-mock-inject-fault: 'operation' is read or write"
    );
}
