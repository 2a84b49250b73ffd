//! Version profiles: what one real QEMU build looks like from the wire.
//!
//! A profile is *data recorded from that QEMU* by `qmp-conform record-profile`
//! and stored under `fixtures/qemu-<version>/<flavor>/profile/`:
//! `greeting.json` (the greeting line), `query-version.json`,
//! `query-commands.json` and `query-qmp-schema.json` (the `return` values),
//! and `int-kinds.json`: the C integer type of each `int` argument member,
//! which introspection hides and the recorder finds by probing that QEMU's
//! argument visitor (`conformance::probe`).
//! Nothing here is a hand-written table of commands or arguments.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use crate::qmp::qobject::QObject;
use crate::qmp::schema::{IntKind, Schema};
use crate::replies::Replies;

/// The QEMU versions the mock can impersonate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Version {
    /// QEMU 5.2 (Debian bullseye).
    V5_2,
    /// QEMU 7.2 (Debian bookworm).
    V7_2,
    /// QEMU 10.0 (Debian bookworm-backports). The default.
    #[default]
    V10_0,
}

impl Version {
    /// Every supported version, oldest first.
    pub const ALL: [Version; 3] = [Version::V5_2, Version::V7_2, Version::V10_0];

    /// `qemu-10.0` style name (also the fixture folder name).
    pub fn name(self) -> &'static str {
        match self {
            Version::V5_2 => "qemu-5.2",
            Version::V7_2 => "qemu-7.2",
            Version::V10_0 => "qemu-10.0",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown profile or flavor name.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The name is not one of the supported profiles.
    #[error("unknown profile '{0}' (known: qemu-5.2, qemu-7.2, qemu-10.0)")]
    UnknownVersion(String),
    /// The name is not a flavor.
    #[error("unknown flavor '{0}' (known: qsd, system)")]
    UnknownFlavor(String),
    /// No recording of this version and flavor exists.
    #[error("no recorded profile for {0} {1}: record it with `qmp-conform record-profile`")]
    NotRecorded(Version, Flavor),
    /// The recorded data could not be loaded.
    #[error("recorded profile data for {version} {flavor} is malformed: {what}")]
    Malformed {
        /// Version.
        version: Version,
        /// Flavor.
        flavor: Flavor,
        /// What was wrong.
        what: String,
    },
}

impl FromStr for Version {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = s.strip_prefix("qemu-").unwrap_or(s);
        match v {
            "5.2" => Ok(Version::V5_2),
            "7.2" => Ok(Version::V7_2),
            "10.0" => Ok(Version::V10_0),
            _ => Err(ProfileError::UnknownVersion(s.to_owned())),
        }
    }
}

/// Which QEMU program is impersonated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Flavor {
    /// `qemu-storage-daemon`: block layer only, `--chardev`/`--monitor` style.
    #[default]
    Qsd,
    /// `qemu-system-x86_64`: adds run state, devices, machine queries.
    System,
}

impl Flavor {
    /// Folder name: `qsd` or `system`.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Qsd => "qsd",
            Flavor::System => "system",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qsd" | "qemu-storage-daemon" | "storage-daemon" => Ok(Flavor::Qsd),
            "system" | "qemu-system" | "qemu-system-x86_64" => Ok(Flavor::System),
            _ => Err(ProfileError::UnknownFlavor(s.to_owned())),
        }
    }
}

/// One impersonated QEMU build.
///
/// The greeting and `query-version` are parsed when the profile is loaded;
/// the schema (100–240 KB of JSON) is parsed on first use, or ahead of time
/// by [`Profile::warm`] on another thread, so that a launched mock greets its
/// first client without waiting for it.
#[derive(Debug)]
pub struct Profile {
    version: Version,
    flavor: Flavor,
    greeting: QObject,
    query_version: QObject,
    rec: Recorded,
    schemas: OnceLock<Schemas>,
}

#[derive(Debug)]
struct Schemas {
    query_commands: QObject,
    /// The names `query-commands` lists: the monitor's command table
    /// (5.2's storage daemon has `object-add` in its schema, not its table).
    command_names: std::collections::BTreeSet<String>,
    schema_raw: QObject,
    schema: Schema,
    replies: Replies,
}

#[derive(Debug)]
struct Recorded {
    greeting: &'static str,
    version: &'static str,
    commands: &'static str,
    schema: &'static str,
    int_kinds: &'static str,
    /// Golden transcripts whose static-query replies are served as data
    /// ([`crate::replies`]).
    replies: &'static [&'static str],
    /// Golden transcripts of a machine with a vCPU (`-M pc`): its CPU's
    /// answers ([`crate::replies::MACHINE_QUERIES`]).
    machine_replies: &'static [&'static str],
}

macro_rules! recorded {
    ($dir:literal) => {
        Some(Recorded {
            greeting: include_str!(concat!("../../fixtures/", $dir, "/profile/greeting.json")),
            version: include_str!(concat!(
                "../../fixtures/",
                $dir,
                "/profile/query-version.json"
            )),
            commands: include_str!(concat!(
                "../../fixtures/",
                $dir,
                "/profile/query-commands.json"
            )),
            schema: include_str!(concat!(
                "../../fixtures/",
                $dir,
                "/profile/query-qmp-schema.json"
            )),
            int_kinds: include_str!(concat!("../../fixtures/", $dir, "/profile/int-kinds.json")),
            replies: &[],
            machine_replies: &[],
        })
    };
    ($dir:literal, system) => {
        recorded!($dir).map(|r| Recorded {
            replies: &[include_str!(concat!(
                "../../fixtures/",
                $dir,
                "/transcripts/libvirt/probe.out"
            ))],
            machine_replies: &[include_str!(concat!(
                "../../fixtures/",
                $dir,
                "/transcripts/libvirt/domain-start.out"
            ))],
            ..r
        })
    };
}

fn recorded(version: Version, flavor: Flavor) -> Option<Recorded> {
    match (version, flavor) {
        (Version::V10_0, Flavor::Qsd) => recorded!("qemu-10.0/qsd"),
        (Version::V10_0, Flavor::System) => recorded!("qemu-10.0/system", system),
        (Version::V7_2, Flavor::Qsd) => recorded!("qemu-7.2/qsd"),
        (Version::V7_2, Flavor::System) => recorded!("qemu-7.2/system", system),
        (Version::V5_2, Flavor::Qsd) => recorded!("qemu-5.2/qsd"),
        (Version::V5_2, Flavor::System) => None,
    }
}

fn parse(
    version: Version,
    flavor: Flavor,
    what: &str,
    text: &str,
) -> Result<serde_json::Value, ProfileError> {
    serde_json::from_str(text).map_err(|e| ProfileError::Malformed {
        version,
        flavor,
        what: format!("{what}: {e}"),
    })
}

/// A recorded reply line's `return` value.
fn return_value(
    version: Version,
    flavor: Flavor,
    what: &str,
    text: &str,
) -> Result<serde_json::Value, ProfileError> {
    let mut v = parse(version, flavor, what, text)?;
    Ok(v.get_mut("return")
        .map(serde_json::Value::take)
        .unwrap_or(v))
}

/// The kind names `int-kinds.json` uses.
fn int_kind(name: &str) -> Option<IntKind> {
    Some(match name {
        "int8" => IntKind::Int8,
        "int16" => IntKind::Int16,
        "int32" => IntKind::Int32,
        "int64" => IntKind::Int64,
        "uint8" => IntKind::Uint8,
        "uint16" => IntKind::Uint16,
        "uint32" => IntKind::Uint32,
        "uint64" => IntKind::Uint64,
        "size" => IntKind::Size,
        _ => return None,
    })
}

/// Declares the probed kinds (`"types": {type: {member: kind}}`) in the
/// schema recorded with them; a type or member the schema lacks is an error.
fn apply_int_kinds(schema: &mut Schema, data: &serde_json::Value) -> Result<(), String> {
    let types = data
        .get("types")
        .and_then(serde_json::Value::as_object)
        .ok_or("no \"types\" object")?;
    for (type_name, members) in types {
        let members = members
            .as_object()
            .ok_or_else(|| format!("type '{type_name}' is not an object"))?;
        for (member, kind) in members {
            let kind = kind
                .as_str()
                .and_then(int_kind)
                .ok_or_else(|| format!("bad kind for '{type_name}.{member}': {kind}"))?;
            if !schema.set_member_int_kind(type_name, member, kind) {
                return Err(format!("the schema has no member '{type_name}.{member}'"));
            }
        }
    }
    Ok(())
}

impl Profile {
    /// Loads (once per process) the recorded profile of a version and flavor.
    pub fn get(version: Version, flavor: Flavor) -> Result<Arc<Profile>, ProfileError> {
        static CACHE: [OnceLock<Result<Arc<Profile>, String>>; 6] = [const { OnceLock::new() }; 6];
        let idx = (version as usize) * 2 + flavor as usize;
        let r = CACHE[idx].get_or_init(|| {
            Profile::load(version, flavor)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match r {
            Ok(p) => Ok(p.clone()),
            Err(_) => Err(Profile::load(version, flavor)
                .err()
                .unwrap_or(ProfileError::NotRecorded(version, flavor))),
        }
    }

    fn load(version: Version, flavor: Flavor) -> Result<Profile, ProfileError> {
        let rec = recorded(version, flavor).ok_or(ProfileError::NotRecorded(version, flavor))?;
        // Each file is the line QEMU sent (greeting) or its reply line.
        let greeting = parse(version, flavor, "greeting.json", rec.greeting)?;
        let qv = return_value(version, flavor, "query-version.json", rec.version)?;
        Ok(Profile {
            version,
            flavor,
            greeting: QObject::from_wire(&greeting),
            query_version: QObject::from_wire(&qv),
            rec,
            schemas: OnceLock::new(),
        })
    }

    /// Parses the schema data now, reporting malformed data (a launched mock
    /// calls this on a background thread while it binds and greets).
    pub fn warm(&self) -> Result<(), ProfileError> {
        if self.schemas.get().is_none() {
            let s = self.load_schemas()?;
            let _ = self.schemas.set(s);
        }
        Ok(())
    }

    fn load_schemas(&self) -> Result<Schemas, ProfileError> {
        let (version, flavor) = (self.version, self.flavor);
        let qc = return_value(version, flavor, "query-commands.json", self.rec.commands)?;
        let schema_v = return_value(version, flavor, "query-qmp-schema.json", self.rec.schema)?;
        let mut schema =
            Schema::from_introspection(&schema_v).map_err(|e| ProfileError::Malformed {
                version,
                flavor,
                what: format!("query-qmp-schema.json: {e}"),
            })?;
        let kinds = parse(version, flavor, "int-kinds.json", self.rec.int_kinds)?;
        apply_int_kinds(&mut schema, &kinds).map_err(|what| ProfileError::Malformed {
            version,
            flavor,
            what: format!("int-kinds.json: {what}"),
        })?;
        let command_names = qc
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(serde_json::Value::as_str))
            .map(str::to_owned)
            .collect();
        Ok(Schemas {
            command_names,
            query_commands: QObject::from_wire(&qc),
            schema_raw: QObject::from_wire(&schema_v),
            schema,
            replies: Replies::from_transcripts(self.rec.replies)
                .and_then(|r| r.with_machine(self.rec.machine_replies))
                .map_err(|e| ProfileError::Malformed {
                    version,
                    flavor,
                    what: format!("recorded replies: {e}"),
                })?,
        })
    }

    fn schemas(&self) -> &Schemas {
        self.schemas.get_or_init(|| {
            // The data is compiled in and `every_recorded_profile_loads`
            // checks it, so this cannot fail in a build that passed its tests;
            // still, serve an empty schema rather than panic.
            self.load_schemas().unwrap_or_else(|e| {
                eprintln!("mock-qemu: {e}");
                Schemas {
                    command_names: Default::default(),
                    query_commands: QObject::List(vec![]),
                    schema_raw: QObject::List(vec![]),
                    schema: Schema::empty(),
                    replies: Replies::default(),
                }
            })
        })
    }

    /// The impersonated version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The impersonated program.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// `qemu-10.0/qsd` style label, used in log text and mock-only error text.
    pub fn label(&self) -> String {
        format!("{}/{}", self.version, self.flavor)
    }

    /// The greeting object exactly as recorded.
    pub fn greeting(&self) -> &QObject {
        &self.greeting
    }

    /// `query-version`'s return value.
    pub fn query_version(&self) -> &QObject {
        &self.query_version
    }

    /// `query-commands`' return value, in the order the real QEMU lists them.
    pub fn query_commands(&self) -> &QObject {
        &self.schemas().query_commands
    }

    /// Whether the monitor has this command (listed by `query-commands`).
    pub fn has_command(&self, name: &str) -> bool {
        self.schemas().command_names.contains(name)
    }

    /// `query-qmp-schema`'s return value, verbatim.
    pub fn schema_raw(&self) -> &QObject {
        &self.schemas().schema_raw
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schemas().schema
    }

    /// Replies recorded from this build for queries the mock does not model.
    pub fn replies(&self) -> &Replies {
        &self.schemas().replies
    }

    /// Whether the greeting offers the `oob` capability.
    pub fn offers_oob(&self) -> bool {
        self.greeting
            .as_dict()
            .and_then(|d| d.get("QMP"))
            .and_then(QObject::as_dict)
            .and_then(|d| d.get("capabilities"))
            .is_some_and(
                |c| matches!(c, QObject::List(l) if l.iter().any(|x| x.as_str() == Some("oob"))),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap_add_error(version: Version, flavor: Flavor, granularity: &str) -> Option<String> {
        let p = Profile::get(version, flavor).unwrap();
        let v: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"node": "n", "name": "b", "granularity": {granularity}}}"#
        ))
        .unwrap();
        let args = QObject::from_wire(&v);
        p.schema()
            .check_arguments("block-dirty-bitmap-add", args.as_dict())
            .err()
            .map(|e| e.desc)
    }

    #[test]
    fn probed_int_kinds_are_applied() {
        for (v, f) in [
            (Version::V10_0, Flavor::Qsd),
            (Version::V10_0, Flavor::System),
            (Version::V7_2, Flavor::Qsd),
            (Version::V7_2, Flavor::System),
            (Version::V5_2, Flavor::Qsd),
        ] {
            for g in ["-1", "4294967296"] {
                assert_eq!(
                    bitmap_add_error(v, f, g).as_deref(),
                    Some("Parameter 'granularity' expects uint32_t"),
                    "{v} {f} {g}"
                );
            }
            assert_eq!(
                bitmap_add_error(v, f, "\"x\"").as_deref(),
                Some("Parameter 'granularity' expects uint64"),
                "{v} {f}"
            );
            assert_eq!(bitmap_add_error(v, f, "65536"), None, "{v} {f}");
        }
    }

    #[test]
    fn every_recorded_profile_loads() {
        for v in Version::ALL {
            for f in [Flavor::Qsd, Flavor::System] {
                let Ok(p) = Profile::get(v, f) else {
                    assert_eq!(
                        (v, f),
                        (Version::V5_2, Flavor::System),
                        "only 5.2 system is unrecorded"
                    );
                    continue;
                };
                p.warm().unwrap();
                assert!(p.schema().command("query-version").is_some(), "{v} {f}");
                assert!(
                    matches!(p.query_commands(), QObject::List(l) if l.len() > 50),
                    "{v} {f}"
                );
            }
        }
    }
}
