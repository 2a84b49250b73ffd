//! `qmp-shell` (python qemu.qmp 0.0.6, from the venv `ci/test.sh` makes)
//! driven on its standard input, as a person at the shell would: its
//! `cmd arg=value` lines, a `transaction(` … `)` block, blank lines to see
//! the events that arrived. Against the mock-qemu binary its printed
//! replies are checked; against real qemu-storage-daemon 10.0 (when
//! `QEMU_QSD_10_0` names it) the printed output must be the same as the
//! mock's, timestamps masked.
//!
//! The driver writes one line, then reads qmp-shell's output up to its next
//! prompt (`(QEMU) ` or `TRANS> `; python's `input()` flushes it). A `wait`
//! step sends blank lines until an event line containing its text has been
//! printed: each blank line lets qmp-shell read what arrived and print the
//! events (bounded by a deadline, no sleeping). The events are compared as
//! one sequence, apart from the replies: when they are printed depends on
//! timing, their order does not.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use conformance::target::{LaunchSpec, Process};
use mock_qemu::profile::{Flavor, Version};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The venv's qmp-shell, or `None` after saying why the test does nothing
/// (outside CI only).
fn qmp_shell() -> Option<PathBuf> {
    let p = std::env::var_os("QMP_CONFORM_QEMU_QMP_PYTHON")
        .map(|py| PathBuf::from(py).with_file_name("qmp-shell"))
        .unwrap_or_else(|| repo().join(".cache/qemu-qmp-venv/bin/qmp-shell"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "{} is missing; ci/test.sh installs qemu.qmp",
        p.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (ci/test.sh installs qemu.qmp)",
        p.display()
    );
    None
}

/// One line of the script.
enum Step {
    /// A line typed at the prompt; its printed output is kept.
    Line(&'static str),
    /// Blank lines until an event line containing this text was printed.
    Wait(&'static str),
}

/// The session: a mirror between two null-co nodes to READY, completed;
/// errors on the way; a transaction of two bitmaps; a node deleted.
const SCRIPT: &[Step] = &[
    Step::Line("blockdev-add driver=null-co node-name=src size=1048576"),
    Step::Line("blockdev-add driver=null-co node-name=dst size=1048576"),
    Step::Line("blockdev-add driver=null-co node-name=src size=1048576"),
    Step::Line("block-job-complete device=mirror0"),
    Step::Line("blockdev-mirror job-id=mirror0 device=src target=dst sync=full"),
    Step::Wait("'event': 'BLOCK_JOB_READY'"),
    Step::Line("query-block-jobs"),
    Step::Line("block-job-complete device=mirror0"),
    Step::Wait("'status': 'null'"),
    Step::Line("query-block-jobs"),
    Step::Line("transaction("),
    Step::Line("block-dirty-bitmap-add node=src name=b0"),
    Step::Line("block-dirty-bitmap-add node=dst name=b0 granularity=131072 persistent=false"),
    Step::Line(")"),
    Step::Line("block-dirty-bitmap-add node=src name=b0"),
    Step::Line("query-named-block-nodes flat=true"),
    Step::Line("blockdev-del node-name=dst"),
    Step::Line("query-jobs"),
    Step::Line("no-such-command"),
];

/// What the shell printed: the banner, each line typed with its output,
/// and the events in the order they were printed.
#[derive(Debug, PartialEq, Eq)]
struct Session {
    banner: String,
    replies: Vec<(String, String)>,
    events: Vec<String>,
}

struct Shell {
    child: Child,
    stdin: ChildStdin,
    out: Receiver<Vec<u8>>,
    buf: String,
}

impl Shell {
    fn start(shell: &Path, sock: &Path) -> Shell {
        let mut child = Command::new(shell)
            .arg(sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", shell.display()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Shell {
            child,
            stdin,
            out,
            buf: String::new(),
        }
    }

    /// Output up to (without) the next prompt.
    fn until_prompt(&mut self, deadline: Instant) -> String {
        loop {
            for p in ["(QEMU) ", "TRANS> "] {
                if let Some(text) = self.buf.strip_suffix(p) {
                    let text = text.to_owned();
                    self.buf.clear();
                    return text;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(b) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "qmp-shell printed no prompt in time; so far: {:?}",
                        self.buf
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("qmp-shell ended; it printed: {:?}", self.buf)
                }
            }
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("writing to qmp-shell");
        self.stdin.flush().unwrap();
    }
}

/// Masks the event timestamps (`'seconds': 1795656036` → `'seconds': N`).
fn mask(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest
        .find("'seconds': ")
        .map(|i| i + "'seconds': ".len())
        .into_iter()
        .chain(
            rest.find("'microseconds': ")
                .map(|i| i + "'microseconds': ".len()),
        )
        .min()
    {
        out.push_str(&rest[..i]);
        rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('N');
    }
    out.push_str(rest);
    out
}

fn run_session(shell: &Path, sock: &Path) -> Session {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sh = Shell::start(shell, sock);
    let banner = sh.until_prompt(deadline);
    let mut replies = Vec::new();
    let mut events = Vec::new();
    for step in SCRIPT {
        match step {
            Step::Line(l) => {
                sh.send(l);
                let out = sh.until_prompt(deadline);
                replies.push(((*l).to_owned(), out));
            }
            Step::Wait(text) => loop {
                sh.send("");
                let out = sh.until_prompt(deadline);
                let got: Vec<String> = out.lines().filter(|l| !l.is_empty()).map(mask).collect();
                let seen = got.iter().any(|e| e.contains(text));
                events.extend(got);
                if seen {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no event with {text} in time; events: {events:#?}"
                );
            },
        }
    }
    drop(sh.stdin);
    let status = sh.child.wait().unwrap();
    assert!(status.success(), "qmp-shell exited with {status}");
    Session {
        banner,
        replies,
        events,
    }
}

fn launched(spec: LaunchSpec) -> (tokio::runtime::Runtime, Process) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = rt.block_on(Process::launch(spec)).expect("launching");
    (rt, p)
}

fn on_mock(shell: &Path) -> Session {
    let (_rt, p) = launched(LaunchSpec::mock_binary(
        &mock_qemu_bin(),
        Version::V10_0,
        Flavor::Qsd,
    ));
    run_session(shell, p.socket_path())
}

fn reply<'a>(s: &'a Session, line: &str, nth: usize) -> &'a str {
    s.replies
        .iter()
        .filter(|(l, _)| l == line)
        .nth(nth)
        .map(|(_, out)| out.trim_end())
        .unwrap_or_else(|| panic!("no reply to {line}"))
}

#[test]
fn qmp_shell_on_stdin_drives_a_mirror_on_the_mock() {
    let Some(shell) = qmp_shell() else { return };
    let s = on_mock(&shell);
    assert!(
        s.banner.contains("Connected to QEMU 10.0.2"),
        "{}",
        s.banner
    );
    let add = "blockdev-add driver=null-co node-name=src size=1048576";
    assert_eq!(reply(&s, add, 0), r#"{"return": {}}"#);
    assert_eq!(
        reply(&s, add, 1),
        r#"{"error": {"class": "GenericError", "desc": "Duplicate nodes with node-name='src'"}}"#
    );
    let complete = "block-job-complete device=mirror0";
    assert_eq!(
        reply(&s, complete, 0),
        r#"{"error": {"class": "DeviceNotActive", "desc": "Block job 'mirror0' not found"}}"#
    );
    assert_eq!(reply(&s, complete, 1), r#"{"return": {}}"#);
    let jobs = reply(&s, "query-block-jobs", 0);
    assert!(
        jobs.contains(r#""device": "mirror0""#) && jobs.contains(r#""ready": true"#),
        "{jobs}"
    );
    assert_eq!(reply(&s, "query-block-jobs", 1), r#"{"return": []}"#);
    // The transaction's actions are cached (no output), `)` sends it.
    assert_eq!(reply(&s, "transaction(", 0), "");
    assert_eq!(reply(&s, ")", 0), r#"{"return": {}}"#);
    assert_eq!(
        reply(&s, "block-dirty-bitmap-add node=src name=b0", 1),
        r#"{"error": {"class": "GenericError", "desc": "Bitmap already exists: b0"}}"#
    );
    let nodes = reply(&s, "query-named-block-nodes flat=true", 0);
    assert!(
        nodes.contains(r#""granularity": 131072"#) && nodes.contains(r#""node-name": "dst""#),
        "{nodes}"
    );
    assert_eq!(
        reply(&s, "no-such-command", 0),
        r#"{"error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}}"#
    );
    let names: Vec<&str> = s
        .events
        .iter()
        .map(|e| {
            let at = e.find("'event': '").expect("an event line") + "'event': '".len();
            &e[at..at + e[at..].find('\'').unwrap()]
        })
        .collect();
    assert_eq!(
        names,
        [
            "JOB_STATUS_CHANGE",
            "JOB_STATUS_CHANGE",
            "JOB_STATUS_CHANGE",
            "BLOCK_JOB_READY",
            "JOB_STATUS_CHANGE",
            "JOB_STATUS_CHANGE",
            "BLOCK_JOB_COMPLETED",
            "JOB_STATUS_CHANGE",
            "JOB_STATUS_CHANGE",
        ],
        "{:#?}",
        s.events
    );
}

#[test]
fn qmp_shell_prints_the_same_on_the_mock_and_on_real_qsd_10_0() {
    let Some(shell) = qmp_shell() else { return };
    let real = std::env::var_os("QEMU_QSD_10_0")
        .map(PathBuf::from)
        .filter(|p| p.exists());
    let Some(real) = real else {
        assert!(
            std::env::var("QMP_CONFORM_REAL").as_deref() != Ok("1"),
            "QMP_CONFORM_REAL=1 but QEMU_QSD_10_0 names no binary"
        );
        eprintln!("SKIPPED: QEMU_QSD_10_0 is not set (ci/fetch-qemu.sh prints it)");
        return;
    };
    let mock = on_mock(&shell);
    let (_rt, p) = launched(LaunchSpec::real_qemu(&real, Flavor::Qsd));
    let qsd = run_session(&shell, p.socket_path());
    assert_eq!(mock.banner, qsd.banner);
    assert_eq!(mock.replies.len(), SCRIPT.len() - 2);
    assert_eq!(mock.replies.len(), qsd.replies.len());
    for ((line, m), (_, q)) in mock.replies.iter().zip(&qsd.replies) {
        assert_eq!(m, q, "qmp-shell printed different replies to {line}");
    }
    assert_eq!(mock.events, qsd.events, "the events differ");
}

#[test]
fn timestamps_are_masked() {
    assert_eq!(
        mask("{'timestamp': {'seconds': 1795656036, 'microseconds': 880097}, 'event': 'X'}"),
        "{'timestamp': {'seconds': N, 'microseconds': N}, 'event': 'X'}"
    );
}

fn mock_qemu_bin() -> PathBuf {
    conformance::target::built_mock_binary().unwrap_or_else(|e| panic!("{e}"))
}
