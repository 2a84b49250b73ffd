//! Regression tests for what the stateful `blockops` fuzz target found
//! (fuzz/README.md, "Findings"; reproducers in fuzz/regressions/blockops/).
//! Each test drives the core with QMP commands as the server does and
//! checks the invariant the finding broke.

use std::collections::BTreeSet;
use std::sync::Arc;

use mock_qemu::core::{Core, CoreConfig, SessionId};
use mock_qemu::host::{HostIo, NbdListen, PublishedExport, RealHostIo};
use mock_qemu::image::ImageError;
use mock_qemu::model::graph::NodeId;
use mock_qemu::model::graph::{FileFacts, Qcow2Facts};
use mock_qemu::profile::{Flavor, Profile, Version};
use mock_qemu::qmp::json::{JsonStreamer, Parsed};
use serde_json::{json, Value};

/// Image files on disk (`RealHostIo`), the NBD server pretended (no
/// runtime here), as the fuzz targets' host does.
#[derive(Debug, Default)]
struct FilesOnly(RealHostIo);

impl HostIo for FilesOnly {
    fn open_file(&mut self, f: &str) -> Result<FileFacts, ImageError> {
        self.0.open_file(f)
    }
    fn read_qcow2(&mut self, f: &str) -> Result<Qcow2Facts, ImageError> {
        self.0.read_qcow2(f)
    }
    fn create_qcow2(
        &mut self,
        f: &str,
        size: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        self.0.create_qcow2(f, size, backing)
    }
    fn set_qcow2_backing(
        &mut self,
        f: &str,
        backing: Option<(&str, &str)>,
    ) -> Result<(), ImageError> {
        self.0.set_qcow2_backing(f, backing)
    }
    fn qcow2_mark_zero(&mut self, f: &str) -> Result<(), ImageError> {
        self.0.qcow2_mark_zero(f)
    }
    fn create_file(&mut self, f: &str, size: u64) -> Result<(), ImageError> {
        self.0.create_file(f, size)
    }
    fn nbd_start(&mut self, _addr: &NbdListen, _max: u32) -> Result<(), String> {
        Ok(())
    }
    fn nbd_stop(&mut self) {}
    fn nbd_publish(&mut self, _export: PublishedExport) {}
    fn nbd_unpublish(&mut self, _name: &str) {}
}

struct Session {
    core: Core,
    sid: SessionId,
}

impl Session {
    fn new(version: Version) -> Session {
        Session::with(version, CoreConfig::default())
    }

    /// Stepped job mode at 1 GiB/s.
    fn stepped(version: Version) -> Session {
        let config = CoreConfig {
            stepped_jobs: Some(1 << 30),
            ..CoreConfig::default()
        };
        Session::with(version, config)
    }

    fn with(version: Version, config: CoreConfig) -> Session {
        let profile = Profile::get(version, Flavor::Qsd).unwrap();
        let mut core = Core::new(Arc::clone(&profile), &config);
        core.set_host_io(Box::new(FilesOnly::default()));
        let (sid, _) = core.open_session();
        let mut s = Session { core, sid };
        s.ok(json!({"execute": "qmp_capabilities"}));
        s
    }

    /// Sends one command; returns (events, reply).
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

    fn ok(&mut self, v: Value) -> Vec<Value> {
        let (events, reply) = self.cmd(v.clone());
        assert_eq!(reply, json!({"return": {}}), "{v}");
        events
    }

    fn error(&mut self, v: Value) -> String {
        let (_, reply) = self.cmd(v.clone());
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{v} did not fail: {reply}"))
            .to_owned()
    }

    fn null(&mut self, name: &str) {
        self.ok(json!({"execute": "blockdev-add", "arguments": {
            "driver": "null-co", "node-name": name, "size": 1048576}}));
    }

    /// qcow2 images base ← mid ← top in `dir`, added as nodes `base`,
    /// `mid`, `top` (each naming its backing node).
    fn chain(&mut self, dir: &std::path::Path) {
        let mut below: Option<String> = None;
        for name in ["base", "mid", "top"] {
            let path = dir.join(format!("{name}.qcow2")).display().to_string();
            let backing = below
                .as_ref()
                .map(|b| format!("{}/{b}.qcow2", dir.display()));
            mock_qemu::image::create_qcow2(
                &path,
                1 << 20,
                backing.as_deref().map(|b| (b, "qcow2")),
            )
            .unwrap();
            let backing = below.as_deref().map_or(Value::Null, |b| json!(b));
            self.ok(json!({"execute": "blockdev-add", "arguments": {
                "driver": "qcow2", "node-name": name, "backing": backing,
                "file": {"driver": "file", "filename": path}}}));
            below = Some(name.to_owned());
        }
    }

    /// The graph has no cycle and every child exists.
    fn assert_graph_sound(&self) {
        let g = self.core.machine().graph();
        let ids: BTreeSet<NodeId> = g.newest_first().map(|(id, _)| id).collect();
        for (id, n) in g.newest_first() {
            for (role, c) in &n.children {
                assert!(ids.contains(c), "{}'s {role} child is gone", n.name);
                assert!(
                    !g.reaches(*c, id),
                    "{} is below its own {role} child",
                    n.name
                );
            }
        }
    }
}

/// Finding 1: `blockdev-snapshot` with the node as its own overlay made
/// the graph a loop. QEMU refuses it in `bdrv_attach_child_noperm()` (main
/// fixed it meanwhile with `external_snapshot_action()`'s checks).
#[test]
fn blockdev_snapshot_refuses_a_loop() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qcow2").display().to_string();
        mock_qemu::image::create_qcow2(&path, 1 << 20, None).unwrap();
        let mut s = Session::new(v);
        s.ok(json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "n0", "backing": null,
            "file": {"driver": "file", "filename": path}}}));
        assert_eq!(
            s.error(json!({"execute": "blockdev-snapshot",
                "arguments": {"node": "n0", "overlay": "n0"}})),
            "Making 'n0' a backing child of 'n0' would create a cycle"
        );
        s.assert_graph_sound();
    }
}

/// Finding 2: `blkdebug` takes its node name before it opens its `image`,
/// so `image` naming the new node itself attached the node below itself.
/// QEMU refuses it in `bdrv_attach_child_noperm()`; nothing is added.
#[test]
fn blkdebug_refuses_itself_as_image() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        assert_eq!(
            s.error(json!({"execute": "blockdev-add", "arguments": {
                "driver": "blkdebug", "node-name": "n0", "image": "n0"}})),
            "Making 'n0' a image child of 'n0' would create a cycle"
        );
        assert_eq!(s.core.machine().graph().len(), 0);
        s.assert_graph_sound();
    }
}

/// `JOB_STATUS_CHANGE` statuses among `events`.
fn statuses(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["event"] == "JOB_STATUS_CHANGE")
        .map(|e| e["data"]["status"].as_str().unwrap())
        .collect()
}

/// Finding 3: a `filter-node-name` already in use made the job-starting
/// command fail *after* the job had started, leaving the job running.
/// QEMU opens the filter before creating the job (stream, mirror, active
/// commit, backup: no job at all), or right after it (intermediate commit:
/// the job is destroyed again, `created` then `null`).
#[test]
fn a_taken_filter_name_leaves_no_job() {
    let dup = "Duplicate nodes with node-name='taken'";
    for v in [Version::V7_2, Version::V10_0] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Session::new(v);
        s.chain(dir.path());
        s.null("taken");
        s.null("src");
        s.null("dst");
        let attempts = [
            json!({"execute": "block-stream", "arguments": {
                "job-id": "j", "device": "top", "filter-node-name": "taken"}}),
            json!({"execute": "blockdev-mirror", "arguments": {
                "job-id": "j", "device": "src", "target": "dst", "sync": "full",
                "filter-node-name": "taken"}}),
            json!({"execute": "blockdev-backup", "arguments": {
                "job-id": "j", "device": "src", "target": "dst", "sync": "full",
                "filter-node-name": "taken"}}),
            json!({"execute": "block-commit", "arguments": {
                "job-id": "j", "device": "top", "filter-node-name": "taken"}}),
        ];
        for cmd in attempts {
            let (events, reply) = s.cmd(cmd.clone());
            assert_eq!(reply["error"]["desc"], dup, "{v:?} {cmd}");
            assert_eq!(statuses(&events), Vec::<&str>::new(), "{v:?} {cmd}");
            assert_eq!(s.core.machine().job_count(), 0, "{v:?} {cmd}");
        }
        // Intermediate commit creates its job first.
        let (events, reply) = s.cmd(json!({"execute": "block-commit", "arguments": {
            "job-id": "j", "device": "top", "top-node": "mid", "base-node": "base",
            "filter-node-name": "taken"}}));
        assert_eq!(reply["error"]["desc"], dup, "{v:?}");
        assert_eq!(statuses(&events), ["created", "null"], "{v:?}");
        assert_eq!(s.core.machine().job_count(), 0, "{v:?}");
        s.assert_graph_sound();
    }
}

/// Finding 4: `block-stream` took any node as `base-node`, the device
/// itself included, and the finished job made the device its own backing
/// file. QEMU requires the base to lie below the device in its chain.
#[test]
fn block_stream_base_must_be_below_the_device() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Session::new(v);
        s.chain(dir.path());
        s.null("other");
        for (base, device) in [("top", "top"), ("other", "top"), ("top", "mid")] {
            let (events, reply) = s.cmd(json!({"execute": "block-stream", "arguments": {
                "job-id": "j", "device": device, "base-node": base}}));
            assert_eq!(
                reply["error"]["desc"],
                format!("Node '{base}' is not a backing image of '{device}'"),
                "{v:?}"
            );
            assert!(events.is_empty(), "{v:?}: {events:?}");
        }
        // Below the device: streams.
        s.ok(json!({"execute": "block-stream", "arguments": {
            "job-id": "j", "device": "top", "base-node": "base"}}));
        s.assert_graph_sound();
    }
}

/// Finding 5: a `qcow2` node takes its name before it opens its backing
/// file, so `backing` naming the new node itself made it its own backing
/// file (the same loop as finding 2). Refused; nothing is added.
#[test]
fn a_backing_reference_to_the_new_node_is_refused() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.qcow2").display().to_string();
        mock_qemu::image::create_qcow2(&path, 1 << 20, None).unwrap();
        let mut s = Session::new(v);
        assert_eq!(
            s.error(json!({"execute": "blockdev-add", "arguments": {
                "driver": "qcow2", "node-name": "n0", "backing": "n0",
                "file": {"driver": "file", "filename": path}}})),
            "Making 'n0' a backing child of 'n0' would create a cycle"
        );
        assert_eq!(s.core.machine().graph().len(), 0);
        // The file is free again.
        s.ok(json!({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "n0",
            "file": {"driver": "file", "filename": path}}}));
        s.assert_graph_sound();
    }
}

/// Finding 6: a `transaction` whose later action failed restored the graph
/// but left the backup jobs of its earlier actions running (holding a
/// filter node the restored graph no longer had). Main meanwhile defers
/// the jobs of a transaction to its end and drops them when an action
/// fails; a job never started is dismissed whatever its auto-dismiss (as
/// QEMU's `job_cancel_sync()` of an unstarted job does).
#[test]
fn a_failed_transaction_leaves_no_job() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        s.null("src");
        s.null("t0");
        s.null("t1");
        let backup = |job: &str, target: &str, dismiss: bool| {
            json!({"type": "blockdev-backup", "data": {
                "job-id": job, "device": "src", "target": target, "sync": "none",
                "auto-dismiss": dismiss}})
        };
        let (events, reply) = s.cmd(json!({"execute": "transaction", "arguments": {
            "actions": [backup("j0", "t0", true), backup("j1", "t1", false),
                        {"type": "abort", "data": {}}]}}));
        assert_eq!(
            reply["error"]["desc"], "Transaction aborted using Abort action",
            "{v:?}"
        );
        for id in ["j0", "j1"] {
            let last = events
                .iter()
                .rfind(|e| e["event"] == "JOB_STATUS_CHANGE" && e["data"]["id"] == id)
                .map(|e| e["data"]["status"].clone());
            assert_eq!(last, Some(json!("null")), "{v:?} {id}: {events:?}");
        }
        assert_eq!(s.core.machine().job_count(), 0, "{v:?}");
        // No filter is left over.
        assert_eq!(s.core.machine().graph().len(), 3, "{v:?}");
        s.assert_graph_sound();
    }
}

/// Finding 7: only a job's main node (and a commit's top) counted as
/// busy, so another job could start on a job's filter node (and graph
/// changes then dropped a filter the first job still held), and a mirror's
/// target could be deleted under it. QEMU blocks every operation on each
/// node a job holds (`block_job_add_bdrv()`): its main node (a backup's
/// is its filter: a backup does not block its source), its filter, a
/// commit's top to base, a mirror's or backup's target.
#[test]
fn what_a_job_holds_is_busy() {
    let busy = |node: &str, kind: &str| {
        format!("Node '{node}' is busy: block device is in use by block job: {kind}")
    };
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Session::new(v);
        s.chain(dir.path());
        for n in ["dst", "src", "tgt", "t1", "t2"] {
            s.null(n);
        }
        // Active commit: its mirror_top filter is busy.
        s.ok(json!({"execute": "block-commit", "arguments": {
            "job-id": "c", "device": "top", "filter-node-name": "f"}}));
        assert_eq!(
            s.error(json!({"execute": "blockdev-mirror", "arguments": {
                "job-id": "m", "device": "f", "target": "dst", "sync": "full"}})),
            busy("f", "commit"),
            "{v:?}"
        );
        // A mirror's target.
        s.ok(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "m", "device": "src", "target": "tgt", "sync": "full"}}));
        assert_eq!(
            s.error(json!({"execute": "blockdev-del", "arguments": {"node-name": "tgt"}})),
            busy("tgt", "mirror"),
            "{v:?}"
        );
        assert_eq!(
            s.error(json!({"execute": "blockdev-backup", "arguments": {
                "job-id": "b", "device": "dst", "target": "tgt", "sync": "full"}})),
            busy("tgt", "mirror"),
            "{v:?}"
        );
        // Two backups of one source, each into its own target.
        for (job, target) in [("b1", "t1"), ("b2", "t2")] {
            s.ok(json!({"execute": "blockdev-backup", "arguments": {
                "job-id": job, "device": "dst", "target": target, "sync": "none"}}));
        }
        assert_eq!(
            s.error(json!({"execute": "blockdev-del", "arguments": {"node-name": "t1"}})),
            busy("t1", "backup"),
            "{v:?}"
        );
        s.assert_graph_sound();
    }
}

/// Finding 8: nodes a running job holds were freed as soon as no parent
/// node held them: a backup ending (its filter dropped) or the deletion of
/// a node above freed a mirror's `mirror_top` filter under the mirror.
/// QEMU's jobs hold references (`block_job_add_bdrv()`); what only a job
/// held goes when the job ends.
#[test]
fn nodes_a_job_holds_are_not_freed_under_it() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        for n in ["src", "t0", "t1"] {
            s.null(n);
        }
        // (The finding's first case, a backup of the same source ending
        // under the mirror, cannot happen: a node under a backup's filter
        // is no root node for a mirror, finding 17 and
        // jobs/mirror-of-a-node-under-a-backup.)
        s.ok(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "m", "device": "src", "target": "t1", "sync": "full",
            "filter-node-name": "mt"}}));
        let has = |s: &Session, name: &str| s.core.machine().graph().find(name).is_some();
        s.ok(json!({"execute": "blockdev-add", "arguments": {
            "driver": "raw", "node-name": "above", "file": "mt"}}));
        s.ok(json!({"execute": "blockdev-del", "arguments": {"node-name": "above"}}));
        assert!(
            has(&s, "mt"),
            "{v:?}: deleting a parent freed the mirror's filter"
        );
        s.assert_graph_sound();
        // The mirror completes; its filter goes with it.
        s.ok(json!({"execute": "job-complete", "arguments": {"id": "m"}}));
        assert!(!has(&s, "mt"), "{v:?}");
        assert_eq!(s.core.machine().job_count(), 0, "{v:?}");
        s.assert_graph_sound();
    }
}

/// Finding 9: cancelling a job paused by the user (`paused`, or `standby`
/// when ready) sent `BLOCK_JOB_CANCELLED` but left the job in its paused
/// status (the table has no paused → aborting), so it never ended.
/// `job_cancel_async()` resumes it: it returns to the status it paused in,
/// then aborts.
#[test]
fn cancelling_a_paused_job_resumes_it_first() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        for n in ["src", "t0", "t1"] {
            s.null(n);
        }
        // A running job (backup, sync none) paused, then cancelled.
        s.ok(json!({"execute": "blockdev-backup", "arguments": {
            "job-id": "b", "device": "src", "target": "t0", "sync": "none"}}));
        assert_eq!(
            statuses(&s.ok(json!({"execute": "job-pause", "arguments": {"id": "b"}}))),
            ["paused"]
        );
        let events = s.ok(json!({"execute": "job-cancel", "arguments": {"id": "b"}}));
        assert_eq!(
            statuses(&events),
            ["running", "aborting", "concluded", "null"],
            "{v:?}"
        );
        // A ready mirror paused (standby from 7.2 on), then cancelled.
        s.ok(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "m", "device": "src", "target": "t1", "sync": "full"}}));
        s.ok(json!({"execute": "job-pause", "arguments": {"id": "m"}}));
        let events = s.ok(json!({"execute": "job-cancel", "arguments": {"id": "m"}}));
        let want: &[&str] = if v < Version::V7_2 {
            &["aborting", "concluded", "null"]
        } else {
            &["ready", "aborting", "concluded", "null"]
        };
        assert_eq!(statuses(&events), want, "{v:?}");
        assert_eq!(s.core.machine().job_count(), 0, "{v:?}");
        s.assert_graph_sound();
    }
}

/// Finding 10: an export stayed on the node it was added on while its
/// BlockBackend moved with the graph (a job's filter taking the node's
/// parents, the filter dropped when the job ended, a mirror's pivot): an
/// export added on a job's filter then named a node that no longer
/// existed. `query-block-exports` shows the node the export's BlockBackend
/// is on (`blk_bs(exp->blk)`; main reads it from the backend meanwhile),
/// and the model's export record says the same.
#[test]
fn exports_follow_their_block_backend() {
    let export_node = |s: &mut Session| {
        let (_, r) = s.cmd(json!({"execute": "query-block-exports"}));
        let name = r["return"][0]["node-name"].as_str().unwrap().to_owned();
        let m = s.core.machine();
        let record = m.exports().newest_first().next().map(|e| e.node);
        assert_eq!(record, m.graph().find(&name), "the export record of {name}");
        name
    };
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        for n in ["s0", "d0", "s1", "d1"] {
            s.null(n);
        }
        s.ok(json!({"execute": "nbd-server-start", "arguments": {
            "addr": {"type": "unix", "data": {"path": "/nonexistent/nbd.sock"}}}}));
        // On a job's filter: on the filtered node once the job is gone.
        s.ok(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "m0", "device": "s0", "target": "d0", "sync": "full",
            "filter-node-name": "f0"}}));
        s.ok(json!({"execute": "block-export-add", "arguments": {
            "type": "nbd", "id": "e0", "node-name": "f0"}}));
        assert_eq!(export_node(&mut s), "f0");
        s.ok(json!({"execute": "job-cancel", "arguments": {"id": "m0"}}));
        assert_eq!(export_node(&mut s), "s0", "{v:?}");
        s.ok(json!({"execute": "block-export-del", "arguments": {"id": "e0"}}));
        // On a mirror's source: on its filter while it runs, on the target
        // after the pivot.
        s.ok(json!({"execute": "block-export-add", "arguments": {
            "type": "nbd", "id": "e1", "node-name": "s1"}}));
        s.ok(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "m1", "device": "s1", "target": "d1", "sync": "full",
            "filter-node-name": "f1"}}));
        assert_eq!(export_node(&mut s), "f1", "{v:?}");
        s.ok(json!({"execute": "job-complete", "arguments": {"id": "m1"}}));
        assert_eq!(export_node(&mut s), "d1", "{v:?}");
        s.assert_graph_sound();
    }
}

/// Finding 15 (in main's new rate limit): with a speed under 10 bytes per
/// second the quota of a 100 ms slice rounded down to 0, and the job never
/// progressed however far time advanced (property 5). QEMU's
/// `ratelimit_set_speed()` gives a slice at least one byte.
#[test]
fn a_tiny_speed_still_moves_a_byte_per_slice() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::stepped(v);
        for n in ["src", "dst"] {
            s.ok(json!({"execute": "blockdev-add", "arguments": {
                "driver": "null-co", "node-name": n, "size": 1024}}));
        }
        s.ok(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "m", "device": "src", "target": "dst", "sync": "full",
            "speed": 1}}));
        let advance = |s: &mut Session, us: u64| {
            s.ok(json!({"execute": "x-mock-clock-advance",
                "arguments": {"microseconds": us}}))
        };
        assert!(advance(&mut s, 1_000_000).is_empty());
        let offset = s.core.machine().job("m").map(|j| j.offset);
        assert_eq!(offset, Some(10), "{v:?}: ten slices of one byte");
        let events = advance(&mut s, 101_400_000);
        assert_eq!(statuses(&events), ["ready"], "{v:?}");
    }
}

/// Finding 16 (after filters began to wait for their job's dismissal): a
/// concluded stream (auto-dismiss off) holds its named copy-on-read filter
/// out of the graph; an export of that filter node itself, then
/// `job-dismiss`, dropped the filter under the export (the export pointed
/// at a node that no longer existed). Real 7.2 and 10.0 crash on this
/// graph; the mock keeps the filter while the export holds it, as
/// reference counting would. Reproducer:
/// fuzz/regressions/blockops/export-of-a-held-stream-filter.
#[test]
fn a_dismissed_jobs_filter_stays_while_an_export_holds_it() {
    for v in [Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        s.null("n5");
        s.ok(json!({"execute": "nbd-server-start", "arguments": {
            "addr": {"type": "unix", "data": {"path": "/nonexistent/nbd.sock"}}}}));
        let events = s.ok(json!({"execute": "block-stream", "arguments": {
            "job-id": "j2", "device": "n5", "filter-node-name": "f", "auto-dismiss": false}}));
        assert_eq!(statuses(&events).last(), Some(&"concluded"), "{v:?}");
        s.ok(json!({"execute": "nbd-server-add", "arguments": {"device": "f", "name": "e1"}}));
        s.ok(json!({"execute": "job-dismiss", "arguments": {"id": "j2"}}));
        let (_, r) = s.cmd(json!({"execute": "query-block-exports"}));
        assert_eq!(r["return"][0]["node-name"], "f", "{v:?}");
        let m = s.core.machine();
        let record = m.exports().newest_first().next().map(|e| e.node);
        assert!(
            record.is_some_and(|n| m.graph().node(n).is_some()),
            "{v:?}: export on a live node"
        );
        s.assert_graph_sound();
        // Once the export lets go, the filter goes too and its name is free.
        s.ok(json!({"execute": "nbd-server-remove", "arguments": {"name": "e1"}}));
        s.null("f");
        s.assert_graph_sound();
    }
}

/// Finding 17: a mirror from a node into its own parent (a raw node over
/// the file node it mirrors) pivoted the parent onto itself and left a
/// dangling `file` child. QEMU refuses any mirror whose source has a node
/// above it: `qmp_get_root_bs()`, "Need a root block node" (recorded in
/// jobs/mirror-into-its-own-parent). Reproducer:
/// fuzz/regressions/blockops/mirror-into-its-own-parent.
#[test]
fn a_mirror_source_must_be_a_root_node() {
    for v in [Version::V5_2, Version::V7_2, Version::V10_0] {
        let mut s = Session::new(v);
        s.null("base");
        s.ok(json!({"execute": "blockdev-add", "arguments": {
            "driver": "raw", "node-name": "top", "file": "base"}}));
        let e = s.error(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "j0", "device": "base", "target": "top", "sync": "full"}}));
        assert_eq!(e, "Need a root block node", "{v:?}");
        s.null("other");
        let e = s.error(json!({"execute": "blockdev-mirror", "arguments": {
            "job-id": "j0", "device": "base", "target": "other", "sync": "full"}}));
        assert_eq!(e, "Need a root block node", "{v:?}: whatever the target");
        let (_, r) = s.cmd(json!({"execute": "query-jobs"}));
        assert_eq!(r["return"], json!([]), "{v:?}");
        s.assert_graph_sound();
    }
}
