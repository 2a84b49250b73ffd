//! Fitting a reply to a profile's schema.
//!
//! The model builds one description of a thing (a node, a job) holding every
//! member any supported QEMU version returns; [`project`] keeps exactly the
//! members the profile's recorded schema declares for the reply type, so a
//! member added or dropped between versions (`active` in 10.0,
//! `encryption_key_missing` in 5.2) follows the data, not a version check.

use crate::qmp::qobject::{QDict, QObject};
use crate::qmp::schema::{Schema, SchemaType};

/// Keeps the parts of `value` that type `type_name` of `schema` declares.
/// A union value whose tag names a branch the profile does not have is
/// dropped whole (`None`): that QEMU could not have produced it.
pub fn project(schema: &Schema, type_name: &str, value: QObject) -> Option<QObject> {
    Some(match (schema.type_info(type_name), value) {
        (Some(SchemaType::Array { element }), QObject::List(items)) => QObject::List(
            items
                .into_iter()
                .filter_map(|v| project(schema, element, v))
                .collect(),
        ),
        (
            Some(SchemaType::Object {
                members,
                tag,
                variants,
            }),
            QObject::Dict(d),
        ) => {
            let mut allowed: Vec<(&str, &str)> = members
                .iter()
                .map(|m| (m.name.as_str(), m.type_name.as_str()))
                .collect();
            if let Some(tag) = tag {
                let chosen = d.get(tag).and_then(QObject::as_str);
                let (_, branch) = variants.iter().find(|(v, _)| Some(v.as_str()) == chosen)?;
                if let Some(SchemaType::Object { members, .. }) = schema.type_info(branch) {
                    allowed.extend(
                        members
                            .iter()
                            .map(|m| (m.name.as_str(), m.type_name.as_str())),
                    );
                }
            }
            let mut out = QDict::new();
            for (k, v) in d.into_entries() {
                if let Some((_, t)) = allowed.iter().find(|(name, _)| *name == k) {
                    if let Some(v) = project(schema, t, v) {
                        out.put(k, v);
                    }
                }
            }
            QObject::Dict(out)
        }
        (Some(SchemaType::Alternate { members }), v) => {
            // The branch whose JSON type fits.
            let fits = |t: &str| match (schema.type_info(t), &v) {
                (Some(SchemaType::Object { .. }), QObject::Dict(_))
                | (Some(SchemaType::Array { .. }), QObject::List(_)) => true,
                (Some(SchemaType::Object { .. } | SchemaType::Array { .. }), _) => false,
                _ => !matches!(v, QObject::Dict(_) | QObject::List(_)),
            };
            match members.iter().find(|t| fits(t)) {
                Some(t) => return project(schema, t, v),
                None => v,
            }
        }
        (_, v) => v,
    })
}

/// The reply of `command`, fitted to the command's return type.
pub fn reply(schema: &Schema, command: &str, value: QObject) -> QObject {
    match schema.command(command) {
        Some(c) => project(schema, &c.ret_type, value).unwrap_or(QObject::Null),
        None => value,
    }
}
