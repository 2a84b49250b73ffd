//! TEMPORARY stub: helper is writing the real schema checker.
#![allow(missing_docs)]
use crate::qmp::error::QmpError;
use crate::qmp::qobject::QDict;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("malformed: {0}")]
    Malformed(String),
}
#[derive(Debug, Clone)]
pub struct CommandInfo {
    pub name: String,
    pub allow_oob: bool,
    pub arg_type: String,
    pub ret_type: String,
}
#[derive(Debug, Default)]
pub struct Schema {
    commands: BTreeMap<String, CommandInfo>,
}
impl Schema {
    pub fn empty() -> Schema {
        Schema::default()
    }
    pub fn from_introspection(v: &serde_json::Value) -> Result<Schema, SchemaError> {
        let mut s = Schema::default();
        for e in v
            .as_array()
            .ok_or_else(|| SchemaError::Malformed("not array".into()))?
        {
            if e["meta-type"] == "command" {
                let name = e["name"].as_str().unwrap_or_default().to_owned();
                s.commands.insert(
                    name.clone(),
                    CommandInfo {
                        name,
                        allow_oob: e["allow-oob"].as_bool().unwrap_or(false),
                        arg_type: e["arg-type"].as_str().unwrap_or_default().into(),
                        ret_type: e["ret-type"].as_str().unwrap_or_default().into(),
                    },
                );
            }
        }
        Ok(s)
    }
    pub fn command(&self, name: &str) -> Option<&CommandInfo> {
        self.commands.get(name)
    }
    pub fn check_arguments(&self, _cmd: &str, _args: Option<&QDict>) -> Result<(), QmpError> {
        Ok(())
    }
}
