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
//! - `setup CMD`: runs `sh -c CMD` in the target's work folder before going
//!   on (create an image with qemu-img, write data with qemu-io); a failure
//!   fails the case.
//!
//! `<workdir>` in any step stands for the target's private work folder.
//!
//! Synchronising sends a marker command (see [`SYNC_ID_PREFIX`]) and reads
//! until its reply, so each step's output is complete without sleeping; the
//! marker's own reply is not part of the transcript.

use anyhow::{anyhow, bail, Context, Result};

/// `id` prefix of the runner's synchronisation markers.
pub const SYNC_ID_PREFIX: &str = "qmp-conform-sync-";

/// One action of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send bytes; `sync` = wait for everything they caused.
    Send {
        /// The bytes.
        bytes: Vec<u8>,
        /// Follow with a synchronisation marker.
        sync: bool,
        /// How the step was written (for transcripts).
        display: String,
    },
    /// Drop the connection and connect again.
    Reconnect,
    /// The server closes the connection.
    ExpectClose,
    /// A shell command run in the work folder.
    Setup(String),
    /// Read until an event with this name (and these data members) has
    /// arrived since the last request, within the timeout.
    AwaitEvent {
        /// Event name.
        name: String,
        /// Members `data` must have (a subset).
        data: serde_json::Map<String, serde_json::Value>,
    },
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
    /// The steps.
    pub steps: Vec<Step>,
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
            steps: Vec::new(),
        };
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
                        _ => {}
                    }
                }
                continue;
            }
            if let Some(t) = line.strip_prefix("->") {
                let t = t.trim_start();
                s.steps.push(Step::Send {
                    bytes: format!("{t}\n").into_bytes(),
                    sync: true,
                    display: t.to_owned(),
                });
            } else if let Some(rest) = line.strip_prefix("send-partial ") {
                let bytes = byte_terms(rest.trim()).with_context(ctx)?;
                s.steps.push(Step::Send {
                    bytes,
                    sync: false,
                    display: rest.trim().to_owned(),
                });
            } else if let Some(rest) = line.strip_prefix("send ") {
                let bytes = byte_terms(rest.trim()).with_context(ctx)?;
                s.steps.push(Step::Send {
                    bytes,
                    sync: true,
                    display: rest.trim().to_owned(),
                });
            } else if line == "reconnect" {
                s.steps.push(Step::Reconnect);
            } else if let Some(rest) = line.strip_prefix("await-event ") {
                let rest = rest.trim();
                let (name, data) = match rest.split_once(char::is_whitespace) {
                    Some((event, d)) => {
                        let v: serde_json::Value =
                            serde_json::from_str(d.trim()).with_context(ctx)?;
                        let serde_json::Value::Object(m) = v else {
                            bail!("line {}: await-event data must be a JSON object", n + 1)
                        };
                        (event.to_owned(), m)
                    }
                    None => (rest.to_owned(), serde_json::Map::new()),
                };
                s.steps.push(Step::AwaitEvent { name, data });
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
}
