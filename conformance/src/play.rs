//! Playing a scenario over one QMP connection and recording the transcript.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scenario::{escape, Scenario, Step, SYNC_ID_PREFIX};
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

fn push_line(t: &mut Transcript, l: Line) {
    t.entries.push(if l.crlf {
        Entry::Recv(l.text)
    } else {
        Entry::RecvBadFraming(l.text)
    });
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
    push_line(t, greeting);
    Ok(Conn {
        reader,
        writer: w,
        greeting: text,
        closed: false,
    })
}

/// Plays `scenario` against `target`, returning the transcript.
pub async fn play(
    scenario: &Scenario,
    target: &mut dyn Target,
    opts: &PlayOptions,
) -> Result<Transcript> {
    let mut t = Transcript {
        header: vec![("scenario".into(), scenario.id.clone())],
        entries: vec![],
    };
    let mut conn = open(target, &mut t, opts).await?;
    let mut sync_no = 0u32;
    let mut pending_unsynced = false;
    for step in &scenario.steps {
        match step {
            Step::Send {
                bytes,
                sync,
                display,
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
                conn = open(target, &mut t, opts).await?;
                pending_unsynced = false;
            }
            Step::AwaitEvent { name, data } => {
                if conn.closed {
                    bail!("await-event {name} after the server closed the connection");
                }
                let start = t
                    .entries
                    .iter()
                    .rposition(|e| matches!(e, Entry::Sent(_) | Entry::SentRaw(_)))
                    .unwrap_or(0);
                let seen = t.entries[start..]
                    .iter()
                    .any(|e| matches!(e, Entry::Recv(l) if event_matches(l, name, data)));
                if !seen {
                    loop {
                        let Some(l) = conn
                            .reader
                            .next_line(opts.timeout)
                            .await
                            .with_context(|| format!("waiting for event {name}"))?
                        else {
                            t.entries.push(Entry::Closed);
                            conn.closed = true;
                            bail!(
                                "the server closed the connection while waiting for event {name}"
                            );
                        };
                        if skip(&conn, &l, opts) {
                            continue;
                        }
                        let hit = event_matches(&l.text, name, data);
                        push_line(&mut t, l);
                        if hit {
                            break;
                        }
                    }
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
                            push_line(&mut t, l);
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
    Ok(t)
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
        push_line(t, l);
    }
}

/// Whether a received line is event `name` whose `data` has `members`.
fn event_matches(
    text: &str,
    name: &str,
    members: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    v.get("event").and_then(serde_json::Value::as_str) == Some(name)
        && members
            .iter()
            .all(|(k, want)| v.get("data").and_then(|d| d.get(k)) == Some(want))
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
) -> Result<Transcript> {
    let mut last = None;
    for _ in 0..tries.max(1) {
        match play(scenario, target, opts).await {
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
