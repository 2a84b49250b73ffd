//! Transcripts: what a client sent and received, one entry per line.
//!
//! ```text
//! # scenario: protocol/negotiation
//! # target: qemu-storage-daemon 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)
//! <- {"QMP": {…}}
//! -> {"execute": "qmp_capabilities"}
//! <- {"return": {}}
//! => "{\"execute\": \"qu"
//! == reconnect
//! == setup qemu-img create -f qcow2 <workdir>/a.qcow2 1M
//! == closed
//! ```
//! `<-` lines are exactly the bytes received, without the CRLF that ended
//! them; a line that did not end in CRLF is written `<~`. Golden
//! transcripts under `fixtures/` are written only by `qmp-conform record`
//! from real QEMU.

use std::fmt::Write as _;

use anyhow::{bail, Result};

/// One transcript line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A `->` step (text sent with a newline).
    Sent(String),
    /// A `send`/`send-partial` step, as written in the scenario.
    SentRaw(String),
    /// A received line that ended in CRLF.
    Recv(String),
    /// A received line that ended in a bare LF (or at EOF).
    RecvBadFraming(String),
    /// The client reconnected.
    Reconnect,
    /// A setup command ran (in the target's work folder).
    Setup(String),
    /// The server closed the connection.
    Closed,
    /// A mock directive ran (`advance-clock N`, `inject-fault …`).
    Directive(String),
}

/// A whole transcript with its header comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// `# key: value` header lines, in order.
    pub header: Vec<(String, String)>,
    /// The exchange.
    pub entries: Vec<Entry>,
}

impl Transcript {
    /// A header value.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Renders the file text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.header {
            let _ = writeln!(s, "# {k}: {v}");
        }
        for e in &self.entries {
            match e {
                Entry::Sent(t) => {
                    let _ = writeln!(s, "-> {t}");
                }
                Entry::SentRaw(t) => {
                    let _ = writeln!(s, "=> {t}");
                }
                Entry::Recv(t) => {
                    let _ = writeln!(s, "<- {t}");
                }
                Entry::RecvBadFraming(t) => {
                    let _ = writeln!(s, "<~ {t}");
                }
                Entry::Reconnect => s.push_str("== reconnect\n"),
                Entry::Setup(c) => {
                    s.push_str("== setup ");
                    s.push_str(c);
                    s.push('\n');
                }
                Entry::Closed => s.push_str("== closed\n"),
                Entry::Directive(d) => {
                    s.push_str("== ");
                    s.push_str(d);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Parses file text.
    pub fn parse(text: &str) -> Result<Transcript> {
        let mut t = Transcript::default();
        for (n, line) in text.lines().enumerate() {
            if let Some(h) = line.strip_prefix("# ") {
                if let Some((k, v)) = h.split_once(": ") {
                    t.header.push((k.to_owned(), v.to_owned()));
                }
                continue;
            }
            let e = if let Some(r) = line.strip_prefix("-> ") {
                Entry::Sent(r.to_owned())
            } else if let Some(r) = line.strip_prefix("=> ") {
                Entry::SentRaw(r.to_owned())
            } else if let Some(r) = line.strip_prefix("<- ") {
                Entry::Recv(r.to_owned())
            } else if let Some(r) = line.strip_prefix("<~ ") {
                Entry::RecvBadFraming(r.to_owned())
            } else if line == "== reconnect" {
                Entry::Reconnect
            } else if let Some(c) = line.strip_prefix("== setup ") {
                Entry::Setup(c.to_owned())
            } else if line == "== closed" {
                Entry::Closed
            } else if let Some(d) = line
                .strip_prefix("== ")
                .filter(|d| d.starts_with("advance-clock ") || d.starts_with("inject-fault "))
            {
                Entry::Directive(d.to_owned())
            } else if line.is_empty() {
                continue;
            } else {
                bail!("line {}: not a transcript line: {line}", n + 1);
            };
            t.entries.push(e);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_round_trip() {
        let t = Transcript {
            header: vec![("scenario".into(), "protocol/x".into())],
            entries: vec![
                Entry::Recv("{\"QMP\": {}}".into()),
                Entry::Sent("{\"execute\": \"qmp_capabilities\"}".into()),
                Entry::SentRaw("\"{\\\"ex\"".into()),
                Entry::RecvBadFraming("x".into()),
                Entry::Reconnect,
                Entry::Closed,
            ],
        };
        assert_eq!(Transcript::parse(&t.render()).unwrap(), t);
    }
}
