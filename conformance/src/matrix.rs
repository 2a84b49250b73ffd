//! `qmp-conform matrix`: what differs between QEMU versions.
//!
//! Each [`Column`] is one build: real QEMU played live ([`Column::from_target`]),
//! its recorded goldens ([`Column::from_goldens`]), or the mock with one
//! profile. A column holds the build's `query-commands` and
//! `query-qmp-schema` and one normalized transcript per scenario.
//! [`build`] compares the columns and makes a [`Table`] of the behaviours
//! that differ, one [`Row`] each:
//!
//! - from the profiles: commands added or removed (`query-commands`),
//!   arguments, argument variants (a union's cases, such as `blockdev-add`'s
//!   drivers) and features of commands, reply members and events
//!   (`query-qmp-schema`);
//! - from the transcripts, step by step (a step is one thing sent and all it
//!   caused): error versus success (a command missing in one version),
//!   error texts (same class, different `desc`), members present in one
//!   version's replies or events only, values, the same value written
//!   differently (`%f` doubles in 5.2), the order of replies and events
//!   within a step, and each job's own event sequence (job progress events
//!   arrive when the job gets there, so they are compared per job, drain
//!   pairs dropped, not per step).
//!
//! Rows with the same behaviour and cells are merged; each lists where it
//! was seen (`suite/case#step`, the step named by its command's `id`).
//! [`discrepancies`] compares two tables (the mock's against real QEMU's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use mock_qemu::profile::{Flavor, Version};
use serde_json::Value;

use crate::normalize::{self, Normalizer};
use crate::play::{play_with_retries, LineReader, PlayOptions};
use crate::scenario::Scenario;
use crate::suite;
use crate::target::Target;
use crate::transcript::{Entry, Transcript};

/// One build's data.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column heading (`5.2`).
    pub label: String,
    /// Command names from `query-commands`.
    pub commands: BTreeSet<String>,
    /// `query-qmp-schema`'s return value.
    pub schema: Vec<Value>,
    /// Scenario id → what playing it gave.
    pub runs: BTreeMap<String, Run>,
}

/// One scenario on one build.
#[derive(Debug, Clone)]
pub enum Run {
    /// The transcript, normalized (timestamps, work folder, generated names).
    Played(Vec<Entry>),
    /// It could not be played.
    Failed(String),
}

/// The heading of a version's column: `5.2`.
pub fn version_label(v: Version) -> &'static str {
    v.name().trim_start_matches("qemu-")
}

fn selected(id: &str, filters: &[String]) -> bool {
    filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str()))
}

/// `{"return": X}` (a recorded reply line) → X.
fn reply_return(text: &str, what: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text.trim()).with_context(|| format!("parsing {what}"))?;
    v.get("return")
        .cloned()
        .ok_or_else(|| anyhow!("{what} is not a successful reply: {}", text.trim()))
}

fn command_names(ret: &Value) -> BTreeSet<String> {
    ret.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name")?.as_str().map(str::to_owned))
        .collect()
}

impl Column {
    /// A build's recordings: its profile and golden transcripts (scenario
    /// ids containing one of `filters`, or all), nothing launched.
    pub fn from_goldens(
        fixtures: &Path,
        version: Version,
        flavor: Flavor,
        filters: &[String],
    ) -> Result<Column> {
        let dir = suite::profile_dir(fixtures, version, flavor).join("profile");
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let commands = command_names(&reply_return(
            &read("query-commands.json")?,
            "query-commands.json",
        )?);
        let schema = match reply_return(&read("query-qmp-schema.json")?, "query-qmp-schema.json")? {
            Value::Array(a) => a,
            _ => bail!("query-qmp-schema.json: the return value is not a list"),
        };
        let mut runs = BTreeMap::new();
        for (id, path) in suite::goldens(fixtures, version, flavor)? {
            if !selected(&id, filters) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let t =
                Transcript::parse(&text).with_context(|| format!("parsing {}", path.display()))?;
            runs.insert(
                id,
                Run::Played(normalize::entries(&t, &Normalizer::default())),
            );
        }
        Ok(Column {
            label: version_label(version).to_owned(),
            commands,
            schema,
            runs,
        })
    }

    /// Plays the scenarios that apply to `flavor` (and pass `filters`)
    /// against a live target, restarting it for each, after asking it for
    /// its `query-commands` and `query-qmp-schema`. `progress` hears each
    /// scenario id before it is played, and every unmet expectation.
    pub async fn from_target(
        label: &str,
        target: &mut dyn Target,
        scenarios: &[Scenario],
        flavor: Flavor,
        filters: &[String],
        opts: &PlayOptions,
        mut progress: impl FnMut(&str),
    ) -> Result<Column> {
        target.restart().await?;
        let (commands, schema) = query_profile(target, opts).await?;
        let mut runs = BTreeMap::new();
        for s in scenarios
            .iter()
            .filter(|s| s.applies_to(flavor.name()) && selected(&s.id, filters))
        {
            progress(&s.id);
            let run = match target.restart().await {
                Err(e) => Run::Failed(format!("restarting: {e:#}")),
                Ok(()) => match play_with_retries(s, target, opts, 3).await {
                    Err(e) => Run::Failed(format!("{e:#}")),
                    Ok(p) => {
                        for u in &p.unmet {
                            progress(&format!("{label}: expectation not met: {u}"));
                        }
                        let n = Normalizer {
                            workdirs: target
                                .workdir()
                                .map(|w| vec![w.display().to_string()])
                                .unwrap_or_default(),
                        };
                        Run::Played(normalize::entries(&p.transcript, &n))
                    }
                },
            };
            runs.insert(s.id.clone(), run);
        }
        Ok(Column {
            label: label.to_owned(),
            commands,
            schema,
            runs,
        })
    }
}

/// Asks a target for `query-commands` and `query-qmp-schema` on a
/// connection of its own.
async fn query_profile(
    target: &mut dyn Target,
    opts: &PlayOptions,
) -> Result<(BTreeSet<String>, Vec<Value>)> {
    let stream = target.connect().await?;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = LineReader::new(r);
    let greeting = r
        .next_line(opts.timeout)
        .await?
        .context("no greeting")?
        .text;
    crate::record::exchange(&mut r, &mut w, &greeting, "qmp_capabilities").await?;
    let commands = crate::record::exchange(&mut r, &mut w, &greeting, "query-commands").await?;
    let schema = crate::record::exchange(&mut r, &mut w, &greeting, "query-qmp-schema").await?;
    let commands = command_names(&reply_return(&commands, "query-commands")?);
    let Value::Array(schema) = reply_return(&schema, "query-qmp-schema")? else {
        bail!("query-qmp-schema did not return a list");
    };
    Ok((commands, schema))
}

/// What a row is about; also the table's sections, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A command in some versions' `query-commands` only.
    Command,
    /// A command's argument, argument variant or features (`query-qmp-schema`).
    Argument,
    /// A member of a command's return type (`query-qmp-schema`).
    ReplyField,
    /// An event in some versions' schema only.
    Event,
    /// A member of an event's data (`query-qmp-schema`).
    EventField,
    /// One version answers with an error, another with success (or another class).
    ErrorVsSuccess,
    /// The same error class with a different `desc`.
    ErrorText,
    /// A member present in some versions' reply or event only.
    Members,
    /// A value that differs.
    Values,
    /// The same JSON value, written differently.
    Encoding,
    /// The replies and events a step caused, in a different order or number.
    EventOrder,
    /// A job's own event sequence.
    JobEvents,
    /// A scenario not played or not recorded everywhere.
    Runs,
}

impl Kind {
    /// Section heading.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Command => "Commands (query-commands)",
            Kind::Argument => "Command arguments, variants and features (query-qmp-schema)",
            Kind::ReplyField => "Reply members (query-qmp-schema)",
            Kind::Event => "Events (query-qmp-schema)",
            Kind::EventField => "Event data members (query-qmp-schema)",
            Kind::ErrorVsSuccess => "Error or success",
            Kind::ErrorText => "Error texts (same class, different desc)",
            Kind::Members => "Members (and list elements) received in some versions only",
            Kind::Values => "Values received",
            Kind::Encoding => "Same value, different text",
            Kind::EventOrder => "Replies and events of one command (in order)",
            Kind::JobEvents => "Job events (in order, drain pairs dropped)",
            Kind::Runs => "Scenarios not played everywhere",
        }
    }

    /// Heading of the row-name column.
    fn what(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Argument => "command: argument",
            Kind::ReplyField => "command: reply member",
            Kind::Event => "event",
            Kind::EventField => "event: data member",
            Kind::ErrorVsSuccess | Kind::ErrorText | Kind::EventOrder => "command",
            Kind::Members | Kind::Values | Kind::Encoding => "message: member",
            Kind::JobEvents => "job",
            Kind::Runs => "scenario",
        }
    }

    /// Whether rows of this kind come from transcripts (and say where).
    fn observed(self) -> bool {
        self >= Kind::ErrorVsSuccess
    }
}

/// One behaviour that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Section.
    pub kind: Kind,
    /// What it is about (markdown: names in backquotes).
    pub behaviour: String,
    /// One short value per column.
    pub cells: Vec<String>,
    /// Where it was seen (`suite/case#step`), in order; empty for profile rows.
    pub seen: Vec<String>,
}

/// The comparison of several builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column headings.
    pub columns: Vec<String>,
    /// Rows, by section, then in order of first appearance.
    pub rows: Vec<Row>,
}

#[derive(Default)]
struct Builder {
    rows: Vec<Row>,
    index: HashMap<(Kind, String, Vec<String>), usize>,
}

impl Builder {
    fn add(&mut self, kind: Kind, behaviour: String, cells: Vec<String>, seen: Option<&str>) {
        let key = (kind, behaviour, cells);
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.rows.push(Row {
                    kind,
                    behaviour: key.1.clone(),
                    cells: key.2.clone(),
                    seen: vec![],
                });
                self.index.insert(key, self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        if let Some(s) = seen {
            let row = &mut self.rows[i];
            if !row.seen.iter().any(|x| x == s) {
                row.seen.push(s.to_owned());
            }
        }
    }
}

/// Compares the columns: every behaviour that is not the same in all.
pub fn build(columns: &[Column]) -> Table {
    let mut b = Builder::default();
    profile_rows(columns, &mut b);
    let ids: BTreeSet<&String> = columns.iter().flat_map(|c| c.runs.keys()).collect();
    for id in ids {
        scenario_rows(id, columns, &mut b);
    }
    let mut rows = b.rows;
    // Stable: sections in Kind order, rows within in first-appearance order.
    rows.sort_by_key(|r| r.kind);
    Table {
        columns: columns.iter().map(|c| c.label.clone()).collect(),
        rows,
    }
}

const YES: &str = "yes";
const NO: &str = "—";

fn all_same<T: PartialEq>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] == w[1])
}

// ---------------------------------------------------------------- profiles

/// Named schema entities of one build.
struct SchemaView<'a> {
    by_name: HashMap<&'a str, &'a Value>,
    entities: &'a [Value],
}

impl<'a> SchemaView<'a> {
    fn new(entities: &'a [Value]) -> Self {
        SchemaView {
            by_name: entities
                .iter()
                .filter_map(|e| Some((e.get("name")?.as_str()?, e)))
                .collect(),
            entities,
        }
    }

    fn of_meta(&self, meta: &str) -> BTreeMap<&'a str, &'a Value> {
        self.entities
            .iter()
            .filter(|e| e.get("meta-type").and_then(Value::as_str) == Some(meta))
            .filter_map(|e| Some((e.get("name")?.as_str()?, e)))
            .collect()
    }

    fn ty(&self, name: Option<&Value>) -> Option<&'a Value> {
        let mut t = *self.by_name.get(name?.as_str()?)?;
        // Lists: their elements.
        while t.get("meta-type").and_then(Value::as_str) == Some("array") {
            t = self.by_name.get(t.get("element-type")?.as_str()?)?;
        }
        Some(t)
    }

    /// An object type's members (`name` → `required`/`optional`), its
    /// variants' cases (`tag` = `case` → `yes`) and, with `variant_members`,
    /// the members of each variant (`name (tag: case)`).
    fn members(&self, ty: Option<&Value>, variant_members: bool) -> BTreeMap<Member, String> {
        let mut out = BTreeMap::new();
        let Some(t) = self.ty(ty) else { return out };
        if t.get("meta-type").and_then(Value::as_str) != Some("object") {
            return out;
        }
        for m in t
            .get("members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = m.get("name").and_then(Value::as_str) {
                let opt = if m.get("default").is_some() {
                    "optional"
                } else {
                    "required"
                };
                out.insert(Member::Name(n.to_owned()), opt.to_owned());
            }
        }
        let tag = t.get("tag").and_then(Value::as_str).unwrap_or("tag");
        for v in t
            .get("variants")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(case) = v.get("case").and_then(Value::as_str) else {
                continue;
            };
            if variant_members {
                for (n, o) in self.members(v.get("type"), false) {
                    if let Member::Name(n) = n {
                        out.insert(Member::Name(format!("{n} ({tag}: {case})")), o);
                    }
                }
            } else {
                out.insert(
                    Member::Case(tag.to_owned(), case.to_owned()),
                    YES.to_owned(),
                );
            }
        }
        out
    }
}

/// A member of an object type, or one case of its variants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Member {
    Name(String),
    Case(String, String),
}

fn features(e: &Value) -> String {
    let f: Vec<&str> = e
        .get("features")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if f.is_empty() {
        NO.to_owned()
    } else {
        f.join(", ")
    }
}

/// Rows for members that are not the same everywhere; the cases of a
/// variant tag with the same cells share one row.
fn member_rows(b: &mut Builder, kind: Kind, owner: &str, maps: &[BTreeMap<Member, String>]) {
    let names: BTreeSet<&Member> = maps.iter().flat_map(|m| m.keys()).collect();
    // (tag, cells) → the cases with them, in order.
    type Cases<'a> = Vec<((&'a str, Vec<String>), Vec<&'a str>)>;
    let mut cases: Cases = Vec::new();
    for n in names {
        let cells: Vec<String> = maps
            .iter()
            .map(|m| m.get(n).cloned().unwrap_or_else(|| NO.to_owned()))
            .collect();
        if all_same(&cells) {
            continue;
        }
        match n {
            Member::Name(n) => b.add(kind, format!("`{owner}`: `{n}`"), cells, None),
            Member::Case(tag, case) => {
                let key = (tag.as_str(), cells);
                match cases.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(case),
                    None => cases.push((key, vec![case])),
                }
            }
        }
    }
    for ((tag, cells), list) in cases {
        const SHOWN: usize = 6;
        let mut names: Vec<String> = list.iter().take(SHOWN).map(|c| format!("`{c}`")).collect();
        if list.len() > SHOWN {
            names.push(format!("{} more", list.len() - SHOWN));
        }
        let what = if list.len() == 1 {
            format!("`{owner}`: `{tag}` = {}", names[0])
        } else {
            format!(
                "`{owner}`: `{tag}` = {} ({} values)",
                names.join(", "),
                list.len()
            )
        };
        b.add(kind, what, cells, None);
    }
}

fn profile_rows(columns: &[Column], b: &mut Builder) {
    let names: BTreeSet<&String> = columns.iter().flat_map(|c| &c.commands).collect();
    for n in names {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| if c.commands.contains(n) { YES } else { NO }.to_owned())
            .collect();
        if !all_same(&cells) {
            b.add(Kind::Command, format!("`{n}`"), cells, None);
        }
    }
    let views: Vec<SchemaView> = columns.iter().map(|c| SchemaView::new(&c.schema)).collect();
    let commands: Vec<BTreeMap<&str, &Value>> =
        views.iter().map(|v| v.of_meta("command")).collect();
    let everywhere = |maps: &[BTreeMap<&str, &Value>]| -> Vec<String> {
        let mut names: Vec<String> = maps
            .first()
            .map(|m| m.keys().map(|k| (*k).to_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| maps.iter().all(|m| m.contains_key(n.as_str())));
        names
    };
    for cmd in everywhere(&commands) {
        let mut args: Vec<BTreeMap<Member, String>> = Vec::new();
        let mut rets = Vec::new();
        let mut feats = Vec::new();
        for (v, m) in views.iter().zip(&commands) {
            let e = m[cmd.as_str()];
            args.push(v.members(e.get("arg-type"), false));
            rets.push(v.members(e.get("ret-type"), true));
            feats.push(features(e));
        }
        member_rows(b, Kind::Argument, &cmd, &args);
        if !all_same(&feats) {
            b.add(Kind::Argument, format!("`{cmd}` (features)"), feats, None);
        }
        member_rows(b, Kind::ReplyField, &cmd, &rets);
    }
    let events: Vec<BTreeMap<&str, &Value>> = views.iter().map(|v| v.of_meta("event")).collect();
    let names: BTreeSet<&str> = events.iter().flat_map(|m| m.keys().copied()).collect();
    for n in names {
        let cells: Vec<String> = events
            .iter()
            .map(|m| if m.contains_key(n) { YES } else { NO }.to_owned())
            .collect();
        if !all_same(&cells) {
            b.add(Kind::Event, format!("`{n}`"), cells, None);
        }
    }
    for ev in everywhere(&events) {
        let data: Vec<_> = views
            .iter()
            .zip(&events)
            .map(|(v, m)| v.members(m[ev.as_str()].get("arg-type"), true))
            .collect();
        member_rows(b, Kind::EventField, &ev, &data);
    }
}

// ---------------------------------------------------------------- transcripts

/// A received line.
#[derive(Debug)]
struct Msg {
    text: String,
    value: Option<Value>,
}

impl Msg {
    fn new(text: &str) -> Msg {
        Msg {
            text: text.to_owned(),
            value: serde_json::from_str(text).ok(),
        }
    }
    fn event(&self) -> Option<&str> {
        self.value.as_ref()?.get("event")?.as_str()
    }
    /// How the step shows it in an order: `reply`, `greeting`, an event's
    /// name (a `JOB_STATUS_CHANGE` with its status).
    fn token(&self) -> String {
        let Some(v) = &self.value else {
            // Not JSON to serde (QEMU's `inf` id, 5.2's 309-digit number):
            // a reply all the same.
            return "reply".into();
        };
        match self.event() {
            Some("JOB_STATUS_CHANGE") => format!(
                "JOB_STATUS_CHANGE {}",
                v["data"]["status"].as_str().unwrap_or("?")
            ),
            Some(e) => e.to_owned(),
            None if v.get("QMP").is_some() => "greeting".into(),
            None => "reply".into(),
        }
    }
}

/// One thing sent and all it caused (step 0: the connection's start).
#[derive(Debug, Default)]
struct StepView {
    /// The command's name, `send` for raw bytes, `greeting` for a connection's start.
    subject: String,
    /// How the step is named where it is seen: `#id` or `#N`.
    tag: String,
    replies: Vec<Msg>,
    events: Vec<Msg>,
    order: Vec<String>,
}

struct ScenarioView {
    steps: Vec<StepView>,
    /// Job id → its progress events, in order.
    jobs: BTreeMap<String, Vec<Msg>>,
}

fn job_of(m: &Msg) -> String {
    let d = m.value.as_ref().and_then(|v| v.get("data"));
    d.and_then(|d| d.get("id").or_else(|| d.get("device")))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

fn view(entries: &[Entry]) -> ScenarioView {
    let mut steps = vec![StepView {
        subject: "greeting".into(),
        tag: "#greeting".into(),
        ..StepView::default()
    }];
    let mut jobs: BTreeMap<String, Vec<Msg>> = BTreeMap::new();
    for e in normalize::drop_drain_pairs(entries.to_vec()) {
        match &e {
            Entry::Sent(t) | Entry::SentRaw(t) => {
                let text = match &e {
                    Entry::SentRaw(t) => crate::scenario::unescape(t)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default(),
                    _ => t.clone(),
                };
                let v: Option<Value> = serde_json::from_str(text.trim()).ok();
                let mut names: Vec<String> = commands_in(&text);
                names.dedup();
                let subject = match names.as_slice() {
                    [one] => one.clone(),
                    _ => "send".to_owned(),
                };
                let tag = match v.as_ref().and_then(|v| v.get("id")) {
                    Some(Value::String(s)) => format!("#{s}"),
                    Some(n @ Value::Number(_)) => format!("#{n}"),
                    _ => format!("#{}", steps.len()),
                };
                steps.push(StepView {
                    subject,
                    tag,
                    ..StepView::default()
                });
            }
            Entry::Reconnect => steps.push(StepView {
                subject: "greeting".into(),
                tag: format!("#{}", steps.len()),
                ..StepView::default()
            }),
            Entry::Recv(l) | Entry::RecvBadFraming(l) => {
                let m = Msg::new(l);
                if normalize::is_job_progress_event(l) {
                    jobs.entry(job_of(&m)).or_default().push(m);
                    continue;
                }
                let step = steps.last_mut().expect("step 0 exists");
                step.order.push(m.token());
                if m.event().is_some() {
                    step.events.push(m);
                } else {
                    step.replies.push(m);
                }
            }
            Entry::Closed => {
                let step = steps.last_mut().expect("step 0 exists");
                step.order.push("closed".into());
            }
            Entry::Setup(_) | Entry::Directive(_) => {}
        }
    }
    ScenarioView { steps, jobs }
}

/// The command names in sent text (`"execute": "NAME"`, `exec-oob`), also
/// when it is not JSON as a whole.
fn commands_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["\"execute\"", "\"exec-oob\""] {
        let mut rest = text;
        while let Some(p) = rest.find(key) {
            rest = &rest[p + key.len()..];
            let after = rest
                .trim_start()
                .strip_prefix(':')
                .unwrap_or("")
                .trim_start();
            if let Some(q) = after.strip_prefix('"') {
                if let Some(end) = q.find('"') {
                    out.push(q[..end].to_owned());
                }
            }
        }
    }
    out
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        s.to_owned()
    }
}

/// A value in a cell: JSON, shortened; a list by its length.
fn render(v: Option<&Value>) -> String {
    match v {
        None => NO.to_owned(),
        Some(Value::Array(a)) if a.len() == 1 => "1 item".to_owned(),
        Some(Value::Array(a)) if !a.is_empty() => format!("{} items", a.len()),
        Some(v) => short(&serde_json::to_string(v).unwrap_or_default(), 60),
    }
}

/// List elements are paired by the first of these members that every
/// element of every column has (see [`identities`]); by index otherwise.
const LIST_KEYS: [&str; 4] = ["node-name", "id", "device", "name"];

fn list_key(lists: &[&Vec<Value>]) -> Option<&'static str> {
    LIST_KEYS.into_iter().find(|k| {
        lists.iter().all(|l| {
            l.iter()
                .all(|e| e.get(*k).and_then(Value::as_str).is_some())
        })
    })
}

/// A generated node name: `#block` and digits (`#block~N` once normalized).
fn generated(name: &str) -> bool {
    name.strip_prefix("#block")
        .and_then(|r| r.chars().next())
        .is_some_and(|c| c == '~' || c.is_ascii_digit())
}

/// Each element's identity in its list: its key (`node-name=top`); a
/// generated node name (`#block~N`, numbered by order of appearance, so
/// not the same node in another version) is replaced by the node's driver
/// and file. A repeated identity gets its occurrence (` (2)`).
fn identities(list: &[Value], k: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in list {
        let key = e[k].as_str().unwrap_or_default();
        let id = if generated(key) {
            let s = |m: &str| e.get(m).and_then(Value::as_str).unwrap_or("?").to_owned();
            format!("{k}=#block…: {} {}", s("drv"), s("file"))
        } else {
            format!("{k}={key}")
        };
        let n = out
            .iter()
            .filter(|o| o.split(" (").next() == Some(id.as_str()))
            .count();
        out.push(if n == 0 {
            id
        } else {
            format!("{id} ({})", n + 1)
        });
    }
    out
}

/// Longest error text in a cell.
const TEXT_CELL: usize = 80;

/// Lists longer than this are compared as a whole (a schema, a command
/// list), not element by element.
const LONG_LIST: usize = 40;

/// Cells for values: distinct values whose cells look the same (shortened,
/// counted) get letters, so equal cells mean equal values.
fn value_cells(vals: &[Option<&Value>]) -> Vec<String> {
    let mut cells: Vec<String> = vals.iter().map(|v| render(*v)).collect();
    let mut distinct: Vec<Option<&Value>> = Vec::new();
    for v in vals {
        if !distinct.contains(v) {
            distinct.push(*v);
        }
    }
    let ambiguous = (0..vals.len())
        .any(|i| (0..vals.len()).any(|j| cells[i] == cells[j] && vals[i] != vals[j]));
    if ambiguous {
        for (c, v) in cells.iter_mut().zip(vals) {
            let k = distinct.iter().position(|d| d == v).unwrap_or(0);
            let letter = char::from(b'A' + (k % 26) as u8);
            c.push_str(&format!(" ({letter})"));
        }
    }
    cells
}

fn type_of(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

struct Ctx<'a> {
    subject: &'a str,
    seen: &'a str,
    /// Paths not compared (the greeting's version).
    ignore: &'a [&'a str],
}

fn label(subject: &str, path: &str) -> String {
    if path.is_empty() {
        format!("`{subject}`")
    } else {
        format!("`{subject}`: `{path}`")
    }
}

/// Compares the values of one member in every column; returns how many
/// rows it added.
fn walk(b: &mut Builder, cx: &Ctx, path: &str, vals: &[Option<&Value>]) -> usize {
    if cx
        .ignore
        .iter()
        .any(|i| path == *i || path.starts_with(&format!("{i}.")))
    {
        return 0;
    }
    if all_same(vals) {
        return 0;
    }
    // Generated node names are numbered by order of appearance: another
    // number in another version is not another behaviour.
    if vals
        .iter()
        .all(|v| v.and_then(Value::as_str).is_some_and(generated))
    {
        return 0;
    }
    if vals.iter().any(Option::is_none) {
        let cells = vals
            .iter()
            .map(|v| if v.is_some() { YES } else { NO }.to_owned())
            .collect();
        b.add(Kind::Members, label(cx.subject, path), cells, Some(cx.seen));
        return 1;
    }
    let vals: Vec<&Value> = vals.iter().flatten().copied().collect();
    let types: Vec<u8> = vals.iter().map(|v| type_of(v)).collect();
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    if all_same(&types) {
        match vals[0] {
            Value::Object(_) => {
                let mut keys: Vec<&String> = Vec::new();
                for v in &vals {
                    for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
                        if !keys.contains(&k) {
                            keys.push(k);
                        }
                    }
                }
                return keys
                    .into_iter()
                    .map(|k| {
                        let sub: Vec<Option<&Value>> = vals.iter().map(|v| v.get(k)).collect();
                        walk(b, cx, &join(k), &sub)
                    })
                    .sum();
            }
            Value::Array(_) => {
                let lists: Vec<&Vec<Value>> = vals.iter().filter_map(|v| v.as_array()).collect();
                let lens: Vec<usize> = lists.iter().map(|l| l.len()).collect();
                let p = format!("{path}[]");
                if lens.iter().all(|n| *n <= LONG_LIST) {
                    if let Some(k) = list_key(&lists) {
                        let keyed: Vec<Vec<String>> =
                            lists.iter().map(|l| identities(l, k)).collect();
                        let mut ids: Vec<&String> = Vec::new();
                        for id in keyed.iter().flatten() {
                            if !ids.contains(&id) {
                                ids.push(id);
                            }
                        }
                        return ids
                            .into_iter()
                            .map(|id| {
                                let sub: Vec<Option<&Value>> = lists
                                    .iter()
                                    .zip(&keyed)
                                    .map(|(l, ks)| ks.iter().position(|x| x == id).map(|i| &l[i]))
                                    .collect();
                                if sub.iter().all(Option::is_some) {
                                    walk(b, cx, &p, &sub)
                                } else {
                                    walk(b, cx, &format!("{path}[{id}]"), &sub)
                                }
                            })
                            .sum();
                    }
                    if all_same(&lens) {
                        return (0..lens[0])
                            .map(|i| {
                                let sub: Vec<Option<&Value>> =
                                    lists.iter().map(|l| l.get(i)).collect();
                                walk(b, cx, &p, &sub)
                            })
                            .sum();
                    }
                }
            }
            _ => {}
        }
    }
    let opts: Vec<Option<&Value>> = vals.iter().map(|v| Some(*v)).collect();
    b.add(
        Kind::Values,
        label(cx.subject, path),
        value_cells(&opts),
        Some(cx.seen),
    );
    1
}

/// Where texts with equal JSON values first differ: the token there, per column.
fn text_cells(texts: &[&str]) -> Vec<String> {
    let first = texts[0].as_bytes();
    let mut common = first.len();
    for t in &texts[1..] {
        let n = first
            .iter()
            .zip(t.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        common = common.min(n);
    }
    // Back to the start of the token.
    let start = first[..common]
        .iter()
        .rposition(|c| b" ,:[{".contains(c))
        .map_or(0, |p| p + 1);
    texts
        .iter()
        .map(|t| {
            let rest = t.get(start..).unwrap_or("");
            let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
            short(&rest[..end], 40)
        })
        .collect()
}

/// `query-version`'s reply (its values are the version: not compared).
fn is_version(m: &Msg) -> bool {
    let r = m.value.as_ref().and_then(|v| v.get("return"));
    r.is_some_and(|r| r.get("qemu").is_some() && r.get("package").is_some())
        || (m.value.is_none() && m.text.contains("\"qemu\": {") && m.text.contains("\"package\""))
}

/// Compares one reply (or greeting) across columns; true when they are
/// of different kinds (error versus success).
fn compare_replies(b: &mut Builder, subject: &str, seen: &str, msgs: &[Option<&Msg>]) -> bool {
    let kind_of = |m: &Option<&Msg>| -> (String, Option<String>) {
        let Some(m) = m else {
            return ("none".into(), None);
        };
        let Some(v) = &m.value else {
            return ("not JSON".into(), None);
        };
        if let Some(e) = v.get("error") {
            let class = e.get("class").and_then(Value::as_str).unwrap_or("?");
            let desc = e.get("desc").and_then(Value::as_str).unwrap_or("");
            return (format!("error {class}"), Some(desc.to_owned()));
        }
        if v.get("QMP").is_some() {
            return ("greeting".into(), None);
        }
        ("ok".into(), None)
    };
    let kinds: Vec<(String, Option<String>)> = msgs.iter().map(kind_of).collect();
    let names: Vec<&String> = kinds.iter().map(|(k, _)| k).collect();
    let version = msgs.iter().all(|m| m.is_some_and(is_version));
    if !all_same(&names) && names.iter().all(|n| *n == "ok" || *n == "not JSON") {
        // The same reply, but one that some JSON parsers cannot read.
        if !version
            || !all_same(
                &msgs
                    .iter()
                    .map(|m| m.map(|m| m.text.contains(", \"id\": ")))
                    .collect::<Vec<_>>(),
            )
        {
            let texts: Vec<&str> = msgs
                .iter()
                .map(|m| m.map_or("", |m| m.text.as_str()))
                .collect();
            b.add(
                Kind::Encoding,
                format!("`{subject}`"),
                text_cells(&texts),
                Some(seen),
            );
        } else {
            let ids: Vec<&str> = msgs
                .iter()
                .map(|m| {
                    m.map_or("", |m| {
                        m.text.rsplit_once(", \"id\": ").map_or("", |(_, id)| id)
                    })
                })
                .collect();
            b.add(
                Kind::Encoding,
                format!("`{subject}`: `id`"),
                text_cells(&ids),
                Some(seen),
            );
        }
        return false;
    }
    if !all_same(&names) {
        let cells = kinds
            .iter()
            .map(|(k, d)| match d {
                Some(d) => short(
                    &format!("{}: {d}", k.trim_start_matches("error ")),
                    TEXT_CELL,
                ),
                None => k.clone(),
            })
            .collect();
        b.add(
            Kind::ErrorVsSuccess,
            format!("`{subject}`"),
            cells,
            Some(seen),
        );
        return true;
    }
    let descs: Vec<&Option<String>> = kinds.iter().map(|(_, d)| d).collect();
    if names[0].starts_with("error ") && !all_same(&descs) {
        let cells = descs
            .iter()
            .map(|d| short(d.as_deref().unwrap_or(""), TEXT_CELL))
            .collect();
        let class = names[0].trim_start_matches("error ");
        b.add(
            Kind::ErrorText,
            format!("`{subject}` ({class})"),
            cells,
            Some(seen),
        );
        return false;
    }
    let Some(msgs) = msgs.iter().copied().collect::<Option<Vec<&Msg>>>() else {
        return false;
    };
    if version {
        // Its values are the version; only an `id` written differently counts.
        let ids: Vec<&str> = msgs
            .iter()
            .map(|m| m.text.rsplit_once(", \"id\": ").map_or("", |(_, id)| id))
            .collect();
        if !all_same(&ids) {
            b.add(
                Kind::Encoding,
                format!("`{subject}`: `id`"),
                text_cells(&ids),
                Some(seen),
            );
        }
        return false;
    }
    let mut added = 0;
    match names[0].as_str() {
        "ok" => {
            let vals: Vec<Option<&Value>> = msgs
                .iter()
                .map(|m| m.value.as_ref().and_then(|v| v.get("return")))
                .collect();
            let cx = Ctx {
                subject,
                seen,
                ignore: &[],
            };
            added = walk(b, &cx, "", &vals);
        }
        "greeting" => {
            let vals: Vec<Option<&Value>> = msgs.iter().map(|m| m.value.as_ref()).collect();
            let cx = Ctx {
                subject: "greeting",
                seen,
                ignore: &["QMP.version"],
            };
            added = walk(b, &cx, "", &vals);
        }
        _ => {}
    }
    let values: Vec<Option<&Value>> = msgs.iter().map(|m| m.value.as_ref()).collect();
    let texts: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    if added == 0 && all_same(&values) && !all_same(&texts) {
        b.add(
            Kind::Encoding,
            format!("`{subject}`"),
            text_cells(&texts),
            Some(seen),
        );
    }
    false
}

/// Compares one event's data across columns.
fn compare_events(b: &mut Builder, name: &str, seen: &str, msgs: &[&Msg]) {
    let subject = format!("event {name}");
    let vals: Vec<Option<&Value>> = msgs
        .iter()
        .map(|m| m.value.as_ref().and_then(|v| v.get("data")))
        .collect();
    let cx = Ctx {
        subject: &subject,
        seen,
        ignore: &[],
    };
    let added = walk(b, &cx, "", &vals);
    let values: Vec<Option<&Value>> = msgs.iter().map(|m| m.value.as_ref()).collect();
    let texts: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    if added == 0 && all_same(&values) && !all_same(&texts) {
        b.add(
            Kind::Encoding,
            format!("`{subject}`"),
            text_cells(&texts),
            Some(seen),
        );
    }
}

/// Pairs events by name and occurrence, and compares the pairs present in
/// every column.
fn compare_event_lists(
    b: &mut Builder,
    seen: &str,
    lists: &[Vec<&Msg>],
    name_of: impl Fn(&Msg) -> String,
) {
    let mut by_name: Vec<BTreeMap<String, Vec<&Msg>>> = Vec::new();
    for l in lists {
        let mut m: BTreeMap<String, Vec<&Msg>> = BTreeMap::new();
        for e in l {
            m.entry(name_of(e)).or_default().push(e);
        }
        by_name.push(m);
    }
    let Some(first) = by_name.first() else { return };
    for (name, occ) in first {
        for i in 0..occ.len() {
            let msgs: Option<Vec<&Msg>> = by_name
                .iter()
                .map(|m| m.get(name).and_then(|v| v.get(i)).copied())
                .collect();
            if let Some(msgs) = msgs {
                let event = msgs[0].event().unwrap_or("?").to_owned();
                compare_events(b, &event, seen, &msgs);
            }
        }
    }
}

fn scenario_rows(id: &str, columns: &[Column], b: &mut Builder) {
    let runs: Vec<Option<&Run>> = columns.iter().map(|c| c.runs.get(id)).collect();
    let entries: Option<Vec<&Vec<Entry>>> = runs
        .iter()
        .map(|r| match r {
            Some(Run::Played(e)) => Some(e),
            _ => None,
        })
        .collect();
    let Some(entries) = entries else {
        let cells = runs
            .iter()
            .map(|r| match r {
                None => "not recorded".to_owned(),
                Some(Run::Played(_)) => "played".to_owned(),
                Some(Run::Failed(e)) => short(&format!("error: {e}"), 60),
            })
            .collect();
        b.add(Kind::Runs, format!("`{id}`"), cells, None);
        return;
    };
    let views: Vec<ScenarioView> = entries.iter().map(|e| view(e)).collect();
    let counts: Vec<usize> = views.iter().map(|v| v.steps.len()).collect();
    if !all_same(&counts) {
        let cells = counts.iter().map(|n| format!("{n} steps")).collect();
        b.add(Kind::Runs, format!("`{id}`"), cells, None);
    }
    let n = counts.iter().copied().min().unwrap_or(0);
    for i in 0..n {
        let steps: Vec<&StepView> = views.iter().map(|v| &v.steps[i]).collect();
        let subject = steps[0].subject.as_str();
        let seen = format!("{id}{}", steps[0].tag);
        let most = steps.iter().map(|s| s.replies.len()).max().unwrap_or(0);
        let mut kinds_differ = false;
        for k in 0..most {
            let msgs: Vec<Option<&Msg>> = steps.iter().map(|s| s.replies.get(k)).collect();
            kinds_differ |= compare_replies(b, subject, &seen, &msgs);
        }
        // A command that fails in one version causes other events there:
        // that is the error row's story.
        let orders: Vec<&Vec<String>> = steps.iter().map(|s| &s.order).collect();
        if !all_same(&orders) && !kinds_differ {
            let cells = orders
                .iter()
                .map(|o| {
                    if o.is_empty() {
                        NO.to_owned()
                    } else {
                        o.join(", ")
                    }
                })
                .collect();
            b.add(Kind::EventOrder, format!("`{subject}`"), cells, Some(&seen));
        }
        let lists: Vec<Vec<&Msg>> = steps.iter().map(|s| s.events.iter().collect()).collect();
        compare_event_lists(b, &seen, &lists, Msg::token);
    }
    let jobs: BTreeSet<&String> = views.iter().flat_map(|v| v.jobs.keys()).collect();
    for job in jobs {
        let lists: Vec<Vec<&Msg>> = views
            .iter()
            .map(|v| {
                v.jobs
                    .get(job)
                    .map(|l| l.iter().collect())
                    .unwrap_or_default()
            })
            .collect();
        let tokens: Vec<Vec<String>> = lists
            .iter()
            .map(|l| {
                l.iter()
                    .map(|m| {
                        m.token()
                            .trim_start_matches("JOB_STATUS_CHANGE ")
                            .to_owned()
                    })
                    .collect()
            })
            .collect();
        if !all_same(&tokens) {
            let cells = tokens
                .iter()
                .map(|t| {
                    if t.is_empty() {
                        NO.to_owned()
                    } else {
                        t.join(" ")
                    }
                })
                .collect();
            b.add(Kind::JobEvents, format!("`{job}`"), cells, Some(id));
        }
        compare_event_lists(b, &format!("{id}#{job}"), &lists, Msg::token);
    }
}

// ---------------------------------------------------------------- rendering

fn seen_list(seen: &[String], max: usize) -> String {
    let mut s = seen
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if seen.len() > max {
        let _ = write!(s, " (+{} more)", seen.len() - max);
    }
    s
}

/// Control characters as JSON writes them (`\u0000`), so the table stays text.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{:04x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn md_cell(s: &str) -> String {
    let s = printable(s).replace('|', "\\|");
    if s == YES || s == NO || s.is_empty() {
        s
    } else {
        format!("`{}`", s.replace('`', "'"))
    }
}

impl Table {
    /// Rows of one section.
    pub fn section(&self, kind: Kind) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.kind == kind)
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = self.rows.iter().map(|r| r.kind).collect();
        k.dedup();
        k
    }

    /// Markdown: one `###` section and table per kind of difference.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        if self.rows.is_empty() {
            s.push_str("No differences.\n");
        }
        for kind in self.kinds() {
            let _ = writeln!(s, "### {}\n", kind.title());
            let _ = write!(s, "| {} | {} |", kind.what(), self.columns.join(" | "));
            if kind.observed() {
                s.push_str(" seen in |");
            }
            s.push('\n');
            s.push_str(&"|---".repeat(self.columns.len() + 1 + usize::from(kind.observed())));
            s.push_str("|\n");
            for r in self.section(kind) {
                let cells: Vec<String> = r.cells.iter().map(|c| md_cell(c)).collect();
                let _ = write!(
                    s,
                    "| {} | {} |",
                    printable(&r.behaviour).replace('|', "\\|"),
                    cells.join(" | ")
                );
                if kind.observed() {
                    let _ = write!(s, " {} |", seen_list(&r.seen, 3).replace('|', "\\|"));
                }
                s.push('\n');
            }
            s.push('\n');
        }
        s
    }

    /// Plain text: the same sections, columns aligned.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.rows.is_empty() {
            s.push_str("No differences.\n");
        }
        for kind in self.kinds() {
            let _ = writeln!(s, "== {}", kind.title());
            let mut lines: Vec<Vec<String>> = Vec::new();
            let mut head = vec![kind.what().to_owned()];
            head.extend(self.columns.iter().cloned());
            if kind.observed() {
                head.push("seen in".into());
            }
            lines.push(head);
            for r in self.section(kind) {
                let mut l = vec![r.behaviour.replace('`', "")];
                l.extend(r.cells.iter().map(|c| short(c, 90)));
                if kind.observed() {
                    l.push(seen_list(&r.seen, 2));
                }
                lines.push(l);
            }
            let cols = lines[0].len();
            let widths: Vec<usize> = (0..cols)
                .map(|i| {
                    lines
                        .iter()
                        .map(|l| l[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for l in &lines {
                let mut line = String::new();
                for (i, c) in l.iter().enumerate() {
                    if i + 1 == cols {
                        line.push_str(c);
                    } else {
                        let pad = widths[i] - c.chars().count();
                        let _ = write!(line, "{c}{}  ", " ".repeat(pad));
                    }
                }
                s.push_str(line.trim_end());
                s.push('\n');
            }
            s.push('\n');
        }
        s
    }
}

/// A behaviour one table shows differently from another (or not at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    /// Section.
    pub kind: Kind,
    /// The row's behaviour.
    pub behaviour: String,
    /// Where (empty for profile rows).
    pub seen: String,
    /// The first table's cells there (`None`: no such difference).
    pub expected: Option<Vec<String>>,
    /// The second table's.
    pub actual: Option<Vec<String>>,
}

/// Every (behaviour, place) whose cells differ between `expected` and
/// `actual`: the same differences everywhere means an empty list.
pub fn discrepancies(expected: &Table, actual: &Table) -> Vec<Discrepancy> {
    type Key = (Kind, String, String);
    let observations = |t: &Table| {
        let mut m: BTreeMap<Key, BTreeSet<Vec<String>>> = BTreeMap::new();
        for r in &t.rows {
            let places = if r.seen.is_empty() {
                vec![String::new()]
            } else {
                r.seen.clone()
            };
            for p in places {
                m.entry((r.kind, r.behaviour.clone(), p))
                    .or_default()
                    .insert(r.cells.clone());
            }
        }
        m
    };
    let (e, a) = (observations(expected), observations(actual));
    let keys: BTreeSet<&Key> = e.keys().chain(a.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (e.get(k), a.get(k));
        if x == y {
            continue;
        }
        let first = |s: Option<&BTreeSet<Vec<String>>>| s.and_then(|s| s.iter().next().cloned());
        out.push(Discrepancy {
            kind: k.0,
            behaviour: k.1.clone(),
            seen: k.2.clone(),
            expected: first(x),
            actual: first(y),
        });
    }
    out
}

/// Renders discrepancies as a markdown table (`what`: the two tables' names).
pub fn discrepancies_markdown(d: &[Discrepancy], what: (&str, &str)) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| section | behaviour | seen in | {} | {} |",
        what.0, what.1
    );
    s.push_str("|---|---|---|---|---|\n");
    let cells = |c: &Option<Vec<String>>| match c {
        None => "(no difference)".to_owned(),
        Some(c) => c.iter().map(|x| md_cell(x)).collect::<Vec<_>>().join(" / "),
    };
    for x in d {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            x.kind.title(),
            x.behaviour.replace('|', "\\|"),
            x.seen,
            cells(&x.expected),
            cells(&x.actual)
        );
    }
    s
}

/// The README block's markers.
pub const README_BEGIN: &str = "<!-- qmp-conform matrix: begin (generated, do not edit) -->";
/// See [`README_BEGIN`].
pub const README_END: &str = "<!-- qmp-conform matrix: end -->";

/// The README block: the goldens' table for `flavor`, every recorded
/// version, between the markers.
pub fn readme_block(fixtures: &Path, flavor: Flavor) -> Result<String> {
    let columns = golden_columns(fixtures, flavor, &Version::ALL, &[])?;
    let t = build(&columns);
    Ok(format!("{README_BEGIN}\n{}{README_END}", t.markdown()))
}

/// Replaces the block between the markers in `text`.
pub fn replace_block(text: &str, block: &str) -> Result<String> {
    let (Some(b), Some(e)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!("no '{README_BEGIN}' … '{README_END}' block");
    };
    if e < b {
        bail!("'{README_END}' comes before '{README_BEGIN}'");
    }
    Ok(format!(
        "{}{block}{}",
        &text[..b],
        &text[e + README_END.len()..]
    ))
}

/// The block currently between the markers.
pub fn current_block(text: &str) -> Option<&str> {
    let b = text.find(README_BEGIN)?;
    let e = text.find(README_END)?;
    text.get(b..e + README_END.len())
}

/// Columns from the goldens of every version in `versions` that has
/// recordings for `flavor`.
pub fn golden_columns(
    fixtures: &Path,
    flavor: Flavor,
    versions: &[Version],
    filters: &[String],
) -> Result<Vec<Column>> {
    let recorded = suite::recorded_profiles(fixtures);
    versions
        .iter()
        .filter(|v| recorded.contains(&(**v, flavor)))
        .map(|&v| Column::from_goldens(fixtures, v, flavor, filters))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(label: &str, lines: &[&str]) -> Column {
        let t = Transcript::parse(&lines.join("\n")).unwrap();
        Column {
            label: label.into(),
            commands: BTreeSet::new(),
            schema: vec![],
            runs: [("s/x".to_owned(), Run::Played(t.entries))].into(),
        }
    }

    #[test]
    fn classifies_reply_differences() {
        let a = col(
            "5.2",
            &[
                r#"<- {"QMP": {"version": {"qemu": {"major": 5}}, "capabilities": ["oob"]}}"#,
                r#"-> {"execute": "block-stream", "id": "a"}"#,
                r#"<- {"id": "a", "error": {"class": "GenericError", "desc": "Cannot find device=x nor node_name=x"}}"#,
                r#"-> {"execute": "query-block-jobs", "id": "b"}"#,
                r#"<- {"return": [{"device": "m", "len": 0.1}], "id": "b"}"#,
                r#"-> {"execute": "block-job-change", "id": "c"}"#,
                r#"<- {"id": "c", "error": {"class": "CommandNotFound", "desc": "The command block-job-change has not been found"}}"#,
                r#"-> {"execute": "block-export-del", "id": "d"}"#,
                r#"<- {"return": {}, "id": "d"}"#,
                r#"<- {"event": "BLOCK_EXPORT_DELETED", "data": {"id": "e"}}"#,
            ],
        );
        let b = col(
            "10.0",
            &[
                r#"<- {"QMP": {"version": {"qemu": {"major": 10}}, "capabilities": ["oob"]}}"#,
                r#"-> {"execute": "block-stream", "id": "a"}"#,
                r#"<- {"id": "a", "error": {"class": "GenericError", "desc": "Cannot find device='x' nor node-name='x'"}}"#,
                r#"-> {"execute": "query-block-jobs", "id": "b"}"#,
                r#"<- {"return": [{"device": "m", "len": 0.10000000000000001, "actively-synced": false}], "id": "b"}"#,
                r#"-> {"execute": "block-job-change", "id": "c"}"#,
                r#"<- {"return": {}, "id": "c"}"#,
                r#"-> {"execute": "block-export-del", "id": "d"}"#,
                r#"<- {"event": "BLOCK_EXPORT_DELETED", "data": {"id": "e"}}"#,
                r#"<- {"return": {}, "id": "d"}"#,
            ],
        );
        let t = build(&[a, b]);
        let rows: Vec<(Kind, &str, Vec<&str>, &str)> = t
            .rows
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.behaviour.as_str(),
                    r.cells.iter().map(String::as_str).collect(),
                    r.seen[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    Kind::ErrorVsSuccess,
                    "`block-job-change`",
                    vec![
                        "CommandNotFound: The command block-job-change has not been found",
                        "ok"
                    ],
                    "s/x#c"
                ),
                (
                    Kind::ErrorText,
                    "`block-stream` (GenericError)",
                    vec![
                        "Cannot find device=x nor node_name=x",
                        "Cannot find device='x' nor node-name='x'"
                    ],
                    "s/x#a"
                ),
                (
                    Kind::Members,
                    "`query-block-jobs`: `[].actively-synced`",
                    vec![NO, YES],
                    "s/x#b"
                ),
                (
                    Kind::EventOrder,
                    "`block-export-del`",
                    vec!["reply, BLOCK_EXPORT_DELETED", "BLOCK_EXPORT_DELETED, reply"],
                    "s/x#d"
                ),
            ]
        );
    }

    #[test]
    fn job_events_compare_per_job_and_same_values_by_text() {
        let a = col(
            "a",
            &[
                r#"-> {"execute": "x", "id": 1.5}"#,
                r#"<- {"return": {}, "id": 0.1}"#,
                r#"<- {"event": "JOB_STATUS_CHANGE", "data": {"status": "ready", "id": "j"}}"#,
                r#"<- {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j", "error": "Invalid argument"}}"#,
            ],
        );
        let b = col(
            "b",
            &[
                r#"-> {"execute": "x", "id": 1.5}"#,
                r#"<- {"event": "JOB_STATUS_CHANGE", "data": {"status": "paused", "id": "j"}}"#,
                r#"<- {"return": {}, "id": 0.10000000000000001}"#,
                r#"<- {"event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "j"}}"#,
                r#"<- {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j", "error": "Sizes differ"}}"#,
            ],
        );
        let t = build(&[a, b]);
        let got: Vec<(Kind, Vec<String>)> =
            t.rows.iter().map(|r| (r.kind, r.cells.clone())).collect();
        assert_eq!(
            got,
            vec![
                (
                    Kind::Values,
                    vec!["\"Invalid argument\"".into(), "\"Sizes differ\"".into()]
                ),
                (
                    Kind::Encoding,
                    vec!["0.1".into(), "0.10000000000000001".into()]
                ),
                (
                    Kind::JobEvents,
                    vec![
                        "ready BLOCK_JOB_COMPLETED".into(),
                        "BLOCK_JOB_COMPLETED".into()
                    ]
                ),
            ]
        );
        // Nothing differs between a table and itself; a missing row is a discrepancy.
        assert!(discrepancies(&t, &t).is_empty());
        let mut fewer = t.clone();
        fewer.rows.pop();
        let d = discrepancies(&t, &fewer);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].kind, d[0].actual.clone()), (Kind::JobEvents, None));
    }

    #[test]
    fn profile_differences() {
        let schema = |extra_arg: bool, extra_case: bool| -> Vec<Value> {
            let mut members = vec![serde_json::json!({"name": "job-id", "type": "str"})];
            if extra_arg {
                members.push(serde_json::json!({"name": "bottom", "type": "str", "default": null}));
            }
            let mut variants = vec![serde_json::json!({"case": "file", "type": "2"})];
            if extra_case {
                variants.push(serde_json::json!({"case": "snapshot-access", "type": "2"}));
            }
            vec![
                serde_json::json!({"name": "block-stream", "meta-type": "command", "arg-type": "0", "ret-type": "9"}),
                serde_json::json!({"name": "blockdev-add", "meta-type": "command", "arg-type": "1", "ret-type": "9"}),
                serde_json::json!({"name": "0", "meta-type": "object", "members": members}),
                serde_json::json!({"name": "1", "meta-type": "object", "tag": "driver", "members": [{"name": "driver", "type": "str"}], "variants": variants}),
                serde_json::json!({"name": "2", "meta-type": "object", "members": []}),
            ]
        };
        let c = |label: &str, cmds: &[&str], s: Vec<Value>| Column {
            label: label.into(),
            commands: cmds.iter().map(|c| (*c).to_owned()).collect(),
            schema: s,
            runs: BTreeMap::new(),
        };
        let t = build(&[
            c("5.2", &["a", "b"], schema(false, false)),
            c("10.0", &["a", "c"], schema(true, true)),
        ]);
        let text = t.text();
        assert!(text.contains("== Commands (query-commands)"), "{text}");
        let rows: Vec<(&str, Vec<&str>)> = t
            .rows
            .iter()
            .map(|r| {
                (
                    r.behaviour.as_str(),
                    r.cells.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("`b`", vec![YES, NO]),
                ("`c`", vec![NO, YES]),
                ("`block-stream`: `bottom`", vec![NO, "optional"]),
                (
                    "`blockdev-add`: `driver` = `snapshot-access`",
                    vec![NO, YES]
                ),
            ]
        );
        assert!(t
            .markdown()
            .contains("| `block-stream`: `bottom` | — | `optional` |"));
    }

    #[test]
    fn node_lists_pair_by_name_and_generated_names_by_driver_and_file() {
        let nodes = |list: &str| {
            col(
                "x",
                &[
                    r#"-> {"execute": "query-named-block-nodes", "id": "q"}"#,
                    &format!(r#"<- {{"return": {list}, "id": "q"}}"#),
                ],
            )
        };
        // 5.2 has no filter: its file node is #block~1, not #block~2.
        let a = nodes(
            r##"[{"node-name": "top", "drv": "qcow2", "ro": false}, {"node-name": "#block1", "drv": "file", "file": "t"}]"##,
        );
        let b = nodes(
            r##"[{"node-name": "#block5", "drv": "copy-on-read", "file": "t"}, {"node-name": "top", "drv": "qcow2", "ro": true}, {"node-name": "#block7", "drv": "file", "file": "t"}]"##,
        );
        let t = build(&[a, b]);
        let rows: Vec<(Kind, &str, Vec<&str>)> = t
            .rows
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.behaviour.as_str(),
                    r.cells.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    Kind::Members,
                    "`query-named-block-nodes`: `[node-name=#block…: copy-on-read t]`",
                    vec![NO, YES]
                ),
                (
                    Kind::Values,
                    "`query-named-block-nodes`: `[].ro`",
                    vec!["false", "true"]
                ),
            ]
        );
    }

    #[test]
    fn readme_block_replacement() {
        let text = format!("a\n{README_BEGIN}\nold\n{README_END}\nb\n");
        let new = replace_block(&text, &format!("{README_BEGIN}\nnew\n{README_END}")).unwrap();
        assert_eq!(new, format!("a\n{README_BEGIN}\nnew\n{README_END}\nb\n"));
        assert_eq!(current_block(&new), Some(&new[2..new.len() - 3]));
        assert!(replace_block("no markers", "x").is_err());
    }
}
