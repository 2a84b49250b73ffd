//! `qmp-conform client`: the good clients pass every check, the broken
//! fixture fails exactly the checks its defects break.
//!
//! The clients are external processes; every wait for them is bounded by
//! the case timeout. Python's qemu.qmp comes from the venv `ci/test.sh`
//! makes (`.cache/qemu-qmp-venv`); without it these two tests say so and
//! pass, except in CI (`CI=true`), where a missing venv fails them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use conformance::client::{self, CheckOptions, ClientUnderTest};
use conformance::report::Verdict;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn own_client() -> String {
    format!("'{}' {{socket}}", env!("CARGO_BIN_EXE_qmp-client"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A python that runs, or `None` after saying why the test does nothing.
fn python(path: PathBuf, what: &str) -> Option<PathBuf> {
    let works = Command::new(&path)
        .args(["-c", "import sys"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(path);
    }
    assert!(
        !in_ci(),
        "{what}: {} does not run; ci/test.sh sets it up in CI",
        path.display()
    );
    eprintln!(
        "SKIPPED: {what}: {} does not run (ci/test.sh sets it up)",
        path.display()
    );
    None
}

/// Python with qemu.qmp: `$QMP_CONFORM_QEMU_QMP_PYTHON`, else the venv.
fn qemu_qmp_python() -> Option<PathBuf> {
    let p = std::env::var_os("QMP_CONFORM_QEMU_QMP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/qemu-qmp-venv/bin/python"));
    let p = python(p, "python qemu.qmp")?;
    let imports = Command::new(&p)
        .args(["-c", "import qemu.qmp"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(imports, "{} cannot import qemu.qmp", p.display());
    Some(p)
}

fn run(client: ClientUnderTest, filter: &str, opts: CheckOptions) -> BTreeMap<String, Verdict> {
    let cases: Vec<_> = client::cases(&repo().join("fixtures"))
        .unwrap()
        .into_iter()
        .filter(|c| c.id.contains(filter))
        .collect();
    assert!(!cases.is_empty(), "no case matches {filter}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(client::run_checks(&cases, &client, &opts, |_| {}))
        .unwrap();
    results.into_iter().map(|r| (r.id, r.verdict)).collect()
}

fn all_pass(verdicts: &BTreeMap<String, Verdict>) {
    let bad: Vec<_> = verdicts
        .iter()
        .filter(|(_, v)| **v != Verdict::Pass)
        .collect();
    assert!(bad.is_empty(), "not passed: {bad:#?}");
    assert_eq!(verdicts.len(), 9, "{verdicts:#?}");
}

#[test]
fn the_own_client_passes_every_check() {
    all_pass(&run(
        ClientUnderTest::Exec(own_client()),
        "",
        CheckOptions::default(),
    ));
}

#[test]
fn python_qemu_qmp_passes_every_check() {
    let Some(py) = qemu_qmp_python() else { return };
    let script = repo().join("ci/clients/qemu_qmp_client.py");
    let cmd = format!("'{}' '{}' {{socket}}", py.display(), script.display());
    all_pass(&run(
        ClientUnderTest::Exec(cmd),
        "",
        CheckOptions::default(),
    ));
}

#[test]
fn python_qemu_qmp_legacy_passes_every_check() {
    let Some(py) = qemu_qmp_python() else { return };
    let script = repo().join("ci/clients/qemu_qmp_legacy_client.py");
    let cmd = format!("'{}' '{}' {{socket}}", py.display(), script.display());
    all_pass(&run(
        ClientUnderTest::Exec(cmd),
        "",
        CheckOptions::default(),
    ));
}

#[test]
fn the_broken_client_fails_exactly_the_checks_its_defects_break() {
    let Some(py) = python("python3".into(), "the broken client") else {
        return;
    };
    let script = repo().join("conformance/tests/clients/broken_client.py");
    let cmd = format!("'{}' '{}' {{socket}}", py.display(), script.display());
    let v = run(ClientUnderTest::Exec(cmd), "", CheckOptions::default());
    let kind = |v: &Verdict| match v {
        Verdict::Pass => "pass",
        Verdict::Fail(_) => "fail",
        Verdict::Skipped(_) => "skip",
        _ => "other",
    };
    let got: BTreeMap<&str, &str> = v.iter().map(|(id, v)| (id.as_str(), kind(v))).collect();
    let want: BTreeMap<&str, &str> = [
        ("client/coalesced-stream", "pass"),
        ("client/dismisses-concluded", "fail"),
        ("client/event-before-reply", "fail"),
        ("client/id-echo", "skip"),
        ("client/negotiates-first", "fail"),
        ("client/oob-greeting", "pass"),
        ("client/ready-before-complete", "fail"),
        ("client/reconnect", "fail"),
        ("client/split-stream", "pass"),
    ]
    .into();
    assert_eq!(got, want, "{v:#?}");
    // Each failure names its cause.
    let reason = |id: &str| match &v[id] {
        Verdict::Fail(m) | Verdict::Skipped(m) => m.clone(),
        other => panic!("{id}: {other:?}"),
    };
    let expect = [
        (
            "client/negotiates-first",
            "the first message was {\"execute\":\"query-version\"}",
        ),
        ("client/event-before-reply", "unexpected message"),
        (
            "client/ready-before-complete",
            "job-complete for 'mirror0' came before BLOCK_JOB_READY",
        ),
        (
            "client/dismisses-concluded",
            "job 'mirror0' concluded (auto-dismiss false) and was never dismissed",
        ),
        ("client/reconnect", "the client never connected again"),
        ("client/id-echo", "no command carried an id"),
    ];
    for (id, text) in expect {
        assert!(reason(id).contains(text), "{id}: {}", reason(id));
    }
}

#[test]
fn a_client_that_never_connects_times_out() {
    let opts = CheckOptions {
        timeout: Duration::from_secs(1),
        ..CheckOptions::default()
    };
    let started = Instant::now();
    let v = run(
        ClientUnderTest::Exec("sleep 30".into()),
        "negotiates-first",
        opts,
    );
    let Verdict::Fail(m) = &v["client/negotiates-first"] else {
        panic!("{v:?}")
    };
    assert!(
        m.contains("timed out after 1s") && m.contains("never connected"),
        "{m}"
    );
    // The whole process group is gone: nothing waits for `sleep 30`.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_client_that_fails_is_reported_with_its_stderr() {
    let v = run(
        ClientUnderTest::Exec("echo first >&2; echo 'it broke' >&2; exit 3".into()),
        "split-stream",
        CheckOptions::default(),
    );
    let Verdict::Fail(m) = &v["client/split-stream"] else {
        panic!("{v:?}")
    };
    assert!(
        m.contains("exited with status 3") && m.contains("first | it broke"),
        "{m}"
    );
}

#[test]
fn listen_mode_waits_for_the_client_and_its_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let launcher = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            // The client is started once the socket exists (bounded wait).
            let until = Instant::now() + Duration::from_secs(10);
            while !sock.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            Command::new(env!("CARGO_BIN_EXE_qmp-client"))
                .arg(&sock)
                .status()
                .unwrap()
        })
    };
    let v = run(
        ClientUnderTest::Listen(sock.clone()),
        "reconnect",
        CheckOptions::default(),
    );
    assert!(launcher.join().unwrap().success());
    assert_eq!(v["client/reconnect"], Verdict::Pass, "{v:?}");
    assert!(!sock.exists(), "the socket is removed at the end");
}

#[test]
fn the_cli_writes_reports_and_exits_non_zero_on_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let conform = env!("CARGO_BIN_EXE_qmp-conform");
    let run_cli = |exec: &str, filter: &str| {
        let (json, junit) = (dir.path().join("r.json"), dir.path().join("r.xml"));
        let out = Command::new(conform)
            .args(["client", "--exec", exec, "--filter", filter, "--json"])
            .arg(&json)
            .arg("--junit")
            .arg(&junit)
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let xml = std::fs::read_to_string(&junit).unwrap();
        (out, report, xml)
    };
    let (out, report, xml) = run_cli(&own_client(), "dismisses");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["passed"], 1, "{report}");
    assert!(xml.contains("client/dismisses-concluded"), "{xml}");

    let (out, report, xml) = run_cli("exit 0", "id-echo");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(report["cases"][0]["verdict"], "fail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the client ended without connecting")
            && stdout.contains("0 passed, 1 failed, 0 skipped"),
        "{stdout}"
    );
    assert!(xml.contains("<failure"), "{xml}");
}
