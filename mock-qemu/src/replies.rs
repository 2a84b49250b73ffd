//! Replies recorded from real QEMU and served as data.
//!
//! Management tools ask a system emulator many questions whose answers are
//! facts of the build, not of the state the mock models: which machine
//! types and CPU models exist, the properties of a device type, KVM's
//! presence, the command-line options. libvirt's capability probe asks
//! about fifty of them. The mock does not re-invent those answers: for a
//! command it does not model, it looks the exact request (name and
//! arguments) up in golden transcripts recorded from the real build of its
//! profile (`fixtures/qemu-<v>/<flavor>/transcripts/libvirt/probe.out`,
//! refreshed with `ci/record-fixtures.sh sys-7.2 sys-10.0`), and answers
//! what that QEMU answered. A request that was never recorded is still the
//! explicit "not implemented by the mock" error, never a guess.
//!
//! Only the commands in [`STATIC_QUERIES`] are looked up: their replies do
//! not depend on anything a client can change.

use std::collections::BTreeMap;

use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::QObject;

/// Commands whose replies are facts of the build (pure queries).
pub const STATIC_QUERIES: &[&str] = &[
    "query-target",
    "query-kvm",
    "qom-list-types",
    "device-list-properties",
    "qom-list-properties",
    "query-machines",
    "query-cpu-definitions",
    "query-cpu-model-expansion",
    "query-tpm-models",
    "query-tpm-types",
    "query-command-line-options",
    "query-migrate-capabilities",
    "query-sev-capabilities",
    "query-sgx-capabilities",
];

/// Questions about the virtual CPU of the recorded machine (libvirt's
/// start-up conversation: `fixtures/scenarios/libvirt/domain-start.qmp`,
/// one `qemu64` vCPU): answered only when the mock runs a machine with CPUs
/// (not `-M none`). `qom-list`/`qom-get` only for paths under [`CPU_PATH`].
pub const MACHINE_QUERIES: &[&str] = &[
    "query-hotpluggable-cpus",
    "query-cpus-fast",
    "qom-list",
    "qom-get",
];

/// The first vCPU's QOM path.
pub const CPU_PATH: &str = "/machine/unattached/device[0]";

/// Whether a request is one the CPU recording answers.
fn is_machine_query(name: &str, args: &serde_json::Value) -> bool {
    match name {
        "qom-list" | "qom-get" => args
            .get("path")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|p| p == CPU_PATH || p.starts_with(&format!("{CPU_PATH}/"))),
        n => MACHINE_QUERIES.contains(&n),
    }
}

/// A recorded answer: a `return` value or an error.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// The `return` member's value, as received.
    Return(serde_json::Value),
    /// The error's class and `desc`.
    Error(ErrorClass, String),
}

/// Why recorded transcript text could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepliesError {
    /// A `->` or `<-` line that is not JSON.
    #[error("line {line}: {what}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// The lookup table: request key → answer.
#[derive(Debug, Default)]
pub struct Replies {
    table: BTreeMap<String, Recorded>,
    /// [`MACHINE_QUERIES`] answers.
    machine: BTreeMap<String, Recorded>,
}

impl Replies {
    /// Builds the table from golden transcripts (`->` sent lines, `<-`
    /// received lines): each static query's answer is the first reply line
    /// (one with `return` or `error`) after it.
    pub fn from_transcripts(texts: &[&str]) -> Result<Replies, RepliesError> {
        Ok(Replies {
            table: table(texts, |n, _| STATIC_QUERIES.contains(&n))?,
            machine: BTreeMap::new(),
        })
    }

    /// Adds the answers of a machine with a vCPU ([`MACHINE_QUERIES`]).
    pub fn with_machine(mut self, texts: &[&str]) -> Result<Replies, RepliesError> {
        self.machine = table(texts, is_machine_query)?;
        Ok(self)
    }

    /// What the recorded machine answered about its vCPU, if asked exactly
    /// this.
    pub fn lookup_machine(
        &self,
        name: &str,
        args: &serde_json::Value,
    ) -> Option<Result<QObject, QmpError>> {
        if !is_machine_query(name, args) {
            return None;
        }
        self.machine.get(&key(name, args)).map(answer)
    }

    /// What the recorded QEMU answered to exactly this request, if it was
    /// asked.
    pub fn lookup(
        &self,
        name: &str,
        args: &serde_json::Value,
    ) -> Option<Result<QObject, QmpError>> {
        if !STATIC_QUERIES.contains(&name) {
            return None;
        }
        self.table.get(&key(name, args)).map(answer)
    }

    /// How many requests are recorded.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing is recorded (qemu-storage-daemon profiles).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Request key → answer for the requests `wanted` picks, from golden
/// transcripts (`->` sent lines, `<-` received lines): each answer is the
/// first reply line (one with `return` or `error`) after its request.
fn table(
    texts: &[&str],
    wanted: impl Fn(&str, &serde_json::Value) -> bool,
) -> Result<BTreeMap<String, Recorded>, RepliesError> {
    let mut table = BTreeMap::new();
    for text in texts {
        let mut pending: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let bad = |what: String| RepliesError::Malformed { line: i + 1, what };
            if let Some(sent) = line.strip_prefix("-> ") {
                let v: serde_json::Value =
                    serde_json::from_str(sent).map_err(|e| bad(e.to_string()))?;
                let args = v.get("arguments").unwrap_or(&serde_json::Value::Null);
                pending = match v.get("execute").and_then(serde_json::Value::as_str) {
                    Some(n) if wanted(n, args) => Some(key(n, args)),
                    _ => None,
                };
            } else if let Some(got) = line.strip_prefix("<- ") {
                let Some(k) = pending.as_ref() else { continue };
                let v: serde_json::Value =
                    serde_json::from_str(got).map_err(|e| bad(e.to_string()))?;
                let answer = if let Some(r) = v.get("return") {
                    Recorded::Return(r.clone())
                } else if let Some(e) = v.get("error") {
                    let class = e.get("class").and_then(serde_json::Value::as_str);
                    let class = class
                        .and_then(ErrorClass::from_name)
                        .ok_or_else(|| bad(format!("unknown error class {class:?}")))?;
                    let desc = e.get("desc").and_then(serde_json::Value::as_str);
                    Recorded::Error(class, desc.unwrap_or_default().to_owned())
                } else {
                    continue; // an event
                };
                table.entry(k.clone()).or_insert(answer);
                pending = None;
            }
        }
    }
    Ok(table)
}

fn answer(r: &Recorded) -> Result<QObject, QmpError> {
    match r {
        Recorded::Return(v) => Ok(QObject::from_wire(v)),
        Recorded::Error(class, desc) => Err(QmpError::new(*class, desc.clone())),
    }
}

/// The request's identity: its name and its arguments with members sorted
/// (clients order members as they like; `{}` and no arguments are one).
fn key(name: &str, args: &serde_json::Value) -> String {
    let mut s = String::from(name);
    s.push(' ');
    match args {
        serde_json::Value::Object(m) if m.is_empty() => {}
        serde_json::Value::Null => {}
        v => canonical(v, &mut s),
    }
    s
}

fn canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = m.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        v => out.push_str(&v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"<- {"QMP": {}}
-> {"execute": "qmp_capabilities"}
<- {"return": {}}
-> {"execute": "device-list-properties", "arguments": {"typename": "scsi-hd"}, "id": "a"}
<- {"return": [{"name": "drive", "type": "str"}], "id": "a"}
-> {"execute": "device-list-properties", "arguments": {"typename": "nope"}}
<- {"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}
-> {"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": "max", "props": {"migratable": false}}}}
<- {"return": {"model": {"name": "base"}}}
-> {"execute": "query-status"}
<- {"return": {"status": "prelaunch"}}
"#;

    #[test]
    fn answers_exact_recorded_requests_only() {
        let r = Replies::from_transcripts(&[T]).unwrap();
        assert_eq!(r.len(), 3, "query-status depends on state: never served");
        let got = r
            .lookup(
                "device-list-properties",
                &serde_json::json!({"typename": "scsi-hd"}),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::Value::from(&got),
            serde_json::json!([{"name": "drive", "type": "str"}])
        );
        let e = r
            .lookup(
                "device-list-properties",
                &serde_json::json!({"typename": "nope"}),
            )
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.class, e.desc.as_str()),
            (ErrorClass::DeviceNotFound, "Device 'nope' not found")
        );
        assert!(r
            .lookup(
                "device-list-properties",
                &serde_json::json!({"typename": "ide-hd"})
            )
            .is_none());
        assert!(r.lookup("query-status", &serde_json::Value::Null).is_none());
    }

    #[test]
    fn member_order_of_the_request_does_not_matter() {
        let r = Replies::from_transcripts(&[T]).unwrap();
        let args = serde_json::json!({"model": {"props": {"migratable": false}, "name": "max"}, "type": "static"});
        assert!(r
            .lookup("query-cpu-model-expansion", &args)
            .unwrap()
            .is_ok());
        let other = serde_json::json!({"model": {"name": "max"}, "type": "static"});
        assert!(r.lookup("query-cpu-model-expansion", &other).is_none());
    }

    #[test]
    fn cpu_questions_come_from_the_machine_recording_only() {
        const M: &str = r#"-> {"execute": "qom-get", "arguments": {"path": "/machine/unattached/device[0]", "property": "lm"}}
<- {"return": true}
-> {"execute": "qom-get", "arguments": {"path": "/machine/peripheral/disk0", "property": "drive"}}
<- {"return": "d"}
-> {"execute": "query-cpus-fast"}
<- {"return": [{"cpu-index": 0}]}
"#;
        let r = Replies::from_transcripts(&[T])
            .unwrap()
            .with_machine(&[M])
            .unwrap();
        let cpu = serde_json::json!({"path": "/machine/unattached/device[0]", "property": "lm"});
        assert!(r.lookup_machine("qom-get", &cpu).unwrap().is_ok());
        assert!(
            r.lookup("qom-get", &cpu).is_none(),
            "not a fact of the build"
        );
        let dev = serde_json::json!({"path": "/machine/peripheral/disk0", "property": "drive"});
        assert!(
            r.lookup_machine("qom-get", &dev).is_none(),
            "device state is modelled, not recorded"
        );
        assert!(r
            .lookup_machine("query-cpus-fast", &serde_json::Value::Null)
            .is_some());
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let e =
            Replies::from_transcripts(&["-> {\"execute\": \"query-kvm\"}\n<- {oops"]).unwrap_err();
        assert!(matches!(e, RepliesError::Malformed { line: 2, .. }));
    }
}
