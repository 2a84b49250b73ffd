//! Checking QMP clients: `qmp-conform client` plays QEMU's side and judges
//! the client under test.
//!
//! The server is mock-qemu's [`Core`] in this process (its state model and a
//! recorded profile) behind a judging, adversarial transport. Each check is
//! a case file, `fixtures/clients/<name>.txt`:
//!
//! ```text
//! # id: client/split-stream             (optional; defaults to client/<name>)
//! # description: one line: what the client must cope with
//! # checks: the QEMU behaviour or document it rests on
//! transport: split 1                    plain | split N | coalesce | event-before-reply | drop-once
//! inject-event: NAME {"data": …}        the event event-before-reply sends (in the profile's schema)
//! judge: negotiates-first               zero or more: negotiates-first, ids, oob,
//!                                       ready-before-complete, dismisses-concluded, reconnects
//! ```
//!
//! Per case the client gets a fresh mock and a fresh unix socket in a private
//! folder (`--exec`), or connects to the socket given with `--listen`. Jobs
//! run in stepped mode: while a job is running, a wall-clock tick (default
//! 100 ms) moves the virtual clock by a second, so a mirror gets ready one
//! tick after it started, as a real one takes a while. The tick is the only
//! timed thing; every wait ends at the case's deadline with a failing
//! verdict.
//!
//! Transports: `plain` writes each message as QEMU does (one write each);
//! `split N` cuts everything, the greeting included, into N-byte writes;
//! `coalesce` writes all that one input produced (events, the reply, the
//! events after it) in a single write; `event-before-reply` sends the
//! `inject-event` before every reply once negotiated; `drop-once` closes the
//! connection at the first tick while a job runs, and lets that tick's
//! events (the job getting ready) go to nobody, then accepts a reconnect.
//!
//! Every case requires that the client negotiates, ends on its own (exit
//! status 0 with `--exec`, closing its connection with `--listen`) within the
//! timeout. A judge whose situation never arose (no job, no id) gives a
//! skipped verdict saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mock_qemu::core::{json_style, Core, CoreConfig, Delivery, SessionId};
use mock_qemu::model::jobs::JobStatus;
use mock_qemu::profile::{Flavor, Profile, ProfileError, Version};
use mock_qemu::qmp::json::{to_json_with, JsonStreamer, Parsed, Style};
use mock_qemu::qmp::qobject::{QDict, QObject};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::process::Child;

use crate::report::{CaseResult, Verdict};

/// Errors of the client checks (not verdicts: a failing client is a verdict).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A case file is malformed.
    #[error("{}: {message}", path.display())]
    Case {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading cases, binding the socket, starting the client.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The profile is not recorded.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// An `inject-event` the impersonated QEMU does not have.
    #[error("case {case}: event {event} is not in the schema of {profile}")]
    UnknownEvent {
        /// The case id.
        case: String,
        /// The event name.
        event: String,
        /// The profile label.
        profile: String,
    },
    /// `--listen PATH` names something that is not a socket.
    #[error("--listen {}: the path exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Io { what, source }
}

/// How the server writes to the client in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One write per message, as QEMU does.
    Plain,
    /// Every write cut into pieces of this many bytes.
    Split(usize),
    /// Everything one input produced in one write.
    Coalesce,
    /// The case's event before every reply (once negotiated).
    EventBeforeReply,
    /// The connection closed once while a job runs; a reconnect is accepted.
    DropOnce,
}

/// A property of the client, judged from what went over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// The first message on every connection is `qmp_capabilities`.
    NegotiatesFirst,
    /// Commands carry an `id` (and the client copes with its echo).
    Ids,
    /// Only offered capabilities are enabled; `exec-oob` only once enabled.
    Oob,
    /// `job-complete`/`block-job-complete` only after that job's `BLOCK_JOB_READY`.
    ReadyBeforeComplete,
    /// Jobs that concluded with auto-dismiss off are dismissed.
    DismissesConcluded,
    /// After the server dropped the connection, the client came back and negotiated.
    Reconnects,
}

impl Judge {
    const ALL: [Judge; 6] = [
        Judge::NegotiatesFirst,
        Judge::Ids,
        Judge::Oob,
        Judge::ReadyBeforeComplete,
        Judge::DismissesConcluded,
        Judge::Reconnects,
    ];

    /// The name used in case files.
    pub fn name(self) -> &'static str {
        match self {
            Judge::NegotiatesFirst => "negotiates-first",
            Judge::Ids => "ids",
            Judge::Oob => "oob",
            Judge::ReadyBeforeComplete => "ready-before-complete",
            Judge::DismissesConcluded => "dismisses-concluded",
            Judge::Reconnects => "reconnects",
        }
    }
}

/// One client check, parsed from `fixtures/clients/<name>.txt`.
#[derive(Debug, Clone)]
pub struct ClientCase {
    /// Stable id: `client/<name>`.
    pub id: String,
    /// One line saying what the client must cope with.
    pub description: String,
    /// The QEMU behaviour or reference it rests on.
    pub checks: String,
    /// How the server writes.
    pub transport: Transport,
    /// The event `event-before-reply` injects: name and data.
    pub inject: Option<(String, Value)>,
    /// What is judged besides the baseline (negotiated, ended well in time).
    pub judges: Vec<Judge>,
}

impl ClientCase {
    /// Parses a case file's text; `default_id` is used without `# id:`.
    pub fn parse(text: &str, default_id: &str) -> Result<ClientCase, String> {
        let mut case = ClientCase {
            id: default_id.to_owned(),
            description: String::new(),
            checks: String::new(),
            transport: Transport::Plain,
            inject: None,
            judges: Vec::new(),
        };
        let mut transport_seen = false;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                if let Some((k, v)) = c.split_once(':') {
                    let v = v.trim().to_owned();
                    match k.trim() {
                        "id" => case.id = v,
                        "description" => case.description = v,
                        "checks" => case.checks = v,
                        _ => {}
                    }
                }
                continue;
            }
            let at = |m: String| format!("line {}: {m}", n + 1);
            let (key, value) = line
                .split_once(':')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| at(format!("expected 'key: value', got '{line}'")))?;
            match key {
                "transport" => {
                    transport_seen = true;
                    case.transport = match value.split_whitespace().collect::<Vec<_>>()[..] {
                        ["plain"] => Transport::Plain,
                        ["coalesce"] => Transport::Coalesce,
                        ["event-before-reply"] => Transport::EventBeforeReply,
                        ["drop-once"] => Transport::DropOnce,
                        ["split", n] => match n.parse::<usize>() {
                            Ok(n) if n > 0 => Transport::Split(n),
                            _ => return Err(at(format!("split needs a positive size, got '{n}'"))),
                        },
                        _ => return Err(at(format!("unknown transport '{value}'"))),
                    }
                }
                "inject-event" => {
                    let (name, data) = value
                        .split_once(char::is_whitespace)
                        .unwrap_or((value, "{}"));
                    let data: Value = serde_json::from_str(data.trim())
                        .map_err(|e| at(format!("inject-event data: {e}")))?;
                    if !data.is_object() {
                        return Err(at("inject-event data must be a JSON object".into()));
                    }
                    case.inject = Some((name.to_owned(), data));
                }
                "judge" => {
                    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let j = Judge::ALL
                            .into_iter()
                            .find(|j| j.name() == name)
                            .ok_or_else(|| at(format!("unknown judge '{name}'")))?;
                        case.judges.push(j);
                    }
                }
                _ => return Err(at(format!("unknown key '{key}'"))),
            }
        }
        if case.description.is_empty() {
            return Err("no '# description:' line".into());
        }
        if !transport_seen {
            return Err("no 'transport:' line".into());
        }
        if case.transport == Transport::EventBeforeReply && case.inject.is_none() {
            return Err("transport event-before-reply needs an 'inject-event:' line".into());
        }
        Ok(case)
    }
}

/// Every case under `fixtures/clients/`, sorted by file name.
pub fn cases(fixtures: &Path) -> Result<Vec<ClientCase>, ClientError> {
    let dir = fixtures.join("clients");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))?;
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            ClientCase::parse(&text, &format!("client/{stem}")).map_err(|message| {
                ClientError::Case {
                    path: p.clone(),
                    message,
                }
            })
        })
        .collect()
}

/// The client under test.
#[derive(Debug, Clone)]
pub enum ClientUnderTest {
    /// A shell command run once per case (`sh -c`); `{socket}` becomes the
    /// socket's path (also in `$QMP_CONFORM_SOCKET`).
    Exec(String),
    /// Listen on this path; the client connects once per case.
    Listen(PathBuf),
}

impl ClientUnderTest {
    /// For reports.
    pub fn describe(&self) -> String {
        match self {
            ClientUnderTest::Exec(c) => format!("exec:{c}"),
            ClientUnderTest::Listen(p) => format!("listen:{}", p.display()),
        }
    }
}

/// Options of a check run.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The impersonated QEMU version.
    pub version: Version,
    /// And flavor.
    pub flavor: Flavor,
    /// Longest a case may take, from launch (or from waiting for a
    /// connection) to the client's end.
    pub timeout: Duration,
    /// While a job runs, the virtual clock moves by a second this often.
    pub tick: Duration,
    /// Write each case's wire log to `<dir>/<case name>.log`.
    pub wire_log: Option<PathBuf>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            version: Version::V10_0,
            flavor: Flavor::Qsd,
            timeout: Duration::from_secs(30),
            tick: Duration::from_millis(100),
            wire_log: None,
        }
    }
}

/// What went over the wire, in order (`u32`: the connection, from 1).
#[derive(Debug, Clone)]
pub enum Entry {
    /// A client connected (the greeting follows).
    Connected(u32),
    /// A line the server wrote, parsed (a line that is not JSON as a string).
    ToClient(u32, Value),
    /// An item the client sent, or QEMU's parse error for it.
    FromClient(u32, Result<Value, String>),
    /// The server closed the connection (`drop-once`).
    Dropped(u32),
    /// The client closed the connection.
    Closed(u32),
}

/// How a case ended.
#[derive(Debug, Clone)]
pub enum End {
    /// `--exec`: the client exited (status, tail of its stderr).
    Exited(ExitStatus, String),
    /// `--listen`: the client closed its connection.
    ClientClosed,
    /// The deadline passed.
    TimedOut,
}

/// Everything judged about one case.
#[derive(Debug, Clone)]
pub struct CaseRun {
    /// The wire log.
    pub log: Vec<Entry>,
    /// How it ended.
    pub end: End,
    /// Connections on which `qmp_capabilities` succeeded.
    pub negotiated: BTreeSet<u32>,
    /// Jobs with auto-dismiss off that reached `concluded`.
    pub concluded_manual: BTreeSet<String>,
    /// Jobs still `concluded` in the model at the end.
    pub left_concluded: Vec<String>,
    /// The job that was running when the connection was dropped, and the
    /// drop's place in the log.
    pub dropped_during: Option<(String, usize)>,
    /// The timeout the case ran with.
    pub timeout: Duration,
}

/// The wire log as text: `<-` what the client got, `->` what it sent
/// (`=>` input QEMU could not parse), `==` connections and the end.
pub fn render_log(run: &CaseRun) -> String {
    let mut s = String::new();
    for e in &run.log {
        let line = match e {
            Entry::Connected(n) => format!("== connection {n}"),
            Entry::ToClient(n, v) => format!("<- [{n}] {v}"),
            Entry::FromClient(n, Ok(v)) => format!("-> [{n}] {v}"),
            Entry::FromClient(n, Err(e)) => format!("=> [{n}] unparsable: {e}"),
            Entry::Dropped(n) => format!("== connection {n} closed by the server"),
            Entry::Closed(n) => format!("== connection {n} closed by the client"),
        };
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str(&match &run.end {
        End::Exited(st, tail) if tail.is_empty() => format!("== the client exited ({st})\n"),
        End::Exited(st, tail) => format!("== the client exited ({st}): {tail}\n"),
        End::ClientClosed => "== the client left\n".to_owned(),
        End::TimedOut => format!("== timed out after {}s\n", run.timeout.as_secs_f64()),
    });
    s
}

/// Runs `cases` against the client; `progress` sees each result as it comes.
pub async fn run_checks(
    cases: &[ClientCase],
    client: &ClientUnderTest,
    opts: &CheckOptions,
    mut progress: impl FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, ClientError> {
    let profile = Profile::get(opts.version, opts.flavor)?;
    for c in cases {
        if let Some((event, _)) = &c.inject {
            if !profile.schema().has_event(event) {
                return Err(ClientError::UnknownEvent {
                    case: c.id.clone(),
                    event: event.clone(),
                    profile: profile.label(),
                });
            }
        }
    }
    let listen = match client {
        ClientUnderTest::Listen(path) => Some(bind_listen(path)?),
        ClientUnderTest::Exec(_) => None,
    };
    let mut results = Vec::new();
    for case in cases {
        let started = Instant::now();
        let run = match (client, &listen) {
            (ClientUnderTest::Exec(cmd), _) => run_exec(case, &profile, cmd, opts).await?,
            (ClientUnderTest::Listen(_), Some(l)) => {
                let mut server = Server::new(case, &profile, opts);
                let end = server.serve(l, None).await;
                server.finish(end)
            }
            (ClientUnderTest::Listen(_), None) => unreachable!("bound above"),
        };
        if let Some(dir) = &opts.wire_log {
            let name = case.id.rsplit('/').next().unwrap_or(&case.id);
            let path = dir.join(format!("{name}.log"));
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, render_log(&run)))
                .map_err(io_err(format!("writing {}", path.display())))?;
        }
        let result = CaseResult {
            profile: profile.label(),
            id: case.id.clone(),
            description: case.description.clone(),
            checks: case.checks.clone(),
            verdict: verdict(case, &run),
            time: started.elapsed(),
        };
        progress(&result);
        results.push(result);
    }
    if let ClientUnderTest::Listen(path) = client {
        let _ = std::fs::remove_file(path);
    }
    Ok(results)
}

fn bind_listen(path: &Path) -> Result<UnixListener, ClientError> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !m.file_type().is_socket() {
            return Err(ClientError::NotASocket(path.to_owned()));
        }
        // A stale socket of an earlier run, as QEMU replaces its own.
        std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))?;
    }
    UnixListener::bind(path).map_err(io_err(format!("listening on {}", path.display())))
}

/// `--exec`: a private folder and socket, the command in its own process group.
async fn run_exec(
    case: &ClientCase,
    profile: &Arc<Profile>,
    command: &str,
    opts: &CheckOptions,
) -> Result<CaseRun, ClientError> {
    let dir = tempfile::Builder::new()
        .prefix("qmp-conform-client-")
        .tempdir()
        .map_err(io_err("creating a private folder"))?;
    let sock = dir.path().join("qmp.sock");
    let listener =
        UnixListener::bind(&sock).map_err(io_err(format!("listening on {}", sock.display())))?;
    let stderr_path = dir.path().join("stderr.log");
    let file =
        |p: &Path| std::fs::File::create(p).map_err(io_err(format!("creating {}", p.display())));
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command.replace("{socket}", &shell_quote(&sock.display().to_string())))
        .env("QMP_CONFORM_SOCKET", &sock)
        .stdin(Stdio::null())
        .stdout(file(&dir.path().join("stdout.log"))?)
        .stderr(file(&stderr_path)?)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(format!("starting sh -c {command}")))?;
    let pid = child.id();
    let mut server = Server::new(case, profile, opts);
    let end = server.serve(&listener, Some(&mut child)).await;
    // The client's helpers, or all of it after a timeout: its whole group.
    if let Some(pid) = pid {
        kill_group(pid);
    }
    let _ = child.wait().await;
    let end = match end {
        End::Exited(status, _) => End::Exited(status, stderr_tail(&stderr_path)),
        other => other,
    };
    Ok(server.finish(end))
}

fn kill_group(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last lines of a client's stderr, on one line.
fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    let chars: Vec<char> = tail.chars().collect();
    if chars.len() > 400 {
        format!("…{}", chars[chars.len() - 400..].iter().collect::<String>())
    } else {
        tail
    }
}

/// The virtual time one tick moves (a 1 GiB job at the default throughput).
const TICK_ADVANCE_MICROS: u64 = 1_000_000;

struct Conn {
    no: u32,
    sid: SessionId,
    writer: OwnedWriteHalf,
    streamer: JsonStreamer,
}

/// The mock behind the judging transport, for one case.
struct Server<'a> {
    case: &'a ClientCase,
    core: Core,
    style: Style,
    log: Vec<Entry>,
    conns: u32,
    conn: Option<Conn>,
    reader: Option<OwnedReadHalf>,
    negotiated: BTreeSet<u32>,
    concluded_manual: BTreeSet<String>,
    dropped_during: Option<(String, usize)>,
    next_tick: Option<tokio::time::Instant>,
    tick: Duration,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// A write could not finish before the deadline (the client reads nothing).
    stalled: bool,
    /// `quit` was answered: QEMU is gone, nothing more is accepted.
    quit: bool,
}

impl<'a> Server<'a> {
    fn new(case: &'a ClientCase, profile: &Arc<Profile>, opts: &CheckOptions) -> Self {
        let config = CoreConfig {
            stepped_jobs: Some(mock_qemu::cmdline::DEFAULT_THROUGHPUT),
            ..CoreConfig::default()
        };
        let mut core = Core::new(Arc::clone(profile), &config);
        core.set_host_io(Box::new(mock_qemu::host::RealHostIo::default()));
        Server {
            case,
            core,
            style: json_style(profile),
            log: Vec::new(),
            conns: 0,
            conn: None,
            reader: None,
            negotiated: BTreeSet::new(),
            concluded_manual: BTreeSet::new(),
            dropped_during: None,
            next_tick: None,
            tick: opts.tick,
            timeout: opts.timeout,
            deadline: tokio::time::Instant::now() + opts.timeout,
            stalled: false,
            quit: false,
        }
    }

    fn finish(self, end: End) -> CaseRun {
        let left_concluded = self
            .core
            .machine()
            .jobs_newest_first()
            .filter(|j| j.status == JobStatus::Concluded)
            .map(|j| j.id.clone())
            .collect();
        CaseRun {
            log: self.log,
            end,
            negotiated: self.negotiated,
            concluded_manual: self.concluded_manual,
            left_concluded,
            dropped_during: self.dropped_during,
            timeout: self.timeout,
        }
    }

    /// Serves connections until the client's end or the deadline.
    async fn serve(&mut self, listener: &UnixListener, mut child: Option<&mut Child>) -> End {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.stalled {
                return End::TimedOut;
            }
            let negotiated = self
                .conn
                .as_ref()
                .is_some_and(|c| self.core.session(c.sid).is_some_and(|s| s.negotiated));
            let tick_at = self.next_tick.filter(|_| negotiated);
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(self.deadline) => return End::TimedOut,
                status = wait_child(&mut child) => {
                    self.drain(&mut buf).await;
                    return match status {
                        Ok(s) => End::Exited(s, String::new()),
                        // Waiting failed: treat as a client that never ended.
                        Err(_) => End::TimedOut,
                    };
                }
                n = read_some(&mut self.reader, &mut buf) => match n {
                    Ok(n) if n > 0 => self.on_input(&buf[..n]).await,
                    _ => {
                        self.client_closed();
                        if child.is_none() {
                            return End::ClientClosed;
                        }
                    }
                },
                a = listener.accept(), if self.conn.is_none() && !self.quit => {
                    if let Ok((stream, _)) = a {
                        self.on_connect(stream).await;
                    }
                }
                _ = sleep_until_opt(tick_at) => self.on_tick().await,
            }
        }
    }

    /// After the client exited: what it sent last is still read and answered.
    async fn drain(&mut self, buf: &mut [u8]) {
        let until = self
            .deadline
            .min(tokio::time::Instant::now() + Duration::from_secs(2));
        while let Some(r) = self.reader.as_mut() {
            match tokio::time::timeout_at(until, r.read(buf)).await {
                Ok(Ok(n)) if n > 0 => self.on_input(&buf[..n]).await,
                Ok(_) => {
                    self.client_closed();
                    break;
                }
                Err(_) => break,
            }
        }
    }

    async fn on_connect(&mut self, stream: tokio::net::UnixStream) {
        let (sid, greeting) = self.core.open_session();
        self.conns += 1;
        let no = self.conns;
        self.log.push(Entry::Connected(no));
        let (r, w) = stream.into_split();
        self.reader = Some(r);
        self.conn = Some(Conn {
            no,
            sid,
            writer: w,
            streamer: JsonStreamer::new(),
        });
        self.emit(vec![greeting]).await;
    }

    fn client_closed(&mut self) {
        if let Some(c) = self.conn.take() {
            self.log.push(Entry::Closed(c.no));
            self.core.close_session(c.sid);
        }
        self.reader = None;
    }

    fn session_negotiated(&self, sid: SessionId) -> bool {
        self.core.session(sid).is_some_and(|s| s.negotiated)
    }

    async fn on_input(&mut self, bytes: &[u8]) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let (no, sid) = (conn.no, conn.sid);
        let mut items = Vec::new();
        conn.streamer.feed(bytes, &mut items);
        let mut burst = Vec::new();
        for item in items {
            let was_negotiated = self.session_negotiated(sid);
            self.log.push(Entry::FromClient(
                no,
                match &item {
                    Parsed::Value(q) => Ok(Value::from(q)),
                    Parsed::Error(e) => Err(e.clone()),
                },
            ));
            let d = self.core.handle(sid, item);
            self.note_state(no, sid);
            let mut lines = Vec::new();
            if self.case.transport == Transport::EventBeforeReply
                && was_negotiated
                && d.reply.is_some()
            {
                lines.push(self.inject_line());
            }
            lines.extend(lines_for(sid, d));
            if self.case.transport == Transport::Coalesce {
                burst.extend(lines);
            } else {
                self.emit(lines).await;
            }
            if self.core.quit_requested() {
                self.quit = true;
                break;
            }
        }
        if !burst.is_empty() {
            self.emit(burst).await;
        }
        if self.quit {
            // QEMU exits after answering quit: the connection ends.
            if let Some(c) = self.conn.take() {
                self.log.push(Entry::Dropped(c.no));
                self.core.close_session(c.sid);
            }
            self.reader = None;
        }
        self.schedule_tick();
    }

    /// Bookkeeping after the core handled something.
    fn note_state(&mut self, no: u32, sid: SessionId) {
        if self.session_negotiated(sid) {
            self.negotiated.insert(no);
        }
        for j in self.core.machine().jobs_newest_first() {
            if j.status == JobStatus::Concluded && !j.auto_dismiss {
                self.concluded_manual.insert(j.id.clone());
            }
        }
    }

    fn running_job(&self) -> Option<String> {
        self.core
            .machine()
            .jobs_newest_first()
            .find(|j| j.status == JobStatus::Running && !j.user_paused)
            .map(|j| j.id.clone())
    }

    fn schedule_tick(&mut self) {
        if self.next_tick.is_none() && self.running_job().is_some() {
            self.next_tick = Some(tokio::time::Instant::now() + self.tick);
        }
    }

    async fn on_tick(&mut self) {
        self.next_tick = None;
        let (Some(job), Some(conn)) = (self.running_job(), self.conn.as_ref()) else {
            return;
        };
        let (no, sid) = (conn.no, conn.sid);
        let advance = QObject::from(&serde_json::json!({
            "execute": "x-mock-clock-advance",
            "arguments": {"microseconds": TICK_ADVANCE_MICROS},
        }));
        let d = self.core.handle(sid, Parsed::Value(advance));
        self.note_state(no, sid);
        if self.case.transport == Transport::DropOnce && self.dropped_during.is_none() {
            // The job moves on as the connection breaks: what it raised
            // (BLOCK_JOB_READY) goes to nobody, as with a real QEMU.
            self.dropped_during = Some((job, self.log.len()));
            if let Some(c) = self.conn.take() {
                self.log.push(Entry::Dropped(c.no));
                self.core.close_session(c.sid);
            }
            self.reader = None;
        } else {
            let mut lines = Vec::new();
            if d.recipients.contains(&sid) {
                lines.extend(d.events);
                lines.extend(d.after);
            }
            self.emit(lines).await;
        }
        self.schedule_tick();
    }

    /// The case's injected event, stamped with the virtual clock.
    fn inject_line(&self) -> String {
        let (name, data) = self
            .case
            .inject
            .as_ref()
            .expect("parse checked inject-event");
        let now = self.core.machine().clock().now();
        let mut ts = QDict::new();
        ts.put("seconds", now.seconds() as i64);
        ts.put("microseconds", now.subsec_micros() as i64);
        let mut ev = QDict::new();
        ev.put("event", name.as_str());
        ev.put("data", QObject::from(data));
        ev.put("timestamp", ts);
        to_json_with(&QObject::Dict(ev), self.style)
    }

    /// Writes lines the way the case's transport says; logs them.
    async fn emit(&mut self, lines: Vec<String>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if lines.is_empty() {
            return;
        }
        for l in &lines {
            let v = serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone()));
            self.log.push(Entry::ToClient(conn.no, v));
        }
        let framed: Vec<String> = lines.into_iter().map(|l| l + "\r\n").collect();
        let w = &mut conn.writer;
        let deadline = self.deadline;
        let result = tokio::time::timeout_at(deadline, async {
            match self.case.transport {
                Transport::Split(n) => {
                    for chunk in framed.concat().as_bytes().chunks(n) {
                        w.write_all(chunk).await?;
                        w.flush().await?;
                        tokio::task::yield_now().await;
                    }
                }
                Transport::Coalesce => w.write_all(framed.concat().as_bytes()).await?,
                _ => {
                    for l in &framed {
                        w.write_all(l.as_bytes()).await?;
                    }
                }
            }
            w.flush().await
        })
        .await;
        // A write error means the client went away; the read side sees it.
        if result.is_err() {
            self.stalled = true;
        }
    }
}

/// The lines one delivery gives this (only) session: events when it is a
/// recipient (negotiated), the reply, events after the reply.
fn lines_for(sid: SessionId, d: Delivery) -> Vec<String> {
    let mine = d.recipients.contains(&sid);
    let mut lines = Vec::new();
    if mine {
        lines.extend(d.events);
    }
    lines.extend(d.reply);
    if mine {
        lines.extend(d.after);
    }
    lines
}

async fn wait_child(child: &mut Option<&mut Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn read_some(r: &mut Option<OwnedReadHalf>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A judge's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Holds.
    Pass,
    /// Does not hold: why.
    Fail(String),
    /// The situation never arose: what was missing.
    NotExercised(String),
}

/// The case's verdict: the baseline, then each judge.
pub fn verdict(case: &ClientCase, run: &CaseRun) -> Verdict {
    let mut fails = Vec::new();
    let mut skipped = Vec::new();
    if let Err(e) = baseline(run) {
        fails.push(e);
    }
    for &j in &case.judges {
        match judge(j, run) {
            Finding::Pass => {}
            Finding::Fail(m) => fails.push(m),
            Finding::NotExercised(m) => skipped.push(m),
        }
    }
    if !fails.is_empty() {
        Verdict::Fail(fails.join("; "))
    } else if !skipped.is_empty() {
        Verdict::Skipped(format!("not exercised: {}", skipped.join("; ")))
    } else {
        Verdict::Pass
    }
}

/// Every case: the client connected, negotiated and ended on its own in time.
fn baseline(run: &CaseRun) -> Result<(), String> {
    match &run.end {
        End::TimedOut => {
            return Err(format!(
                "timed out after {}s; {}",
                run.timeout.as_secs_f64(),
                last_exchange(&run.log)
            ))
        }
        End::Exited(status, tail) if !status.success() => {
            let how = describe_status(*status);
            let tail = if tail.is_empty() {
                String::from(" (nothing on stderr)")
            } else {
                format!(": {tail}")
            };
            return Err(format!("the client {how}{tail}"));
        }
        _ => {}
    }
    if !run.log.iter().any(|e| matches!(e, Entry::Connected(_))) {
        return Err("the client ended without connecting".into());
    }
    if run.negotiated.is_empty() {
        return Err("the client never completed qmp_capabilities".into());
    }
    Ok(())
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended ({status})"),
    }
}

fn last_exchange(log: &[Entry]) -> String {
    let from = log.iter().rev().find_map(|e| match e {
        Entry::FromClient(_, m) => Some(match m {
            Ok(v) => short(v),
            Err(e) => format!("unparsable input ({e})"),
        }),
        _ => None,
    });
    let to = log.iter().rev().find_map(|e| match e {
        Entry::ToClient(_, v) => Some(short(v)),
        _ => None,
    });
    match (from, to) {
        (_, None) => "the client never connected".into(),
        (None, Some(t)) => format!("the client sent nothing; last to it: {t}"),
        (Some(f), Some(t)) => format!("last from the client: {f}; last to it: {t}"),
    }
}

/// A message on one line, cut to a readable length; events lose their timestamp.
fn short(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("timestamp");
    }
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

fn command_of(v: &Value) -> Option<&str> {
    v.get("execute")
        .or_else(|| v.get("exec-oob"))
        .and_then(Value::as_str)
}

fn judge(j: Judge, run: &CaseRun) -> Finding {
    match j {
        Judge::NegotiatesFirst => negotiates_first(&run.log),
        Judge::Ids => ids(&run.log),
        Judge::Oob => oob(&run.log),
        Judge::ReadyBeforeComplete => ready_before_complete(&run.log),
        Judge::DismissesConcluded => dismisses_concluded(run),
        Judge::Reconnects => reconnects(run),
    }
}

/// The reply the server wrote for the message at `index`: QEMU answers
/// every item in order, so the k-th item on a connection gets its k-th
/// reply (however the writes were grouped).
fn reply_after(log: &[Entry], index: usize) -> Option<&Value> {
    let Entry::FromClient(conn, _) = &log[index] else {
        return None;
    };
    let k = log[..index]
        .iter()
        .filter(|e| matches!(e, Entry::FromClient(c, _) if c == conn))
        .count();
    log.iter()
        .filter_map(|e| match e {
            Entry::ToClient(c, v)
                if c == conn && (v.get("return").is_some() || v.get("error").is_some()) =>
            {
                Some(v)
            }
            _ => None,
        })
        .nth(k)
}

fn answered(log: &[Entry], index: usize) -> String {
    match reply_after(log, index).and_then(|r| r.get("error")) {
        Some(e) => format!(
            " (answered {}: {})",
            e.get("class").and_then(Value::as_str).unwrap_or("?"),
            e.get("desc").and_then(Value::as_str).unwrap_or("?")
        ),
        None => String::new(),
    }
}

fn negotiates_first(log: &[Entry]) -> Finding {
    let mut seen = BTreeSet::new();
    for (i, e) in log.iter().enumerate() {
        let Entry::FromClient(conn, m) = e else {
            continue;
        };
        if !seen.insert(*conn) {
            continue;
        }
        let ok = matches!(m, Ok(v) if v.get("execute").and_then(Value::as_str) == Some("qmp_capabilities"));
        if !ok {
            let what = match m {
                Ok(v) => short(v),
                Err(e) => format!("unparsable input ({e})"),
            };
            return Finding::Fail(format!(
                "connection {conn}: the first message was {what}{}, not qmp_capabilities",
                answered(log, i)
            ));
        }
    }
    if seen.is_empty() {
        Finding::NotExercised("the client sent nothing".into())
    } else {
        Finding::Pass
    }
}

fn ids(log: &[Entry]) -> Finding {
    let mut n = 0;
    for (i, e) in log.iter().enumerate() {
        let Entry::FromClient(_, Ok(v)) = e else {
            continue;
        };
        let (Some(id), Some(cmd)) = (v.get("id"), command_of(v)) else {
            continue;
        };
        n += 1;
        // The server always answers; a reply without the id would be a mock bug,
        // a missing reply means the connection ended first.
        if let Some(r) = reply_after(log, i) {
            if r.get("id") != Some(id) {
                return Finding::Fail(format!(
                    "the reply to {cmd} did not echo id {id}: {}",
                    short(r)
                ));
            }
        }
    }
    if n == 0 {
        Finding::NotExercised("no command carried an id".into())
    } else {
        Finding::Pass
    }
}

fn oob(log: &[Entry]) -> Finding {
    let mut offered: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut enabled: BTreeMap<u32, bool> = BTreeMap::new();
    for e in log {
        match e {
            Entry::ToClient(c, v) => {
                if let Some(caps) = v.pointer("/QMP/capabilities").and_then(Value::as_array) {
                    offered.insert(
                        *c,
                        caps.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect(),
                    );
                }
            }
            Entry::FromClient(c, Ok(v)) => {
                let offer = offered.get(c).cloned().unwrap_or_default();
                if v.get("execute").and_then(Value::as_str) == Some("qmp_capabilities") {
                    let enable = v.pointer("/arguments/enable").and_then(Value::as_array);
                    for cap in enable.into_iter().flatten() {
                        let name = cap.as_str().unwrap_or_default();
                        if !offer.iter().any(|o| o == name) {
                            return Finding::Fail(format!(
                                "connection {c}: enabled capability {cap}, which the greeting did not offer"
                            ));
                        }
                        if name == "oob" {
                            enabled.insert(*c, true);
                        }
                    }
                }
                if v.get("exec-oob").is_some() && !enabled.get(c).copied().unwrap_or(false) {
                    return Finding::Fail(format!(
                        "connection {c}: sent exec-oob without enabling oob: {}",
                        short(v)
                    ));
                }
            }
            _ => {}
        }
    }
    if !offered.values().any(|caps| caps.iter().any(|c| c == "oob")) {
        return Finding::NotExercised("no greeting offered oob".into());
    }
    Finding::Pass
}

fn ready_before_complete(log: &[Entry]) -> Finding {
    let mut ready = BTreeSet::new();
    let mut completes = 0;
    for (i, e) in log.iter().enumerate() {
        match e {
            Entry::ToClient(_, v)
                if v.get("event").and_then(Value::as_str) == Some("BLOCK_JOB_READY") =>
            {
                if let Some(d) = v.pointer("/data/device").and_then(Value::as_str) {
                    ready.insert(d.to_owned());
                }
            }
            Entry::FromClient(_, Ok(v)) => {
                let job = match command_of(v) {
                    Some("job-complete") => v.pointer("/arguments/id"),
                    Some("block-job-complete") => v.pointer("/arguments/device"),
                    _ => continue,
                };
                completes += 1;
                let job = job.and_then(Value::as_str).unwrap_or_default();
                if !ready.contains(job) {
                    return Finding::Fail(format!(
                        "{} for '{job}' came before BLOCK_JOB_READY for it was sent{}",
                        command_of(v).unwrap_or_default(),
                        answered(log, i)
                    ));
                }
            }
            _ => {}
        }
    }
    if completes == 0 {
        Finding::NotExercised("the client sent no job-complete or block-job-complete".into())
    } else {
        Finding::Pass
    }
}

fn dismisses_concluded(run: &CaseRun) -> Finding {
    if run.concluded_manual.is_empty() {
        return Finding::NotExercised("no job with auto-dismiss false concluded".into());
    }
    match run.left_concluded.first() {
        Some(id) => Finding::Fail(format!(
            "job '{id}' concluded (auto-dismiss false) and was never dismissed (job-dismiss)"
        )),
        None => Finding::Pass,
    }
}

fn reconnects(run: &CaseRun) -> Finding {
    let Some((job, at)) = &run.dropped_during else {
        return Finding::NotExercised(
            "no job ran while the client was connected, so the connection was never dropped".into(),
        );
    };
    let again: Vec<u32> = run.log[*at..]
        .iter()
        .filter_map(|e| match e {
            Entry::Connected(n) => Some(*n),
            _ => None,
        })
        .collect();
    if again.is_empty() {
        return Finding::Fail(format!(
            "the server dropped the connection while job '{job}' ran; the client never connected again"
        ));
    }
    if !again.iter().any(|n| run.negotiated.contains(n)) {
        return Finding::Fail(
            "the client connected again after the drop but never completed qmp_capabilities".into(),
        );
    }
    Finding::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_file_parses() {
        let cases = cases(&crate::suite::fixtures_dir()).unwrap();
        assert!(cases.len() >= 9, "{cases:?}");
        let ids: BTreeSet<_> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), cases.len(), "ids are unique");
    }

    #[test]
    fn case_syntax_errors_name_the_line() {
        let e = ClientCase::parse("# description: d\ntransport: sideways\n", "x").unwrap_err();
        assert!(e.contains("line 2") && e.contains("sideways"), "{e}");
        let e = ClientCase::parse("# description: d\ntransport: plain\njudge: psychic\n", "x")
            .unwrap_err();
        assert!(e.contains("psychic"), "{e}");
        assert!(
            ClientCase::parse("# description: d\ntransport: event-before-reply\n", "x").is_err()
        );
        let c = ClientCase::parse(
            "# description: d\ntransport: split 3\njudge: ids, oob\n",
            "client/x",
        )
        .unwrap();
        assert_eq!(c.transport, Transport::Split(3));
        assert_eq!(c.judges, vec![Judge::Ids, Judge::Oob]);
    }

    fn run_with(log: Vec<Entry>) -> CaseRun {
        CaseRun {
            log,
            end: End::ClientClosed,
            negotiated: [1].into(),
            concluded_manual: BTreeSet::new(),
            left_concluded: vec![],
            dropped_during: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn complete_before_ready_fails_and_after_ready_passes() {
        let cmd = serde_json::json!({"execute": "job-complete", "arguments": {"id": "j"}});
        let ready = serde_json::json!({"event": "BLOCK_JOB_READY", "data": {"device": "j"}});
        let early = run_with(vec![
            Entry::Connected(1),
            Entry::FromClient(1, Ok(cmd.clone())),
            Entry::ToClient(1, ready.clone()),
        ]);
        assert!(matches!(ready_before_complete(&early.log), Finding::Fail(m) if m.contains("'j'")));
        let late = run_with(vec![
            Entry::Connected(1),
            Entry::ToClient(1, ready),
            Entry::FromClient(1, Ok(cmd)),
        ]);
        assert_eq!(ready_before_complete(&late.log), Finding::Pass);
        assert!(matches!(
            ready_before_complete(&[]),
            Finding::NotExercised(_)
        ));
    }

    #[test]
    fn replies_are_matched_by_position_whatever_the_writes() {
        let cmd =
            |id: &str| Entry::FromClient(1, Ok(serde_json::json!({"execute": "x", "id": id})));
        let reply = |id: &str| Entry::ToClient(1, serde_json::json!({"return": {}, "id": id}));
        // Coalesced: both commands read in one go, both replies logged after.
        let log = vec![cmd("a"), cmd("b"), reply("a"), reply("b")];
        assert_eq!(reply_after(&log, 1).unwrap()["id"], "b");
        assert_eq!(ids(&log), Finding::Pass);
    }

    #[test]
    fn oob_must_be_offered_and_enabled() {
        let greeting = serde_json::json!({"QMP": {"capabilities": []}});
        let caps =
            serde_json::json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}});
        let f = oob(&[Entry::ToClient(1, greeting), Entry::FromClient(1, Ok(caps))]);
        assert!(matches!(f, Finding::Fail(m) if m.contains("did not offer")),);
    }
}
