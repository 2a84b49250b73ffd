//! `qmp-client SOCKET`: the project's own small QMP client, a reference
//! for `qmp-conform client`. It drives the seed's operations the way a
//! management tool should:
//!
//! negotiate; add two 1 MiB `null-co` nodes; `blockdev-mirror` with
//! `auto-dismiss: false`; wait for `BLOCK_JOB_READY`; `job-complete`; wait
//! for the job to conclude; `job-dismiss`.
//!
//! Every command carries an id and its reply is matched by it; events that
//! arrive meanwhile are queued. When the connection breaks it connects
//! again, negotiates again and asks QEMU what state the nodes and the job
//! are in (events sent while it was away are lost), then goes on from there.
//! Blocking std I/O, no runtime: small enough to read in one sitting.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const JOB: &str = "mirror0";
const NODES: [&str; 2] = ["src", "dst"];
/// Longest wait for any one message.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Reconnects before giving up.
const MAX_RECONNECTS: u32 = 3;

#[derive(Debug)]
enum Error {
    /// The connection broke (EOF, reset, timeout): worth reconnecting.
    Disconnected(String),
    /// QEMU refused a command.
    Qmp { command: String, desc: String },
    /// QEMU said something that makes no sense here.
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Disconnected(m) => write!(f, "disconnected: {m}"),
            Error::Qmp { command, desc } => write!(f, "{command} failed: {desc}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

fn lost(e: std::io::Error) -> Error {
    Error::Disconnected(e.to_string())
}

/// One negotiated QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects (retrying briefly while the socket refuses), reads the
    /// greeting and negotiates.
    fn connect(path: &Path) -> Result<Qmp> {
        let until = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(lost(e)),
            }
        };
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(lost)?;
        let writer = stream.try_clone().map_err(lost)?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            next_id: 0,
            events: VecDeque::new(),
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Protocol(format!(
                "expected the greeting, got {greeting}"
            )));
        }
        // Enable nothing: this client needs no out-of-band commands.
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).map_err(lost)? == 0 {
                return Err(Error::Disconnected(
                    "the server closed the connection".into(),
                ));
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::Protocol(format!("unparsable message {line:?}: {e}")))
    }

    /// Runs a command and returns its `return` value; events that come
    /// before the reply are queued.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        self.next_id += 1;
        let id = format!("qmp-client-{}", self.next_id);
        let mut msg = json!({"execute": command, "id": id});
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).map_err(lost)?;
        loop {
            let m = self.read_message()?;
            if m.get("event").is_some() {
                self.events.push_back(m);
                continue;
            }
            if m.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                return Err(Error::Protocol(format!("reply for another command: {m}")));
            }
            if let Some(e) = m.get("error") {
                return Err(Error::Qmp {
                    command: command.into(),
                    desc: e.get("desc").and_then(Value::as_str).unwrap_or("?").into(),
                });
            }
            return m
                .get("return")
                .cloned()
                .ok_or_else(|| Error::Protocol(format!("reply without return: {m}")));
        }
    }

    /// The next event, queued or read.
    fn next_event(&mut self) -> Result<Value> {
        match self.events.pop_front() {
            Some(e) => Ok(e),
            None => {
                let m = self.read_message()?;
                if m.get("event").is_none() {
                    return Err(Error::Protocol(format!("a reply nobody asked for: {m}")));
                }
                Ok(m)
            }
        }
    }
}

/// Whether an event is about our job (`JOB_STATUS_CHANGE` names it `id`,
/// `BLOCK_JOB_*` names it `device`).
fn about_job(e: &Value) -> bool {
    let d = &e["data"];
    let key = if e["event"] == "JOB_STATUS_CHANGE" {
        "id"
    } else {
        "device"
    };
    d.get(key).and_then(Value::as_str) == Some(JOB)
}

/// The job's status per `query-jobs` (`None`: no such job).
fn job_status(q: &mut Qmp) -> Result<Option<(String, Option<String>)>> {
    let jobs = q.execute("query-jobs", json!({}))?;
    Ok(jobs.as_array().into_iter().flatten().find_map(|j| {
        (j["id"] == JOB).then(|| {
            (
                j["status"].as_str().unwrap_or_default().to_owned(),
                j.get("error").and_then(Value::as_str).map(String::from),
            )
        })
    }))
}

/// The flow, resumable: each step first asks QEMU what is already done.
fn run(q: &mut Qmp, mirror_started: &mut bool) -> Result<()> {
    let nodes = q.execute("query-named-block-nodes", json!({}))?;
    for name in NODES {
        let present = nodes
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["node-name"] == name);
        if !present {
            q.execute(
                "blockdev-add",
                json!({"driver": "null-co", "node-name": name, "size": 1_048_576}),
            )?;
        }
    }
    loop {
        match job_status(q)? {
            None if !*mirror_started => {
                q.execute(
                    "blockdev-mirror",
                    json!({"job-id": JOB, "device": "src", "target": "dst",
                           "sync": "full", "auto-dismiss": false}),
                )?;
                *mirror_started = true;
            }
            // Started and gone: dismissed on an earlier connection.
            None => return Ok(()),
            Some((status, error)) => match status.as_str() {
                "ready" => {
                    q.execute("job-complete", json!({"id": JOB}))?;
                }
                "concluded" => {
                    q.execute("job-dismiss", json!({"id": JOB}))?;
                    return match error {
                        Some(e) => Err(Error::Protocol(format!("job {JOB} failed: {e}"))),
                        None => Ok(()),
                    };
                }
                "paused" | "standby" => {
                    return Err(Error::Protocol(format!("job {JOB} is {status}")));
                }
                // created, running, waiting, pending, aborting: wait for
                // news of the job (BLOCK_JOB_READY, a status change).
                _ => while !about_job(&q.next_event()?) {},
            },
        }
    }
}

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: qmp-client SOCKET");
        return ExitCode::from(2);
    };
    let mut mirror_started = false;
    let mut reconnects = 0;
    loop {
        let result = Qmp::connect(&path).and_then(|mut q| run(&mut q, &mut mirror_started));
        match result {
            Ok(()) => return ExitCode::SUCCESS,
            Err(Error::Disconnected(m)) if reconnects < MAX_RECONNECTS => {
                reconnects += 1;
                eprintln!("qmp-client: {m}; connecting again ({reconnects}/{MAX_RECONNECTS})");
            }
            Err(e) => {
                eprintln!("qmp-client: {e}");
                return ExitCode::from(1);
            }
        }
    }
}
