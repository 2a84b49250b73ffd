//! `object-add` and `object-del`: user-creatable objects such as
//! throttle groups (which `throttle` nodes name) and secrets.

use super::{Context, Return};
use crate::model::objects::{ObjectError, UserObject};
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// QEMU's wording for an object error (`qom/object.c`, `qom/object_interfaces.c`).
fn desc(e: &ObjectError) -> String {
    match e {
        ObjectError::Duplicate(id) => {
            format!("attempt to add duplicate property '{id}' to object (type 'container')")
        }
        ObjectError::NotFound(id) => format!("object '{id}' not found"),
    }
}

/// `object-add` (the schema checked the type's members).
#[derive(Debug)]
pub struct ObjectAdd {
    id: String,
    object: UserObject,
}

impl ObjectAdd {
    /// From the checked arguments: flat properties (6.0 on) or a `props`
    /// member (5.2's system emulator).
    pub fn new(args: &QDict) -> Self {
        let mut props = QDict::new();
        for (k, v) in args.iter() {
            match (k, v) {
                ("qom-type" | "id", _) => {}
                ("props", QObject::Dict(p)) => {
                    for (pk, pv) in p.iter() {
                        props.put(pk, pv.clone());
                    }
                }
                _ => props.put(k, v.clone()),
            }
        }
        ObjectAdd {
            id: args.get_str("id").unwrap_or_default().to_owned(),
            object: UserObject {
                qom_type: args.get_str("qom-type").unwrap_or_default().to_owned(),
                props,
            },
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        ctx.machine
            .objects_mut()
            .add(&self.id, self.object)
            .map_err(|e| QmpError::generic(desc(&e)))?;
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `object-del`.
#[derive(Debug)]
pub struct ObjectDel {
    id: String,
}

impl ObjectDel {
    /// From the checked arguments.
    pub fn new(args: &QDict) -> Self {
        ObjectDel {
            id: args.get_str("id").unwrap_or_default().to_owned(),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        if ctx.machine.objects().get(&self.id).is_none() {
            return Err(QmpError::generic(desc(&ObjectError::NotFound(self.id))));
        }
        // A throttle group is held by the throttle nodes that name it.
        let used = ctx.machine.graph().newest_first().any(|(_, n)| {
            n.driver == "throttle" && n.strong_options.get_str("throttle-group") == Some(&self.id)
        });
        if used {
            return Err(QmpError::generic(format!(
                "object '{}' is in use, can not be deleted",
                self.id
            )));
        }
        ctx.machine
            .objects_mut()
            .remove(&self.id)
            .map_err(|e| QmpError::generic(desc(&e)))?;
        Ok(QObject::Dict(QDict::new()))
    }
}
