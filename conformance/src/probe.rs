//! Probing what `query-qmp-schema` hides: the C type of every `int`.
//!
//! Introspection names every integer type (`int8` … `uint64`, `size`)
//! `int`, but QEMU's argument visitor tells them apart in its errors:
//!
//! | member kind | a string | `2147483648` / `4294967296` |
//! |---|---|---|
//! | `int64` | `Invalid parameter type for 'P', expected: integer` | accepted |
//! | `int8/16/32` | same | `Parameter 'p' expects int8_t` (…) |
//! | `uint64`, `size` | `Parameter 'P' expects uint64` | accepted |
//! | `uint8/16/32` | same | `Parameter 'p' expects uint8_t` (…) |
//!
//! (`P` is the full path, `p` the bare member name or `null` for a list
//! element.) So two requests per member tell its kind. `size` and `uint64`
//! cannot be told apart over QMP (both are visited with `type_uint64`) and
//! are recorded as `uint64`.
//!
//! **Every probe stops in the argument visitor.** A probe request fills the
//! members the visitor reaches before the probed one with minimal valid
//! values, puts the probe value in the probed member, and adds one member
//! that no argument type has ([`PROBE_KEY`]) to the root: if the probed
//! value passes, the visitor still fails — at a later mandatory member
//! (`… is missing`) or at the root's `visit_check_struct()` (`… is
//! unexpected`) — so the command never runs. Commands whose arguments are
//! not visited (hand-written marshallers) and commands that must never run
//! ([`must_not_run`]) are not probed at all, and the probing runs on a QEMU
//! process launched only for it, restarted if it dies.
//!
//! Each member of an object type is probed once, through the shortest route
//! from a command's arguments (members, union branches with their tag set,
//! list elements, alternate branches); its result applies wherever that
//! type is used. The result is written next to the recorded schema as
//! `int-kinds.json` and applied by the mock with
//! [`Schema::set_member_int_kind`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mock_qemu::qmp::schema::{Builtin, Schema, SchemaType};
use serde_json::{json, Map, Value};

use crate::play::{send_raw, LineReader};
use crate::target::{BoxedStream, Target};

/// The member every probe adds to the root of its arguments, so that the
/// request fails in the visitor even when the probed value is accepted.
pub const PROBE_KEY: &str = "qmp-conform-int-probe";

/// Longest wait for one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Restarts of the probe process after which probing gives up.
const MAX_RESTARTS: usize = 10;

/// Commands that are never sent, not even a probe that cannot pass the
/// visitor: anything that would stop, reset or otherwise break the process
/// or its monitor if it ran.
const MUST_NOT_RUN: &[&str] = &[
    "quit",
    "stop",
    "cont",
    "system_powerdown",
    "system_reset",
    "system_wakeup",
    "x-exit-preconfig",
    "chardev-remove",
    "object-del",
    "device_del",
    "blockdev-del",
    "x-blockdev-del",
    "block-export-del",
    "nbd-server-stop",
    "inject-nmi",
];

/// Whether `cmd` must never be sent to the QEMU being probed
/// (`migrate`, `migrate-*`, `migrate_*` included).
pub fn must_not_run(cmd: &str) -> bool {
    MUST_NOT_RUN.contains(&cmd) || cmd.starts_with("migrate")
}

/// The kind names written to `int-kinds.json`.
pub const KIND_NAMES: [&str; 8] = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
];

// ---------------------------------------------------------------------------
// Planning: which request reaches which member.

/// How a member's value wraps the next dict on the way to the probed member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// The next object type is the union branch `to` of the current one,
    /// selected by setting its tag to `case` (same dict).
    Branch { case: String, to: String },
    /// The next object type is the value of member `name` of the current
    /// one, inside `lists` list layers (alternates are transparent).
    Member {
        name: String,
        lists: usize,
        to: String,
    },
}

/// One dict of a probe request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Level {
    /// The dict's object type, then the union branches chosen in it.
    chain: Vec<String>,
    /// `cases[i]` selects `chain[i + 1]` among `chain[i]`'s variants.
    cases: Vec<String>,
    /// The member of `chain.last()` leading on (or the probed member).
    member: String,
    /// List layers around that member's value.
    lists: usize,
}

/// How to reach one `int` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberProbe {
    /// The (numbered) object type that has the member.
    pub type_name: String,
    /// The member.
    pub member: String,
    /// The command whose arguments lead to it.
    pub command: String,
    levels: Vec<Level>,
}

impl MemberProbe {
    /// QEMU's `full_name()` of the probed value (`actions[0].data.x`).
    pub fn full_name(&self) -> String {
        self.levels
            .iter()
            .map(|l| format!("{}{}", l.member, "[0]".repeat(l.lists)))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The name QEMU's range errors use: the member, or `null` for a list
    /// element.
    pub fn bare_name(&self) -> &str {
        match self.levels.last() {
            Some(l) if l.lists == 0 => &l.member,
            _ => "null",
        }
    }

    /// The `arguments` of a probe putting `value` in the probed member.
    pub fn arguments(&self, schema: &Schema, value: Value) -> Value {
        let mut value = value;
        for level in self.levels.iter().rev() {
            for _ in 0..level.lists {
                value = Value::Array(vec![value]);
            }
            value = Value::Object(fill_level(schema, level, value));
        }
        if let Value::Object(root) = &mut value {
            root.insert(PROBE_KEY.to_owned(), json!(0));
        }
        value
    }
}

/// What probing will do: one route per reachable `int` member.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Members with a route from a command that may be probed.
    pub probes: Vec<MemberProbe>,
    /// `int` members reachable only from commands that are not probed:
    /// `(type, member, reason)`.
    pub unreachable: Vec<(String, String, String)>,
}

/// Whether a member type is `int` (directly or inside lists): the list depth.
fn int_depth(schema: &Schema, type_name: &str) -> Option<usize> {
    let mut t = type_name;
    let mut depth = 0;
    loop {
        match schema.type_info(t) {
            Some(SchemaType::Builtin(Builtin::Int)) => return Some(depth),
            Some(SchemaType::Array { element }) => t = element,
            None => t = t.strip_prefix('[')?.strip_suffix(']')?,
            Some(_) => return None,
        }
        depth += 1;
        if depth > 8 {
            return None;
        }
    }
}

fn array_element<'s>(schema: &'s Schema, type_name: &'s str) -> Option<&'s str> {
    match schema.type_info(type_name) {
        Some(SchemaType::Array { element }) => Some(element),
        None => type_name.strip_prefix('[')?.strip_suffix(']'),
        Some(_) => None,
    }
}

/// Object types a member of `type_name` can hold a dict of, with the list
/// depth around it (alternates are transparent: a dict selects their
/// object branch).
fn objects_in(schema: &Schema, type_name: &str, lists: usize, out: &mut Vec<(String, usize)>) {
    if lists > 8 {
        return;
    }
    if let Some(e) = array_element(schema, type_name) {
        return objects_in(schema, e, lists + 1, out);
    }
    match schema.type_info(type_name) {
        Some(SchemaType::Object { .. }) => out.push((type_name.to_owned(), lists)),
        Some(SchemaType::Alternate { members }) => {
            for m in members {
                objects_in(schema, m, lists, out);
            }
        }
        _ => {}
    }
}

/// `(type, member)` of every `int` member of an object type, in schema order.
fn int_members(schema: &Schema, type_name: &str) -> Vec<(String, usize)> {
    schema
        .object_members(type_name)
        .unwrap_or(&[])
        .iter()
        .filter_map(|m| int_depth(schema, &m.type_name).map(|d| (m.name.clone(), d)))
        .collect()
}

/// Breadth-first from the argument types of the commands `eligible` lets
/// through: for every object type reached, the step it was first reached
/// by (`None` for a command's argument type) and that command.
type Routes = HashMap<String, (Option<(String, Step)>, String)>;

fn routes(schema: &Schema, eligible: &dyn Fn(&str) -> bool) -> (Routes, Vec<String>) {
    let mut prev: Routes = HashMap::new();
    let mut order = Vec::new();
    let mut queue = VecDeque::new();
    for c in schema.commands() {
        if !eligible(&c.name) || prev.contains_key(&c.arg_type) {
            continue;
        }
        if let Some(SchemaType::Object { .. }) = schema.type_info(&c.arg_type) {
            prev.insert(c.arg_type.clone(), (None, c.name.clone()));
            queue.push_back(c.arg_type.clone());
        }
    }
    while let Some(t) = queue.pop_front() {
        order.push(t.clone());
        let Some(SchemaType::Object {
            members, variants, ..
        }) = schema.type_info(&t)
        else {
            continue;
        };
        let command = prev[&t].1.clone();
        let mut next = Vec::new();
        for m in members {
            let mut found = Vec::new();
            objects_in(schema, &m.type_name, 0, &mut found);
            for (to, lists) in found {
                next.push(Step::Member {
                    name: m.name.clone(),
                    lists,
                    to,
                });
            }
        }
        for (case, to) in variants {
            next.push(Step::Branch {
                case: case.clone(),
                to: to.clone(),
            });
        }
        for step in next {
            let to = match &step {
                Step::Branch { to, .. } | Step::Member { to, .. } => to.clone(),
            };
            if !prev.contains_key(&to) {
                prev.insert(to.clone(), (Some((t.clone(), step)), command.clone()));
                queue.push_back(to);
            }
        }
    }
    (prev, order)
}

/// The dict levels leading to object type `target`, ending at its member.
fn levels_to(prev: &Routes, target: &str, member: &str, lists: usize) -> Vec<Level> {
    let mut steps = Vec::new();
    let mut t = target.to_owned();
    while let Some((Some((from, step)), _)) = prev.get(&t) {
        steps.push(step.clone());
        t = from.clone();
    }
    steps.reverse();
    let mut levels = Vec::new();
    let mut current = Level {
        chain: vec![t],
        cases: Vec::new(),
        member: String::new(),
        lists: 0,
    };
    for step in steps {
        match step {
            Step::Branch { case, to } => {
                current.cases.push(case);
                current.chain.push(to);
            }
            Step::Member { name, lists, to } => {
                current.member = name;
                current.lists = lists;
                levels.push(std::mem::replace(
                    &mut current,
                    Level {
                        chain: vec![to],
                        cases: Vec::new(),
                        member: String::new(),
                        lists: 0,
                    },
                ));
            }
        }
    }
    current.member = member.to_owned();
    current.lists = lists;
    levels.push(current);
    levels
}

/// Plans a probe for every `int` member reachable from command arguments.
pub fn plan(schema: &Schema) -> Plan {
    let probed = |c: &str| !must_not_run(c) && !schema.is_hand_written(c);
    let (prev, order) = routes(schema, &probed);
    let (all, all_order) = routes(schema, &|_| true);
    let mut plan = Plan::default();
    for t in &order {
        for (member, lists) in int_members(schema, t) {
            plan.probes.push(MemberProbe {
                type_name: t.clone(),
                member: member.clone(),
                command: prev[t].1.clone(),
                levels: levels_to(&prev, t, &member, lists),
            });
        }
    }
    for t in all_order.iter().filter(|t| !prev.contains_key(*t)) {
        for (member, _) in int_members(schema, t) {
            let command = &all[t].1;
            let why = if schema.is_hand_written(command) {
                "not visited by its marshaller"
            } else {
                "must not run"
            };
            plan.unreachable.push((
                t.clone(),
                member,
                format!("only reachable from commands not probed, e.g. {command} ({why})"),
            ));
        }
    }
    plan
}

/// The members of one dict of a probe: those visited before `level.member`
/// filled minimally, the union tags set, `value` in `level.member`.
fn fill_level(schema: &Schema, level: &Level, value: Value) -> Map<String, Value> {
    let mut d = Map::new();
    let mut value = Some(value);
    let last = level.chain.len() - 1;
    for (i, t) in level.chain.iter().enumerate() {
        let Some(SchemaType::Object { members, tag, .. }) = schema.type_info(t) else {
            break;
        };
        for m in members {
            if i == last && m.name == level.member {
                d.insert(m.name.clone(), value.take().unwrap_or(Value::Null));
                return d;
            }
            if i < last && tag.as_deref() == Some(m.name.as_str()) {
                d.insert(m.name.clone(), Value::String(level.cases[i].clone()));
            } else if !m.optional {
                d.insert(m.name.clone(), minimal(schema, &m.type_name, 0));
            }
        }
    }
    d
}

/// The smallest valid value of a type: `"x"`, `0`, `false`, `null`, the
/// first enum value, `[]`, an object with its mandatory members (a union
/// with its first tag value and that branch's mandatory members), an
/// alternate's simplest branch.
fn minimal(schema: &Schema, type_name: &str, depth: usize) -> Value {
    if depth > 24 {
        return json!({});
    }
    if array_element(schema, type_name).is_some() {
        return json!([]);
    }
    match schema.type_info(type_name) {
        Some(SchemaType::Builtin(b)) => match b {
            Builtin::Str => json!("x"),
            Builtin::Int | Builtin::Number | Builtin::Any => json!(0),
            Builtin::Bool => json!(false),
            Builtin::Null => Value::Null,
        },
        Some(SchemaType::Enum { values }) => {
            json!(values.first().map_or("x", String::as_str))
        }
        Some(SchemaType::Object { .. }) => {
            let mut d = Map::new();
            let mut t = type_name.to_owned();
            while let Some(SchemaType::Object {
                members,
                tag,
                variants,
            }) = schema.type_info(&t)
            {
                for m in members.iter().filter(|m| !m.optional) {
                    d.insert(m.name.clone(), minimal(schema, &m.type_name, depth + 1));
                }
                let branch = tag
                    .as_ref()
                    .and_then(|tag| d.get(tag))
                    .and_then(Value::as_str)
                    .and_then(|case| variants.iter().find(|(c, _)| c == case));
                match branch {
                    Some((_, b)) => t = b.clone(),
                    None => break,
                }
            }
            Value::Object(d)
        }
        Some(SchemaType::Alternate { members }) => {
            let rank = |m: &String| match schema.type_info(m) {
                Some(SchemaType::Builtin(Builtin::Any)) => 4,
                Some(SchemaType::Builtin(_)) => 0,
                Some(SchemaType::Enum { .. }) => 1,
                Some(SchemaType::Object { .. }) => 3,
                _ if array_element(schema, m).is_some() => 2,
                _ => 5,
            };
            match members.iter().min_by_key(|m| rank(m)) {
                Some(m) => minimal(schema, m, depth + 1),
                None => Value::Null,
            }
        }
        _ => Value::Null,
    }
}

// ---------------------------------------------------------------------------
// Classifying replies.

/// What QEMU said to the non-integer probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Signed,
    Unsigned,
}

fn classify_sign(p: &MemberProbe, desc: &str) -> Option<Sign> {
    let full = p.full_name();
    if desc == format!("Invalid parameter type for '{full}', expected: integer") {
        Some(Sign::Signed)
    } else if desc == format!("Parameter '{full}' expects uint64") {
        Some(Sign::Unsigned)
    } else {
        None
    }
}

/// The kind from the reply to the out-of-range probe: the C type QEMU
/// names, or the widest kind if the value was accepted.
fn classify_width(p: &MemberProbe, sign: Sign, reply: &Reply) -> Result<&'static str, String> {
    let widest = match sign {
        Sign::Signed => "int64",
        Sign::Unsigned => "uint64",
    };
    let Reply::Error { desc, .. } = reply else {
        return Ok(widest);
    };
    let prefix = format!("Parameter '{}' expects ", p.bare_name());
    let Some(ctype) = desc.strip_prefix(&prefix) else {
        return Ok(widest);
    };
    let kind = match (sign, ctype) {
        (Sign::Signed, "int8_t") => "int8",
        (Sign::Signed, "int16_t") => "int16",
        (Sign::Signed, "int32_t") => "int32",
        (Sign::Unsigned, "uint8_t") => "uint8",
        (Sign::Unsigned, "uint16_t") => "uint16",
        (Sign::Unsigned, "uint32_t") => "uint32",
        _ => return Err(format!("unexpected reply to an out-of-range value: {desc}")),
    };
    Ok(kind)
}

// ---------------------------------------------------------------------------
// Talking to the probe process.

/// A reply to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `{"return": …}`.
    Return,
    /// `{"error": …}`.
    Error {
        /// The error class.
        class: String,
        /// The error text.
        desc: String,
    },
}

/// A negotiated QMP connection.
struct Conn {
    reader: LineReader<tokio::io::ReadHalf<BoxedStream>>,
    writer: tokio::io::WriteHalf<BoxedStream>,
    next_id: u64,
}

impl Conn {
    /// Connects, reads the greeting, negotiates.
    async fn open(target: &mut dyn Target) -> Result<Conn> {
        let stream = target.connect().await?;
        let (r, w) = tokio::io::split(stream);
        let mut conn = Conn {
            reader: LineReader::new(r),
            writer: w,
            next_id: 0,
        };
        conn.reader
            .next_line(REPLY_TIMEOUT)
            .await?
            .context("no greeting")?;
        match conn.request("qmp_capabilities", None).await? {
            Reply::Return => Ok(conn),
            Reply::Error { desc, .. } => bail!("qmp_capabilities failed: {desc}"),
        }
    }

    /// Sends one request and waits (at most [`REPLY_TIMEOUT`]) for its
    /// reply, skipping events and a repeated greeting.
    async fn request(&mut self, execute: &str, arguments: Option<&Value>) -> Result<Reply> {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = json!({ "execute": execute });
        if let Some(a) = arguments {
            req["arguments"] = a.clone();
        }
        req["id"] = json!(id);
        send_raw(&mut self.writer, format!("{req}\n").as_bytes()).await?;
        loop {
            let line = self
                .reader
                .next_line(REPLY_TIMEOUT)
                .await?
                .with_context(|| format!("connection closed waiting for the reply to {execute}"))?;
            let Ok(v) = serde_json::from_str::<Value>(&line.text) else {
                continue;
            };
            if v.get("id") != Some(&json!(id)) {
                continue; // an event, or the start-up race's repeated greeting
            }
            if v.get("return").is_some() {
                return Ok(Reply::Return);
            }
            let e = &v["error"];
            return Ok(Reply::Error {
                class: e["class"].as_str().unwrap_or("").to_owned(),
                desc: e["desc"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
}

/// What probing found.
#[derive(Debug, Clone, Default)]
pub struct IntKinds {
    /// `(type, member)` → kind name ([`KIND_NAMES`]).
    pub kinds: BTreeMap<(String, String), &'static str>,
    /// `(type, member)` → why its kind is unknown.
    pub unresolved: BTreeMap<(String, String), String>,
    /// Requests sent.
    pub requests: usize,
    /// Times the probe process was restarted.
    pub restarts: usize,
}

impl IntKinds {
    /// `int` members reachable from command arguments.
    pub fn found(&self) -> usize {
        self.kinds.len() + self.unresolved.len()
    }

    /// `int-kinds.json`: type names sorted (numerically), members sorted.
    pub fn to_json(&self, probed_from: &str) -> Value {
        fn by_type<'a, T: Clone + Into<Value>>(
            m: impl Iterator<Item = (&'a (String, String), T)>,
        ) -> Map<String, Value> {
            let mut grouped: BTreeMap<(Option<u64>, String), Map<String, Value>> = BTreeMap::new();
            for ((t, member), v) in m {
                grouped
                    .entry((t.parse().ok(), t.clone()))
                    .or_default()
                    .insert(member.clone(), v.into());
            }
            grouped
                .into_iter()
                .map(|((_, t), mut members)| {
                    members.sort_keys();
                    (t, Value::Object(members))
                })
                .collect()
        }
        let mut out = Map::new();
        out.insert("probed-from".into(), json!(probed_from));
        out.insert(
            "recorded-by".into(),
            json!("qmp-conform record (never edit by hand; re-record from QEMU)"),
        );
        out.insert(
            "method".into(),
            json!(
                "each int member of a command argument type, reached through the shortest route from \
                 a command's arguments, was sent \"x\" (signed: 'expected: integer', unsigned: 'expects \
                 uint64') then 2147483648 / 4294967296 ('expects int32_t' etc., or accepted: 64 bits), \
                 with an extra unexpected member so that no command ran; size is recorded as uint64 \
                 (QMP cannot tell them apart)"
            ),
        );
        out.insert(
            "types".into(),
            Value::Object(by_type(self.kinds.iter().map(|(k, v)| (k, *v)))),
        );
        out.insert(
            "unresolved".into(),
            Value::Object(by_type(self.unresolved.iter().map(|(k, v)| (k, v.clone())))),
        );
        Value::Object(out)
    }
}

/// Probes every planned member on `target` (a QEMU launched for this, with
/// no other client), restarting it if it dies or stops answering.
pub async fn probe_int_kinds(target: &mut dyn Target, schema: &Schema) -> Result<IntKinds> {
    let plan = plan(schema);
    let mut out = IntKinds::default();
    for (t, m, why) in &plan.unreachable {
        out.unresolved.insert((t.clone(), m.clone()), why.clone());
    }
    let mut conn = Some(Conn::open(target).await?);
    for p in &plan.probes {
        if out
            .kinds
            .contains_key(&(p.type_name.clone(), p.member.clone()))
        {
            continue;
        }
        let result = probe_member(target, &mut conn, &mut out, schema, p).await?;
        let key = (p.type_name.clone(), p.member.clone());
        match result {
            Ok(kind) => {
                out.kinds.insert(key, kind);
            }
            Err(why) => {
                out.unresolved.insert(key, format!("{}: {why}", p.command));
            }
        }
    }
    Ok(out)
}

/// Sends a probe; on a dead or silent process, restarts it and reports
/// `None`.
async fn send_probe(
    target: &mut dyn Target,
    conn: &mut Option<Conn>,
    out: &mut IntKinds,
    command: &str,
    arguments: &Value,
) -> Result<Option<Reply>> {
    if conn.is_none() {
        *conn = Some(Conn::open(target).await?);
    }
    out.requests += 1;
    let r = match conn.as_mut() {
        Some(c) => c.request(command, Some(arguments)).await,
        None => unreachable!(),
    };
    match r {
        Ok(reply) => Ok(Some(reply)),
        Err(_) => {
            *conn = None;
            out.restarts += 1;
            if out.restarts > MAX_RESTARTS {
                bail!("the probe process died or hung {MAX_RESTARTS} times");
            }
            target.restart().await?;
            Ok(None)
        }
    }
}

async fn probe_member(
    target: &mut dyn Target,
    conn: &mut Option<Conn>,
    out: &mut IntKinds,
    schema: &Schema,
    p: &MemberProbe,
) -> Result<Result<&'static str, String>> {
    let died = || "the probe process died or did not answer within 2 s".to_owned();
    let args = p.arguments(schema, json!("x"));
    let Some(reply) = send_probe(target, conn, out, &p.command, &args).await? else {
        return Ok(Err(died()));
    };
    let sign = match &reply {
        Reply::Error { desc, .. } => classify_sign(p, desc),
        Reply::Return => None,
    };
    let Some(sign) = sign else {
        return Ok(Err(match reply {
            Reply::Return => "a string was accepted".to_owned(),
            Reply::Error { class, desc } => {
                format!("unexpected reply to a string: {class}: {desc}")
            }
        }));
    };
    let big = match sign {
        Sign::Signed => json!(1u64 << 31),
        Sign::Unsigned => json!(1u64 << 32),
    };
    let args = p.arguments(schema, big);
    let Some(reply) = send_probe(target, conn, out, &p.command, &args).await? else {
        return Ok(Err(died()));
    };
    Ok(classify_width(p, sign, &reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mock_qemu::qmp::qobject::QObject;
    use std::collections::HashSet;

    fn schema(dir: &str) -> Option<Schema> {
        let path = format!(
            "{}/../fixtures/{dir}/profile/query-qmp-schema.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some(Schema::from_introspection(&v["return"]).unwrap())
    }

    const PROFILES: [&str; 5] = [
        "qemu-5.2/qsd",
        "qemu-7.2/qsd",
        "qemu-7.2/system",
        "qemu-10.0/qsd",
        "qemu-10.0/system",
    ];

    /// Every planned probe reaches its member: the mock's checker (which
    /// reproduces the visitor, and takes undeclared ints as int64) fails
    /// exactly there with a string.
    #[test]
    fn every_probe_reaches_its_member() {
        for dir in PROFILES {
            let Some(s) = schema(dir) else { continue };
            let plan = plan(&s);
            assert!(plan.probes.len() > 100, "{dir}");
            for p in &plan.probes {
                assert!(!must_not_run(&p.command));
                let a = QObject::from(&p.arguments(&s, json!("x")));
                let e = s.check_arguments(&p.command, a.as_dict()).unwrap_err();
                assert_eq!(
                    e.desc,
                    format!(
                        "Invalid parameter type for '{}', expected: integer",
                        p.full_name()
                    ),
                    "{dir} {p:?}"
                );
                // An accepted value still fails in the visitor.
                let a = QObject::from(&p.arguments(&s, json!(0)));
                assert!(s.check_arguments(&p.command, a.as_dict()).is_err());
            }
        }
    }

    #[test]
    fn routes_through_lists_and_branches() {
        let Some(s) = schema("qemu-10.0/qsd") else {
            return;
        };
        let plan = plan(&s);
        let find = |full: &str, cmd: &str| {
            plan.probes
                .iter()
                .find(|p| p.full_name() == full && p.command == cmd)
                .cloned()
        };
        let g = find("granularity", "block-dirty-bitmap-add").unwrap();
        assert_eq!(
            g.arguments(&s, json!(-1)),
            json!({"node": "x", "name": "x", "granularity": -1, PROBE_KEY: 0})
        );
        assert_eq!(g.bare_name(), "granularity");
        // No type is probed twice.
        let mut seen = HashSet::new();
        for p in &plan.probes {
            assert!(seen.insert((&p.type_name, &p.member)), "{p:?}");
        }
        assert!(plan.probes.iter().any(|p| p.full_name().contains("[0]")));
        assert!(plan
            .probes
            .iter()
            .any(|p| p.levels.iter().any(|l| !l.cases.is_empty())));
    }

    #[test]
    fn classifies_qemu_texts() {
        let p = MemberProbe {
            type_name: "1".into(),
            member: "g".into(),
            command: "c".into(),
            levels: vec![Level {
                chain: vec!["1".into()],
                cases: vec![],
                member: "g".into(),
                lists: 0,
            }],
        };
        assert_eq!(
            classify_sign(&p, "Parameter 'g' expects uint64"),
            Some(Sign::Unsigned)
        );
        assert_eq!(
            classify_sign(&p, "Invalid parameter type for 'g', expected: integer"),
            Some(Sign::Signed)
        );
        assert_eq!(classify_sign(&p, "Parameter 'h' expects uint64"), None);
        let err = |d: &str| Reply::Error {
            class: "GenericError".into(),
            desc: d.into(),
        };
        let w = |s, d: &str| classify_width(&p, s, &err(d));
        assert_eq!(
            w(Sign::Unsigned, "Parameter 'g' expects uint32_t"),
            Ok("uint32")
        );
        assert_eq!(w(Sign::Signed, "Parameter 'g' expects int8_t"), Ok("int8"));
        assert_eq!(
            w(
                Sign::Signed,
                &format!("Parameter '{PROBE_KEY}' is unexpected")
            ),
            Ok("int64")
        );
        assert_eq!(w(Sign::Unsigned, "Parameter 'x' is missing"), Ok("uint64"));
        assert!(w(Sign::Signed, "Parameter 'g' expects uint32_t").is_err());
    }
}
