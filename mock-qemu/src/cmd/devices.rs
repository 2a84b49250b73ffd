//! Guest devices of the system emulator: `device_add`, `device_del`.
//! Disks (`virtio-blk-pci`, `scsi-hd`) attach a BlockBackend to their
//! `drive` node; `query-block` (in `blockdev.rs`) lists those.

use super::{desc, Context, Return};
use crate::model::devices::{Device, DeviceKind};
use crate::model::graph::{EdgePerm, PermUser, PERM_READ, PERM_RESIZE, PERM_WRITE};
use crate::model::ModelEvent;
use crate::profile::Version;
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::{QDict, QObject};

/// `BLK_PERM_WRITE_UNCHANGED`.
const PERM_WRITE_UNCHANGED: u8 = 4;

/// Device models QEMU has that the mock does not simulate: they get the
/// mock's own "not implemented" error rather than QEMU's "not a valid
/// device model name" (which every other name gets).
const UNMODELLED: &[&str] = &[
    "virtio-blk-device",
    "virtio-scsi-device",
    "virtio-net-pci",
    "virtio-balloon-pci",
    "virtio-serial-pci",
    "virtio-rng-pci",
    "virtio-gpu-pci",
    "virtio-vga",
    "virtio-keyboard-pci",
    "virtio-mouse-pci",
    "virtio-tablet-pci",
    "vhost-user-blk-pci",
    "scsi-cd",
    "scsi-block",
    "scsi-generic",
    "ide-hd",
    "ide-cd",
    "ahci",
    "nvme",
    "nvme-ns",
    "usb-storage",
    "usb-tablet",
    "usb-kbd",
    "usb-mouse",
    "qemu-xhci",
    "nec-usb-xhci",
    "piix3-usb-uhci",
    "ich9-usb-ehci1",
    "e1000",
    "e1000e",
    "rtl8139",
    "pcie-root-port",
    "pci-bridge",
    "isa-serial",
    "virtserialport",
    "virtconsole",
    "floppy",
    "isa-fdc",
    "lsi53c895a",
    "megasas",
    "VGA",
    "cirrus-vga",
    "qxl-vga",
    "pvpanic",
    "i6300esb",
    "vmcoreinfo",
];

/// Properties of the modelled devices that the mock accepts and ignores
/// (guest-visible settings; libvirt sets several of them).
const IGNORED_PROPS: &[&str] = &[
    "addr",
    "multifunction",
    "bootindex",
    "serial",
    "write-cache",
    "num-queues",
    "queue-size",
    "iothread",
    "logical_block_size",
    "physical_block_size",
    "discard_granularity",
    "min_io_size",
    "opt_io_size",
    "werror",
    "rerror",
    "wwn",
    "vendor",
    "product",
    "ver",
    "device_id",
    "scsi-id",
    "lun",
    "channel",
    "rotation_rate",
    "romfile",
    "rombar",
    "ioeventfd",
    "vectors",
    "event_idx",
    "indirect_desc",
    "packed",
    "disable-legacy",
    "disable-modern",
    "discard",
    "write-zeroes",
    "max_sectors",
    "cmd_per_lun",
    "cyls",
    "heads",
    "secs",
    "failover_pair_id",
    "acpi-index",
];

/// QEMU's `id_wellformed()`: a letter, then letters, digits, `-`, `.`, `_`.
fn id_wellformed(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_'))
}

/// A property value as a string (`-device` key=value gives strings; QMP
/// may give any JSON type for the properties the mock ignores).
fn str_prop(
    args: &QDict,
    name: &str,
    owner: &str,
    want_string: bool,
) -> Result<Option<String>, QmpError> {
    match args.get(name) {
        None => Ok(None),
        Some(QObject::Str(s)) => Ok(Some(s.clone())),
        Some(_) if want_string => Err(QmpError::generic(format!(
            "Invalid parameter type for '{name}', expected: string"
        ))),
        Some(_) => {
            let _ = owner;
            Ok(None)
        }
    }
}

/// Whether a `share-rw` value is on.
fn is_on(v: Option<&QObject>) -> bool {
    match v {
        Some(QObject::Bool(b)) => *b,
        Some(QObject::Str(s)) => matches!(s.as_str(), "on" | "yes" | "true" | "y"),
        _ => false,
    }
}

/// `device_add`.
#[derive(Debug)]
pub struct DeviceAdd {
    args: QDict,
}

impl DeviceAdd {
    /// From the arguments (the schema lets anything through: QEMU checks
    /// them against the device's properties).
    pub fn new(args: QDict) -> Self {
        DeviceAdd { args }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let v = ctx.profile.version();
        let args = &self.args;
        let id = match args.get("id") {
            None => None,
            Some(QObject::Str(s)) => Some(s.clone()),
            Some(_) => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'id', expected: string",
                ))
            }
        };
        // Up to 7.2 the monitor's QemuOpts check the id first; 10.0
        // takes any string over QMP.
        if v < Version::V10_0 {
            if let Some(id) = &id {
                if !id_wellformed(id) {
                    return Err(QmpError::generic("Parameter 'id' expects an identifier"));
                }
            }
        }
        let driver = match args.get("driver") {
            Some(QObject::Str(s)) => s.clone(),
            Some(_) => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'driver', expected: string",
                ))
            }
            None => return Err(QmpError::generic("Parameter 'driver' is missing")),
        };
        let Some(kind) = DeviceKind::from_driver(&driver) else {
            if UNMODELLED.contains(&driver.as_str()) {
                return Err(QmpError::generic(format!(
                    "mock-qemu: device model '{driver}' is not implemented by the mock (it exists in QEMU)"
                )));
            }
            return Err(QmpError::generic(format!(
                "'{driver}' is not a valid device model name"
            )));
        };
        // The bus: a named one, or the first of the right type.
        let bus = str_prop(args, "bus", &driver, true)?;
        let devices = ctx.machine.devices();
        let scsi_bus = match kind.bus_type() {
            "PCI" => {
                match &bus {
                    Some(b) if !(devices.has_pci() && matches!(b.as_str(), "pci.0" | "pcie.0")) => {
                        return Err(QmpError::generic(format!("Bus '{b}' not found")))
                    }
                    _ => {}
                }
                if !devices.has_pci() {
                    return Err(QmpError::generic(format!(
                        "No 'PCI' bus found for device '{driver}'"
                    )));
                }
                None
            }
            _ => match devices.scsi_bus(bus.as_deref()) {
                Some(c) => Some(c.path.clone()),
                None => {
                    return Err(QmpError::generic(match &bus {
                        Some(b) => format!("Bus '{b}' not found"),
                        None => format!("No 'SCSI' bus found for device '{driver}'"),
                    }))
                }
            },
        };
        if let Some(id) = &id {
            if devices.find(id).is_some() {
                return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
            }
        }
        // Properties, then realize.
        let mut drive = None;
        for (name, _) in args.iter() {
            match name {
                "driver" | "id" | "bus" => {}
                "drive" if kind.is_disk() => {
                    let d = str_prop(args, "drive", &driver, true)?.unwrap_or_default();
                    let graph = ctx.machine.graph();
                    let node = graph.find(&d).ok_or_else(|| {
                        QmpError::generic(format!(
                            "Property '{}.drive' can't find value '{d}'",
                            kind.drive_owner()
                        ))
                    })?;
                    drive = Some(node);
                }
                "share-rw" if kind.is_disk() => {}
                n if IGNORED_PROPS.contains(&n) => {}
                n => {
                    return Err(QmpError::generic(format!(
                        "Property '{driver}.{n}' not found"
                    )))
                }
            }
        }
        let path = ctx.machine.devices().path_for(id.as_deref());
        let device = Device {
            id: id.clone(),
            kind,
            path,
            bus: scsi_bus,
            unplug_pending: false,
        };
        if kind.is_disk() {
            let Some(node) = drive else {
                return Err(QmpError::generic("drive property not set"));
            };
            let graph = ctx.machine.graph();
            let read_only = graph.node(node).is_some_and(|n| n.read_only);
            if read_only {
                return Err(QmpError::generic("Block node is read-only"));
            }
            // blkconf_apply_backend_options(): a writable disk takes
            // consistent read and write, shares consistent read, write
            // unchanged and resize (and write with share-rw).
            let mut shared = PERM_READ | PERM_WRITE_UNCHANGED | PERM_RESIZE;
            if is_on(args.get("share-rw")) {
                shared |= PERM_WRITE;
            }
            let new = EdgePerm {
                user: PermUser::Device(device.qdev()),
                role: "root".into(),
                perm: PERM_READ | PERM_WRITE,
                shared,
            };
            let writable = super::exports::writable_backends(ctx);
            let graph = ctx.machine.graph();
            let users = graph.users(node, &writable);
            if let Some(c) = graph.perm_conflict(node, &new, &users, v < Version::V7_2) {
                return Err(desc::perm_conflict(v, &c, &new));
            }
            let owner = device.backend_owner();
            ctx.machine
                .graph_mut()
                .attach_device_backend(&owner, node, new.perm, new.shared);
        }
        ctx.machine.devices_mut().add(device);
        Ok(QObject::Dict(QDict::new()))
    }
}

/// `device_del`.
#[derive(Debug)]
pub struct DeviceDel {
    id: String,
}

impl DeviceDel {
    /// From the checked arguments.
    pub fn new(args: &QDict) -> Self {
        DeviceDel {
            id: args
                .get("id")
                .and_then(QObject::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let Some(device) = ctx.machine.devices().find(&self.id).cloned() else {
            return Err(QmpError::new(
                ErrorClass::DeviceNotFound,
                format!("Device '{}' not found", self.id),
            ));
        };
        if device.unplug_pending {
            // QEMU lets a request be repeated after 5 s; the mock's guest
            // never answers, so it refuses every repetition.
            return Err(QmpError::generic(format!(
                "Device {} is already in the process of unplug",
                device.id.as_deref().unwrap_or("(null)")
            )));
        }
        match device.kind {
            // ACPI PCI hot-unplug: the guest must eject the device; a guest
            // that never runs (or has no OS) never does.
            DeviceKind::VirtioBlkPci | DeviceKind::VirtioScsiPci => {
                ctx.machine.devices_mut().set_unplug_pending(&device.path);
            }
            // A SCSI disk leaves its bus at once; DEVICE_DELETED follows
            // the reply.
            DeviceKind::ScsiHd => {
                let owner = device.backend_owner();
                let node = ctx
                    .machine
                    .graph()
                    .backends()
                    .find(|(o, _)| *o == owner)
                    .map(|(_, n)| n);
                let graph = ctx.machine.graph_mut();
                graph.detach_backend(&owner);
                if let Some(n) = node {
                    graph.free_unused(n);
                }
                ctx.machine.devices_mut().remove(&device.path);
                ctx.machine.emit_after_reply(ModelEvent::DeviceDeleted {
                    device: device.id.clone(),
                    path: device.path.clone(),
                });
            }
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_qemu_rules() {
        assert!(id_wellformed("vd0"));
        assert!(id_wellformed("a-b.c_d"));
        assert!(!id_wellformed("1bad"));
        assert!(!id_wellformed(""));
        assert!(!id_wellformed("a b"));
    }
}
