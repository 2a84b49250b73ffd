//! The `session` target: QMP sessions driven through [`Core`] exactly as the
//! server drives it (one [`JsonStreamer`] per connection, `Core::handle` for
//! every parsed item, stop after `quit`).
//!
//! The input is structured ([`SessionInput`], derived `Arbitrary`): a
//! profile, `-S` or not, then operations on sessions (open, feed bytes,
//! end of input, close) and on files (`qemu-img create`, a file with given
//! bytes). Files live in memory ([`MemHost`], plugged in with
//! `Core::set_host_io`), so nothing touches the disk.
//!
//! Properties (see [`run`]):
//! 1. no panic;
//! 2. every greeting, reply and event line is printable ASCII (so a single
//!    line: no CR/LF inside) and is one JSON object by the mock's own parser.
//!    The one exception is QEMU's: an `id` holding a non-finite double is
//!    echoed as `inf`/`-inf`/`nan`. The `id` member is therefore located as
//!    text (`{"id": ID, …` or `…, "id": ID}` with `ID` the request's id as
//!    the writer spells it) and cut out, and the rest must parse; a finite
//!    `ID` must also read back as the request's id;
//! 3. a reply is `{"return": …}` or `{"error": {"class": C, "desc": D}}`
//!    (C one of QEMU's five classes, D non-empty) plus `id` exactly when the
//!    request was an object with an `id`; an event is `{"event": NAME,
//!    "timestamp": {"seconds", "microseconds"}}` plus optional `data` object,
//!    with timestamps never going backwards (events before the reply, then
//!    the reply, then the events raised after it);
//! 4. a parse error item gets `GenericError` with exactly the parser's desc;
//!    a non-object gets `QMP input must be a JSON object`;
//! 5. exactly one reply per parsed item;
//! 6. negotiation: nothing but `qmp_capabilities` succeeds before it, and
//!    `qmp_capabilities` succeeds at most once per session; the core's
//!    session state agrees; events go to exactly the open, negotiated
//!    sessions;
//! 7. `quit_requested()` turns true only when `quit` succeeded;
//! 8. session ids are never reused; every greeting is identical and names
//!    the profile's QEMU version;
//! 9. determinism: playing the same input twice gives the same transcript;
//! 10. no reply carries `mock-qemu: internal …` (a mock bug by its own
//!     definition), unless `FUZZ_ALLOW_INTERNAL_ERRORS=1` is set.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use mock_qemu::core::{Core, CoreConfig, SessionId};
use mock_qemu::host::HostIo;
use mock_qemu::profile::{Flavor, Profile, Version};
use mock_qemu::qmp::json::{to_json_with, JsonStreamer, Parsed, Style};
use mock_qemu::qmp::qobject::{QNum, QObject};

use crate::memhost::{qcow2_image, MemFile, MemHost};
use crate::wire::{check_printable_ascii, has_non_finite, parse_one, same_value};

/// The recorded profiles.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileChoice {
    /// qemu-storage-daemon 5.2
    Qsd5_2,
    /// qemu-storage-daemon 7.2
    Qsd7_2,
    /// qemu-system-x86_64 7.2
    System7_2,
    /// qemu-storage-daemon 10.0
    Qsd10_0,
    /// qemu-system-x86_64 10.0
    System10_0,
}

impl ProfileChoice {
    /// Every choice, in declaration order.
    pub const ALL: [ProfileChoice; 5] = [
        ProfileChoice::Qsd5_2,
        ProfileChoice::Qsd7_2,
        ProfileChoice::System7_2,
        ProfileChoice::Qsd10_0,
        ProfileChoice::System10_0,
    ];

    /// Version and flavor.
    pub fn version_flavor(self) -> (Version, Flavor) {
        match self {
            ProfileChoice::Qsd5_2 => (Version::V5_2, Flavor::Qsd),
            ProfileChoice::Qsd7_2 => (Version::V7_2, Flavor::Qsd),
            ProfileChoice::System7_2 => (Version::V7_2, Flavor::System),
            ProfileChoice::Qsd10_0 => (Version::V10_0, Flavor::Qsd),
            ProfileChoice::System10_0 => (Version::V10_0, Flavor::System),
        }
    }

    /// How this QEMU spells doubles: `%f` before 6.0, `%.17g` since.
    pub fn style(self) -> Style {
        match self.version_flavor().0 {
            Version::V5_2 => Style::Legacy,
            _ => Style::Modern,
        }
    }

    /// `(major, minor)` the greeting must announce.
    fn qemu_version(self) -> (i64, i64) {
        match self.version_flavor().0 {
            Version::V5_2 => (5, 2),
            Version::V7_2 => (7, 2),
            Version::V10_0 => (10, 0),
        }
    }
}

/// Bytes one client writes at once. `Arbitrary` reads a length (one byte
/// below 0x80, else 15 bits over two bytes) and then that many bytes (fewer
/// if the input ends), all from the front, so seeds are easy to write.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Chunk(pub Vec<u8>);

impl Chunk {
    /// Longest chunk [`Chunk::encode`] can write.
    pub const MAX_LEN: usize = 0x7FFF;

    /// The encoding [`Arbitrary`] reads back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.0.len();
        assert!(len <= Self::MAX_LEN, "chunk of {len} bytes is too long");
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.push(0x80 | (len >> 8) as u8);
            out.push((len & 0xFF) as u8);
        }
        out.extend_from_slice(&self.0);
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl<'a> Arbitrary<'a> for Chunk {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let first = u8::arbitrary(u)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            (usize::from(first & 0x7F) << 8) | usize::from(u8::arbitrary(u)?)
        };
        let len = len.min(u.len());
        Ok(Chunk(u.bytes(len)?.to_vec()))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (1, None)
    }
}

/// One step of a client population. `session` picks among the open
/// sessions (modulo their number); with none open the step does nothing.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A client connects (gets a greeting).
    Open,
    /// A client writes bytes.
    Feed {
        /// Which open session.
        session: u8,
        /// What it writes.
        bytes: Chunk,
    },
    /// End of input without closing: the streamer is flushed (and reset).
    Finish {
        /// Which open session.
        session: u8,
    },
    /// The connection ends: with `eof`, as a read of 0 bytes does in the
    /// server (flush, handle, close); without, abruptly.
    Close {
        /// Which open session.
        session: u8,
        /// Flush the pending input first.
        eof: bool,
    },
    /// An image file appears (a scenario's `setup qemu-img create`).
    Image {
        /// File name.
        name: Chunk,
        /// Format.
        format: ImageFormat,
        /// Virtual size in KiB; 0 takes the backing file's size.
        size_kib: u16,
        /// qcow2 only: backing file and its format, written to the header.
        backing: Option<(Chunk, ImageFormat)>,
    },
    /// A file with exactly these bytes appears (crafted image headers).
    File {
        /// File name.
        name: Chunk,
        /// Contents.
        contents: Chunk,
    },
}

/// Number of [`Op`] variants (for [`SessionInput::encode`]).
const OP_VARIANTS: u32 = 6;

/// An image format `Op::Image` can create.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain file.
    Raw,
    /// qcow2 (an empty image as `qemu-img create` writes it).
    Qcow2,
}

impl ImageFormat {
    /// The QEMU format name.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    fn tag(self) -> u32 {
        match self {
            ImageFormat::Raw => 0,
            ImageFormat::Qcow2 => 1,
        }
    }
}

/// A whole `session` input.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct SessionInput {
    /// Which QEMU is impersonated.
    pub profile: ProfileChoice,
    /// `-S`: start in `prelaunch`.
    pub start_paused: bool,
    /// What the clients do.
    pub ops: Vec<Op>,
}

fn push_tag(out: &mut Vec<u8>, idx: u32, count: u32) {
    // derive(Arbitrary) picks variant `(u32 * count) >> 32`.
    let x = (u64::from(idx) << 32).div_ceil(u64::from(count));
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

impl SessionInput {
    /// Bytes that `derive(Arbitrary)` decodes back into `self` (checked by
    /// [`SessionInput::decode`] in the seed generator and the tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let profile = ProfileChoice::ALL
            .iter()
            .position(|p| *p == self.profile)
            .unwrap_or(0);
        push_tag(&mut out, profile as u32, ProfileChoice::ALL.len() as u32);
        out.push(u8::from(self.start_paused));
        for op in &self.ops {
            out.push(1); // "one more element"
            match op {
                Op::Open => push_tag(&mut out, 0, OP_VARIANTS),
                Op::Feed { session, bytes } => {
                    push_tag(&mut out, 1, OP_VARIANTS);
                    out.push(*session);
                    bytes.encode(&mut out);
                }
                Op::Finish { session } => {
                    push_tag(&mut out, 2, OP_VARIANTS);
                    out.push(*session);
                }
                Op::Close { session, eof } => {
                    push_tag(&mut out, 3, OP_VARIANTS);
                    out.push(*session);
                    out.push(u8::from(*eof));
                }
                Op::Image {
                    name,
                    format,
                    size_kib,
                    backing,
                } => {
                    push_tag(&mut out, 4, OP_VARIANTS);
                    name.encode(&mut out);
                    push_tag(&mut out, format.tag(), 2);
                    out.extend_from_slice(&size_kib.to_le_bytes());
                    match backing {
                        None => out.push(0),
                        Some((file, fmt)) => {
                            out.push(1);
                            file.encode(&mut out);
                            push_tag(&mut out, fmt.tag(), 2);
                        }
                    }
                }
                Op::File { name, contents } => {
                    push_tag(&mut out, 5, OP_VARIANTS);
                    name.encode(&mut out);
                    contents.encode(&mut out);
                }
            }
        }
        out
    }

    /// What the fuzz target sees for `data`.
    pub fn decode(data: &[u8]) -> arbitrary::Result<SessionInput> {
        SessionInput::arbitrary_take_rest(Unstructured::new(data))
    }
}

/// Whether replies may carry `mock-qemu: internal …` errors.
fn allow_internal_errors() -> bool {
    static ALLOW: OnceLock<bool> = OnceLock::new();
    *ALLOW.get_or_init(|| {
        std::env::var("FUZZ_ALLOW_INTERNAL_ERRORS").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

const ERROR_CLASSES: [&str; 5] = [
    "GenericError",
    "CommandNotFound",
    "DeviceNotActive",
    "DeviceNotFound",
    "KVMMissingCap",
];

/// What the harness knows about a request before handing it to the core.
#[derive(Debug)]
pub(crate) enum Request {
    ParseError(String),
    NotAnObject,
    Object {
        id: Option<QObject>,
        /// `execute`, else `exec-oob`, when a string: what the core runs
        /// if the request passes its checks.
        command: Option<String>,
    },
}

impl Request {
    pub(crate) fn of(item: &Parsed) -> Request {
        match item {
            Parsed::Error(desc) => Request::ParseError(desc.clone()),
            Parsed::Value(QObject::Dict(d)) => {
                let command = ["execute", "exec-oob"]
                    .iter()
                    .find_map(|k| d.get(k).and_then(QObject::as_str))
                    .map(str::to_owned);
                Request::Object {
                    id: d.get("id").cloned(),
                    command,
                }
            }
            Parsed::Value(_) => Request::NotAnObject,
        }
    }

    fn id(&self) -> Option<&QObject> {
        match self {
            Request::Object { id, .. } => id.as_ref(),
            _ => None,
        }
    }

    fn command(&self) -> Option<&str> {
        match self {
            Request::Object { command, .. } => command.as_deref(),
            _ => None,
        }
    }
}

/// The context-free content of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Return,
    Error { class: String, desc: String },
}

/// Checks a reply without its `id`: one JSON object, `return` or `error`.
fn check_reply_body(body: &str) -> Result<Outcome, String> {
    let v = parse_one(body)?;
    let d = v.as_dict().ok_or("reply is not an object")?;
    if d.len() != 1 {
        let keys: Vec<&str> = d.iter().map(|(k, _)| k).collect();
        return Err(format!(
            "reply members {keys:?} (id cut out) are not one of return/error"
        ));
    }
    if d.contains_key("return") {
        return Ok(Outcome::Return);
    }
    let e = d
        .get("error")
        .and_then(QObject::as_dict)
        .ok_or("reply has neither return nor an error object")?;
    let class = e.get("class").and_then(QObject::as_str);
    let desc = e.get("desc").and_then(QObject::as_str);
    match (class, desc, e.len()) {
        (Some(c), Some(d), 2) if ERROR_CLASSES.contains(&c) && !d.is_empty() => {
            Ok(Outcome::Error {
                class: c.to_owned(),
                desc: d.to_owned(),
            })
        }
        _ => Err(format!("malformed error object {e:?}")),
    }
}

thread_local! {
    /// Checked bodies of long replies (`query-qmp-schema` is ~200 KiB), so
    /// an input repeating such a command does not re-parse it every time.
    static LONG_BODIES: RefCell<HashMap<String, Outcome>> = RefCell::new(HashMap::new());
}

fn check_reply_body_cached(body: String) -> Result<Outcome, String> {
    const LONG: usize = 8 << 10;
    if body.len() < LONG {
        return check_reply_body(&body);
    }
    if let Some(o) = LONG_BODIES.with(|c| c.borrow().get(&body).cloned()) {
        return Ok(o);
    }
    let o = check_reply_body(&body)?;
    LONG_BODIES.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < 64 {
            c.insert(body, o.clone());
        }
    });
    Ok(o)
}

/// Checks a reply line against the request it answers.
pub(crate) fn check_reply(line: &str, req: &Request, style: Style) -> Result<Outcome, String> {
    check_printable_ascii(line)?;
    let body = match req.id() {
        None => line.to_owned(),
        Some(id) => {
            let id_text = to_json_with(id, style);
            if !has_non_finite(id) {
                let back = parse_one(&id_text)
                    .map_err(|e| format!("echoed id {id_text} is not JSON: {e}"))?;
                same_value(id, &back, style).map_err(|e| format!("echoed id: {e}"))?;
            }
            let head = format!("{{\"id\": {id_text}, ");
            let tail = format!(", \"id\": {id_text}}}");
            if let Some(rest) = line.strip_prefix(&head) {
                format!("{{{rest}")
            } else if let Some(rest) = line.strip_suffix(&tail) {
                format!("{rest}}}")
            } else {
                return Err(format!("the request's id {id_text} is not echoed"));
            }
        }
    };
    let outcome = check_reply_body_cached(body)?;
    let expect_error = |class: &str, want: &str| match &outcome {
        Outcome::Error { class: c, desc } if c == class && desc == want => Ok(()),
        _ => Err(format!("expected {class} {want:?}")),
    };
    match req {
        Request::ParseError(desc) => expect_error("GenericError", desc)?,
        Request::NotAnObject => expect_error("GenericError", "QMP input must be a JSON object")?,
        Request::Object { .. } => {}
    }
    if let Outcome::Error { desc, .. } = &outcome {
        if desc.starts_with("mock-qemu: internal") && !allow_internal_errors() {
            return Err(format!(
                "internal error (set FUZZ_ALLOW_INTERNAL_ERRORS=1 to tolerate): {desc}"
            ));
        }
    }
    Ok(outcome)
}

fn int_member(d: &mock_qemu::qmp::qobject::QDict, key: &str) -> Option<i64> {
    match d.get(key) {
        Some(QObject::Num(QNum::I64(i))) => Some(*i),
        _ => None,
    }
}

/// Checks an event line; returns its timestamp.
pub(crate) fn check_event(line: &str) -> Result<(i64, i64), String> {
    check_printable_ascii(line)?;
    let v = parse_one(line)?;
    let d = v.as_dict().ok_or("event is not an object")?;
    let name = d
        .get("event")
        .and_then(QObject::as_str)
        .ok_or("event lacks a string 'event'")?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!("bad event name {name:?}"));
    }
    let ts = d
        .get("timestamp")
        .and_then(QObject::as_dict)
        .ok_or("event lacks a timestamp object")?;
    let (Some(s), Some(us), 2) = (
        int_member(ts, "seconds"),
        int_member(ts, "microseconds"),
        ts.len(),
    ) else {
        return Err(format!("bad timestamp {ts:?}"));
    };
    if s < 0 || !(0..1_000_000).contains(&us) {
        return Err(format!("bad timestamp {ts:?}"));
    }
    let expected = 2 + usize::from(d.contains_key("data"));
    if d.len() != expected || d.get("data").is_some_and(|x| x.as_dict().is_none()) {
        return Err("event members are not event, timestamp and an optional data object".into());
    }
    Ok((s, us))
}

/// Checks a greeting line; returns its text.
fn check_greeting(line: &str, profile: ProfileChoice) -> Result<(), String> {
    check_printable_ascii(line)?;
    let v = parse_one(line)?;
    let qmp = v
        .as_dict()
        .filter(|d| d.len() == 1)
        .and_then(|d| d.get("QMP"))
        .and_then(QObject::as_dict)
        .ok_or("greeting is not {\"QMP\": {…}}")?;
    let caps_ok = matches!(qmp.get("capabilities"),
        Some(QObject::List(l)) if l.iter().all(|c| c.as_str().is_some()));
    let qemu = qmp
        .get("version")
        .and_then(QObject::as_dict)
        .and_then(|v| v.get("qemu"))
        .and_then(QObject::as_dict);
    let version = qemu.and_then(|q| Some((int_member(q, "major")?, int_member(q, "minor")?)));
    if !caps_ok || version != Some(profile.qemu_version()) {
        return Err(format!("greeting does not announce {profile:?}: {line}"));
    }
    Ok(())
}

struct Client {
    sid: SessionId,
    streamer: JsonStreamer,
    /// The harness's own model of `qmp_capabilities` having succeeded.
    negotiated: bool,
}

struct Harness {
    core: Core,
    profile: ProfileChoice,
    style: Style,
    clients: Vec<Client>,
    greeting: Option<String>,
    last_sid: SessionId,
    last_timestamp: (i64, i64),
    quit: bool,
    /// Everything the core said, for the determinism check.
    transcript: Vec<String>,
}

impl Harness {
    fn pick(&self, session: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(session) % self.clients.len())
    }

    fn open(&mut self) {
        let (sid, greeting) = self.core.open_session();
        assert!(
            sid > self.last_sid,
            "session id {sid} after {}",
            self.last_sid
        );
        self.last_sid = sid;
        match &self.greeting {
            Some(g) => assert_eq!(&greeting, g, "greetings differ"),
            None => {
                if let Err(e) = check_greeting(&greeting, self.profile) {
                    panic!("greeting {greeting:?}: {e}");
                }
                self.greeting = Some(greeting.clone());
            }
        }
        assert!(
            self.core.session(sid).is_some_and(|s| !s.negotiated),
            "a new session is not in negotiation mode"
        );
        self.transcript.push(format!("open {sid}"));
        self.clients.push(Client {
            sid,
            streamer: JsonStreamer::new(),
            negotiated: false,
        });
    }

    fn feed(&mut self, idx: usize, bytes: &[u8]) {
        let mut items = Vec::new();
        self.clients[idx].streamer.feed(bytes, &mut items);
        self.handle_all(idx, items);
    }

    fn finish(&mut self, idx: usize) {
        let mut items = Vec::new();
        self.clients[idx].streamer.finish(&mut items);
        self.handle_all(idx, items);
    }

    fn close(&mut self, idx: usize) {
        let sid = self.clients.remove(idx).sid;
        self.core.close_session(sid);
        assert!(
            self.core.session(sid).is_none(),
            "closed session {sid} lives on"
        );
        self.transcript.push(format!("close {sid}"));
    }

    fn handle_all(&mut self, idx: usize, items: Vec<Parsed>) {
        for item in items {
            if self.quit {
                break; // the server stops reading after quit
            }
            self.handle(idx, item);
        }
    }

    fn event(&mut self, line: &str, when: &str) {
        match check_event(line) {
            Ok(ts) => {
                assert!(
                    ts >= self.last_timestamp,
                    "event timestamp {ts:?} before {:?}: {line}",
                    self.last_timestamp
                );
                self.last_timestamp = ts;
            }
            Err(e) => panic!("event {line:?}: {e}"),
        }
        self.transcript.push(format!("{when} {line}"));
    }

    fn handle(&mut self, idx: usize, item: Parsed) {
        let sid = self.clients[idx].sid;
        let was_negotiated = self.clients[idx].negotiated;
        let req = Request::of(&item);
        let d = self.core.handle(sid, item);

        for line in &d.events {
            self.event(line, "event");
        }
        let Some(reply) = d.reply else {
            panic!("no reply to {req:?}");
        };
        let outcome = match check_reply(&reply, &req, self.style) {
            Ok(o) => o,
            Err(e) => panic!("reply {reply:?} to {req:?}: {e}"),
        };
        self.transcript.push(format!("reply {sid} {reply}"));
        for line in &d.after {
            self.event(line, "after");
        }

        let command = req.command();
        if outcome == Outcome::Return {
            let Some(command) = command else {
                panic!("a request without a command string succeeded: {req:?}");
            };
            if command == "qmp_capabilities" {
                assert!(!was_negotiated, "qmp_capabilities succeeded twice");
                self.clients[idx].negotiated = true;
            } else {
                assert!(was_negotiated, "{command} succeeded before negotiation");
            }
        }
        assert_eq!(
            self.core.session(sid).map(|s| s.negotiated),
            Some(self.clients[idx].negotiated),
            "the core's negotiation state disagrees after {req:?} -> {reply}"
        );
        let negotiated: Vec<SessionId> = self
            .clients
            .iter()
            .filter(|c| c.negotiated)
            .map(|c| c.sid)
            .collect();
        let mut recipients = d.recipients.clone();
        recipients.sort_unstable();
        assert_eq!(
            recipients, negotiated,
            "event recipients are not the open negotiated sessions"
        );
        self.transcript
            .push(format!("recipients {:?}", d.recipients));

        if self.core.quit_requested() {
            assert!(
                command == Some("quit") && outcome == Outcome::Return,
                "quit requested after {req:?} -> {reply}"
            );
            self.quit = true;
        }
    }
}

/// `qemu-img create` for [`Op::Image`]; size 0 takes the backing file's.
fn create_image(
    host: &mut MemHost,
    name: &str,
    format: ImageFormat,
    size_kib: u16,
    backing: Option<(&str, ImageFormat)>,
) -> Result<(), String> {
    let mut size = u64::from(size_kib) * 1024;
    if let (0, Some((b, f))) = (size, backing) {
        size = match f {
            ImageFormat::Qcow2 => host.read_qcow2(b).map_err(|e| e.to_string())?.size,
            ImageFormat::Raw => host.open_file(b).map_err(|e| e.to_string())?.size,
        };
    }
    let file = match format {
        ImageFormat::Raw => MemFile {
            size,
            head: Vec::new(),
        },
        ImageFormat::Qcow2 => qcow2_image(size, backing.map(|(b, f)| (b, f.name()))),
    };
    host.insert(name, file);
    Ok(())
}

/// Plays an input once, checking every line; returns the transcript:
/// `open SID`, `event LINE`, `reply SID LINE`, `recipients [SID…]`,
/// `close SID`, in order.
pub fn play(input: &SessionInput) -> Vec<String> {
    let (version, flavor) = input.profile.version_flavor();
    let profile = Profile::get(version, flavor)
        .unwrap_or_else(|e| panic!("profile {:?}: {e}", input.profile));
    let config = CoreConfig {
        start_paused: input.start_paused,
        ..CoreConfig::default()
    };
    let mut host = MemHost::default();
    let mut core = Core::new(profile, &config);
    core.set_host_io(Box::new(host.clone()));
    let mut h = Harness {
        core,
        profile: input.profile,
        style: input.profile.style(),
        clients: Vec::new(),
        greeting: None,
        last_sid: 0,
        last_timestamp: (0, 0),
        quit: false,
        transcript: Vec::new(),
    };
    for op in &input.ops {
        if h.quit {
            break; // the process exits after answering quit
        }
        match op {
            Op::Open => h.open(),
            Op::Feed { session, bytes } => {
                if let Some(i) = h.pick(*session) {
                    h.feed(i, &bytes.0);
                }
            }
            Op::Finish { session } => {
                if let Some(i) = h.pick(*session) {
                    h.finish(i);
                }
            }
            Op::Close { session, eof } => {
                if let Some(i) = h.pick(*session) {
                    if *eof {
                        h.finish(i);
                    }
                    h.close(i);
                }
            }
            Op::Image {
                name,
                format,
                size_kib,
                backing,
            } => {
                let name = String::from_utf8_lossy(&name.0);
                let backing = backing
                    .as_ref()
                    .map(|(b, f)| (String::from_utf8_lossy(&b.0), *f));
                let backing = backing.as_ref().map(|(b, f)| (b.as_ref(), *f));
                let ok = create_image(&mut host, &name, *format, *size_kib, backing);
                h.transcript.push(format!("image {name} {ok:?}"));
            }
            Op::File { name, contents } => {
                let name = String::from_utf8_lossy(&name.0);
                host.insert(
                    &name,
                    MemFile {
                        size: contents.0.len() as u64,
                        head: contents.0.clone(),
                    },
                );
                h.transcript.push(format!("file {name}"));
            }
        }
    }
    h.transcript
}

/// Runs one input through every property; panics on a violation.
pub fn run(input: &SessionInput) {
    let first = play(input);
    let second = play(input);
    assert!(first == second, "the same input gave different transcripts");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(session: u8, text: &[u8]) -> Op {
        Op::Feed {
            session,
            bytes: Chunk(text.to_vec()),
        }
    }

    #[test]
    fn encoding_round_trips_through_arbitrary() {
        let input = SessionInput {
            profile: ProfileChoice::System10_0,
            start_paused: true,
            ops: vec![
                Op::Open,
                feed(0, b"{\"execute\": \"qmp_capabilities\"}\n"),
                feed(7, &[b'['; 300]),
                Op::Finish { session: 3 },
                Op::Close {
                    session: 1,
                    eof: true,
                },
                Op::Image {
                    name: Chunk(b"top.qcow2".to_vec()),
                    format: ImageFormat::Qcow2,
                    size_kib: 0,
                    backing: Some((Chunk(b"base.img".to_vec()), ImageFormat::Raw)),
                },
                Op::Image {
                    name: Chunk(b"raw".to_vec()),
                    format: ImageFormat::Raw,
                    size_kib: 513,
                    backing: None,
                },
                Op::File {
                    name: Chunk(b"f".to_vec()),
                    contents: Chunk(vec![0xFF; 200]),
                },
                Op::Open,
            ],
        };
        assert_eq!(SessionInput::decode(&input.encode()).unwrap(), input);
        for p in ProfileChoice::ALL {
            let i = SessionInput {
                profile: p,
                start_paused: false,
                ops: vec![],
            };
            assert_eq!(SessionInput::decode(&i.encode()).unwrap(), i);
        }
    }

    fn object(id: Option<QObject>) -> Request {
        Request::Object {
            id,
            command: Some("query-version".into()),
        }
    }

    #[test]
    fn reply_checks_accept_qemus_lines_and_reject_others() {
        let (m, l) = (Style::Modern, Style::Legacy);
        let err = r#""error": {"class": "GenericError", "desc": "d"}"#;
        let ok = |line: &str, req: &Request, style| check_reply(line, req, style).unwrap();
        let bad = |line: &str, req: &Request, style| {
            assert!(check_reply(line, req, style).is_err(), "accepted {line}");
        };
        let one = object(Some(QObject::from(1i64)));
        let inf = object(Some(QObject::from(f64::INFINITY)));
        let ninf = object(Some(QObject::from(vec![QObject::from(f64::NEG_INFINITY)])));
        let tenth = object(Some(QObject::from(0.1)));
        let none = object(None);

        ok(r#"{"return": {}, "id": 1}"#, &one, m);
        ok(&format!(r#"{{"id": 1, {err}}}"#), &one, m);
        ok(&format!(r#"{{"id": inf, {err}}}"#), &inf, m);
        ok(r#"{"return": {}, "id": [-inf]}"#, &ninf, m);
        ok(r#"{"return": {}, "id": 0.10000000000000001}"#, &tenth, m);
        ok(r#"{"return": {}, "id": 0.1}"#, &tenth, l);
        ok(&format!("{{{err}}}"), &none, m);

        bad(r#"{"return": {}, "id": 2}"#, &one, m); // wrong id
        bad(r#"{"return": {}, "id": 0.1}"#, &tenth, m); // not how 7.2+ spell it
        bad(r#"{"return": {}}"#, &one, m); // id missing
        bad(r#"{"return": {}, "id": 1}"#, &none, m); // id not asked for
        bad(r#"{"return": {}, "id": 1, "x": 2}"#, &one, m);
        bad(r#"{"return": {}, "id": inf}"#, &none, m); // unparseable without cause
        bad("{\"return\": {}}\r", &none, m);
        bad("{\"return\": \"\u{e9}\"}", &none, m); // not ASCII
        bad(&format!(r#"{{"return": {{}}, {err}}}"#), &none, m);
        bad(r#"{"error": {"class": "Oops", "desc": "d"}}"#, &none, m);
        bad(
            r#"{"error": {"class": "GenericError", "desc": ""}}"#,
            &none,
            m,
        );
        bad(r#"{"error": {"class": "GenericError"}}"#, &none, m);
        bad(r#"[{"return": {}}]"#, &none, m);
        bad(r#"{"return": {}} {"return": {}}"#, &none, m);
        bad(
            &format!("{{{err}}}"),
            &Request::ParseError("JSON parse error, x".into()),
            m,
        );
        bad(r#"{"return": {}}"#, &Request::NotAnObject, m);
        bad(
            r#"{"error": {"class": "GenericError", "desc": "mock-qemu: internal argument mismatch"}}"#,
            &none,
            m,
        );
    }

    #[test]
    fn event_checks_accept_qemus_lines_and_reject_others() {
        let ts = r#""timestamp": {"seconds": 1700000000, "microseconds": 5}"#;
        check_event(&format!(r#"{{{ts}, "event": "STOP"}}"#)).unwrap();
        check_event(&format!(
            r#"{{{ts}, "event": "SHUTDOWN", "data": {{"guest": false}}}}"#
        ))
        .unwrap();
        for bad in [
            format!(r#"{{{ts}, "event": "stop"}}"#),
            format!(r#"{{{ts}, "event": "STOP", "data": 1}}"#),
            format!(r#"{{{ts}, "event": "STOP", "id": 1}}"#),
            r#"{"event": "STOP"}"#.to_owned(),
            r#"{"timestamp": {"seconds": 1, "microseconds": 1000000}, "event": "STOP"}"#.to_owned(),
            r#"{"timestamp": {"seconds": 1}, "event": "STOP"}"#.to_owned(),
        ] {
            assert!(check_event(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn images_and_snapshots_stay_in_memory() {
        let outside = std::env::temp_dir().join("mock-qemu-fuzz-must-not-exist.qcow2");
        let _ = std::fs::remove_file(&outside);
        let input = SessionInput {
            profile: ProfileChoice::Qsd10_0,
            start_paused: false,
            ops: vec![
                Op::Image {
                    name: Chunk(b"/tmp/mock-qemu-fuzz/base.qcow2".to_vec()),
                    format: ImageFormat::Qcow2,
                    size_kib: 1024,
                    backing: None,
                },
                Op::Open,
                feed(0, b"{\"execute\": \"qmp_capabilities\"}"),
                feed(
                    0,
                    b"{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"qcow2\", \"node-name\": \"base\", \"file\": {\"driver\": \"file\", \"filename\": \"/tmp/mock-qemu-fuzz/base.qcow2\"}}, \"id\": \"add\"}",
                ),
                feed(
                    0,
                    format!(
                        "{{\"execute\": \"blockdev-snapshot-sync\", \"arguments\": {{\"node-name\": \"base\", \"snapshot-file\": \"{}\", \"snapshot-node-name\": \"snap\"}}, \"id\": \"snap\"}}",
                        outside.display()
                    )
                    .as_bytes(),
                ),
            ],
        };
        let t = play(&input);
        assert!(
            t.iter()
                .any(|l| l.contains(r#"{"return": {}, "id": "add"}"#)),
            "{t:#?}"
        );
        assert!(
            t.iter()
                .any(|l| l.contains(r#"{"return": {}, "id": "snap"}"#)),
            "{t:#?}"
        );
        assert!(!outside.exists(), "the snapshot reached the disk");
        run(&input);
    }

    #[test]
    fn typical_sessions_pass() {
        for p in ProfileChoice::ALL {
            run(&SessionInput {
                profile: p,
                start_paused: false,
                ops: vec![
                    Op::Open,
                    feed(0, b"{\"execute\": \"query-version\", \"id\": 1e999}"),
                    feed(0, b"{\"execute\": \"qmp_capabilities\", \"id\": -1e999}"),
                    Op::Open,
                    feed(1, b"{\"execute\": \"qmp_capabilities\"} [] 1 ]"),
                    feed(0, b"{\"execute\": \"stop\", \"id\": [0.1, -0, {\"a\": 1}]}"),
                    feed(
                        0,
                        b"{\"execute\": \"cont\", \"id\": 1.5}{\"execute\": \"query-status\"}",
                    ),
                    feed(1, b"{\"execute\": \"query-qmp-schema\", \"id\": 'x'}"),
                    feed(1, b"{\"execute\": \"query-qmp-schema\", \"id\": 'y'}"),
                    Op::Close {
                        session: 1,
                        eof: true,
                    },
                    feed(0, b"{\"execute\": \"quit\", \"id\": 1e16}"),
                    feed(0, b"{\"execute\": \"query-version\"}"),
                ],
            });
        }
    }
}
