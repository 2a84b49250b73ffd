//! The single owner of a [`Machine`]: QMP dispatch, negotiation, event fan-out.
//!
//! `Core` is synchronous and transport-free: a session hands it one parsed
//! input item and gets back a [`Delivery`] (lines for the requester and for
//! every negotiated session). The server layer wraps it in a mutex and moves
//! lines to sockets. That seam is also where the fuzz targets plug in.
//!
//! The dispatch steps follow QEMU's `monitor/qmp.c` and `qapi/qmp-dispatch.c`:
//! object check, member check, command lookup (only `qmp_capabilities`
//! exists before negotiation), OOB permission, schema-driven argument check,
//! the command itself; then, before negotiation, any `CommandNotFound` is
//! rewritten to "Expecting capabilities negotiation…"; `id` is echoed last.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cmd;
use crate::model::clock::VirtualTime;
use crate::model::{Machine, Stamped};
use crate::profile::Profile;
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::json::{to_json_with, Parsed, Style};
use crate::qmp::qobject::{QDict, QObject};

/// Identifies one client connection.
pub type SessionId = u64;

/// Per-connection protocol state, as QEMU's `MonitorQMP` keeps it.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// `qmp_capabilities` succeeded: commands run and events are delivered.
    pub negotiated: bool,
    /// The `oob` capability was enabled.
    pub oob: bool,
}

/// Configuration of a core that is not part of the profile.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Start with the virtual clock reading this time.
    pub epoch: VirtualTime,
    /// `-S`: start in `prelaunch`.
    pub start_paused: bool,
    /// Stepped job mode with this simulated throughput (bytes per second)
    /// for jobs without a speed limit; `None`: instant mode.
    pub stepped_jobs: Option<u64>,
    /// Strict mode: images a commit invalidated may not be used again
    /// (a simulator extension, off by default and for conformance runs).
    pub strict: bool,
    /// The monitors' character devices (`query-chardev`).
    pub chardevs: Vec<crate::model::vm::Chardev>,
    /// KVM is in use (`query-kvm`; [`crate::sys::kvm_accelerated`]).
    pub kvm: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            epoch: VirtualTime(1_700_000_000_000_000),
            start_paused: false,
            stepped_jobs: None,
            strict: false,
            chardevs: Vec::new(),
            kvm: false,
        }
    }
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Event lines raised while the command ran: written to every session in
    /// `recipients`, and to the requester *before* its reply.
    pub events: Vec<String>,
    /// The reply line for the requester (every parsed item gets one;
    /// whitespace-only input produces no item at all).
    pub reply: Option<String>,
    /// Event lines raised after the reply (work QEMU completes once the
    /// command has answered); same recipients as `events`.
    pub after: Vec<String>,
    /// The sessions that receive `events` (negotiated ones).
    pub recipients: Vec<SessionId>,
}

/// The owner of the machine and of every session's protocol state.
#[derive(Debug)]
pub struct Core {
    profile: Arc<Profile>,
    machine: Machine,
    sessions: BTreeMap<SessionId, SessionState>,
    next_session: SessionId,
    style: Style,
    host: Box<dyn crate::host::HostIo>,
    cache: cmd::ReplyCache,
}

impl Core {
    /// A core impersonating `profile`.
    pub fn new(profile: Arc<Profile>, config: &CoreConfig) -> Self {
        let style = json_style(&profile);
        let mut machine = Machine::new(config.epoch, config.start_paused);
        machine.set_stepped(config.stepped_jobs);
        machine.set_strict(config.strict);
        machine.vm_mut().chardevs = config.chardevs.clone();
        machine.vm_mut().kvm = config.kvm;
        Core {
            profile,
            machine,
            sessions: BTreeMap::new(),
            next_session: 1,
            style,
            host: Box::new(crate::host::NoHostIo),
            cache: cmd::ReplyCache::default(),
        }
    }

    /// Mock-only commands (`x-mock-…`, in no QEMU schema), after
    /// negotiation: `x-mock-clock-advance {"microseconds": N}` moves the
    /// virtual clock, and stepped-mode jobs with it.
    fn mock_command(&mut self, command: &str, dict: &QDict) -> Option<Result<QObject, QmpError>> {
        let args = match dict.get("arguments") {
            Some(QObject::Dict(a)) => a.clone(),
            _ => QDict::new(),
        };
        if command == "x-mock-inject-fault" {
            return Some(
                self.inject_fault(&args)
                    .map(|()| QObject::Dict(QDict::new())),
            );
        }
        if command != "x-mock-clock-advance" {
            return None;
        }
        let micros =
            match args.get("microseconds") {
                Some(QObject::Num(crate::qmp::qobject::QNum::I64(n))) if *n >= 0 => *n as u64,
                Some(QObject::Num(crate::qmp::qobject::QNum::U64(n))) => *n,
                _ => return Some(Err(QmpError::generic(
                    "mock-qemu: x-mock-clock-advance needs 'microseconds', a non-negative integer",
                ))),
            };
        self.machine.advance(micros);
        Some(Ok(QObject::Dict(QDict::new())))
    }

    /// `x-mock-inject-fault {"node-name": N, "operation": "read"|"write",
    /// "errno": "EIO"|"ENOSPC", "offset": BYTES, "once": BOOL}` (mock-only;
    /// also `--mock-fault`): jobs started afterwards that read (or write)
    /// node N meet the error once their progress reaches `offset`.
    pub fn inject_fault(&mut self, args: &QDict) -> Result<(), QmpError> {
        let bad = |what: &str| QmpError::generic(format!("mock-qemu: x-mock-inject-fault: {what}"));
        let node = args
            .get_str("node-name")
            .ok_or_else(|| bad("'node-name' (a string) is required"))?;
        let operation = match args.get_str("operation").unwrap_or("read") {
            "read" => "read",
            "write" => "write",
            _ => return Err(bad("'operation' is read or write")),
        };
        let errno = match args.get_str("errno").unwrap_or("EIO") {
            "EIO" => libc::EIO,
            "ENOSPC" => libc::ENOSPC,
            _ => return Err(bad("'errno' is EIO or ENOSPC")),
        };
        let at = match args.get("offset") {
            None => 0,
            Some(QObject::Num(n)) => n
                .as_u64()
                .ok_or_else(|| bad("'offset' is a non-negative integer"))?,
            Some(_) => return Err(bad("'offset' is a non-negative integer")),
        };
        let once = matches!(args.get("once"), Some(QObject::Bool(true)));
        self.machine.inject_fault(crate::model::InjectedFault {
            node: node.to_owned(),
            operation,
            error: crate::image::strerror(&std::io::Error::from_raw_os_error(errno)),
            nospace: errno == libc::ENOSPC,
            at,
            once,
        });
        Ok(())
    }

    /// Plugs in the host side (real NBD sockets); the default opens nothing.
    pub fn set_host_io(&mut self, host: Box<dyn crate::host::HostIo>) {
        self.host = host;
    }

    /// Runs a command given on the command line (`-blockdev`), before any
    /// monitor exists: schema check and command, no negotiation.
    pub fn startup_command(&mut self, command: &str, args: QDict) -> Result<(), QmpError> {
        self.profile
            .schema()
            .check_arguments(command, Some(&args))?;
        let args_json = serde_json::Value::from(&QObject::Dict(args));
        let mut ctx = cmd::Context {
            sid: 0,
            profile: &self.profile,
            machine: &mut self.machine,
            sessions: &mut self.sessions,
            host: self.host.as_mut(),
            cache: &mut self.cache,
        };
        cmd::execute(&mut ctx, command, args_json).map(|_| ())
    }

    /// Applies what a command line creates at start-up, in QEMU's order:
    /// the machine type, `-object`s, `-blockdev`s, then `-device`s. The
    /// error is QEMU's start-up message (`-device X: …`).
    pub fn run_cmdline(&mut self, cfg: &crate::cmdline::Config) -> Result<(), String> {
        use crate::cmdline::{blockdev_args, device_args, object_args};
        self.machine
            .devices_mut()
            .set_machine_type(cfg.machine.as_deref());
        self.machine
            .devices_mut()
            .set_guest_unplug(cfg.guest_unplug);
        let recorded_cpu = matches!(cfg.cpu.as_deref(), None | Some("qemu64"));
        let one_vcpu = matches!(cfg.smp, None | Some(1));
        self.machine.vm_mut().vcpus_unrecorded = (!recorded_cpu || !one_vcpu).then(|| {
            format!(
                "-cpu {} -smp {}",
                cfg.cpu.as_deref().unwrap_or("qemu64"),
                cfg.smp.unwrap_or(1)
            )
        });
        let dash = if cfg.flavor == crate::profile::Flavor::Qsd {
            "--"
        } else {
            "-"
        };
        type ArgParser = fn(&str) -> Result<QDict, String>;
        let startup: [(&str, &[String], ArgParser, &str); 2] = [
            ("object", &cfg.objects, object_args, "object-add"),
            ("blockdev", &cfg.blockdevs, blockdev_args, "blockdev-add"),
        ];
        for (opt, specs, parse, command) in startup {
            for spec in specs {
                let args = parse(spec).map_err(|e| format!("{dash}{opt} {spec}: {e}"))?;
                self.startup_command(command, args)
                    .map_err(|e| format!("{dash}{opt} {spec}: {}", e.desc))?;
            }
        }
        for spec in &cfg.devices {
            let args = device_args(spec).map_err(|e| format!("-device {spec}: {e}"))?;
            let mut ctx = cmd::Context {
                sid: 0,
                profile: &self.profile,
                machine: &mut self.machine,
                sessions: &mut self.sessions,
                host: self.host.as_mut(),
                cache: &mut self.cache,
            };
            let json = spec.trim_start().starts_with('{');
            cmd::device_add_cmdline(&mut ctx, args, json)
                .map_err(|e| format!("-device {spec}: {}", e.desc))?;
        }
        Ok(())
    }

    /// The impersonated profile.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// The machine (read-only).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// A new client connected: returns its id and the greeting line.
    pub fn open_session(&mut self) -> (SessionId, String) {
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(id, SessionState::default());
        (id, to_json_with(self.profile.greeting(), self.style))
    }

    /// A client went away. What the machine holds stays (as in QEMU).
    pub fn close_session(&mut self, id: SessionId) {
        self.sessions.remove(&id);
    }

    /// Protocol state of a session.
    pub fn session(&self, id: SessionId) -> Option<&SessionState> {
        self.sessions.get(&id)
    }

    /// Whether the process should end (after `quit` was answered).
    pub fn quit_requested(&self) -> bool {
        self.machine.quit_requested()
    }

    /// Handles one item from a session's input stream.
    pub fn handle(&mut self, sid: SessionId, item: Parsed) -> Delivery {
        let reply = match item {
            Parsed::Error(desc) => error_response(&QmpError::generic(desc), None),
            Parsed::Value(req) => self.dispatch(sid, &req),
        };
        // Instant mode: jobs run on as far as they can once the command has
        // answered; then the files they changed are written.
        self.machine.run_jobs();
        self.apply_effects();
        let mut d = Delivery {
            reply: Some(to_json_with(&QObject::Dict(reply), self.style)),
            ..Delivery::default()
        };
        let (now, after) = self.drain_events();
        d.events = now;
        d.after = after;
        d.recipients = self.negotiated_sessions();
        d
    }

    /// Scaled real time: the wall clock moved the virtual one by `micros`.
    /// Returns the events jobs raised, for every negotiated session.
    pub fn tick(&mut self, micros: u64) -> Delivery {
        self.machine.advance(micros);
        self.apply_effects();
        let (now, after) = self.drain_events();
        Delivery {
            events: now.into_iter().chain(after).collect(),
            recipients: self.negotiated_sessions(),
            ..Delivery::default()
        }
    }

    /// Writes the files the model changed (image headers, persistent
    /// bitmaps); the nodes opened on a file whose size changed see it.
    fn apply_effects(&mut self) {
        use crate::model::Effect;
        let mut touched = std::collections::BTreeSet::new();
        for effect in self.machine.take_effects() {
            let (filename, result) = match effect {
                Effect::SetBacking { filename, backing } => {
                    let b = backing.as_ref().map(|(n, f)| (n.as_str(), f.as_str()));
                    let r = self.host.set_qcow2_backing(&filename, b);
                    (filename, r)
                }
                Effect::StoreBitmaps { filename, bitmaps } => {
                    let r = self.host.store_qcow2_bitmaps(&filename, &bitmaps);
                    (filename, r)
                }
                Effect::MarkBitmapsInUse { filename } => {
                    let r = self.host.mark_qcow2_bitmaps_in_use(&filename);
                    (filename, r)
                }
                Effect::RemoveBitmap { filename, name } => {
                    let r = self.host.remove_qcow2_bitmap(&filename, &name);
                    (filename, r)
                }
            };
            if let Err(e) = result {
                eprintln!("mock-qemu: {e}");
            }
            touched.insert(filename);
        }
        for filename in touched {
            if let Ok(facts) = self.host.open_file(&filename) {
                self.machine.graph_mut().refresh_file(&facts);
            }
        }
    }

    /// The process received SIGTERM/SIGINT: returns the event lines QEMU
    /// writes before exiting, for every negotiated session.
    pub fn terminate(&mut self, signal_reason: &'static str) -> Delivery {
        let mut d = Delivery::default();
        let system = self.profile.flavor() == crate::profile::Flavor::System;
        self.machine.request_quit(system, signal_reason);
        self.apply_effects();
        let (now, after) = self.drain_events();
        d.events = now;
        d.after = after;
        d.recipients = self.negotiated_sessions();
        d
    }

    fn negotiated_sessions(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.negotiated)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Event lines raised so far: (before the reply, after the reply).
    fn drain_events(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut now, mut after) = (Vec::new(), Vec::new());
        for e in self.machine.take_events() {
            let line = self.event_line(&e);
            if e.after_reply {
                after.push(line);
            } else {
                now.push(line);
            }
        }
        (now, after)
    }

    fn event_line(&self, e: &Stamped) -> String {
        let (name, data) = cmd::event_to_wire(&e.event);
        let mut ts = QDict::new();
        ts.put("seconds", e.at.seconds() as i64);
        ts.put("microseconds", e.at.subsec_micros() as i64);
        let mut ev = QDict::new();
        ev.put("event", name);
        if let Some(data) = data {
            ev.put("data", data);
        }
        ev.put("timestamp", ts);
        to_json_with(&QObject::Dict(ev), self.style)
    }

    /// `qmp_dispatch()` plus the monitor's negotiation rewrite.
    fn dispatch(&mut self, sid: SessionId, req: &QObject) -> QDict {
        let state = self.sessions.get(&sid).cloned().unwrap_or_default();
        let Some(dict) = req.as_dict() else {
            return error_response(&QmpError::generic("QMP input must be a JSON object"), None);
        };
        let id = dict.get("id").cloned();
        let result = self.dispatch_checked(sid, &state, dict);
        let mut rsp = match result {
            Ok(ret) => {
                let mut rsp = QDict::new();
                rsp.put("return", ret);
                rsp
            }
            Err(mut err) => {
                if !state.negotiated && err.class == ErrorClass::CommandNotFound {
                    err.desc = "Expecting capabilities negotiation with 'qmp_capabilities'".into();
                }
                error_response(&err, None)
            }
        };
        if let Some(id) = id {
            rsp.put("id", id);
        }
        rsp
    }

    fn dispatch_checked(
        &mut self,
        sid: SessionId,
        state: &SessionState,
        dict: &QDict,
    ) -> Result<QObject, QmpError> {
        check_obj(dict, state.oob)?;
        let (command, oob) = match dict.get("execute") {
            Some(QObject::Str(s)) => (s.as_str(), false),
            _ => match dict.get("exec-oob") {
                Some(QObject::Str(s)) => (s.as_str(), true),
                _ => unreachable!("check_obj guarantees an exec key"),
            },
        };
        let not_found = || {
            QmpError::new(
                ErrorClass::CommandNotFound,
                format!("The command {command} has not been found"),
            )
        };
        // Before negotiation the monitor's command table holds only qmp_capabilities.
        if !state.negotiated && command != "qmp_capabilities" {
            return Err(not_found());
        }
        if let Some(result) = self.mock_command(command, dict) {
            return result;
        }
        if !self.profile.has_command(command) {
            return Err(not_found());
        }
        let Some(info) = self.profile.schema().command(command) else {
            return Err(not_found());
        };
        if oob && !info.allow_oob {
            return Err(QmpError::generic(format!(
                "The command {command} does not support OOB"
            )));
        }
        let empty = QDict::new();
        let args = match dict.get("arguments") {
            Some(QObject::Dict(a)) => a,
            _ => &empty,
        };
        self.profile.schema().check_arguments(command, Some(args))?;
        let args_json = serde_json::Value::from(&QObject::Dict(args.clone()));
        let mut ctx = cmd::Context {
            sid,
            profile: &self.profile,
            machine: &mut self.machine,
            sessions: &mut self.sessions,
            host: self.host.as_mut(),
            cache: &mut self.cache,
        };
        cmd::execute(&mut ctx, command, args_json)
    }
}

/// `qmp_dispatch_check_obj()`: members are visited in QDict order, so with
/// several defects the first in that order is reported, as QEMU does.
fn check_obj(dict: &QDict, allow_oob: bool) -> Result<(), QmpError> {
    let mut exec_key: Option<&str> = None;
    for (name, value) in dict.iter() {
        if name == "execute" || (name == "exec-oob" && allow_oob) {
            if !matches!(value, QObject::Str(_)) {
                return Err(QmpError::generic(format!(
                    "QMP input member '{name}' must be a string"
                )));
            }
            if let Some(prev) = exec_key {
                return Err(QmpError::generic(format!(
                    "QMP input member '{name}' clashes with '{prev}'"
                )));
            }
            exec_key = Some(name);
        } else if name == "arguments" {
            if !matches!(value, QObject::Dict(_)) {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ));
            }
        } else if name == "id" {
            continue;
        } else {
            return Err(QmpError::generic(format!(
                "QMP input member '{name}' is unexpected"
            )));
        }
    }
    if exec_key.is_none() {
        return Err(QmpError::generic("QMP input lacks member 'execute'"));
    }
    Ok(())
}

/// How the impersonated QEMU writes doubles: QEMU 6.0 changed `%f` with
/// trailing zeros stripped to `%.17g` (seen in the recorded `id` echoes).
pub fn json_style(profile: &Profile) -> Style {
    if profile.version() < crate::profile::Version::V7_2 {
        Style::Legacy
    } else {
        Style::Modern
    }
}

fn error_response(err: &QmpError, id: Option<QObject>) -> QDict {
    let mut e = QDict::new();
    e.put("class", err.class.as_str());
    e.put("desc", err.desc.clone());
    let mut rsp = QDict::new();
    rsp.put("error", e);
    if let Some(id) = id {
        rsp.put("id", id);
    }
    rsp
}
