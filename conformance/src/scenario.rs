//! Scenarios: what a client does, written close to QEMU's own docs.
//!
//! ```text
//! # id: protocol/split-writes
//! # description: one command split over several writes gets one reply
//! # checks: reference §1.1 (input is a JSON stream, not lines)
//! # flavor: any                      (qsd | system | any)
//! -> {"execute": "qmp_capabilities"}
//! send-partial "{\"execute\": \"query-"
//! send "version\"}\n"
//! ```
//!
//! Steps:
//! - `-> TEXT`: sends TEXT and a newline, then synchronises.
//! - `send "…"`: sends exactly these bytes (escapes `\n \r \t \\ \" \xHH
//!   \u{…}`), then synchronises.
//! - `send-partial "…"`: sends bytes and does not synchronise (the input is
//!   incomplete on purpose).
//! - `reconnect`: closes the connection and opens a new one (a new greeting).
//! - `expect-close`: the server ends the connection (after `quit`).
//! - `await-event NAME {"member": value}`: waits (up to the timeout) until
//!   an event NAME whose `data` has those members has arrived since the last
//!   request; it adds nothing to the transcript, so a job's asynchronous
//!   events are in before the next request however fast the target is.
//! - `await-event NAME {…} timeout=SECONDS`: the same with its own timeout
//!   (default: the play timeout). The data is a pattern (see below).
//! - `setup CMD`: runs `sh -c CMD` in the target's work folder before going
//!   on (create an image with qemu-img, write data with qemu-io); a failure
//!   fails the case.
//!
//! Expectations (nothing is sent; a target that does not meet one fails the
//! case, real QEMU included; see [`crate::expect`] for patterns):
//! - `<- PATTERN`: the next message received since the preceding sending
//!   step (`->`, `send`, `send-partial`, `reconnect`) is checked against
//!   PATTERN: for a pattern with an `"event"` member the next event of that
//!   name (waited for, up to the timeout), otherwise the next message that is
//!   not an event (a reply; the greeting after `reconnect`).
//! - `expect-statuses JOB S1 S2 …`: the `JOB_STATUS_CHANGE` statuses of job
//!   JOB seen so far, drain pairs dropped (`paused` then `running`, as in the
//!   normalization), are exactly S1 S2 …; while they are a beginning of that
//!   list the runner waits for the rest (up to the timeout, or `timeout=N`).
//! - `$X` in a `->` line, where an earlier pattern bound X (`$name:X`): the
//!   bound value is substituted before sending (the transcript keeps `$X`).
//!
//! `<workdir>` in any step stands for the target's private work folder.
//!
//! Synchronising sends a marker command (see [`SYNC_ID_PREFIX`]) and reads
//! until its reply, so each step's output is complete without sleeping; the
//! marker's own reply is not part of the transcript.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::expect;

/// `id` prefix of the runner's synchronisation markers.
pub const SYNC_ID_PREFIX: &str = "qmp-conform-sync-";

/// One action of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send bytes; `sync` = wait for everything they caused.
    Send {
        /// The bytes.
        bytes: Vec<u8>,
        /// Follow with a synchronisation marker.
        sync: bool,
        /// How the step was written (for transcripts).
        display: String,
        /// Names bound by earlier patterns that the text uses as `$NAME`,
        /// substituted before sending (`->` steps only).
        vars: Vec<String>,
        /// Scenario line (1-based).
        line: usize,
    },
    /// Drop the connection and connect again.
    Reconnect,
    /// The server closes the connection.
    ExpectClose,
    /// A shell command run in the work folder.
    Setup(String),
    /// `advance-clock MICROS`: let job time pass (mock-qemu's virtual
    /// clock; a real QEMU's wall clock, waited for, up to the timeout).
    AdvanceClock {
        /// Microseconds.
        micros: u64,
        /// As written.
        text: String,
    },
    /// `inject-fault NODE read|write [EIO|ENOSPC] [OFFSET] [once]`:
    /// mock-qemu's `x-mock-inject-fault` (a real QEMU needs a blkdebug node).
    InjectFault {
        /// The command's arguments.
        args: Value,
        /// As written.
        text: String,
    },
    /// Read until an event with this name (and these data members) has
    /// arrived since the last request, within the timeout.
    AwaitEvent {
        /// Event name.
        name: String,
        /// A pattern for `data` (members it must have; matchers allowed).
        data: serde_json::Map<String, Value>,
        /// How long to wait (default: the play timeout).
        timeout: Option<Duration>,
        /// Scenario line (1-based), for messages.
        line: usize,
    },
    /// `<- PATTERN`: the next message of a kind must match.
    Expect {
        /// The pattern.
        pattern: Value,
        /// Which message it is checked against.
        kind: ExpectKind,
        /// Scenario line (1-based) and its text, for messages.
        line: usize,
        /// The line as written.
        text: String,
    },
    /// `expect-statuses JOB S…`: the job's status changes so far.
    ExpectStatuses {
        /// Job id.
        job: String,
        /// The statuses, in order.
        statuses: Vec<String>,
        /// How long to wait for the rest (default: the play timeout).
        timeout: Option<Duration>,
        /// Scenario line (1-based).
        line: usize,
        /// The line as written.
        text: String,
    },
}

/// What an `<-` pattern is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectKind {
    /// The next message that is not an event (a reply, a greeting).
    Message,
    /// The next event with this name (`None`: any event).
    Event(Option<String>),
}

/// How a scenario's target is launched, beyond its flavor's options
/// (`# args:` and `# launch-setup:` headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// Words added to the launch options (shell-style quoting: `'…'`,
    /// `"…"`, `\`); `<workdir>` stands for the work folder. A `-M` or
    /// `-machine` among them replaces the default `-M none`.
    pub args: Vec<String>,
    /// Shell commands run in the work folder before the program starts
    /// (images the command line opens must exist by then).
    pub setup: Vec<String>,
}

/// Splits a header's words as a shell would: whitespace separates, `'…'`
/// is literal, `"…"` is literal but for `\"` and `\\`, `\` outside
/// quotes escapes the next character.
pub fn split_words(text: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("unterminated ' in {text}"),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => bail!("unterminated \" in {text}"),
                        },
                        Some(c) => w.push(c),
                        None => bail!("unterminated \" in {text}"),
                    }
                }
            }
            '\\' => {
                let next = chars
                    .next()
                    .ok_or_else(|| anyhow!("a trailing \\ in {text}"))?;
                cur.get_or_insert_with(String::new).push(next);
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

/// A parsed scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Stable id: `suite/name`.
    pub id: String,
    /// One line saying what it checks.
    pub description: String,
    /// Reference to the QEMU behaviour checked.
    pub checks: String,
    /// `qsd`, `system` or `any`.
    pub flavor: String,
    /// Extra launch options and pre-launch setup (`# args:`, `# launch-setup:`).
    pub launch: Launch,
    /// The steps.
    pub steps: Vec<Step>,
    /// Where it was read from, for messages (`scenarios/jobs/x.qmp`;
    /// defaults to the id).
    pub file: String,
}

impl Scenario {
    /// Whether the scenario applies to a flavor (`qsd` / `system`).
    pub fn applies_to(&self, flavor: &str) -> bool {
        self.flavor == "any" || self.flavor == flavor
    }

    /// Parses scenario text; `default_id` is used when there is no `# id:`.
    pub fn parse(text: &str, default_id: &str) -> Result<Scenario> {
        let mut s = Scenario {
            id: default_id.to_owned(),
            description: String::new(),
            checks: String::new(),
            flavor: "any".into(),
            launch: Launch::default(),
            steps: Vec::new(),
            file: default_id.to_owned(),
        };
        // Names bound by the patterns so far: `$NAME` in later `->` lines.
        let mut bound: Vec<String> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let ctx = || format!("line {}", n + 1);
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                let c = c.trim();
                if let Some((k, v)) = c.split_once(':') {
                    let v = v.trim().to_owned();
                    match k.trim() {
                        "id" => s.id = v,
                        "description" => s.description = v,
                        "checks" => s.checks = v,
                        "flavor" => s.flavor = v,
                        "args" => s.launch.args.extend(split_words(&v).with_context(ctx)?),
                        "launch-setup" => s.launch.setup.push(v),
                        _ => {}
                    }
                }
                continue;
            }
            if let Some(t) = line.strip_prefix("->") {
                let t = t.trim_start();
                let vars = expect::references(t)
                    .into_iter()
                    .filter(|r| bound.contains(r))
                    .collect();
                s.steps.push(Step::Send {
                    bytes: format!("{t}\n").into_bytes(),
                    sync: true,
                    display: t.to_owned(),
                    vars,
                    line: n + 1,
                });
            } else if let Some(t) = line.strip_prefix("<-") {
                let pattern: Value = serde_json::from_str(t.trim())
                    .with_context(|| format!("line {}: <- needs a JSON pattern", n + 1))?;
                expect::check_pattern(&pattern).with_context(ctx)?;
                expect::bound_names(&pattern, &mut bound);
                let kind = match pattern.get("event") {
                    None => ExpectKind::Message,
                    Some(Value::String(e)) if !e.starts_with('$') => {
                        ExpectKind::Event(Some(e.clone()))
                    }
                    Some(_) => ExpectKind::Event(None),
                };
                s.steps.push(Step::Expect {
                    pattern,
                    kind,
                    line: n + 1,
                    text: line.to_owned(),
                });
            } else if let Some(rest) = line.strip_prefix("expect-statuses ") {
                let (rest, timeout) = strip_timeout(rest).with_context(ctx)?;
                let mut words = rest.split_whitespace().map(str::to_owned);
                let job = words
                    .next()
                    .ok_or_else(|| anyhow!("line {}: expect-statuses JOB STATUS…", n + 1))?;
                let statuses: Vec<String> = words.collect();
                if statuses.is_empty() {
                    bail!("line {}: expect-statuses {job} needs statuses", n + 1);
                }
                s.steps.push(Step::ExpectStatuses {
                    job,
                    statuses,
                    timeout,
                    line: n + 1,
                    text: line.to_owned(),
                });
            } else if let Some(rest) = line.strip_prefix("send-partial ") {
                let bytes = byte_terms(rest.trim()).with_context(ctx)?;
                s.steps.push(Step::Send {
                    bytes,
                    sync: false,
                    display: rest.trim().to_owned(),
                    vars: vec![],
                    line: n + 1,
                });
            } else if let Some(rest) = line.strip_prefix("send ") {
                let bytes = byte_terms(rest.trim()).with_context(ctx)?;
                s.steps.push(Step::Send {
                    bytes,
                    sync: true,
                    display: rest.trim().to_owned(),
                    vars: vec![],
                    line: n + 1,
                });
            } else if let Some(rest) = line.strip_prefix("advance-clock ") {
                let micros = rest.trim().parse::<u64>().with_context(ctx)?;
                s.steps.push(Step::AdvanceClock {
                    micros,
                    text: line.to_owned(),
                });
            } else if let Some(rest) = line.strip_prefix("inject-fault ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let [node, op, more @ ..] = words.as_slice() else {
                    bail!(
                        "line {}: inject-fault NODE read|write [EIO|ENOSPC] [OFFSET] [once]",
                        n + 1
                    )
                };
                let mut args = serde_json::json!({"node-name": node, "operation": op});
                for w in more {
                    match *w {
                        "once" => args["once"] = Value::Bool(true),
                        "EIO" | "ENOSPC" => args["errno"] = Value::from(*w),
                        off => {
                            let o = off.parse::<u64>().with_context(ctx)?;
                            args["offset"] = Value::from(o);
                        }
                    }
                }
                s.steps.push(Step::InjectFault {
                    args,
                    text: line.to_owned(),
                });
            } else if line == "reconnect" {
                s.steps.push(Step::Reconnect);
            } else if let Some(rest) = line.strip_prefix("await-event ") {
                let (rest, timeout) = strip_timeout(rest).with_context(ctx)?;
                let (name, data) = match rest.split_once(char::is_whitespace) {
                    Some((event, d)) => {
                        let v: Value = serde_json::from_str(d.trim()).with_context(ctx)?;
                        let Value::Object(m) = v else {
                            bail!("line {}: await-event data must be a JSON object", n + 1)
                        };
                        (event.to_owned(), m)
                    }
                    None => (rest.to_owned(), serde_json::Map::new()),
                };
                let pattern = Value::Object(data);
                expect::check_pattern(&pattern).with_context(ctx)?;
                expect::bound_names(&pattern, &mut bound);
                let Value::Object(data) = pattern else {
                    unreachable!("built as an object")
                };
                s.steps.push(Step::AwaitEvent {
                    name,
                    data,
                    timeout,
                    line: n + 1,
                });
            } else if let Some(cmd) = line.strip_prefix("setup ") {
                s.steps.push(Step::Setup(cmd.trim().to_owned()));
            } else if line == "expect-close" {
                s.steps.push(Step::ExpectClose);
            } else {
                bail!("line {}: unknown step: {line}", n + 1);
            }
        }
        if s.description.is_empty() {
            bail!("scenario {} has no '# description:' line", s.id);
        }
        Ok(s)
    }
}

/// Splits a trailing `timeout=SECONDS` off a directive's arguments.
fn strip_timeout(rest: &str) -> Result<(&str, Option<Duration>)> {
    let rest = rest.trim();
    let Some((head, last)) = rest.rsplit_once(char::is_whitespace) else {
        return Ok((rest, None));
    };
    let Some(secs) = last.strip_prefix("timeout=") else {
        return Ok((rest, None));
    };
    let secs: f64 = secs
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(|| anyhow!("timeout= takes a positive number of seconds, got {secs}"))?;
    Ok((head.trim_end(), Some(Duration::from_secs_f64(secs))))
}

/// Decodes a sequence of quoted terms, each optionally repeated:
/// `"[" * 1024 "]" * 1024 "\n"`.
pub fn byte_terms(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if !rest.starts_with('"') {
            bail!("expected a quoted string at: {rest}");
        }
        // Find the closing quote, skipping escaped characters.
        let mut end = None;
        let mut esc = false;
        for (i, c) in rest.char_indices().skip(1) {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| anyhow!("unterminated string: {rest}"))?;
        let term = unescape(&rest[..=end])?;
        rest = rest[end + 1..].trim_start();
        let mut times = 1usize;
        if let Some(r) = rest.strip_prefix('*') {
            let r = r.trim_start();
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            times = r[..digits]
                .parse()
                .with_context(|| format!("bad repeat count at: {r}"))?;
            rest = r[digits..].trim_start();
        }
        for _ in 0..times {
            out.extend_from_slice(&term);
        }
    }
    Ok(out)
}

/// Decodes a quoted byte string: `"…"` with `\n \r \t \0 \\ \" \xHH \u{H…}`.
pub fn unescape(quoted: &str) -> Result<Vec<u8>> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .ok_or_else(|| anyhow!("expected a double-quoted string, got {quoted}"))?;
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('"') => out.push(b'"'),
            Some('x') => {
                let h: String = chars.by_ref().take(2).collect();
                out.push(
                    u8::from_str_radix(&h, 16).with_context(|| format!("bad \\x escape {h}"))?,
                );
            }
            Some('u') => {
                if chars.next() != Some('{') {
                    bail!("\\u needs braces: \\u{{…}}");
                }
                let h: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let cp =
                    u32::from_str_radix(&h, 16).with_context(|| format!("bad \\u escape {h}"))?;
                let ch =
                    char::from_u32(cp).ok_or_else(|| anyhow!("\\u{{{h}}} is not a character"))?;
                let mut b = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
            }
            other => bail!(
                "unknown escape \\{}",
                other.map(String::from).unwrap_or_default()
            ),
        }
    }
    Ok(out)
}

/// Renders bytes as a quoted string that [`unescape`] reads back.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    s.push_str(&format!("\\x{:02X}", c as u32))
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02X}"));
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let b = b"{\"execute\": \"\xFF\xFE\x01\"}\n\t\\".to_vec();
        assert_eq!(unescape(&escape(&b)).unwrap(), b);
        assert_eq!(unescape("\"\\u{1F600}\"").unwrap(), "😀".as_bytes());
    }

    #[test]
    fn parses_steps_and_header() {
        let s = Scenario::parse(
            "# id: protocol/x\n# description: d\n# flavor: qsd\n-> {\"execute\": \"qmp_capabilities\"}\nsend-partial \"{\"\nsend \"}\\n\"\nreconnect\n",
            "fallback",
        )
        .unwrap();
        assert_eq!(s.id, "protocol/x");
        assert_eq!(s.steps.len(), 4);
        assert!(s.applies_to("qsd") && !s.applies_to("system"));
        assert!(matches!(&s.steps[1], Step::Send { sync: false, bytes, .. } if bytes == b"{"));
    }

    #[test]
    fn repeated_terms_expand() {
        assert_eq!(
            byte_terms(r#""[" * 3 "\"x\"" "]" * 2"#).unwrap(),
            b"[[[\"x\"]]"
        );
        assert!(byte_terms("\"a\" junk").is_err());
    }

    #[test]
    fn unknown_step_is_an_error() {
        assert!(Scenario::parse("# description: d\nbogus\n", "x").is_err());
    }

    #[test]
    fn expectations_and_timeouts() {
        let s = Scenario::parse(
            concat!(
                "# description: d\n",
                "-> {\"execute\": \"query-named-block-nodes\"}\n",
                "<- {\"return\": [{\"node-name\": \"$name:N\"}]}\n",
                "<- {\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\"}}\n",
                "await-event BLOCK_JOB_READY {\"device\": \"j\"} timeout=2.5\n",
                "await-event SHUTDOWN timeout=1\n",
                "expect-statuses j created running ready timeout=3\n",
                "-> {\"execute\": \"blockdev-del\", \"arguments\": {\"node-name\": \"$N\", \"x\": \"$M\"}}\n",
            ),
            "x",
        )
        .unwrap();
        assert!(matches!(
            &s.steps[1],
            Step::Expect {
                kind: ExpectKind::Message,
                line: 3,
                ..
            }
        ));
        assert!(
            matches!(&s.steps[2], Step::Expect { kind: ExpectKind::Event(Some(e)), .. } if e == "JOB_STATUS_CHANGE")
        );
        assert!(
            matches!(&s.steps[3], Step::AwaitEvent { name, data, timeout: Some(t), line: 5 }
            if name == "BLOCK_JOB_READY" && data.len() == 1 && *t == Duration::from_millis(2500))
        );
        assert!(
            matches!(&s.steps[4], Step::AwaitEvent { name, timeout: Some(_), .. } if name == "SHUTDOWN")
        );
        assert!(
            matches!(&s.steps[5], Step::ExpectStatuses { job, statuses, timeout: Some(_), .. }
            if job == "j" && statuses == &["created", "running", "ready"])
        );
        // Only names bound earlier are substituted; `$M` is text.
        assert!(matches!(&s.steps[6], Step::Send { vars, .. } if vars == &["N"]));
        assert!(Scenario::parse("# description: d\n<- {\"return\": \"$bogus\"}\n", "x").is_err());
        assert!(Scenario::parse("# description: d\n<- not json\n", "x").is_err());
        assert!(Scenario::parse("# description: d\nexpect-statuses j\n", "x").is_err());
        assert!(Scenario::parse("# description: d\nawait-event X timeout=0\n", "x").is_err());
    }

    #[test]
    fn launch_headers_split_like_a_shell_and_add_up() {
        let s = Scenario::parse(
            "# description: d\n\
             # flavor: system\n\
             # launch-setup: qemu-img create -q -f qcow2 a.qcow2 1M\n\
             # args: -M pc -blockdev '{\"driver\": \"null-co\", \"node-name\": \"n0\"}'\n\
             # args: -device virtio-blk-pci,drive=n0,id=vd0 \"a b\" c\\ d\n\
             -> {\"execute\": \"qmp_capabilities\"}\n",
            "devices/x",
        )
        .unwrap();
        assert_eq!(
            s.launch.args,
            [
                "-M",
                "pc",
                "-blockdev",
                r#"{"driver": "null-co", "node-name": "n0"}"#,
                "-device",
                "virtio-blk-pci,drive=n0,id=vd0",
                "a b",
                "c d"
            ]
        );
        assert_eq!(s.launch.setup, ["qemu-img create -q -f qcow2 a.qcow2 1M"]);
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("''").unwrap(), [""]);
    }
}
