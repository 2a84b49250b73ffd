//! Playing a scenario over one QMP connection and recording the transcript.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::expect::{matches, Bindings};
use crate::normalize::Normalizer;
use crate::scenario::{escape, ExpectKind, Scenario, Step, SYNC_ID_PREFIX};
use crate::target::{BoxedStream, Target};
use crate::transcript::{Entry, Transcript};

/// Reads `\n`-terminated lines from a stream.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    eof: bool,
}

/// A line as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The text without the line end.
    pub text: String,
    /// Ended in `\r\n`.
    pub crlf: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next line; `None` at end of stream. Errors on timeout.
    pub async fn next_line(&mut self, timeout: Duration) -> Result<Option<Line>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut raw: Vec<u8> = self.buf.drain(..=pos).collect();
                raw.pop();
                let crlf = raw.last() == Some(&b'\r');
                if crlf {
                    raw.pop();
                }
                return Ok(Some(Line {
                    text: String::from_utf8_lossy(&raw).into_owned(),
                    crlf,
                }));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let raw = std::mem::take(&mut self.buf);
                return Ok(Some(Line {
                    text: String::from_utf8_lossy(&raw).into_owned(),
                    crlf: false,
                }));
            }
            let mut chunk = [0u8; 65536];
            let n = match tokio::time::timeout_at(deadline, self.inner.read(&mut chunk)).await {
                Err(_) => bail!("timed out after {timeout:?} waiting for a line from the server"),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Ok(r) => r.context("reading from the server")?,
            };
            if n == 0 {
                self.eof = true;
            } else {
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Options for [`play`].
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// Longest wait for any one line.
    pub timeout: Duration,
    /// Drop a repeated greeting (qemu-storage-daemon's start-up race).
    pub drop_duplicate_greeting: bool,
}

impl Default for PlayOptions {
    fn default() -> Self {
        PlayOptions {
            timeout: Duration::from_secs(5),
            drop_duplicate_greeting: false,
        }
    }
}

struct Conn {
    reader: LineReader<tokio::io::ReadHalf<BoxedStream>>,
    writer: tokio::io::WriteHalf<BoxedStream>,
    greeting: String,
    closed: bool,
}

/// Most lines one play keeps: a server that floods (QEMU retrying a job's
/// I/O error under `on-source-error: ignore` sends events without end)
/// fails the case instead of filling memory.
pub const MAX_RECEIVED_LINES: usize = 100_000;

fn push_line(t: &mut Transcript, l: Line) -> Result<()> {
    if t.entries.len() >= MAX_RECEIVED_LINES {
        bail!("the server sent more than {MAX_RECEIVED_LINES} lines: a flood of events?");
    }
    t.entries.push(if l.crlf {
        Entry::Recv(l.text)
    } else {
        Entry::RecvBadFraming(l.text)
    });
    Ok(())
}

async fn open(target: &mut dyn Target, t: &mut Transcript, opts: &PlayOptions) -> Result<Conn> {
    let stream = target.connect().await?;
    let (r, w) = tokio::io::split(stream);
    let mut reader = LineReader::new(r);
    let greeting = reader
        .next_line(opts.timeout)
        .await
        .context("waiting for the greeting")?
        .ok_or_else(|| anyhow!("the server closed the connection before greeting"))?;
    let text = greeting.text.clone();
    push_line(t, greeting)?;
    Ok(Conn {
        reader,
        writer: w,
        greeting: text,
        closed: false,
    })
}

/// An expectation of the scenario (`<-`, `expect-statuses`) that the target
/// did not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// `scenarios/jobs/x.qmp:12`: the scenario file and line.
    pub at: String,
    /// The scenario line as written.
    pub step: String,
    /// What was wrong (and what arrived).
    pub why: String,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}\n  {}", self.at, self.step, self.why)
    }
}

/// What playing a scenario produced.
#[derive(Debug, Clone)]
pub struct Played {
    /// Everything sent and received.
    pub transcript: Transcript,
    /// Expectations the target did not meet (empty: all met).
    pub unmet: Vec<Unmet>,
}

/// Where the expectations of the current step look: the entries since the
/// last sending step, and how far `<-` lines have consumed them.
#[derive(Debug, Default)]
struct Cursor {
    /// First entry of the step (after its `->`, or the reconnect).
    start: usize,
    /// The step was synchronised: all its replies are in.
    synced: bool,
    /// Next entry to look at for a message (non-event) pattern.
    messages: usize,
    /// Next entry to look at for an event pattern, per event name.
    events: std::collections::HashMap<Option<String>, usize>,
}

impl Cursor {
    fn at(start: usize, synced: bool) -> Cursor {
        Cursor {
            start,
            synced,
            ..Cursor::default()
        }
    }
}

/// Plays `scenario` against `target`: the transcript, and the scenario's
/// expectations the target did not meet. An `Err` is a case that could not
/// be played (a timeout waiting for a sync marker or an awaited event,
/// a failed setup command).
pub async fn play(
    scenario: &Scenario,
    target: &mut dyn Target,
    opts: &PlayOptions,
) -> Result<Played> {
    let mut t = Transcript {
        header: vec![("scenario".into(), scenario.id.clone())],
        entries: vec![],
    };
    let mut unmet = Vec::new();
    let mut bindings = Bindings::default();
    let norm = Normalizer {
        workdirs: target
            .workdir()
            .map(|w| vec![w.display().to_string()])
            .unwrap_or_default(),
    };
    let mut conn = open(target, &mut t, opts).await?;
    let mut cursor = Cursor::at(0, true);
    let mut sync_no = 0u32;
    let mut pending_unsynced = false;
    for step in &scenario.steps {
        let fail = |line: usize, step: &str, why: String| Unmet {
            at: format!("{}:{line}", scenario.file),
            step: step.to_owned(),
            why,
        };
        match step {
            Step::Send {
                bytes,
                sync,
                display,
                vars,
                line,
            } => {
                if conn.closed {
                    bail!("step after the server closed the connection: {display}");
                }
                t.entries.push(
                    if bytes.ends_with(b"\n")
                        && *display == String::from_utf8_lossy(&bytes[..bytes.len() - 1])
                    {
                        Entry::Sent(display.clone())
                    } else {
                        Entry::SentRaw(escape(bytes))
                    },
                );
                cursor = Cursor::at(t.entries.len(), *sync);
                let substituted;
                let bytes = if vars.is_empty() {
                    bytes
                } else {
                    let text = String::from_utf8_lossy(bytes);
                    match crate::expect::substitute(&text, vars, &bindings) {
                        Ok(s) => substituted = s.into_bytes(),
                        Err(why) => {
                            unmet.push(fail(*line, display, why));
                            substituted = bytes.clone();
                        }
                    }
                    &substituted
                };
                match target.workdir() {
                    Some(w) => write(&mut conn, &with_workdir(bytes, w)).await,
                    None => write(&mut conn, bytes).await,
                }
                if *sync {
                    sync_no += 1;
                    synchronise(&mut conn, &mut t, sync_no, opts).await?;
                    pending_unsynced = false;
                } else {
                    pending_unsynced = true;
                }
            }
            Step::AdvanceClock { micros, text } => {
                t.entries.push(Entry::Directive(text.clone()));
                let args = serde_json::json!({"microseconds": micros});
                let r = directive(&mut conn, &mut t, "x-mock-clock-advance", args, opts).await?;
                if r.as_ref().is_some_and(|(c, _)| c == "CommandNotFound") {
                    // A real QEMU: its own clock runs; wait (bounded).
                    tokio::time::sleep(Duration::from_micros(*micros).min(opts.timeout)).await;
                }
            }
            Step::InjectFault { args, text } => {
                t.entries.push(Entry::Directive(text.clone()));
                let r =
                    directive(&mut conn, &mut t, "x-mock-inject-fault", args.clone(), opts).await?;
                match r {
                    Some((c, _)) if c == "CommandNotFound" => {
                        bail!("{text}: needs mock-qemu (a real QEMU injects faults with a blkdebug node)")
                    }
                    Some((_, desc)) => bail!("{text}: {desc}"),
                    None => {}
                }
            }
            Step::Setup(cmd) => {
                let dir = target
                    .workdir()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| anyhow!("setup needs a target with a work folder: {cmd}"))?;
                run_setup(cmd, &dir, opts).await?;
                t.entries.push(Entry::Setup(cmd.clone()));
            }
            Step::Reconnect => {
                drop(conn);
                t.entries.push(Entry::Reconnect);
                cursor = Cursor::at(t.entries.len(), true);
                conn = open(target, &mut t, opts).await?;
                pending_unsynced = false;
            }
            Step::AwaitEvent {
                name,
                data,
                timeout,
                line,
            } => {
                let at = format!("{}:{line}: await-event {name}", scenario.file);
                if conn.closed {
                    bail!("{at}: the server closed the connection before");
                }
                let pattern = serde_json::Value::Object(data.clone());
                let deadline = Instant::now() + timeout.unwrap_or(opts.timeout);
                let mut hit = |text: &str| {
                    let Some(v) = json(&norm, text) else {
                        return false;
                    };
                    v.get("event").and_then(serde_json::Value::as_str) == Some(name)
                        && matches(
                            &pattern,
                            v.get("data").unwrap_or(&serde_json::Value::Null),
                            &mut bindings,
                        )
                        .is_ok()
                };
                let start = t
                    .entries
                    .iter()
                    .rposition(|e| matches!(e, Entry::Sent(_) | Entry::SentRaw(_)))
                    .unwrap_or(0);
                let seen = t.entries[start..]
                    .iter()
                    .any(|e| matches!(e, Entry::Recv(l) if hit(l)));
                if !seen {
                    loop {
                        let got = read_until(&mut conn, &mut t, opts, deadline)
                            .await
                            .with_context(|| format!("{at}: waiting"))?;
                        if !got {
                            bail!("{at}: the server closed the connection while waiting");
                        }
                        if matches!(t.entries.last(), Some(Entry::Recv(l)) if hit(l)) {
                            break;
                        }
                    }
                }
            }
            Step::Expect {
                pattern,
                kind,
                line,
                text,
            } => {
                let deadline = Instant::now() + opts.timeout;
                let wanted = |e: &Entry| -> Option<Option<serde_json::Value>> {
                    let (Entry::Recv(l) | Entry::RecvBadFraming(l)) = e else {
                        return None;
                    };
                    let v = json(&norm, l);
                    let event = v
                        .as_ref()
                        .and_then(|v| v.get("event"))
                        .and_then(serde_json::Value::as_str);
                    match (kind, event) {
                        (ExpectKind::Message, None) => Some(v),
                        (ExpectKind::Event(None), Some(_)) => Some(v),
                        (ExpectKind::Event(Some(n)), Some(e)) if n == e => Some(v),
                        _ => None,
                    }
                };
                let from = match kind {
                    ExpectKind::Message => cursor.messages,
                    ExpectKind::Event(n) => cursor.events.get(n).copied().unwrap_or(0),
                }
                .max(cursor.start);
                let mut found =
                    (from..t.entries.len()).find_map(|i| wanted(&t.entries[i]).map(|v| (i, v)));
                // Replies of a synchronised step are all in; events may come later.
                let may_wait = !(cursor.synced && *kind == ExpectKind::Message);
                let mut why_none = String::new();
                while found.is_none() && may_wait && !conn.closed {
                    match read_until(&mut conn, &mut t, opts, deadline).await {
                        Ok(true) => {
                            let i = t.entries.len() - 1;
                            found = wanted(&t.entries[i]).map(|v| (i, v));
                        }
                        Ok(false) => why_none = " (the server closed the connection)".into(),
                        Err(e) => why_none = format!(" ({e:#})"),
                    }
                    if !why_none.is_empty() {
                        break;
                    }
                }
                let what = match kind {
                    ExpectKind::Message => "reply".to_owned(),
                    ExpectKind::Event(None) => "event".to_owned(),
                    ExpectKind::Event(Some(n)) => format!("event {n}"),
                };
                let Some((i, v)) = found else {
                    unmet.push(fail(
                        *line,
                        text,
                        format!("no {what} arrived after the preceding step{why_none}"),
                    ));
                    continue;
                };
                match kind {
                    ExpectKind::Message => cursor.messages = i + 1,
                    ExpectKind::Event(n) => {
                        cursor.events.insert(n.clone(), i + 1);
                    }
                }
                let received = match &t.entries[i] {
                    Entry::Recv(l) | Entry::RecvBadFraming(l) => norm.line(l),
                    _ => String::new(),
                };
                let result = match &v {
                    Some(v) => matches(pattern, v, &mut bindings),
                    None => Err("not a JSON message".to_owned()),
                };
                if let Err(why) = result {
                    unmet.push(fail(*line, text, format!("{why}\n  received: {received}")));
                }
            }
            Step::ExpectStatuses {
                job,
                statuses,
                timeout,
                line,
                text,
            } => {
                let deadline = Instant::now() + timeout.unwrap_or(opts.timeout);
                let mut why_short = String::new();
                let seen = loop {
                    let seen = job_statuses(&t.entries, job);
                    if seen == statuses[..] || conn.closed {
                        break seen;
                    }
                    // More events can still complete the list when what has
                    // settled is its beginning (a trailing `paused` may yet
                    // be half of a drain pair).
                    let open_pair = usize::from(seen.last().is_some_and(|s| s == "paused"));
                    let settled = &seen[..seen.len() - open_pair];
                    if !(settled.len() < statuses.len() && statuses.starts_with(settled)) {
                        break seen;
                    }
                    match read_until(&mut conn, &mut t, opts, deadline).await {
                        Ok(true) => {}
                        Ok(false) => {
                            why_short = " (the server closed the connection)".into();
                            break job_statuses(&t.entries, job);
                        }
                        Err(_) => {
                            why_short = format!(
                                " (waited {:?} for the rest)",
                                timeout.unwrap_or(opts.timeout)
                            );
                            break job_statuses(&t.entries, job);
                        }
                    }
                };
                if seen != statuses[..] {
                    let list = |l: &[String]| {
                        if l.is_empty() {
                            "(none)".to_owned()
                        } else {
                            l.join(" ")
                        }
                    };
                    unmet.push(fail(
                        *line,
                        text,
                        format!(
                            "job {job} went through {}{why_short}; expected {}",
                            list(&seen),
                            list(statuses)
                        ),
                    ));
                }
            }
            Step::ExpectClose => {
                if !conn.closed {
                    while let Some(l) = conn
                        .reader
                        .next_line(opts.timeout)
                        .await
                        .context("waiting for the server to close")?
                    {
                        if !skip(&conn, &l, opts) {
                            push_line(&mut t, l)?;
                        }
                    }
                    t.entries.push(Entry::Closed);
                    conn.closed = true;
                }
            }
        }
    }
    if pending_unsynced && !conn.closed {
        sync_no += 1;
        synchronise(&mut conn, &mut t, sync_no, opts).await?;
    }
    Ok(Played {
        transcript: t,
        unmet,
    })
}

/// A received line as JSON, with the work folder masked as `<workdir>`
/// (patterns are written with `<workdir>`).
fn json(norm: &Normalizer, text: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&norm.line(text)).ok()
}

/// The statuses of `job`'s `JOB_STATUS_CHANGE` events in a transcript,
/// drain pairs dropped (a `paused` whose next status is `running`; see
/// [`crate::normalize::drop_drain_pairs`]).
pub fn job_statuses(entries: &[Entry], job: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in crate::normalize::drop_drain_pairs(entries.to_vec()) {
        let Entry::Recv(l) = e else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
            continue;
        };
        if v.get("event").and_then(|e| e.as_str()) != Some("JOB_STATUS_CHANGE") {
            continue;
        }
        let d = &v["data"];
        if d.get("id").and_then(|i| i.as_str()) == Some(job) {
            if let Some(s) = d.get("status").and_then(|s| s.as_str()) {
                out.push(s.to_owned());
            }
        }
    }
    out
}

/// Reads one more line into the transcript (a repeated greeting is
/// dropped and not counted), up to `deadline`. `Ok(false)`: the server
/// closed the connection.
async fn read_until(
    conn: &mut Conn,
    t: &mut Transcript,
    opts: &PlayOptions,
    deadline: Instant,
) -> Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(l) = conn.reader.next_line(left).await? else {
            t.entries.push(Entry::Closed);
            conn.closed = true;
            return Ok(false);
        };
        if skip(conn, &l, opts) {
            continue;
        }
        push_line(t, l)?;
        return Ok(true);
    }
}

/// `<workdir>` in sent bytes becomes the target's work folder.
fn with_workdir(bytes: &[u8], dir: &Path) -> Vec<u8> {
    const P: &[u8] = b"<workdir>";
    let d = dir.as_os_str().as_encoded_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(P) {
            out.extend_from_slice(d);
            i += P.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

async fn run_setup(cmd: &str, dir: &Path, opts: &PlayOptions) -> Result<()> {
    let cmd_text = cmd.replace("<workdir>", &dir.display().to_string());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd_text)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(opts.timeout * 6, child)
        .await
        .map_err(|_| anyhow!("setup timed out: {cmd}"))?
        .with_context(|| format!("running setup: {cmd}"))?;
    if !out.status.success() {
        bail!(
            "setup failed ({}): {cmd}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn write(conn: &mut Conn, bytes: &[u8]) {
    // A write to a server that already closed (after quit) is not an error
    // of the scenario; the read side reports the close.
    if conn.writer.write_all(bytes).await.is_ok() {
        let _ = conn.writer.flush().await;
    }
}

fn skip(conn: &Conn, l: &Line, opts: &PlayOptions) -> bool {
    opts.drop_duplicate_greeting && l.text == conn.greeting
}

/// Sends a marker and records every line up to the marker's reply.
async fn synchronise(
    conn: &mut Conn,
    t: &mut Transcript,
    n: u32,
    opts: &PlayOptions,
) -> Result<()> {
    let id = format!("{SYNC_ID_PREFIX}{n}");
    let marker = format!("{{\"execute\": \"query-version\", \"id\": \"{id}\"}}\n");
    write(conn, marker.as_bytes()).await;
    loop {
        let Some(l) = conn
            .reader
            .next_line(opts.timeout)
            .await
            .with_context(|| format!("waiting for the reply to sync marker {n}"))?
        else {
            t.entries.push(Entry::Closed);
            conn.closed = true;
            return Ok(());
        };
        if skip(conn, &l, opts) {
            continue;
        }
        if is_marker_reply(&l.text, &id) {
            return Ok(());
        }
        push_line(t, l)?;
    }
}

/// Runs a mock-only command for a directive: its reply is not part of the
/// transcript (events it caused are). Returns the error (class, desc), if any.
async fn directive(
    conn: &mut Conn,
    t: &mut Transcript,
    command: &str,
    args: serde_json::Value,
    opts: &PlayOptions,
) -> Result<Option<(String, String)>> {
    let id = format!("{SYNC_ID_PREFIX}directive");
    let line = serde_json::json!({"execute": command, "arguments": args, "id": id});
    write(conn, format!("{line}\n").as_bytes()).await;
    loop {
        let Some(l) = conn
            .reader
            .next_line(opts.timeout)
            .await
            .with_context(|| format!("waiting for the reply to {command}"))?
        else {
            t.entries.push(Entry::Closed);
            conn.closed = true;
            bail!("the server closed the connection during {command}");
        };
        if skip(conn, &l, opts) {
            continue;
        }
        if is_marker_reply(&l.text, &id) {
            let v: serde_json::Value = serde_json::from_str(&l.text).unwrap_or_default();
            let e = &v["error"];
            return Ok(e["class"].as_str().map(|c| {
                (
                    c.to_owned(),
                    e["desc"].as_str().unwrap_or_default().to_owned(),
                )
            }));
        }
        push_line(t, l)?;
    }
}

fn is_marker_reply(text: &str, id: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| v.get("id").and_then(|i| i.as_str()) == Some(id))
}

/// Plays and retries (relaunching the target) when a real QEMU shows its
/// start-up race: a greeting followed by silence (a timeout).
pub async fn play_with_retries(
    scenario: &Scenario,
    target: &mut dyn Target,
    opts: &PlayOptions,
    tries: u32,
) -> Result<Played> {
    target.set_launch(scenario.launch.clone()).await?;
    let mut last = None;
    for _ in 0..tries.max(1) {
        // Boxed: the state of a whole scenario is large, and the caller's stack
        // also runs the in-process mock (deep JSON nesting recurses).
        match Box::pin(play(scenario, target, opts)).await {
            Ok(t) => return Ok(t),
            Err(e) => {
                let timed_out = format!("{e:#}").contains("timed out");
                last = Some(e);
                if !timed_out {
                    break;
                }
                target.restart().await?;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
}

/// Sends bytes without recording (helpers for benches and client checks).
pub async fn send_raw<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}
