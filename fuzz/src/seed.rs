//! Seed inputs from the conformance scenarios (`fixtures/scenarios/**/*.qmp`).
//!
//! A scenario is read the way `conformance/src/scenario.rs` reads it (this
//! is a small re-implementation, so that the fuzz package does not depend
//! on the conformance crate): `-> TEXT` writes TEXT and `\n`; `send "…"` and
//! `send-partial "…"` write escaped bytes (`\n \r \t \0 \\ \" \xHH \u{…}`,
//! terms repeated with `* N`); `reconnect` starts a new connection; `setup
//! qemu-img create [-q] -f FMT [-b FILE -F FMT] FILE [SIZE]` becomes an
//! [`Op::Image`] (other `setup` commands are skipped); `<workdir>` in sent
//! bytes becomes [`WORKDIR`]; expectations (`<-`, `expect-statuses`,
//! `await-event`) send nothing, and `$NAME` bindings stay unsubstituted
//! (a seed is only a start). Like the runner, every
//! synchronising step is followed by its marker command
//! `{"execute": "query-version", "id": "qmp-conform-sync-N"}`, and a
//! scenario ending with unsynchronised input gets a final marker.

use crate::codec;
use crate::memhost::qcow2_image;
use crate::session::{Chunk, ImageFormat, Op, ProfileChoice, SessionInput};

/// One thing a scenario does on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// The client writes bytes.
    Write(Vec<u8>),
    /// `setup qemu-img create …`, as an [`Op::Image`].
    Image(Op),
}

/// What a client does in one scenario: connections, each a list of steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientBytes {
    /// `qsd`, `system` or `any`.
    pub flavor: String,
    /// One entry per connection.
    pub connections: Vec<Vec<ClientStep>>,
    /// Steps this reader does not know (skipped; the scenario syntax grew).
    pub unknown: Vec<String>,
}

/// `qemu-img create [-q] -f FMT [-b FILE] [-F FMT] FILE [SIZE]`.
fn qemu_img_create(cmd: &str) -> Option<Op> {
    let mut words = cmd.split_whitespace();
    if (words.next(), words.next()) != (Some("qemu-img"), Some("create")) {
        return None;
    }
    let format = |f: &str| match f {
        "raw" => Some(ImageFormat::Raw),
        "qcow2" => Some(ImageFormat::Qcow2),
        _ => None,
    };
    let (mut fmt, mut backing, mut backing_fmt) = (ImageFormat::Raw, None, ImageFormat::Raw);
    let mut positional = Vec::new();
    while let Some(w) = words.next() {
        match w {
            "-q" => {}
            "-f" => fmt = format(words.next()?)?,
            "-b" => backing = Some(words.next()?),
            "-F" => backing_fmt = format(words.next()?)?,
            w if w.starts_with('-') => return None,
            w => positional.push(w),
        }
    }
    let size_kib = match positional.get(1) {
        None => 0,
        Some(s) => {
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num.parse().ok()?;
            let bytes = match unit {
                "" => n,
                "K" | "k" => n << 10,
                "M" => n << 20,
                _ => return None,
            };
            u16::try_from(bytes.div_ceil(1024)).ok()?
        }
    };
    let file = |p: &str| Chunk(p.replace("<workdir>", WORKDIR).into_bytes());
    Some(Op::Image {
        name: file(positional.first()?),
        format: fmt,
        size_kib,
        backing: backing.map(|b| (file(b), backing_fmt)),
    })
}

/// What `<workdir>` stands for in seeds: a folder name in the session
/// harness's in-memory file map (nothing is on disk).
pub const WORKDIR: &str = "/tmp/mock-qemu-fuzz";

/// `<workdir>` replaced by [`WORKDIR`], as the runner replaces it.
fn with_workdir(bytes: Vec<u8>) -> Vec<u8> {
    const P: &[u8] = b"<workdir>";
    if !bytes.windows(P.len()).any(|w| w == P) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(P) {
            out.extend_from_slice(WORKDIR.as_bytes());
            i += P.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The runner's synchronisation marker number `n`.
fn marker(n: u32) -> Vec<u8> {
    format!("{{\"execute\": \"query-version\", \"id\": \"qmp-conform-sync-{n}\"}}\n").into_bytes()
}

/// Reads a scenario file's text.
pub fn parse_scenario(text: &str) -> Result<ClientBytes, String> {
    let mut out = ClientBytes {
        flavor: "any".into(),
        connections: vec![Vec::new()],
        unknown: Vec::new(),
    };
    let mut sync_no = 0;
    let mut pending = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            if let Some(("flavor", v)) = c.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
                out.flavor = v.to_owned();
            }
            continue;
        }
        let (bytes, sync) = if let Some(t) = line.strip_prefix("->") {
            (format!("{}\n", t.trim_start()).into_bytes(), true)
        } else if let Some(rest) = line.strip_prefix("send-partial ") {
            (byte_terms(rest.trim()).map_err(at)?, false)
        } else if let Some(rest) = line.strip_prefix("send ") {
            (byte_terms(rest.trim()).map_err(at)?, true)
        } else if line == "reconnect" {
            out.connections.push(Vec::new());
            pending = false;
            continue;
        } else if let Some(cmd) = line.strip_prefix("setup ") {
            if let Some(op) = qemu_img_create(cmd) {
                let conn = out.connections.last_mut().expect("one connection at least");
                conn.push(ClientStep::Image(op));
            }
            continue;
        } else if line == "expect-close"
            || line.starts_with("await-event ")
            || line.starts_with("expect-statuses ")
            || line.starts_with("advance-clock ")
            || line.starts_with("inject-fault ")
            || line.starts_with("<-")
        {
            continue; // the client sends nothing (directives: mock-only commands)
        } else {
            out.unknown.push(at(line.to_owned()));
            continue;
        };
        let conn = out.connections.last_mut().expect("one connection at least");
        conn.push(ClientStep::Write(with_workdir(bytes)));
        if sync {
            sync_no += 1;
            conn.push(ClientStep::Write(marker(sync_no)));
        }
        pending = !sync;
    }
    if pending {
        sync_no += 1;
        if let Some(conn) = out.connections.last_mut() {
            conn.push(ClientStep::Write(marker(sync_no)));
        }
    }
    Ok(out)
}

/// Decodes `"…" * N "…"` sequences (`byte_terms` in the conformance crate).
pub fn byte_terms(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if !rest.starts_with('"') {
            return Err(format!("expected a quoted string at: {rest}"));
        }
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
        let end = end.ok_or_else(|| format!("unterminated string: {rest}"))?;
        let term = unescape(&rest[1..end])?;
        rest = rest[end + 1..].trim_start();
        let mut times = 1usize;
        if let Some(r) = rest.strip_prefix('*') {
            let r = r.trim_start();
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            times = r[..digits]
                .parse()
                .map_err(|e| format!("bad repeat count at {r}: {e}"))?;
            rest = r[digits..].trim_start();
        }
        for _ in 0..times {
            out.extend_from_slice(&term);
        }
    }
    Ok(out)
}

/// Decodes the inside of a quoted byte string.
fn unescape(inner: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut chars = inner.chars();
    let mut buf = [0u8; 4];
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
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
                out.push(u8::from_str_radix(&h, 16).map_err(|_| format!("bad \\x escape {h}"))?);
            }
            Some('u') => {
                if chars.next() != Some('{') {
                    return Err("\\u needs braces: \\u{…}".into());
                }
                let h: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let ch = u32::from_str_radix(&h, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad \\u escape {h}"))?;
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// The profiles a scenario's `# flavor:` applies to.
pub fn profiles_for(flavor: &str) -> Vec<ProfileChoice> {
    ProfileChoice::ALL
        .into_iter()
        .filter(|p| {
            let f = p.version_flavor().1.name();
            flavor == "any" || flavor == f
        })
        .collect()
}

/// The `codec` seed: every byte the client writes, fed whole.
pub fn codec_seed(c: &ClientBytes) -> Vec<u8> {
    let mut bytes = Vec::new();
    for step in c.connections.iter().flatten() {
        if let ClientStep::Write(w) = step {
            bytes.extend_from_slice(w);
        }
    }
    codec::encode_whole(&bytes)
}

/// The `session` ops: per connection, open, write, then end of input.
pub fn session_ops(c: &ClientBytes) -> Vec<Op> {
    let mut ops = Vec::new();
    for conn in &c.connections {
        ops.push(Op::Open);
        for step in conn {
            match step {
                ClientStep::Image(op) => ops.push(op.clone()),
                ClientStep::Write(write) => {
                    for part in write.chunks(Chunk::MAX_LEN) {
                        ops.push(Op::Feed {
                            session: 0,
                            bytes: Chunk(part.to_vec()),
                        });
                    }
                }
            }
        }
        ops.push(Op::Close {
            session: 0,
            eof: true,
        });
    }
    ops
}

/// `qcow2` seeds: headers as `qemu-img create` writes them, without and
/// with backing files (relative, absolute, protocol), in 64 KiB (the part
/// `read_qcow2` reads) and as just the header bytes.
pub fn qcow2_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, backing) in [
        ("plain", None),
        ("relative-raw", Some(("base.img", "raw"))),
        ("absolute-qcow2", Some(("/images/base.qcow2", "qcow2"))),
        ("protocol", Some(("nbd+unix:///exp?socket=/s", "raw"))),
    ] {
        let image = qcow2_image(1 << 20, backing);
        out.push((format!("{name}-header"), image.head.clone()));
        out.push((format!("{name}-cluster"), image.first_bytes()));
    }
    out
}

/// Encodes a session input and checks that `Arbitrary` reads it back.
pub fn encode_session(input: &SessionInput) -> Result<Vec<u8>, String> {
    let bytes = input.encode();
    match SessionInput::decode(&bytes) {
        Ok(back) if back == *input => Ok(bytes),
        other => Err(format!(
            "the arbitrary crate no longer decodes seeds as encoded: {other:?}"
        )),
    }
}

/// Hand-written session inputs for what scenarios do not cover: several
/// clients at once (event fan-out, per-session negotiation), interleaved
/// partial input, `-S`; a qcow2 image given as bytes (so that mutations
/// reach the header parser) with an implicit backing file and a snapshot.
pub fn extra_session_inputs() -> Vec<(&'static str, SessionInput)> {
    let feed = |session: u8, text: &str| Op::Feed {
        session,
        bytes: Chunk(text.as_bytes().to_vec()),
    };
    let caps = "{\"execute\": \"qmp_capabilities\"}\n";
    let mut out = Vec::new();
    for (profile, paused) in [
        (ProfileChoice::System10_0, false),
        (ProfileChoice::System7_2, true),
        (ProfileChoice::Qsd10_0, false),
        (ProfileChoice::Qsd5_2, false),
    ] {
        out.push((
            "multi-session",
            SessionInput {
                profile,
                start_paused: paused,
                ops: vec![
                    Op::Open,
                    Op::Open,
                    Op::Open,
                    feed(0, caps),
                    feed(1, "{\"execute\": \"qmp_capa"),
                    feed(2, "{\"execute\": \"stop\", \"id\": 1}\n"),
                    feed(1, "bilities\", \"arguments\": {\"enable\": [\"oob\"]}}\n"),
                    feed(0, "{\"execute\": \"stop\", \"id\": 2}\n"),
                    feed(1, "{\"exec-oob\": \"cont\", \"id\": 3}\n"),
                    feed(0, "{\"execute\": \"cont\", \"id\": 4.5}\n"),
                    feed(2, "{\"execute\": \"query-status\"}"),
                    Op::Finish { session: 2 },
                    Op::Close {
                        session: 1,
                        eof: false,
                    },
                    feed(0, "{\"execute\": \"stop\", \"id\": [1e999]}\n"),
                    feed(0, "{\"execute\": \"quit\", \"id\": {\"a\": null}}\n"),
                ],
            },
        ));
    }
    let path = |name: &str| Chunk(format!("{WORKDIR}/{name}").into_bytes());
    let top = qcow2_image(1 << 20, Some((&format!("{WORKDIR}/base.img"), "raw")));
    for profile in [ProfileChoice::Qsd10_0, ProfileChoice::Qsd5_2] {
        out.push((
            "qcow2-header",
            SessionInput {
                profile,
                start_paused: false,
                ops: vec![
                    Op::Image {
                        name: path("base.img"),
                        format: ImageFormat::Raw,
                        size_kib: 1024,
                        backing: None,
                    },
                    Op::File {
                        name: path("top.qcow2"),
                        contents: Chunk(top.head.clone()),
                    },
                    Op::Open,
                    feed(0, caps),
                    feed(
                        0,
                        &format!(
                            "{{\"execute\": \"blockdev-add\", \"arguments\": {{\"driver\": \"qcow2\", \"node-name\": \"top\", \"file\": {{\"driver\": \"file\", \"filename\": \"{WORKDIR}/top.qcow2\"}}}}}}\n"
                        ),
                    ),
                    feed(0, "{\"execute\": \"query-named-block-nodes\", \"id\": 1}\n"),
                    feed(
                        0,
                        &format!(
                            "{{\"execute\": \"blockdev-snapshot-sync\", \"arguments\": {{\"node-name\": \"top\", \"snapshot-file\": \"{WORKDIR}/snap.qcow2\", \"snapshot-node-name\": \"snap\"}}, \"id\": 2}}\n"
                        ),
                    ),
                    feed(
                        0,
                        "{\"execute\": \"query-named-block-nodes\", \"arguments\": {\"flat\": true}, \"id\": 3}\n",
                    ),
                    Op::Close {
                        session: 0,
                        eof: true,
                    },
                ],
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_text_becomes_client_bytes() {
        let c = parse_scenario(
            "# description: d\n# flavor: qsd\nsetup qemu-img create -f qcow2 x 1M\nsetup qemu-io x\n-> {\"execute\": \"qmp_capabilities\"}\nsend-partial \"{\\x01\"\nsend \"[\" * 3 \"\\u{e9}\\0\"\nreconnect\nsend-partial \"x\"\n",
        )
        .unwrap();
        let w = |b: &[u8]| ClientStep::Write(b.to_vec());
        assert_eq!(c.flavor, "qsd");
        assert_eq!(c.connections.len(), 2);
        assert_eq!(c.connections[0].len(), 6);
        assert_eq!(
            c.connections[0][0],
            ClientStep::Image(Op::Image {
                name: Chunk(b"x".to_vec()),
                format: ImageFormat::Qcow2,
                size_kib: 1024,
                backing: None
            })
        );
        assert_eq!(
            c.connections[0][1],
            w(b"{\"execute\": \"qmp_capabilities\"}\n")
        );
        assert_eq!(c.connections[0][2], w(&marker(1)));
        assert_eq!(c.connections[0][3], w(b"{\x01"));
        assert_eq!(c.connections[0][4], w("[[[\u{e9}\0".as_bytes()));
        assert_eq!(c.connections[1], [w(b"x"), w(&marker(3))]);
        assert_eq!(
            qemu_img_create("qemu-img create -q -f qcow2 -b <workdir>/b -F raw <workdir>/t"),
            Some(Op::Image {
                name: Chunk(format!("{WORKDIR}/t").into_bytes()),
                format: ImageFormat::Qcow2,
                size_kib: 0,
                backing: Some((Chunk(format!("{WORKDIR}/b").into_bytes()), ImageFormat::Raw)),
            })
        );
        assert_eq!(qemu_img_create("qemu-io -c 'write 0 1M' x"), None);
        assert_eq!(
            parse_scenario("bogus\n").unwrap().unknown,
            ["line 1: bogus"]
        );
        let e = parse_scenario("<- {\"return\": {}}\nexpect-statuses j created\n").unwrap();
        assert!(e.unknown.is_empty() && e.connections == [Vec::<ClientStep>::new()]);
        assert!(parse_scenario("send \"x\" junk\n").is_err());
        let c = parse_scenario("send \"<workdir>/a <workdir>\"\n").unwrap();
        assert_eq!(
            c.connections[0][0],
            ClientStep::Write(format!("{WORKDIR}/a {WORKDIR}").into_bytes())
        );
        assert!(byte_terms("\"a\" junk").is_err());
        assert_eq!(profiles_for("system").len(), 2);
        assert_eq!(profiles_for("any").len(), 5);
    }

    #[test]
    fn every_seed_encodes() {
        for (_, input) in extra_session_inputs() {
            encode_session(&input).unwrap();
        }
    }

    #[test]
    fn the_qcow2_seed_reaches_the_graph() {
        let (_, input) = extra_session_inputs()
            .into_iter()
            .find(|(name, _)| *name == "qcow2-header")
            .unwrap();
        let t = crate::session::play(&input);
        let ok = |id: u32| {
            t.iter().any(|l| {
                l.starts_with("reply")
                    && l.contains(&format!("\"id\": {id}}}"))
                    && l.contains("\"return\"")
            })
        };
        assert!(ok(1) && ok(2) && ok(3), "{t:#?}");
        assert!(t.iter().any(|l| l.contains("base.img")), "{t:#?}");
    }
}
