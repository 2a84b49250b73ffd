//! User-creatable QOM objects (`object-add`, `object-del`, `--object`):
//! what exists, by id. Which of them a node uses (a throttle node's group)
//! is read off the graph by the command layer.

use std::collections::BTreeMap;

use crate::qmp::qobject::QDict;

/// One object under `/objects`.
#[derive(Debug, Clone, PartialEq)]
pub struct UserObject {
    /// Its QOM type (`throttle-group`, `secret`, `iothread`, …).
    pub qom_type: String,
    /// Its properties as given.
    pub props: QDict,
}

/// Why an object cannot be added or deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// An object with this id exists.
    #[error("duplicate object id '{0}'")]
    Duplicate(String),
    /// No object has this id.
    #[error("no object '{0}'")]
    NotFound(String),
}

/// Every user-created object, by id.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    map: BTreeMap<String, UserObject>,
}

impl Objects {
    /// Adds an object.
    pub fn add(&mut self, id: &str, object: UserObject) -> Result<(), ObjectError> {
        if self.map.contains_key(id) {
            return Err(ObjectError::Duplicate(id.to_owned()));
        }
        self.map.insert(id.to_owned(), object);
        Ok(())
    }

    /// The object with this id.
    pub fn get(&self, id: &str) -> Option<&UserObject> {
        self.map.get(id)
    }

    /// Removes an object.
    pub fn remove(&mut self, id: &str) -> Result<UserObject, ObjectError> {
        self.map
            .remove(id)
            .ok_or_else(|| ObjectError::NotFound(id.to_owned()))
    }
}
