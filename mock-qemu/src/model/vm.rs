//! Virtual-machine facts outside the block layer that management tools
//! read and set at start-up: the character devices (the monitors) and the
//! migration capabilities.

use std::collections::BTreeMap;

/// A character device as `query-chardev` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    /// Its id (`-chardev id=…`; `compat_monitorN` for `-qmp`).
    pub label: String,
    /// QEMU's description of the backend (`unix:PATH,server=on`).
    pub filename: String,
}

/// The state.
#[derive(Debug, Default, Clone)]
pub struct Vm {
    /// Character devices in creation order.
    pub chardevs: Vec<Chardev>,
    /// Migration capabilities a client set (`migrate-set-capabilities`);
    /// the others have the build's defaults.
    pub migrate_caps: BTreeMap<String, bool>,
    /// The guest runs under KVM (`query-kvm` `enabled`): an accelerator
    /// choice the command line made on this host.
    pub kvm: bool,
    /// The command line asked for vCPUs other than the recorded ones (one
    /// `qemu64`): `Some("-cpu X -smp N")`, and their answers are refused
    /// rather than guessed.
    pub vcpus_unrecorded: Option<String>,
}
