//! `transaction`: actions run in order; if one fails, the ones before it
//! are undone and the command reports that action's error. Files an action
//! created stay on disk, as with QEMU.

use super::{execute, not_implemented, Context, Return};
use crate::profile::Version;
use crate::qmp::error::QmpError;
use crate::qmp::qobject::{QDict, QObject};

/// Action types whose effects are graph and bitmap state.
const STATE_ACTIONS: &[&str] = &[
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
    "blockdev-snapshot-sync",
    "blockdev-snapshot",
    // Starts its job as the standalone command does (same events, recorded);
    // a later failing action does not yet undo a started job.
    "blockdev-backup",
    "drive-backup",
];

/// Actions that can run in a `grouped` transaction (their jobs share
/// its fate).
const GROUPED_ACTIONS: &[&str] = &["blockdev-backup", "drive-backup"];

/// `transaction`.
#[derive(Debug)]
pub struct Transaction {
    actions: Vec<(String, QDict)>,
    /// `properties.completion-mode` is `grouped`.
    grouped: bool,
}

impl Transaction {
    /// From the checked arguments.
    pub fn new(a: &QDict) -> Self {
        let actions = match a.get("actions") {
            Some(QObject::List(l)) => l
                .iter()
                .filter_map(QObject::as_dict)
                .map(|d| {
                    let kind = d
                        .get("type")
                        .and_then(QObject::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let data = d
                        .get("data")
                        .and_then(QObject::as_dict)
                        .cloned()
                        .unwrap_or_default();
                    (kind, data)
                })
                .collect(),
            _ => Vec::new(),
        };
        let grouped = a
            .get("properties")
            .and_then(QObject::as_dict)
            .and_then(|p| p.get_str("completion-mode"))
            == Some("grouped");
        Transaction { actions, grouped }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let early = ctx.profile.version() >= Version::V10_0;
        let refuse_grouped = |kind: &str, capital: bool| {
            QmpError::generic(format!(
                "Action '{kind}' does not support {} property completion-mode = grouped",
                if capital {
                    "Transaction"
                } else {
                    "transaction"
                }
            ))
        };
        // 10.0 checks every action before any runs; 5.2 and 7.2 checked
        // when each state action prepared (abort never asked).
        if self.grouped && early {
            if let Some((kind, _)) = self
                .actions
                .iter()
                .find(|(k, _)| !GROUPED_ACTIONS.contains(&k.as_str()))
            {
                return Err(refuse_grouped(kind, false));
            }
        }
        let saved = ctx.machine.graph().clone();
        ctx.machine.begin_transaction();
        for (kind, data) in &self.actions {
            let result = if self.grouped
                && !early
                && kind != "abort"
                && !GROUPED_ACTIONS.contains(&kind.as_str())
            {
                Err(refuse_grouped(kind, true))
            } else if kind == "abort" {
                Err(QmpError::generic("Transaction aborted using Abort action"))
            } else if STATE_ACTIONS.contains(&kind.as_str()) {
                execute(
                    ctx,
                    kind,
                    serde_json::Value::from(&QObject::Dict(data.clone())),
                )
            } else {
                Err(not_implemented(
                    ctx.profile,
                    &format!("transaction action {kind}"),
                ))
            };
            if let Err(e) = result {
                ctx.machine.abort_transaction();
                ctx.machine.graph_mut().restore(saved);
                return Err(e);
            }
        }
        // The jobs start now: 10.0 commits the actions last first.
        ctx.machine
            .commit_transaction(self.grouped, ctx.profile.version() >= Version::V10_0);
        Ok(QObject::Dict(QDict::new()))
    }
}
