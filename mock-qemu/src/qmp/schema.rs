//! Schema-driven argument validation, as QEMU's generated marshallers do it.
//!
//! The schema is the recorded `query-qmp-schema` return value (a list of
//! `SchemaInfo` entries with numbered type names). [`Schema::check_arguments`]
//! walks a command's `arguments` exactly as `qmp_marshal_<cmd>()` drives the
//! `qobject-input-visitor` (`qapi/qobject-input-visitor.c`,
//! `qapi/qapi-visit-core.c`), and fails with the first error QEMU would hit,
//! in QEMU's words:
//!
//! | defect | text |
//! |---|---|
//! | mandatory member absent | `Parameter 'file.filename' is missing` |
//! | member not in the schema | `Parameter 'options[0].zz' is unexpected` |
//! | wrong JSON type | `Invalid parameter type for 'cache', expected: object` (`string`, `integer`, `number`, `boolean`, `object`, `array`, `null`) |
//! | bad enum value (6.x+) | `Parameter 'driver' does not accept value 'nope'` |
//! | bad enum value (5.2) | `Invalid parameter 'nope'` |
//! | no alternate branch fits | `Invalid parameter type for 'file', expected: BlockdevRef` |
//! | unsigned int not an integer | `Parameter 'x' expects uint64` |
//! | sized int out of range | `Parameter 'granularity' expects uint32_t` |
//!
//! Visiting order: members in schema order (for a flat union the base
//! members, then the selected variant's members), depth first; a nested
//! object's unexpected members are reported when that object is finished.
//! Full names follow `full_name()`: `a.b`, `list[2].c`. Three messages use
//! the bare member name instead (or `null` for a list element): enum values,
//! alternates, and sized-integer ranges — QEMU passes `name`, not the path.
//!
//! **Which unexpected member is reported.** `visit_check_struct()` reports
//! the first key left in a glib `GHashTable` that the visitor filled from
//! the `QDict` (in `QDict` order) and removed the consumed members from.
//! That order is neither the text order nor the `QDict` order; it is
//! reproduced here by simulating glib's table (`g_str_hash`, open addressing
//! with quadratic probing, in-place resize), as of glib 2.74 (the glib the
//! reference binaries run with; glib ≥ 2.59 behaves the same).
//!
//! **What the introspection data cannot tell** (see [`Schema::set_int_kind`]
//! and [`Schema::set_type_name`] for the hooks to supply it):
//! - every integer type (`int8` … `uint64`, `size`) is introspected as
//!   `int`. All `int` members are treated as `int64` unless told otherwise,
//!   so a negative or huge value in an unsigned member, or an out-of-range
//!   value in a sized one, is accepted, and a non-integer in an unsigned
//!   member gets the `int64` text (`Invalid parameter type for 'x',
//!   expected: integer`) instead of `Parameter 'x' expects uint64`.
//! - alternate types are numbered, but QEMU names them in its error text.
//!   The alternates QEMU 5.2–10.0 have are recognised by their shape
//!   (`BlockdevRef`, `BlockdevRefOrNull`, `StrOrNull`, `Qcow2OverlapChecks`,
//!   `BlockDirtyBitmapOrStr`/`BlockDirtyBitmapMergeSource`, `StatsValue`);
//!   an unrecognised one is named by its number.
//! - features (`deprecated`, `unstable`) are kept but not enforced: QEMU's
//!   default compat policy accepts everything.
//!
//! **Dialects.** The enum text changed after 5.2; the dialect is detected
//! from the data (5.2's enums have no `members` array) and can be forced
//! with [`Schema::set_dialect`].

use std::collections::HashMap;

use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::{QDict, QNum, QObject};

/// The recorded introspection data is not what `query-qmp-schema` returns.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The value is not a JSON array.
    #[error("query-qmp-schema data is not an array")]
    NotAnArray,
    /// An entry is not a JSON object.
    #[error("schema entry #{0} is not an object")]
    EntryNotObject(usize),
    /// An entry lacks a field it must have, or has it with the wrong JSON type.
    #[error("schema entry '{entry}' lacks a valid '{field}'")]
    BadField {
        /// The entry's name (or `#index` if it has none).
        entry: String,
        /// The field.
        field: &'static str,
    },
    /// An entry has a meta-type QEMU never sends.
    #[error("schema entry '{entry}' has unknown meta-type '{meta_type}'")]
    UnknownMetaType {
        /// The entry's name.
        entry: String,
        /// Its meta-type.
        meta_type: String,
    },
    /// A builtin type QEMU never sends.
    #[error("unknown builtin type '{0}'")]
    UnknownBuiltin(String),
    /// Two entries of the same kind share a name.
    #[error("schema entry '{0}' is defined twice")]
    Duplicate(String),
    /// An entry refers to a type that is not defined.
    #[error("schema entry '{entry}' refers to undefined type '{target}'")]
    UndefinedType {
        /// The referring entry.
        entry: String,
        /// The missing type.
        target: String,
    },
    /// A union's tag is not one of its members.
    #[error("union '{0}' has a tag that is not one of its members")]
    BadTag(String),
}

/// Which QEMU generation's error texts to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// QEMU ≤ 5.2: a bad enum value is `Invalid parameter 'VALUE'`, the
    /// bitmap-merge alternate is `BlockDirtyBitmapMergeSource`.
    Qemu5,
    /// QEMU ≥ 6.2 (verified: 7.2, 10.0): `Parameter 'NAME' does not accept
    /// value 'VALUE'`, `BlockDirtyBitmapOrStr`.
    Modern,
}

/// The C integer type behind an introspected `int` (which QEMU does not
/// reveal). Decides the error text for non-integers and the range check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IntKind {
    /// `int` / `int64`: the introspection default.
    #[default]
    Int64,
    /// `int8`.
    Int8,
    /// `int16`.
    Int16,
    /// `int32`.
    Int32,
    /// `uint8`.
    Uint8,
    /// `uint16`.
    Uint16,
    /// `uint32`.
    Uint32,
    /// `uint64`.
    Uint64,
    /// `size` (visited as `uint64` by the QMP input visitor).
    Size,
}

impl IntKind {
    fn is_unsigned(self) -> bool {
        matches!(
            self,
            IntKind::Uint8 | IntKind::Uint16 | IntKind::Uint32 | IntKind::Uint64 | IntKind::Size
        )
    }

    /// `(min, max, C type name)` for the sized kinds checked after the visit.
    fn signed_range(self) -> Option<(i64, i64, &'static str)> {
        match self {
            IntKind::Int8 => Some((i8::MIN.into(), i8::MAX.into(), "int8_t")),
            IntKind::Int16 => Some((i16::MIN.into(), i16::MAX.into(), "int16_t")),
            IntKind::Int32 => Some((i32::MIN.into(), i32::MAX.into(), "int32_t")),
            _ => None,
        }
    }

    fn unsigned_range(self) -> Option<(u64, &'static str)> {
        match self {
            IntKind::Uint8 => Some((u8::MAX.into(), "uint8_t")),
            IntKind::Uint16 => Some((u16::MAX.into(), "uint16_t")),
            IntKind::Uint32 => Some((u32::MAX.into(), "uint32_t")),
            _ => None,
        }
    }
}

/// A builtin (`meta-type: builtin`) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `str` (json-type `string`).
    Str,
    /// `int` (every integer type).
    Int,
    /// `number`.
    Number,
    /// `bool`.
    Bool,
    /// `null`.
    Null,
    /// `any` (json-type `value`).
    Any,
}

/// A member of an object type.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// The member name.
    pub name: String,
    /// The (numbered) type name.
    pub type_name: String,
    /// Whether the member may be absent (introspected with a `default`).
    pub optional: bool,
    /// The member's features (`deprecated`, `unstable`, …).
    pub features: Vec<String>,
    /// The integer kind used when this member (or, for a list, its
    /// elements) is an `int`. Only known if set with [`Schema::set_int_kind`].
    pub int_kind: IntKind,
}

/// A type of the schema.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaType {
    /// A builtin.
    Builtin(Builtin),
    /// An enum, with its values in schema order.
    Enum {
        /// The values.
        values: Vec<String>,
    },
    /// A list.
    Array {
        /// Element type name.
        element: String,
    },
    /// A struct, or a flat union if `tag` is set.
    Object {
        /// Members in schema order (a union's base members).
        members: Vec<MemberInfo>,
        /// The union's discriminator member.
        tag: Option<String>,
        /// `(tag value, branch type)` pairs, in schema order.
        variants: Vec<(String, String)>,
    },
    /// An alternate: one of several types, chosen by JSON type.
    Alternate {
        /// Branch type names, in schema order.
        members: Vec<String>,
    },
}

/// A command of the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandInfo {
    /// The command name.
    pub name: String,
    /// Whether `exec-oob` may run it.
    pub allow_oob: bool,
    /// The (numbered) argument type: an object type.
    pub arg_type: String,
    /// The (numbered) return type.
    pub ret_type: String,
    /// The command's features (`deprecated`, `unstable`, …).
    pub features: Vec<String>,
}

/// An event of the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInfo {
    /// The event name.
    pub name: String,
    /// The (numbered) data type.
    pub arg_type: String,
    /// The event's features.
    pub features: Vec<String>,
}

/// A loaded `query-qmp-schema`.
#[derive(Debug, Clone)]
pub struct Schema {
    commands: Vec<CommandInfo>,
    command_idx: HashMap<String, usize>,
    events: Vec<EventInfo>,
    event_idx: HashMap<String, usize>,
    types: HashMap<String, SchemaType>,
    type_names: HashMap<String, String>,
    dialect: Dialect,
}

fn str_field<'v>(
    e: &'v serde_json::Map<String, serde_json::Value>,
    entry: &str,
    field: &'static str,
) -> Result<&'v str, SchemaError> {
    e.get(field)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| SchemaError::BadField {
            entry: entry.to_owned(),
            field,
        })
}

fn array_field<'v>(
    e: &'v serde_json::Map<String, serde_json::Value>,
    entry: &str,
    field: &'static str,
) -> Result<&'v [serde_json::Value], SchemaError> {
    e.get(field)
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| SchemaError::BadField {
            entry: entry.to_owned(),
            field,
        })
}

fn features(
    e: &serde_json::Map<String, serde_json::Value>,
    entry: &str,
) -> Result<Vec<String>, SchemaError> {
    match e.get("features") {
        None => Ok(Vec::new()),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|f| f.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| SchemaError::BadField {
                entry: entry.to_owned(),
                field: "features",
            }),
    }
}

fn element_of_array_name(name: &str) -> Option<&str> {
    name.strip_prefix('[').and_then(|s| s.strip_suffix(']'))
}

impl Schema {
    /// A schema with no commands, events or types.
    pub fn empty() -> Schema {
        Schema {
            commands: Vec::new(),
            command_idx: HashMap::new(),
            events: Vec::new(),
            event_idx: HashMap::new(),
            types: HashMap::new(),
            type_names: HashMap::new(),
            dialect: Dialect::Modern,
        }
    }

    /// Loads `query-qmp-schema`'s return value (the array). The dialect is
    /// detected: enums without a `members` array mean QEMU ≤ 5.2.
    pub fn from_introspection(v: &serde_json::Value) -> Result<Schema, SchemaError> {
        let entries = v.as_array().ok_or(SchemaError::NotAnArray)?;
        let mut schema = Schema::empty();
        let mut enums = 0usize;
        let mut enums_with_members = 0usize;
        for (i, e) in entries.iter().enumerate() {
            let e = e.as_object().ok_or(SchemaError::EntryNotObject(i))?;
            let name = str_field(e, &format!("#{i}"), "name")?.to_owned();
            let meta = str_field(e, &name, "meta-type")?;
            let ty = match meta {
                "command" => {
                    let info = CommandInfo {
                        name: name.clone(),
                        allow_oob: e
                            .get("allow-oob")
                            .and_then(serde_json::Value::as_bool)
                            .unwrap_or(false),
                        arg_type: str_field(e, &name, "arg-type")?.to_owned(),
                        ret_type: str_field(e, &name, "ret-type")?.to_owned(),
                        features: features(e, &name)?,
                    };
                    if schema
                        .command_idx
                        .insert(name.clone(), schema.commands.len())
                        .is_some()
                    {
                        return Err(SchemaError::Duplicate(name));
                    }
                    schema.commands.push(info);
                    continue;
                }
                "event" => {
                    let info = EventInfo {
                        name: name.clone(),
                        arg_type: str_field(e, &name, "arg-type")?.to_owned(),
                        features: features(e, &name)?,
                    };
                    if schema
                        .event_idx
                        .insert(name.clone(), schema.events.len())
                        .is_some()
                    {
                        return Err(SchemaError::Duplicate(name));
                    }
                    schema.events.push(info);
                    continue;
                }
                "builtin" => SchemaType::Builtin(match str_field(e, &name, "json-type")? {
                    "string" => Builtin::Str,
                    "int" => Builtin::Int,
                    "number" => Builtin::Number,
                    "boolean" => Builtin::Bool,
                    "null" => Builtin::Null,
                    "value" => Builtin::Any,
                    other => return Err(SchemaError::UnknownBuiltin(other.to_owned())),
                }),
                "enum" => {
                    enums += 1;
                    if e.contains_key("members") {
                        enums_with_members += 1;
                    }
                    let values = array_field(e, &name, "values")?
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| SchemaError::BadField {
                            entry: name.clone(),
                            field: "values",
                        })?;
                    SchemaType::Enum { values }
                }
                "array" => SchemaType::Array {
                    element: str_field(e, &name, "element-type")?.to_owned(),
                },
                "object" => {
                    let mut members = Vec::new();
                    for m in array_field(e, &name, "members")? {
                        let m = m.as_object().ok_or_else(|| SchemaError::BadField {
                            entry: name.clone(),
                            field: "members",
                        })?;
                        members.push(MemberInfo {
                            name: str_field(m, &name, "name")?.to_owned(),
                            type_name: str_field(m, &name, "type")?.to_owned(),
                            optional: m.contains_key("default"),
                            features: features(m, &name)?,
                            int_kind: IntKind::Int64,
                        });
                    }
                    let tag = match e.get("tag") {
                        None => None,
                        Some(t) => Some(
                            t.as_str()
                                .ok_or_else(|| SchemaError::BadField {
                                    entry: name.clone(),
                                    field: "tag",
                                })?
                                .to_owned(),
                        ),
                    };
                    let mut variants = Vec::new();
                    if let Some(vs) = e.get("variants") {
                        let vs = vs.as_array().ok_or_else(|| SchemaError::BadField {
                            entry: name.clone(),
                            field: "variants",
                        })?;
                        for v in vs {
                            let v = v.as_object().ok_or_else(|| SchemaError::BadField {
                                entry: name.clone(),
                                field: "variants",
                            })?;
                            variants.push((
                                str_field(v, &name, "case")?.to_owned(),
                                str_field(v, &name, "type")?.to_owned(),
                            ));
                        }
                    }
                    if let Some(t) = &tag {
                        if !members.iter().any(|m| &m.name == t) {
                            return Err(SchemaError::BadTag(name));
                        }
                    }
                    SchemaType::Object {
                        members,
                        tag,
                        variants,
                    }
                }
                "alternate" => {
                    let members = array_field(e, &name, "members")?
                        .iter()
                        .map(|m| {
                            m.get("type")
                                .and_then(serde_json::Value::as_str)
                                .map(str::to_owned)
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| SchemaError::BadField {
                            entry: name.clone(),
                            field: "members",
                        })?;
                    SchemaType::Alternate { members }
                }
                other => {
                    return Err(SchemaError::UnknownMetaType {
                        entry: name,
                        meta_type: other.to_owned(),
                    })
                }
            };
            if schema.types.insert(name.clone(), ty).is_some() {
                return Err(SchemaError::Duplicate(name));
            }
        }
        if enums > 0 && enums_with_members == 0 {
            schema.dialect = Dialect::Qemu5;
        }
        schema.check_references()?;
        Ok(schema)
    }

    fn check_references(&self) -> Result<(), SchemaError> {
        let need = |entry: &str, target: &str| -> Result<(), SchemaError> {
            if self.resolve(target).is_some() {
                Ok(())
            } else {
                Err(SchemaError::UndefinedType {
                    entry: entry.to_owned(),
                    target: target.to_owned(),
                })
            }
        };
        for c in &self.commands {
            need(&c.name, &c.arg_type)?;
            need(&c.name, &c.ret_type)?;
        }
        for e in &self.events {
            need(&e.name, &e.arg_type)?;
        }
        for (name, t) in &self.types {
            match t {
                SchemaType::Builtin(_) | SchemaType::Enum { .. } => {}
                SchemaType::Array { element } => need(name, element)?,
                SchemaType::Object {
                    members, variants, ..
                } => {
                    for m in members {
                        need(name, &m.type_name)?;
                    }
                    for (_, v) in variants {
                        need(name, v)?;
                    }
                }
                SchemaType::Alternate { members } => {
                    for m in members {
                        need(name, m)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The dialect of the error texts.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Forces the dialect (normally detected from the data).
    pub fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
    }

    /// A command by name.
    pub fn command(&self, name: &str) -> Option<&CommandInfo> {
        self.command_idx.get(name).map(|&i| &self.commands[i])
    }

    /// Every command, in schema order.
    pub fn commands(&self) -> impl Iterator<Item = &CommandInfo> {
        self.commands.iter()
    }

    /// Whether the schema has this event.
    pub fn has_event(&self, name: &str) -> bool {
        self.event_idx.contains_key(name)
    }

    /// An event by name.
    pub fn event(&self, name: &str) -> Option<&EventInfo> {
        self.event_idx.get(name).map(|&i| &self.events[i])
    }

    /// Every event, in schema order.
    pub fn events(&self) -> impl Iterator<Item = &EventInfo> {
        self.events.iter()
    }

    /// A type by its (numbered) name, as listed in the data.
    pub fn type_info(&self, name: &str) -> Option<&SchemaType> {
        self.types.get(name)
    }

    fn resolve<'s>(&'s self, name: &'s str) -> Option<Resolved<'s>> {
        match self.types.get(name) {
            Some(t) => Some(Resolved::Type(t)),
            None => element_of_array_name(name)
                .filter(|e| self.resolve(e).is_some())
                .map(Resolved::ArrayOf),
        }
    }

    /// An object type's members in schema order (a union's base members);
    /// `None` if the type is not an object.
    pub fn object_members(&self, type_name: &str) -> Option<&[MemberInfo]> {
        match self.types.get(type_name)? {
            SchemaType::Object { members, .. } => Some(members),
            _ => None,
        }
    }

    /// The members a value of an object type has when its union tags (if
    /// any) take the values in `tags` (looked up by tag member name, nested
    /// unions included): base members, then the selected variant's.
    pub fn object_members_for(
        &self,
        type_name: &str,
        tags: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Vec<&MemberInfo>> {
        let SchemaType::Object {
            members,
            tag,
            variants,
        } = self.types.get(type_name)?
        else {
            return None;
        };
        let mut out: Vec<&MemberInfo> = members.iter().collect();
        if let Some(tag) = tag {
            if let Some(value) = tags(tag) {
                if let Some((_, branch)) = variants.iter().find(|(c, _)| *c == value) {
                    out.extend(self.object_members_for(branch, tags)?);
                }
            }
        }
        Some(out)
    }

    /// A command's argument members (`object_members` of its `arg-type`).
    pub fn command_members(&self, command: &str) -> Option<&[MemberInfo]> {
        self.object_members(&self.command(command)?.arg_type)
    }

    /// An enum type's values; `None` if the type is not an enum.
    pub fn enum_values(&self, type_name: &str) -> Option<&[String]> {
        match self.types.get(type_name)? {
            SchemaType::Enum { values } => Some(values),
            _ => None,
        }
    }

    /// The values of the enum a command argument (a top-level member, or a
    /// member of any union branch) has, e.g. `("blockdev-add", "driver")`.
    pub fn member_enum_values(&self, command: &str, member: &str) -> Option<&[String]> {
        let arg = &self.command(command)?.arg_type;
        let found = self.find_members(arg, member);
        found.into_iter().find_map(|(t, i)| {
            let SchemaType::Object { members, .. } = self.types.get(t)? else {
                return None;
            };
            self.enum_values(&members[i].type_name)
        })
    }

    /// Names an alternate type (QEMU's C name appears in its error text but
    /// not in the introspection data). Overrides the shape-based guess.
    pub fn set_type_name(&mut self, type_name: &str, c_name: &str) {
        self.type_names
            .insert(type_name.to_owned(), c_name.to_owned());
    }

    /// Declares the C integer type of an `int` argument, which introspection
    /// does not reveal. `path` is a dotted member path from the command's
    /// arguments (`granularity`, `options.size`, `file.reconnect-delay`);
    /// lists and alternates are stepped through, and at each step the
    /// members of every union branch are searched, so one path may name
    /// several members (all are set). Returns how many members were set.
    pub fn set_int_kind(&mut self, command: &str, path: &str, kind: IntKind) -> usize {
        let Some(arg) = self.command(command).map(|c| c.arg_type.clone()) else {
            return 0;
        };
        let mut current = vec![arg];
        let segments: Vec<&str> = path.split('.').collect();
        let mut hits: Vec<(String, usize)> = Vec::new();
        for (depth, seg) in segments.iter().enumerate() {
            let mut found = Vec::new();
            for t in &current {
                for (ty, i) in self.find_members(t, seg) {
                    found.push((ty.to_owned(), i));
                }
            }
            found.sort();
            found.dedup();
            if depth + 1 == segments.len() {
                hits = found;
            } else {
                let mut next = Vec::new();
                for (ty, i) in &found {
                    if let Some(SchemaType::Object { members, .. }) = self.types.get(ty) {
                        self.objects_within(&members[*i].type_name, &mut next, 0);
                    }
                }
                next.sort();
                next.dedup();
                current = next;
            }
        }
        for (ty, i) in &hits {
            if let Some(SchemaType::Object { members, .. }) = self.types.get_mut(ty) {
                members[*i].int_kind = kind;
            }
        }
        hits.len()
    }

    /// Declares the C integer type of one member of an object type, by the
    /// type's (numbered) name. Returns whether the member exists.
    pub fn set_member_int_kind(&mut self, type_name: &str, member: &str, kind: IntKind) -> bool {
        match self.types.get_mut(type_name) {
            Some(SchemaType::Object { members, .. }) => {
                match members.iter_mut().find(|m| m.name == member) {
                    Some(m) => {
                        m.int_kind = kind;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// `(object type, member index)` of every member called `name` in an
    /// object type, its union branches included.
    fn find_members<'s>(&'s self, type_name: &'s str, name: &str) -> Vec<(&'s str, usize)> {
        let mut out = Vec::new();
        let mut todo = vec![type_name];
        let mut seen: Vec<&str> = Vec::new();
        while let Some(t) = todo.pop() {
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            if let Some(SchemaType::Object {
                members, variants, ..
            }) = self.types.get(t)
            {
                if let Some(i) = members.iter().position(|m| m.name == name) {
                    out.push((t, i));
                }
                todo.extend(variants.iter().map(|(_, v)| v.as_str()));
            }
        }
        out
    }

    /// Object types a value of `type_name` can be, through lists and alternates.
    fn objects_within(&self, type_name: &str, out: &mut Vec<String>, depth: usize) {
        if depth > 8 {
            return;
        }
        match self.resolve(type_name) {
            Some(Resolved::Type(SchemaType::Object { .. })) => out.push(type_name.to_owned()),
            Some(Resolved::Type(SchemaType::Array { element })) => {
                self.objects_within(element, out, depth + 1)
            }
            Some(Resolved::ArrayOf(element)) => self.objects_within(element, out, depth + 1),
            Some(Resolved::Type(SchemaType::Alternate { members })) => {
                for m in members {
                    self.objects_within(m, out, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// The name QEMU's error text uses for an alternate type.
    pub fn alternate_name(&self, type_name: &str) -> String {
        if let Some(n) = self.type_names.get(type_name) {
            return n.clone();
        }
        let Some(SchemaType::Alternate { members }) = self.types.get(type_name) else {
            return type_name.to_owned();
        };
        let shapes: Vec<Shape<'_>> = members.iter().map(|m| self.shape(m)).collect();
        let name = match shapes.as_slice() {
            [Shape::Str, Shape::Null] => Some("StrOrNull"),
            [Shape::Object(o), Shape::Str] if o.tag == Some("driver") => Some("BlockdevRef"),
            [Shape::Object(o), Shape::Str, Shape::Null] if o.tag == Some("driver") => {
                Some("BlockdevRefOrNull")
            }
            [Shape::Object(o), Shape::Enum] if o.members.contains(&"template") => {
                Some("Qcow2OverlapChecks")
            }
            [Shape::Str, Shape::Object(o)] if o.members == ["node", "name"] => {
                Some(match self.dialect {
                    Dialect::Qemu5 => "BlockDirtyBitmapMergeSource",
                    Dialect::Modern => "BlockDirtyBitmapOrStr",
                })
            }
            [Shape::Int, Shape::Bool, Shape::Array] => Some("StatsValue"),
            _ => None,
        };
        name.map_or_else(|| type_name.to_owned(), str::to_owned)
    }

    fn shape<'s>(&'s self, type_name: &'s str) -> Shape<'s> {
        match self.resolve(type_name) {
            Some(Resolved::Type(SchemaType::Builtin(Builtin::Str))) => Shape::Str,
            Some(Resolved::Type(SchemaType::Builtin(Builtin::Null))) => Shape::Null,
            Some(Resolved::Type(SchemaType::Builtin(Builtin::Int))) => Shape::Int,
            Some(Resolved::Type(SchemaType::Builtin(Builtin::Bool))) => Shape::Bool,
            Some(Resolved::Type(SchemaType::Enum { .. })) => Shape::Enum,
            Some(Resolved::Type(SchemaType::Array { .. })) | Some(Resolved::ArrayOf(_)) => {
                Shape::Array
            }
            Some(Resolved::Type(SchemaType::Object { members, tag, .. })) => {
                Shape::Object(ObjShape {
                    tag: tag.as_deref(),
                    members: members.iter().map(|m| m.name.as_str()).collect(),
                })
            }
            _ => Shape::Other,
        }
    }

    /// Validates `args` (`None`: no `arguments` member, which QEMU treats as
    /// `{}`) for `cmd` as `qmp_marshal_<cmd>()` would. `Err` is QEMU's exact
    /// error: `GenericError` with its text, or `CommandNotFound` if the
    /// schema has no such command.
    pub fn check_arguments(&self, cmd: &str, args: Option<&QDict>) -> Result<(), QmpError> {
        let Some(info) = self.command(cmd) else {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                format!("The command {cmd} has not been found"),
            ));
        };
        if self.is_hand_written(cmd) {
            return Ok(());
        }
        let empty = QDict::new();
        let args = args.unwrap_or(&empty);
        self.check_value(&info.arg_type, args)
    }

    /// Whether QEMU's handler for `cmd` is hand-written (`'gen': false` in
    /// the QAPI schema) and so takes its arguments unchecked:
    /// [`Schema::check_arguments`] accepts anything for these and the
    /// command's implementation must check them as QEMU does. Not visible in
    /// the introspection data; known: `device_add` (all versions), and in
    /// 5.2 `query-qmp-schema` (ignores arguments) and `object-add` (which
    /// 5.2's storage daemon lists in its schema but does not register).
    pub fn is_hand_written(&self, cmd: &str) -> bool {
        match self.dialect {
            Dialect::Qemu5 => matches!(cmd, "device_add" | "query-qmp-schema" | "object-add"),
            Dialect::Modern => cmd == "device_add",
        }
    }

    /// Validates a dict against an object type as a marshaller does with
    /// its arguments (`visit_start_struct` on the root, the members,
    /// `visit_check_struct`), with no command lookup.
    pub fn check_value(&self, type_name: &str, value: &QDict) -> Result<(), QmpError> {
        let run = || {
            let mut v = InputVisitor {
                schema: self,
                stack: Vec::new(),
            };
            v.visit_root_struct(type_name, value)
                .map_err(QmpError::generic)
        };
        // The visit recurses per nesting level (a few KiB each in a debug
        // build); deeply nested input gets a thread with room for it.
        let depth = nesting_depth(value);
        if depth <= SHALLOW {
            return run();
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("qapi-visit".to_owned())
                .stack_size((1 << 20) + depth * (16 << 10))
                .spawn_scoped(scope, run)
                .map_or_else(
                    |_| run(),
                    |h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                )
        })
    }
}

/// Nesting up to which the visit runs on the caller's stack.
const SHALLOW: usize = 32;

/// How deeply dicts and lists nest in a dict (1 for a flat one).
fn nesting_depth(d: &QDict) -> usize {
    let mut max = 1;
    let mut todo: Vec<(&QObject, usize)> = d.iter_inserted().map(|(_, v)| (v, 2)).collect();
    while let Some((v, depth)) = todo.pop() {
        match v {
            QObject::Dict(d) => {
                max = max.max(depth);
                todo.extend(d.iter_inserted().map(|(_, v)| (v, depth + 1)));
            }
            QObject::List(l) => {
                max = max.max(depth);
                todo.extend(l.iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    max
}

enum Resolved<'a> {
    Type(&'a SchemaType),
    ArrayOf(&'a str),
}

struct ObjShape<'a> {
    tag: Option<&'a str>,
    members: Vec<&'a str>,
}

enum Shape<'a> {
    Str,
    Null,
    Int,
    Bool,
    Enum,
    Array,
    Object(ObjShape<'a>),
    Other,
}

// ---------------------------------------------------------------------------
// glib's GHashTable, as far as iteration order goes.

/// `g_str_hash()` (djb2 over *signed* chars). QEMU keeps a NUL in a key as
/// the modified-UTF-8 pair C0 80.
fn g_str_hash(key: &str) -> u32 {
    let mut h: u32 = 5381;
    let mut add = |c: u8| h = h.wrapping_mul(33).wrapping_add(c as i8 as i32 as u32);
    for &b in key.as_bytes() {
        if b == 0 {
            add(0xC0);
            add(0x80);
        } else {
            add(b);
        }
    }
    h
}

const GHASH_MIN_SHIFT: u32 = 3;
const GHASH_PRIME_MOD: [u32; 32] = [
    1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
    262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689,
    268435399, 536870909, 1073741789, 2147483647,
];
const UNUSED: u32 = 0;
const TOMBSTONE: u32 = 1;

/// The key set `qobject_input_push()` builds for a dict (`g_hash_table_new
/// (g_str_hash, g_str_equal)` with every key inserted in `QDict` order),
/// from which consumed members are removed.
struct GHashSet<'a> {
    hashes: Vec<u32>,
    keys: Vec<Option<&'a str>>,
    modulo: u32,
    mask: u32,
    nnodes: usize,
    noccupied: usize,
}

impl<'a> GHashSet<'a> {
    fn new() -> Self {
        let mut s = GHashSet {
            hashes: Vec::new(),
            keys: Vec::new(),
            modulo: 0,
            mask: 0,
            nnodes: 0,
            noccupied: 0,
        };
        s.set_shift(GHASH_MIN_SHIFT);
        s.hashes = vec![UNUSED; s.size()];
        s.keys = vec![None; s.size()];
        s
    }

    fn size(&self) -> usize {
        self.mask as usize + 1
    }

    fn set_shift(&mut self, shift: u32) {
        self.modulo = GHASH_PRIME_MOD[shift as usize];
        self.mask = (1u32 << shift) - 1;
    }

    fn hash_to_index(&self, hash: u32) -> u32 {
        hash.wrapping_mul(11) % self.modulo
    }

    fn key_hash(key: &str) -> u32 {
        g_str_hash(key).max(2)
    }

    /// `g_hash_table_lookup_node()`: the key's slot, or the slot to insert
    /// it in (the first tombstone on the probe path, else the empty slot).
    fn lookup(&self, key: &str, hash: u32) -> (usize, bool) {
        let mut idx = self.hash_to_index(hash);
        let mut step = 0;
        let mut tombstone = None;
        loop {
            let h = self.hashes[idx as usize];
            if h == UNUSED {
                return (tombstone.unwrap_or(idx as usize), false);
            }
            if h == hash && self.keys[idx as usize] == Some(key) {
                return (idx as usize, true);
            }
            if h == TOMBSTONE && tombstone.is_none() {
                tombstone = Some(idx as usize);
            }
            step += 1;
            idx = (idx + step) & self.mask;
        }
    }

    fn insert(&mut self, key: &'a str) {
        let hash = Self::key_hash(key);
        let (idx, exists) = self.lookup(key, hash);
        if exists {
            return;
        }
        let old = self.hashes[idx];
        self.hashes[idx] = hash;
        self.keys[idx] = Some(key);
        self.nnodes += 1;
        if old == UNUSED {
            self.noccupied += 1;
            self.maybe_resize();
        }
    }

    fn remove(&mut self, key: &str) {
        let hash = Self::key_hash(key);
        let (idx, exists) = self.lookup(key, hash);
        if !exists {
            return;
        }
        self.hashes[idx] = TOMBSTONE;
        self.keys[idx] = None;
        self.nnodes -= 1;
        self.maybe_resize();
    }

    fn maybe_resize(&mut self) {
        let size = self.size();
        let noccupied = self.noccupied;
        if (size > self.nnodes * 4 && size > 1 << GHASH_MIN_SHIFT)
            || size <= noccupied + noccupied / 16
        {
            self.resize();
        }
    }

    /// `g_hash_table_resize()`: glib ≥ 2.59's in-place rehash.
    fn resize(&mut self) {
        let old_size = self.size();
        // g_hash_table_set_shift_from_size (hash_table, hash_table->nnodes * 1.333)
        let mut n = (self.nnodes as f64 * 1.333) as u64;
        let mut shift = 0;
        while n != 0 {
            n >>= 1;
            shift += 1;
        }
        self.set_shift(shift.max(GHASH_MIN_SHIFT));
        let new_size = self.size();
        if new_size > old_size {
            self.hashes.resize(new_size, UNUSED);
            self.keys.resize(new_size, None);
        }
        let mut relocated = vec![false; new_size.max(old_size)];
        for i in 0..old_size {
            let mut node_hash = self.hashes[i];
            if node_hash <= TOMBSTONE {
                self.hashes[i] = UNUSED;
                continue;
            }
            if relocated[i] {
                continue;
            }
            self.hashes[i] = UNUSED;
            let mut key = self.keys[i].take();
            loop {
                let mut idx = self.hash_to_index(node_hash);
                let mut step = 0;
                while relocated[idx as usize] {
                    step += 1;
                    idx = (idx + step) & self.mask;
                }
                let idx = idx as usize;
                relocated[idx] = true;
                let replaced = self.hashes[idx];
                self.hashes[idx] = node_hash;
                if replaced <= TOMBSTONE {
                    self.keys[idx] = key;
                    break;
                }
                node_hash = replaced;
                key = std::mem::replace(&mut self.keys[idx], key);
            }
        }
        if new_size < old_size {
            self.hashes.truncate(new_size);
            self.keys.truncate(new_size);
        }
        self.noccupied = self.nnodes;
    }

    /// The first key `g_hash_table_iter_next()` yields.
    fn first(&self) -> Option<&'a str> {
        self.hashes
            .iter()
            .zip(&self.keys)
            .find(|(h, _)| **h > TOMBSTONE)
            .and_then(|(_, k)| *k)
    }
}

// ---------------------------------------------------------------------------
// The qobject-input visitor.

enum Frame<'a> {
    Dict {
        name: Option<&'a str>,
        dict: &'a QDict,
        unvisited: GHashSet<'a>,
    },
    List {
        name: Option<&'a str>,
        index: usize,
    },
}

struct InputVisitor<'a> {
    schema: &'a Schema,
    stack: Vec<Frame<'a>>,
}

type VResult = Result<(), String>;

/// QEMU's `name ? name : "null"`.
fn bare(name: Option<&str>) -> &str {
    name.unwrap_or("null")
}

impl<'a> InputVisitor<'a> {
    /// `full_name_nth(qiv, name, 0)`.
    fn full_name(&self, name: Option<&str>) -> String {
        let mut name = name;
        let mut out = String::new();
        for frame in self.stack.iter().rev() {
            match frame {
                Frame::Dict { name: n, .. } => {
                    out.insert_str(0, name.unwrap_or("<anonymous>"));
                    out.insert(0, '.');
                    name = *n;
                }
                Frame::List { name: n, index } => {
                    out.insert_str(0, &format!("[{index}]"));
                    name = *n;
                }
            }
        }
        if let Some(n) = name {
            out.insert_str(0, n);
        } else if out.starts_with('.') {
            out.remove(0);
        } else if out.is_empty() {
            return "<anonymous>".to_owned();
        }
        out
    }

    fn missing(&self, name: Option<&str>) -> String {
        format!("Parameter '{}' is missing", self.full_name(name))
    }

    fn wrong_type(&self, name: Option<&str>, expected: &str) -> String {
        format!(
            "Invalid parameter type for '{}', expected: {expected}",
            self.full_name(name)
        )
    }

    /// `qobject_input_get_object()`: the value for `name` in the current
    /// container, consuming it if asked.
    fn get_object(
        &mut self,
        name: Option<&'a str>,
        value: &'a QObject,
        consume: bool,
    ) -> &'a QObject {
        if consume {
            if let (Some(Frame::Dict { unvisited, .. }), Some(n)) = (self.stack.last_mut(), name) {
                unvisited.remove(n);
            }
        }
        value
    }

    fn push_dict(&mut self, name: Option<&'a str>, dict: &'a QDict) {
        let mut unvisited = GHashSet::new();
        for (k, _) in dict.iter() {
            unvisited.insert(k);
        }
        self.stack.push(Frame::Dict {
            name,
            dict,
            unvisited,
        });
    }

    /// The marshaller: `visit_start_struct(v, NULL, …)` on the root,
    /// members, `visit_check_struct()`.
    fn visit_root_struct(&mut self, type_name: &'a str, dict: &'a QDict) -> VResult {
        self.push_dict(None, dict);
        self.visit_members(type_name)?;
        self.check_struct()?;
        self.stack.pop();
        Ok(())
    }

    fn current_dict(&self) -> &'a QDict {
        match self.stack.last() {
            Some(Frame::Dict { dict, .. }) => dict,
            _ => unreachable!("members are visited inside a dict"),
        }
    }

    /// `visit_type_T_members()`: base members in order, then the variant.
    fn visit_members(&mut self, type_name: &'a str) -> VResult {
        let Some(SchemaType::Object {
            members,
            tag,
            variants,
        }) = self.schema.types.get(type_name)
        else {
            return Ok(());
        };
        let dict = self.current_dict();
        for m in members {
            let value = dict.get(&m.name);
            if value.is_none() && m.optional {
                continue;
            }
            self.visit_type(&m.type_name, Some(&m.name), value, m.int_kind)?;
        }
        if let Some(tag) = tag {
            // The tag is a mandatory enum member: visited above, so valid.
            if let Some(QObject::Str(value)) = dict.get(tag) {
                if let Some((_, branch)) = variants.iter().find(|(c, _)| c == value) {
                    self.visit_members(branch)?;
                }
            }
        }
        Ok(())
    }

    /// `visit_check_struct()`.
    fn check_struct(&self) -> VResult {
        if let Some(Frame::Dict { unvisited, .. }) = self.stack.last() {
            if let Some(key) = unvisited.first() {
                return Err(format!(
                    "Parameter '{}' is unexpected",
                    self.full_name(Some(key))
                ));
            }
        }
        Ok(())
    }

    /// `visit_type_T(v, name, …)` for a value that is `value` in the current
    /// container (`None`: absent).
    fn visit_type(
        &mut self,
        type_name: &'a str,
        name: Option<&'a str>,
        value: Option<&'a QObject>,
        kind: IntKind,
    ) -> VResult {
        let ty = match self.schema.resolve(type_name) {
            Some(Resolved::Type(t)) => t,
            Some(Resolved::ArrayOf(element)) => return self.visit_list(element, name, value, kind),
            None => return Ok(()),
        };
        let Some(value) = value else {
            return Err(self.missing(name));
        };
        match ty {
            SchemaType::Builtin(b) => {
                let obj = self.get_object(name, value, true);
                self.visit_builtin(*b, name, obj, kind)
            }
            SchemaType::Enum { values } => {
                let obj = self.get_object(name, value, true);
                let QObject::Str(s) = obj else {
                    return Err(self.wrong_type(name, "string"));
                };
                if values.iter().any(|v| v == s) {
                    Ok(())
                } else {
                    Err(match self.schema.dialect {
                        Dialect::Qemu5 => format!("Invalid parameter '{s}'"),
                        Dialect::Modern => {
                            format!("Parameter '{}' does not accept value '{s}'", bare(name))
                        }
                    })
                }
            }
            SchemaType::Array { element } => self.visit_list(element, name, Some(value), kind),
            SchemaType::Object { .. } => {
                let obj = self.get_object(name, value, true);
                let QObject::Dict(d) = obj else {
                    return Err(self.wrong_type(name, "object"));
                };
                self.push_dict(name, d);
                self.visit_members(type_name)?;
                self.check_struct()?;
                self.stack.pop();
                Ok(())
            }
            SchemaType::Alternate { members } => {
                let obj = self.get_object(name, value, false);
                let branch = members.iter().find(|m| self.qtype_matches(m, obj));
                match branch {
                    Some(b) => self.visit_type(b, name, Some(value), kind),
                    None => Err(format!(
                        "Invalid parameter type for '{}', expected: {}",
                        bare(name),
                        self.schema.alternate_name(type_name)
                    )),
                }
            }
        }
    }

    /// Whether an alternate branch of this type takes a value of this JSON
    /// type (the generated `switch ((*obj)->type)`).
    fn qtype_matches(&self, branch: &str, obj: &QObject) -> bool {
        match self.schema.resolve(branch) {
            Some(Resolved::Type(SchemaType::Builtin(b))) => matches!(
                (b, obj),
                (Builtin::Str, QObject::Str(_))
                    | (Builtin::Int | Builtin::Number, QObject::Num(_))
                    | (Builtin::Bool, QObject::Bool(_))
                    | (Builtin::Null, QObject::Null)
                    | (Builtin::Any, _)
            ),
            Some(Resolved::Type(SchemaType::Enum { .. })) => matches!(obj, QObject::Str(_)),
            Some(Resolved::Type(SchemaType::Object { .. })) => matches!(obj, QObject::Dict(_)),
            Some(Resolved::Type(SchemaType::Array { .. })) | Some(Resolved::ArrayOf(_)) => {
                matches!(obj, QObject::List(_))
            }
            Some(Resolved::Type(SchemaType::Alternate { .. })) | None => false,
        }
    }

    fn visit_list(
        &mut self,
        element: &'a str,
        name: Option<&'a str>,
        value: Option<&'a QObject>,
        kind: IntKind,
    ) -> VResult {
        let Some(value) = value else {
            return Err(self.missing(name));
        };
        let obj = self.get_object(name, value, true);
        let QObject::List(items) = obj else {
            return Err(self.wrong_type(name, "array"));
        };
        self.stack.push(Frame::List { name, index: 0 });
        for (i, item) in items.iter().enumerate() {
            if let Some(Frame::List { index, .. }) = self.stack.last_mut() {
                *index = i;
            }
            self.visit_type(element, None, Some(item), kind)?;
        }
        self.stack.pop();
        Ok(())
    }

    fn visit_builtin(
        &self,
        b: Builtin,
        name: Option<&str>,
        obj: &QObject,
        kind: IntKind,
    ) -> VResult {
        match b {
            Builtin::Str => match obj {
                QObject::Str(_) => Ok(()),
                _ => Err(self.wrong_type(name, "string")),
            },
            Builtin::Bool => match obj {
                QObject::Bool(_) => Ok(()),
                _ => Err(self.wrong_type(name, "boolean")),
            },
            Builtin::Number => match obj {
                QObject::Num(_) => Ok(()),
                _ => Err(self.wrong_type(name, "number")),
            },
            Builtin::Null => match obj {
                QObject::Null => Ok(()),
                _ => Err(self.wrong_type(name, "null")),
            },
            Builtin::Any => Ok(()),
            Builtin::Int if kind.is_unsigned() => {
                // qobject_input_type_uint64: unsigned, or a negative int64
                // taken as its two's complement "for backward compatibility".
                let v = match obj {
                    QObject::Num(QNum::U64(u)) => *u,
                    QObject::Num(QNum::I64(i)) => *i as u64,
                    _ => {
                        return Err(format!(
                            "Parameter '{}' expects uint64",
                            self.full_name(name)
                        ))
                    }
                };
                match kind.unsigned_range() {
                    Some((max, ctype)) if v > max => {
                        Err(format!("Parameter '{}' expects {ctype}", bare(name)))
                    }
                    _ => Ok(()),
                }
            }
            Builtin::Int => {
                let QObject::Num(QNum::I64(v)) = obj else {
                    return Err(self.wrong_type(name, "integer"));
                };
                match kind.signed_range() {
                    Some((min, max, ctype)) if *v < min || *v > max => {
                        Err(format!("Parameter '{}' expects {ctype}", bare(name)))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small schema in QEMU's introspection format (7.2+ style: enums
    /// carry `members`), modelled on the block layer's types.
    const MINI: &str = r#"[
        {"name": "job-pause", "meta-type": "command", "arg-type": "1", "ret-type": "0"},
        {"name": "query-version", "meta-type": "command", "arg-type": "0", "ret-type": "0"},
        {"name": "block-job-set-speed", "meta-type": "command", "arg-type": "2", "ret-type": "0"},
        {"name": "qmp_capabilities", "meta-type": "command", "arg-type": "3", "ret-type": "0", "allow-oob": true},
        {"name": "blockdev-add", "meta-type": "command", "arg-type": "10", "ret-type": "0"},
        {"name": "blockdev-reopen", "meta-type": "command", "arg-type": "23", "ret-type": "0"},
        {"name": "quorum-add", "meta-type": "command", "arg-type": "18", "ret-type": "0"},
        {"name": "x-blockdev-set-iothread", "meta-type": "command", "arg-type": "20", "ret-type": "0"},
        {"name": "block-dirty-bitmap-add", "meta-type": "command", "arg-type": "22", "ret-type": "0"},
        {"name": "block-dirty-bitmap-merge", "meta-type": "command", "arg-type": "24", "ret-type": "0"},
        {"name": "qom-set", "meta-type": "command", "arg-type": "27", "ret-type": "any"},
        {"name": "device_add", "meta-type": "command", "arg-type": "1", "ret-type": "0"},
        {"name": "JOB_STATUS_CHANGE", "meta-type": "event", "arg-type": "1"},
        {"name": "0", "meta-type": "object", "members": []},
        {"name": "1", "meta-type": "object", "members": [{"name": "id", "type": "str"}]},
        {"name": "2", "meta-type": "object", "members": [{"name": "device", "type": "str"}, {"name": "speed", "type": "int"}]},
        {"name": "3", "meta-type": "object", "members": [{"name": "enable", "default": null, "type": "[4]"}]},
        {"name": "[4]", "meta-type": "array", "element-type": "4"},
        {"name": "4", "meta-type": "enum", "members": [{"name": "oob"}], "values": ["oob"]},
        {"name": "10", "meta-type": "object", "tag": "driver",
         "members": [{"name": "driver", "type": "11"}, {"name": "node-name", "default": null, "type": "str"},
                     {"name": "cache", "default": null, "type": "12"}, {"name": "read-only", "default": null, "type": "bool"}],
         "variants": [{"case": "file", "type": "13"}, {"case": "qcow2", "type": "15"}, {"case": "quorum", "type": "18"}]},
        {"name": "11", "meta-type": "enum", "members": [{"name": "file"}, {"name": "qcow2"}, {"name": "quorum"}, {"name": "null-co"}],
         "values": ["file", "qcow2", "quorum", "null-co"]},
        {"name": "12", "meta-type": "object", "members": [{"name": "direct", "default": null, "type": "bool"}]},
        {"name": "13", "meta-type": "object", "members": [{"name": "filename", "type": "str"}, {"name": "aio", "default": null, "type": "14"}]},
        {"name": "14", "meta-type": "enum", "members": [{"name": "threads"}, {"name": "native"}], "values": ["threads", "native"]},
        {"name": "15", "meta-type": "object", "members": [{"name": "file", "type": "16"}, {"name": "backing", "default": null, "type": "17"}]},
        {"name": "16", "meta-type": "alternate", "members": [{"type": "10"}, {"type": "str"}]},
        {"name": "17", "meta-type": "alternate", "members": [{"type": "10"}, {"type": "str"}, {"type": "null"}]},
        {"name": "18", "meta-type": "object", "members": [{"name": "children", "type": "[16]"}]},
        {"name": "[16]", "meta-type": "array", "element-type": "16"},
        {"name": "20", "meta-type": "object", "members": [{"name": "node-name", "type": "str"}, {"name": "iothread", "type": "21"}]},
        {"name": "21", "meta-type": "alternate", "members": [{"type": "str"}, {"type": "null"}]},
        {"name": "22", "meta-type": "object", "members": [{"name": "node", "type": "str"}, {"name": "name", "type": "str"},
                                                        {"name": "granularity", "default": null, "type": "int"}]},
        {"name": "23", "meta-type": "object", "members": [{"name": "options", "type": "[10]"}]},
        {"name": "[10]", "meta-type": "array", "element-type": "10"},
        {"name": "24", "meta-type": "object", "members": [{"name": "node", "type": "str"}, {"name": "target", "type": "str"},
                                                        {"name": "bitmaps", "type": "[25]"}]},
        {"name": "[25]", "meta-type": "array", "element-type": "25"},
        {"name": "25", "meta-type": "alternate", "members": [{"type": "str"}, {"type": "26"}]},
        {"name": "26", "meta-type": "object", "members": [{"name": "node", "type": "str"}, {"name": "name", "type": "str"}]},
        {"name": "27", "meta-type": "object", "members": [{"name": "path", "type": "str"}, {"name": "property", "type": "str"},
                                                        {"name": "value", "type": "any"}]},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "int", "meta-type": "builtin", "json-type": "int"},
        {"name": "bool", "meta-type": "builtin", "json-type": "boolean"},
        {"name": "null", "meta-type": "builtin", "json-type": "null"},
        {"name": "number", "meta-type": "builtin", "json-type": "number"},
        {"name": "any", "meta-type": "builtin", "json-type": "value"}
    ]"#;

    fn mini() -> Schema {
        Schema::from_introspection(&serde_json::from_str(MINI).unwrap()).unwrap()
    }

    /// Arguments as QEMU's parser builds them: members inserted in text order.
    fn args(text: &str) -> QDict {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        QObject::from(&v).as_dict().unwrap().clone()
    }

    fn check(s: &Schema, cmd: &str, text: &str) -> Result<(), String> {
        s.check_arguments(cmd, Some(&args(text))).map_err(|e| {
            assert_eq!(e.class, ErrorClass::GenericError);
            e.desc
        })
    }

    fn err(s: &Schema, cmd: &str, text: &str) -> String {
        check(s, cmd, text).expect_err(text)
    }

    #[test]
    fn loads_commands_events_and_types() {
        let s = mini();
        assert_eq!(s.dialect(), Dialect::Modern);
        let c = s.command("qmp_capabilities").unwrap();
        assert!(c.allow_oob);
        assert_eq!((c.arg_type.as_str(), c.ret_type.as_str()), ("3", "0"));
        assert!(!s.command("job-pause").unwrap().allow_oob);
        assert!(s.command("nope").is_none());
        assert!(s.has_event("JOB_STATUS_CHANGE"));
        assert!(!s.has_event("job-pause"));
        assert_eq!(s.commands().next().unwrap().name, "job-pause");
        assert_eq!(s.enum_values("14").unwrap(), ["threads", "native"]);
        assert_eq!(
            s.member_enum_values("blockdev-add", "aio").unwrap(),
            ["threads", "native"]
        );
        let names: Vec<_> = s
            .command_members("block-job-set-speed")
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["device", "speed"]);
        let tags = |t: &str| (t == "driver").then(|| "file".to_owned());
        let names: Vec<_> = s
            .object_members_for("10", &tags)
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "driver",
                "node-name",
                "cache",
                "read-only",
                "filename",
                "aio"
            ]
        );
    }

    #[test]
    fn empty_schema_has_nothing() {
        let s = Schema::empty();
        assert!(s.command("query-version").is_none());
        assert_eq!(s.commands().count(), 0);
        assert!(!s.has_event("SHUTDOWN"));
        assert_eq!(
            s.check_arguments("query-version", None).unwrap_err().class,
            ErrorClass::CommandNotFound
        );
    }

    #[test]
    fn malformed_data_is_rejected() {
        let bad =
            |t: &str| Schema::from_introspection(&serde_json::from_str(t).unwrap()).unwrap_err();
        assert!(matches!(bad("{}"), SchemaError::NotAnArray));
        assert!(matches!(bad("[1]"), SchemaError::EntryNotObject(0)));
        assert!(matches!(
            bad(r#"[{"name": "x"}]"#),
            SchemaError::BadField {
                field: "meta-type",
                ..
            }
        ));
        assert!(matches!(
            bad(r#"[{"name": "x", "meta-type": "thing"}]"#),
            SchemaError::UnknownMetaType { .. }
        ));
        assert!(matches!(
            bad(r#"[{"name": "c", "meta-type": "command", "arg-type": "9", "ret-type": "9"}]"#),
            SchemaError::UndefinedType { .. }
        ));
    }

    // Every expected text below was observed from real QEMU (5.2, 7.2 and
    // 10.0 storage daemons answer alike unless noted).

    #[test]
    fn missing_unexpected_and_wrong_types() {
        let s = mini();
        assert_eq!(err(&s, "job-pause", "{}"), "Parameter 'id' is missing");
        assert_eq!(
            s.check_arguments("job-pause", None).unwrap_err().desc,
            "Parameter 'id' is missing"
        );
        assert_eq!(
            err(&s, "job-pause", r#"{"id": 1}"#),
            "Invalid parameter type for 'id', expected: string"
        );
        assert_eq!(
            err(&s, "job-pause", r#"{"id": null}"#),
            "Invalid parameter type for 'id', expected: string"
        );
        assert_eq!(
            err(&s, "job-pause", r#"{"id": "x", "b": 1, "a": 2}"#),
            "Parameter 'b' is unexpected"
        );
        assert_eq!(
            err(&s, "block-job-set-speed", r#"{"speed": "x"}"#),
            "Parameter 'device' is missing"
        );
        assert_eq!(
            err(&s, "block-job-set-speed", r#"{"device": "x"}"#),
            "Parameter 'speed' is missing"
        );
        for bad in [
            "1.5",
            "1.0",
            "\"1\"",
            "18446744073709551615",
            "18446744073709551616",
        ] {
            assert_eq!(
                err(
                    &s,
                    "block-job-set-speed",
                    &format!(r#"{{"device": "x", "speed": {bad}}}"#)
                ),
                "Invalid parameter type for 'speed', expected: integer"
            );
        }
        assert_eq!(
            check(&s, "block-job-set-speed", r#"{"device": "x", "speed": -1}"#),
            Ok(())
        );
        assert_eq!(
            check(
                &s,
                "qom-set",
                r#"{"path": "/x", "property": "y", "value": null}"#
            ),
            Ok(())
        );
        assert_eq!(
            err(&s, "qom-set", r#"{"path": "x", "property": "y"}"#),
            "Parameter 'value' is missing"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "file", "filename": "x", "read-only": "yes"}"#
            ),
            "Invalid parameter type for 'read-only', expected: boolean"
        );
    }

    #[test]
    fn commands_without_arguments() {
        let s = mini();
        assert_eq!(s.check_arguments("query-version", None), Ok(()));
        assert_eq!(check(&s, "query-version", "{}"), Ok(()));
        assert_eq!(
            err(&s, "query-version", r#"{"x": 1}"#),
            "Parameter 'x' is unexpected"
        );
    }

    #[test]
    fn enums_lists_and_dialects() {
        let mut s = mini();
        let caps = r#"{"enable": ["foo"]}"#;
        assert_eq!(
            err(&s, "qmp_capabilities", caps),
            "Parameter 'null' does not accept value 'foo'"
        );
        assert_eq!(
            err(&s, "qmp_capabilities", r#"{"enable": "oob"}"#),
            "Invalid parameter type for 'enable', expected: array"
        );
        assert_eq!(
            err(&s, "qmp_capabilities", r#"{"enable": [1]}"#),
            "Invalid parameter type for 'enable[0]', expected: string"
        );
        assert_eq!(
            check(&s, "qmp_capabilities", r#"{"enable": ["oob"]}"#),
            Ok(())
        );
        assert_eq!(
            err(&s, "blockdev-add", r#"{"driver": "nope"}"#),
            "Parameter 'driver' does not accept value 'nope'"
        );
        s.set_dialect(Dialect::Qemu5);
        assert_eq!(err(&s, "qmp_capabilities", caps), "Invalid parameter 'foo'");
        assert_eq!(
            err(&s, "blockdev-add", r#"{"driver": "nope"}"#),
            "Invalid parameter 'nope'"
        );
    }

    #[test]
    fn flat_unions_and_nesting() {
        let s = mini();
        assert_eq!(
            err(&s, "blockdev-add", "{}"),
            "Parameter 'driver' is missing"
        );
        assert_eq!(
            err(&s, "blockdev-add", r#"{"driver": 1}"#),
            "Invalid parameter type for 'driver', expected: string"
        );
        assert_eq!(
            err(&s, "blockdev-add", r#"{"driver": "file"}"#),
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "file", "filename": "x", "bogus": 1}"#
            ),
            "Parameter 'bogus' is unexpected"
        );
        // A tag value without a branch has no further members.
        assert_eq!(
            check(&s, "blockdev-add", r#"{"driver": "null-co"}"#),
            Ok(())
        );
        // Base members come before the branch's: 'cache' fails first.
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "file", "filename": "x", "aio": "bad", "cache": 5}"#
            ),
            "Invalid parameter type for 'cache', expected: object"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": "n", "cache": {"direct": "x"}}"#
            ),
            "Invalid parameter type for 'cache.direct', expected: boolean"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": {"driver": "file"}}"#
            ),
            "Parameter 'file.filename' is missing"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": {"driver": "file", "filename": "x", "zz": 1}}"#
            ),
            "Parameter 'file.zz' is unexpected"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": {"driver": "file", "filename": "x", "aio": 5}}"#
            ),
            "Invalid parameter type for 'file.aio', expected: string"
        );
        // Enum text names the member, not the path.
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": {"driver": "file", "filename": "x", "aio": "bad"}}"#
            ),
            "Parameter 'aio' does not accept value 'bad'"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": {"driver": "qcow2", "file": {"driver": "file", "filename": 1}}}"#
            ),
            "Invalid parameter type for 'file.file.filename', expected: string"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-reopen",
                r#"{"options": [{"driver": "file"}]}"#
            ),
            "Parameter 'options[0].filename' is missing"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-reopen",
                r#"{"options": [{"driver": "file", "filename": "x"}, {"driver": "file", "filename": 5}]}"#
            ),
            "Invalid parameter type for 'options[1].filename', expected: string"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-reopen",
                r#"{"options": [{"driver": "file", "filename": "x"}, 5]}"#
            ),
            "Invalid parameter type for 'options[1]', expected: object"
        );
        assert_eq!(
            err(
                &s,
                "blockdev-reopen",
                r#"{"options": [{"driver": "qcow2", "file": {"driver": "file", "filename": 5}}]}"#
            ),
            "Invalid parameter type for 'options[0].file.filename', expected: string"
        );
    }

    #[test]
    fn alternates_are_named_as_qemu_names_them() {
        let s = mini();
        for v in ["1", "null", "[]"] {
            assert_eq!(
                err(
                    &s,
                    "blockdev-add",
                    &format!(r#"{{"driver": "qcow2", "file": {v}}}"#)
                ),
                "Invalid parameter type for 'file', expected: BlockdevRef"
            );
        }
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": "n", "backing": 5}"#
            ),
            "Invalid parameter type for 'backing', expected: BlockdevRefOrNull"
        );
        assert_eq!(
            check(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": "n", "backing": null}"#
            ),
            Ok(())
        );
        // The bare member name, even when nested; 'null' for a list element.
        assert_eq!(
            err(
                &s,
                "blockdev-add",
                r#"{"driver": "qcow2", "file": {"driver": "qcow2", "file": 5}}"#
            ),
            "Invalid parameter type for 'file', expected: BlockdevRef"
        );
        assert_eq!(
            err(&s, "quorum-add", r#"{"children": [5]}"#),
            "Invalid parameter type for 'null', expected: BlockdevRef"
        );
        assert_eq!(
            err(
                &s,
                "quorum-add",
                r#"{"children": ["a", {"driver": "file"}]}"#
            ),
            "Parameter 'children[1].filename' is missing"
        );
        assert_eq!(
            err(
                &s,
                "x-blockdev-set-iothread",
                r#"{"node-name": "x", "iothread": true}"#
            ),
            "Invalid parameter type for 'iothread', expected: StrOrNull"
        );
        let merge = r#"{"node": "a", "target": "b", "bitmaps": [5]}"#;
        assert_eq!(
            err(&s, "block-dirty-bitmap-merge", merge),
            "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr"
        );
        assert_eq!(
            err(
                &s,
                "block-dirty-bitmap-merge",
                r#"{"node": "a", "target": "b", "bitmaps": ["x", {"node": "x", "name": "y", "z": 1}]}"#
            ),
            "Parameter 'bitmaps[1].z' is unexpected"
        );
        let mut s5 = mini();
        s5.set_dialect(Dialect::Qemu5);
        assert_eq!(
            err(&s5, "block-dirty-bitmap-merge", merge),
            "Invalid parameter type for 'null', expected: BlockDirtyBitmapMergeSource"
        );
        s5.set_type_name("25", "Other");
        assert_eq!(
            err(&s5, "block-dirty-bitmap-merge", merge),
            "Invalid parameter type for 'null', expected: Other"
        );
    }

    #[test]
    fn integer_kinds_must_be_declared() {
        let mut s = mini();
        let add = |g: &str| format!(r#"{{"node": "x", "name": "b", "granularity": {g}}}"#);
        // Undeclared: taken as int64.
        assert_eq!(check(&s, "block-dirty-bitmap-add", &add("-1")), Ok(()));
        assert_eq!(
            s.set_int_kind("block-dirty-bitmap-add", "granularity", IntKind::Uint32),
            1
        );
        for g in ["-1", "4294967296", "18446744073709551615"] {
            assert_eq!(
                err(&s, "block-dirty-bitmap-add", &add(g)),
                "Parameter 'granularity' expects uint32_t"
            );
        }
        for g in ["1.0", "\"x\"", "null", "18446744073709551616"] {
            assert_eq!(
                err(&s, "block-dirty-bitmap-add", &add(g)),
                "Parameter 'granularity' expects uint64"
            );
        }
        assert_eq!(
            check(&s, "block-dirty-bitmap-add", &add("4294967295")),
            Ok(())
        );
        assert_eq!(
            s.set_int_kind("block-dirty-bitmap-add", "nope", IntKind::Uint32),
            0
        );
        assert!(s.set_member_int_kind("22", "granularity", IntKind::Size));
        assert_eq!(check(&s, "block-dirty-bitmap-add", &add("-1")), Ok(()));
        assert_eq!(
            check(&s, "block-dirty-bitmap-add", &add("18446744073709551615")),
            Ok(())
        );
    }

    #[test]
    fn hand_written_commands_are_not_checked() {
        let s = mini();
        assert_eq!(check(&s, "device_add", r#"{"whatever": 1}"#), Ok(()));
        let e = s.check_arguments("nope", None).unwrap_err();
        assert_eq!(
            (e.class, e.desc.as_str()),
            (
                ErrorClass::CommandNotFound,
                "The command nope has not been found"
            )
        );
    }

    #[test]
    fn first_unexpected_member_follows_glib_hash_table_order() {
        let s = mini();
        // (keys in text order, QEMU 10.0's report), from real QEMU.
        let cases: &[(&[&str], &str)] = &[
            (&["id", "b", "a"], "b"),
            (&["id", "xec-oe", "bxjl"], "xec-oe"),
            (&["mwgcucez", "a", "mnveste", "hm", "jgv", "id"], "mnveste"),
            (&["id", "ngaxr", "qpcmtqz", "bloagjw"], "bloagjw"),
            (
                &[
                    "m", "nxaq", "yopr", "lhvh", "jan-rudf", "dxkxw", "q-vgjjs", "qmsbphxz",
                    "nvflrwy", "covqdy", "q-m", "pxapbj", "uffqhay", "rrhm", "sloivr", "qyr",
                    "nbpl", "id",
                ],
                "sloivr",
            ),
            (
                &[
                    "fsw--v", "g", "prbblp", "epcqkv", "tkzsc", "kncicvuk", "f", "hki--i", "pnajf",
                    "id", "bdnnt", "ilyu", "sjtivfke", "dmlqxs", "moe-", "whbxuhcx", "bq",
                    "spwkqzfs", "mamrxr-x", "fsslb-xl", "ohwuvr",
                ],
                "kncicvuk",
            ),
        ];
        for (keys, first) in cases {
            let mut d = QDict::new();
            for k in *keys {
                d.put(
                    *k,
                    if *k == "id" {
                        QObject::from("x")
                    } else {
                        QObject::from(1i64)
                    },
                );
            }
            let e = s.check_arguments("job-pause", Some(&d)).unwrap_err();
            assert_eq!(
                e.desc,
                format!("Parameter '{first}' is unexpected"),
                "{keys:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_does_not_exhaust_the_stack() {
        let s = mini();
        let mut inner = QDict::new();
        inner.put("driver", "file");
        inner.put("filename", 1i64);
        let mut path = String::from("filename");
        for _ in 0..2000 {
            let mut d = QDict::new();
            d.put("driver", "qcow2");
            d.put("file", QObject::Dict(inner));
            inner = d;
            path.insert_str(0, "file.");
        }
        let e = s.check_arguments("blockdev-add", Some(&inner)).unwrap_err();
        assert_eq!(
            e.desc,
            format!("Invalid parameter type for '{path}', expected: string")
        );
        // Dropping the nested value recurses too: give it room.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || drop(inner))
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn g_str_hash_matches_glib() {
        assert_eq!(g_str_hash(""), 5381);
        assert_eq!(g_str_hash("id"), 5_863_474);
        // Bytes above 0x7f are signed chars.
        assert_eq!(
            g_str_hash("\u{e9}"),
            5381u32
                .wrapping_mul(33)
                .wrapping_add(0xC3u8 as i8 as u32)
                .wrapping_mul(33)
                .wrapping_add(0xA9u8 as i8 as u32)
        );
    }

    /// Requests and replies recorded from the real storage daemons.
    fn real_schema(version: &str) -> Option<Schema> {
        let fixture = format!(
            "{}/../fixtures/qemu-{version}/qsd/profile/query-qmp-schema.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let scratch = format!("/tmp/schemas/qsd-{version}.schema.json");
        let text = std::fs::read_to_string(fixture)
            .or_else(|_| std::fs::read_to_string(scratch))
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        Some(Schema::from_introspection(v.get("return").unwrap_or(&v)).unwrap())
    }

    const ALL_VERSIONS: &[(&str, &str)] = &[
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":{"driver":"file","filename":"x","zz":1}}}"#,
            "Parameter 'file.zz' is unexpected",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":1}}"#,
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":"n","backing":[]}}"#,
            "Invalid parameter type for 'backing', expected: BlockdevRefOrNull",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":"n","overlap-check":5}}"#,
            "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":"n","encrypt":{}}}"#,
            "Parameter 'encrypt.format' is missing",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"raw","file":{"driver":"nbd","server":{"type":"inet","host":"h"}}}}"#,
            "Parameter 'file.server.port' is missing",
        ),
        (
            r#"{"execute":"blockdev-add","arguments":{"driver":"file","filename":"x","aio":"bad","cache":5}}"#,
            "Invalid parameter type for 'cache', expected: object",
        ),
        (
            r#"{"execute":"x-blockdev-set-iothread","arguments":{"node-name":"x","iothread":5}}"#,
            "Invalid parameter type for 'iothread', expected: StrOrNull",
        ),
        (
            r#"{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet","data":{"host":"x"}}}}"#,
            "Parameter 'addr.data.port' is missing",
        ),
        (
            r#"{"execute":"nbd-server-start","arguments":{"addr":{"type":"inet"}}}"#,
            "Parameter 'addr.data' is missing",
        ),
        (
            r#"{"execute":"transaction","arguments":{"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"x"}}]}}"#,
            "Parameter 'actions[0].data.name' is missing",
        ),
        (
            r#"{"execute":"transaction","arguments":{"actions":[{"type":"abort","data":{"x":1}}]}}"#,
            "Parameter 'actions[0].data.x' is unexpected",
        ),
        (
            r#"{"execute":"drive-mirror","arguments":{"device":"x","target":"y"}}"#,
            "Parameter 'sync' is missing",
        ),
        (
            r#"{"execute":"query-version","arguments":{"x":1}}"#,
            "Parameter 'x' is unexpected",
        ),
        (
            r#"{"execute":"block-dirty-bitmap-merge","arguments":{"node":"a","target":"b","bitmaps":["x",{"node":"x","name":"y","z":1}]}}"#,
            "Parameter 'bitmaps[1].z' is unexpected",
        ),
    ];

    fn run_real(s: &Schema, cases: &[(&str, &str)]) {
        for (req, want) in cases {
            let v: serde_json::Value = serde_json::from_str(req).unwrap();
            let a = v.get("arguments").map(QObject::from);
            let got = s.check_arguments(
                v["execute"].as_str().unwrap(),
                a.as_ref().and_then(QObject::as_dict),
            );
            assert_eq!(got.map_err(|e| e.desc), Err((*want).to_owned()), "{req}");
        }
    }

    #[test]
    fn real_qemu_10_0() {
        let Some(s) = real_schema("10.0") else { return };
        assert_eq!(s.dialect(), Dialect::Modern);
        run_real(&s, ALL_VERSIONS);
        run_real(
            &s,
            &[
                (
                    r#"{"execute":"blockdev-add","arguments":{"driver":"nope"}}"#,
                    "Parameter 'driver' does not accept value 'nope'",
                ),
                (
                    r#"{"execute":"blockdev-add","arguments":{"driver":"qcow2","file":"n","overlap-check":{"template":"bad"}}}"#,
                    "Parameter 'template' does not accept value 'bad'",
                ),
                (
                    r#"{"execute":"block-dirty-bitmap-merge","arguments":{"node":"a","target":"b","bitmaps":[5]}}"#,
                    "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
                ),
                (
                    r#"{"execute":"blockdev-reopen","arguments":{"options":[{"driver":"qcow2","file":{"driver":"file","filename":5}}]}}"#,
                    "Invalid parameter type for 'options[0].file.filename', expected: string",
                ),
                (
                    r#"{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"x","limits":{"iops-total":1.5}}}"#,
                    "Invalid parameter type for 'limits.iops-total', expected: integer",
                ),
                (
                    r#"{"execute":"query-qmp-schema","arguments":{"idx":1}}"#,
                    "Parameter 'idx' is unexpected",
                ),
            ],
        );
    }

    #[test]
    fn real_qemu_7_2() {
        let Some(s) = real_schema("7.2") else { return };
        assert_eq!(s.dialect(), Dialect::Modern);
        run_real(&s, ALL_VERSIONS);
        run_real(
            &s,
            &[
                (
                    r#"{"execute":"transaction","arguments":{"actions":[{"type":"bogus"}]}}"#,
                    "Parameter 'type' does not accept value 'bogus'",
                ),
                (
                    r#"{"execute":"block-dirty-bitmap-merge","arguments":{"node":"a","target":"b","bitmaps":[5]}}"#,
                    "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
                ),
            ],
        );
    }

    #[test]
    fn real_qemu_5_2() {
        let Some(s) = real_schema("5.2") else { return };
        assert_eq!(s.dialect(), Dialect::Qemu5);
        run_real(&s, ALL_VERSIONS);
        run_real(
            &s,
            &[
                (
                    r#"{"execute":"blockdev-add","arguments":{"driver":"nope"}}"#,
                    "Invalid parameter 'nope'",
                ),
                (
                    r#"{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}"#,
                    "Invalid parameter 'foo'",
                ),
                (
                    r#"{"execute":"block-dirty-bitmap-merge","arguments":{"node":"a","target":"b","bitmaps":[5]}}"#,
                    "Invalid parameter type for 'null', expected: BlockDirtyBitmapMergeSource",
                ),
            ],
        );
        // 5.2's query-qmp-schema is hand-written and ignores arguments.
        assert_eq!(
            s.check_arguments("query-qmp-schema", Some(&args(r#"{"idx": 1}"#))),
            Ok(())
        );
    }

    #[test]
    fn real_qemu_declared_int_kinds() {
        let Some(mut s) = real_schema("10.0") else {
            return;
        };
        assert_eq!(
            s.set_int_kind("blockdev-add", "file.reconnect-delay", IntKind::Uint32),
            1
        );
        assert!(s.set_int_kind("blockdev-create", "options.size", IntKind::Size) > 1);
        run_real(
            &s,
            &[
                (
                    r#"{"execute":"blockdev-add","arguments":{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"/x"},"reconnect-delay":"x"}}}"#,
                    "Parameter 'file.reconnect-delay' expects uint64",
                ),
                (
                    r#"{"execute":"blockdev-add","arguments":{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"/x"},"reconnect-delay":-1}}}"#,
                    "Parameter 'reconnect-delay' expects uint32_t",
                ),
                (
                    r#"{"execute":"blockdev-create","arguments":{"job-id":"j","options":{"driver":"file","filename":"x","size":1.5}}}"#,
                    "Parameter 'options.size' expects uint64",
                ),
                (
                    r#"{"execute":"blockdev-create","arguments":{"job-id":"j","options":{"driver":"file","filename":"x","size":-1,"zz":1}}}"#,
                    "Parameter 'options.zz' is unexpected",
                ),
            ],
        );
    }
}
