//! Guest devices of the system emulator: `device_add`, `device_del`.
//! Disks (`virtio-blk-pci`, `scsi-hd`) attach a BlockBackend to their
//! `drive` node; `query-block` (in `blockdev.rs`) lists those.

use super::{desc, Context, Return};
use crate::model::devices::{Bus, Device, DeviceKind};
use crate::model::graph::{EdgePerm, PermUser};
use crate::model::perms;
use crate::model::{ModelEvent, RunState};
use crate::profile::Version;
use crate::qmp::error::{ErrorClass, QmpError};
use crate::qmp::qobject::{QDict, QNum, QObject};

/// Device models QEMU has that the mock does not simulate, and whether
/// they sit on a PCI bus. On the command line they are accepted as opaque
/// devices (a launcher such as libvirt gives NICs, USB controllers, …);
/// `device_add` gets the mock's own "not implemented" error. Every other
/// name gets QEMU's "not a valid device model name".
const UNMODELLED: &[(&str, bool)] = &[
    ("virtio-blk-device", false),
    ("virtio-scsi-device", false),
    ("virtio-net-pci", true),
    ("virtio-balloon-pci", true),
    ("virtio-serial-pci", true),
    ("virtio-rng-pci", true),
    ("virtio-gpu-pci", true),
    ("virtio-vga", true),
    ("virtio-keyboard-pci", true),
    ("virtio-mouse-pci", true),
    ("virtio-tablet-pci", true),
    ("vhost-user-blk-pci", true),
    ("scsi-cd", false),
    ("scsi-block", false),
    ("scsi-generic", false),
    ("ide-hd", false),
    ("ide-cd", false),
    ("ahci", true),
    ("nvme", true),
    ("nvme-ns", false),
    ("usb-storage", false),
    ("usb-tablet", false),
    ("usb-kbd", false),
    ("usb-mouse", false),
    ("qemu-xhci", true),
    ("nec-usb-xhci", true),
    ("piix3-usb-uhci", true),
    ("ich9-usb-ehci1", true),
    ("e1000", true),
    ("e1000e", true),
    ("rtl8139", true),
    ("pcie-root-port", true),
    ("pci-bridge", true),
    ("isa-serial", false),
    ("virtserialport", false),
    ("virtconsole", false),
    ("floppy", false),
    ("isa-fdc", false),
    ("lsi53c895a", true),
    ("megasas", true),
    ("VGA", true),
    ("cirrus-vga", true),
    ("qxl-vga", true),
    ("pvpanic", false),
    ("i6300esb", true),
    ("vmcoreinfo", false),
    ("qxl", true),
    ("virtio-input-host-pci", true),
    ("ich9-usb-uhci1", true),
    ("ich9-usb-uhci2", true),
    ("ich9-usb-uhci3", true),
    ("usb-ehci", true),
    ("virtio-9p-pci", true),
    ("vhost-vsock-pci", true),
    ("ivshmem-plain", true),
    ("i82801b11-bridge", true),
    ("pcie-pci-bridge", true),
    ("ioh3420", true),
    ("x3130-upstream", true),
    ("xio3130-downstream", true),
    ("pxb", true),
    ("pxb-pcie", true),
    ("intel-iommu", false),
    ("virtio-iommu-pci", true),
    ("tpm-tis", false),
    ("tpm-crb", false),
    ("hda-duplex", false),
    ("hda-micro", false),
    ("hda-output", false),
    ("ich9-intel-hda", true),
    ("intel-hda", true),
    ("AC97", true),
    ("usb-redir", false),
    ("usb-host", false),
    ("spapr-vscsi", false),
    ("sga", false),
    ("pvscsi", true),
    ("vhost-user-fs-pci", true),
    ("virtio-crypto-pci", true),
    ("virtio-pmem-pci", true),
    ("nvdimm", false),
    ("pc-dimm", false),
    ("virtio-mem-pci", true),
    ("isa-debugcon", false),
    ("pci-serial", true),
    ("usb-serial", false),
    ("ramfb", false),
    ("bochs-display", true),
    ("virtio-gpu-gl-pci", true),
    ("vhost-scsi-pci", true),
    ("vfio-pci", true),
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

/// Where a `device_add` comes from: QEMU converts property values
/// differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `device_add` command.
    Qmp,
    /// `-device {…}` (JSON: typed values).
    CmdlineJson,
    /// `-device DRIVER,key=value` (every value a string).
    CmdlineKeyval,
}

/// The property values of one `device_add`, read as QEMU reads them:
/// typed (JSON `-device`, and `device_add` since 10.0's qobject visitor),
/// or as strings (7.2's `device_add` goes through QemuOpts, which turns
/// numbers and booleans into text).
struct Props<'a> {
    args: &'a QDict,
    typed: bool,
}

impl Props<'_> {
    fn string(&self, name: &str) -> Result<Option<String>, QmpError> {
        Ok(match self.args.get(name) {
            None => None,
            Some(QObject::Str(s)) => Some(s.clone()),
            Some(_) if self.typed => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for '{name}', expected: string"
                )))
            }
            Some(QObject::Num(QNum::I64(i))) => Some(i.to_string()),
            Some(QObject::Num(QNum::U64(u))) => Some(u.to_string()),
            Some(QObject::Bool(b)) => Some(if *b { "on" } else { "off" }.to_owned()),
            Some(_) => None,
        })
    }

    fn boolean(&self, name: &str) -> Result<bool, QmpError> {
        match self.args.get(name) {
            None => Ok(false),
            Some(QObject::Bool(b)) if self.typed => Ok(*b),
            Some(QObject::Str(s)) if !self.typed => match s.as_str() {
                "on" | "yes" | "true" | "y" => Ok(true),
                "off" | "no" | "false" | "n" => Ok(false),
                _ => Err(QmpError::generic(format!(
                    "Parameter '{name}' expects 'on' or 'off'"
                ))),
            },
            Some(_) if self.typed => Err(QmpError::generic(format!(
                "Invalid parameter type for '{name}', expected: boolean"
            ))),
            Some(QObject::Bool(b)) => Ok(*b),
            Some(_) => Err(QmpError::generic(format!(
                "Parameter '{name}' expects 'on' or 'off'"
            ))),
        }
    }
}

/// A PCI `addr`: `SLOT[.FUNCTION]` in hex, or (typed) the devfn number.
fn parse_addr(v: &QObject) -> Option<(u8, u8)> {
    let hex = |t: &str| {
        let t = t.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        u8::from_str_radix(t, 16).ok()
    };
    match v {
        QObject::Str(s) => {
            let (slot, func) = match s.split_once('.') {
                Some((a, b)) => (hex(a)?, hex(b)?),
                None => (hex(s)?, 0),
            };
            (slot < 32 && func < 8).then_some((slot, func))
        }
        QObject::Num(n) => n
            .as_u64()
            .and_then(|d| u8::try_from(d).ok())
            .map(|d| (d >> 3, d & 7)),
        _ => None,
    }
}

/// `device_add`.
#[derive(Debug)]
pub struct DeviceAdd {
    args: QDict,
    origin: Origin,
}

impl DeviceAdd {
    /// From the arguments (the schema lets anything through: QEMU checks
    /// them against the device's properties).
    pub fn new(args: QDict, origin: Origin) -> Self {
        DeviceAdd { args, origin }
    }

    pub(super) fn apply(self, ctx: &mut Context<'_>) -> Result<Return, QmpError> {
        let v = ctx.profile.version();
        let args = &self.args;
        let props = Props {
            args,
            typed: match self.origin {
                Origin::Qmp => v >= Version::V10_0,
                Origin::CmdlineJson => true,
                Origin::CmdlineKeyval => false,
            },
        };
        // A non-string id makes an anonymous device, in both versions.
        let id = args.get("id").and_then(QObject::as_str).map(str::to_owned);
        // QemuOpts check the id first: 7.2's device_add and the key=value
        // -device go through them; 10.0's device_add and a JSON -device
        // take any string.
        let qemu_opts = match self.origin {
            Origin::Qmp => v < Version::V10_0,
            Origin::CmdlineKeyval => true,
            Origin::CmdlineJson => false,
        };
        if qemu_opts {
            if let Some(id) = &id {
                if !id_wellformed(id) {
                    return Err(QmpError::generic("Parameter 'id' expects an identifier"));
                }
            }
        }
        let driver = match args.get("driver") {
            Some(QObject::Str(s)) => s.clone(),
            Some(_) if !props.typed => props.string("driver")?.unwrap_or_default(),
            _ => return Err(QmpError::generic("Parameter 'driver' is missing")),
        };
        let kind = match DeviceKind::from_driver(&driver) {
            Some(k) => k,
            None => match UNMODELLED.iter().find(|(n, _)| *n == driver) {
                Some((_, pci)) if self.origin != Origin::Qmp => DeviceKind::Opaque { pci: *pci },
                Some(_) => {
                    return Err(QmpError::generic(format!(
                        "mock-qemu: device model '{driver}' is not implemented by the mock (it exists in QEMU)"
                    )))
                }
                None => {
                    return Err(QmpError::generic(format!(
                        "'{driver}' is not a valid device model name"
                    )))
                }
            },
        };
        if let DeviceKind::Opaque { pci } = kind {
            return add_opaque(ctx, &props, id, driver, pci);
        }
        // The bus: a named one, or the first of the right type.
        let devices = ctx.machine.devices();
        let bus = match props.string("bus")? {
            Some(name) => {
                let b = devices
                    .bus(&name)
                    .ok_or_else(|| QmpError::generic(format!("Bus '{name}' not found")))?;
                if b.kind != kind.bus_type() {
                    return Err(QmpError::generic(format!(
                        "Device '{driver}' can't go on {} bus",
                        b.kind
                    )));
                }
                b
            }
            None => devices.first_bus(kind.bus_type()).ok_or_else(|| {
                QmpError::generic(format!(
                    "No '{}' bus found for device '{driver}'",
                    kind.bus_type()
                ))
            })?,
        };
        // Hot-plug (the machine exists once the monitor runs).
        if self.origin == Origin::Qmp && !bus.hotpluggable {
            return Err(QmpError::generic(format!(
                "Bus '{}' does not support hotplugging",
                bus.name
            )));
        }
        if let Some(id) = &id {
            if devices.find(id).is_some() {
                return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
            }
        }
        // Properties, then realize.
        let mut drive = None;
        let mut addr = None;
        for (name, value) in args.iter() {
            match name {
                "driver" | "id" | "bus" => {}
                "drive" if kind.is_disk() => {
                    let d = props.string("drive")?.unwrap_or_default();
                    let graph = ctx.machine.graph();
                    let node = graph.find(&d).ok_or_else(|| {
                        QmpError::generic(format!(
                            "Property '{}.drive' can't find value '{d}'",
                            kind.drive_owner()
                        ))
                    })?;
                    drive = Some(node);
                }
                "share-rw" if kind.is_disk() => {
                    props.boolean("share-rw")?;
                }
                "addr" if bus.kind == "PCI" => {
                    addr = Some(parse_addr(value).ok_or_else(|| {
                        QmpError::generic(format!(
                            "mock-qemu: PCI address {} is not understood by the mock",
                            crate::qmp::json::to_json(value)
                        ))
                    })?);
                }
                "chassis" | "port" | "slot" if kind == DeviceKind::PcieRootPort => {}
                n if IGNORED_PROPS.contains(&n) => {}
                n => {
                    return Err(QmpError::generic(format!(
                        "Property '{driver}.{n}' not found"
                    )))
                }
            }
        }
        let devfn = if bus.kind == "PCI" {
            Some(pci_slot(ctx, &bus, addr, &driver, v)?)
        } else {
            None
        };
        let path = ctx.machine.devices().path_for(id.as_deref());
        let device = Device {
            id: id.clone(),
            kind,
            driver: driver.clone(),
            path,
            bus: bus.name.clone(),
            devfn,
            unplug_pending: false,
        };
        if kind.is_disk() {
            let Some(node) = drive else {
                return Err(QmpError::generic("drive property not set"));
            };
            // blkconf_apply_backend_options(): the disk is read-only if its
            // node is; virtio-blk and scsi-hd cope with resizes.
            let read_only = ctx.machine.graph().node(node).is_some_and(|n| n.read_only);
            let perms = perms::device_root(read_only, true, props.boolean("share-rw")?, v);
            let new = EdgePerm {
                user: PermUser::Device(device.qdev()),
                role: "root".into(),
                perm: perms.perm,
                shared: perms.shared,
            };
            let users = ctx.machine.block_users(v);
            let graph = ctx.machine.graph();
            let users = graph.users(node, &users, v);
            if let Some(c) = graph.perm_conflict(node, &new, &users, v < Version::V7_2) {
                return Err(desc::perm_conflict(v, &c, &new));
            }
            let owner = device.backend_owner();
            ctx.machine
                .graph_mut()
                .attach_device_backend(&owner, node, perms);
        }
        ctx.machine.devices_mut().add(device);
        Ok(QObject::Dict(QDict::new()))
    }
}

/// A command-line device of a model the mock does not simulate: its id
/// and, on a PCI bus (the named one or the root), its slot; its other
/// properties are not looked at.
fn add_opaque(
    ctx: &mut Context<'_>,
    props: &Props<'_>,
    id: Option<String>,
    driver: String,
    pci: bool,
) -> Result<Return, QmpError> {
    let v = ctx.profile.version();
    let devices = ctx.machine.devices();
    if let Some(id) = &id {
        if devices.find(id).is_some() {
            return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
        }
    }
    let (bus, devfn) = if pci {
        let bus = match props.string("bus")? {
            Some(name) => devices
                .bus(&name)
                .filter(|b| b.kind == "PCI")
                .ok_or_else(|| QmpError::generic(format!("Bus '{name}' not found")))?,
            None => devices.first_bus("PCI").ok_or_else(|| {
                QmpError::generic(format!("No 'PCI' bus found for device '{driver}'"))
            })?,
        };
        let addr = props.args.get("addr").and_then(parse_addr);
        let devfn = pci_slot(ctx, &bus, addr, &driver, v)?;
        (bus.name, Some(devfn))
    } else {
        (String::new(), None)
    };
    let path = ctx.machine.devices().path_for(id.as_deref());
    ctx.machine.devices_mut().add(Device {
        id,
        kind: DeviceKind::Opaque { pci },
        driver,
        path,
        bus,
        devfn,
        unplug_pending: false,
    });
    Ok(QObject::Dict(QDict::new()))
}

/// The slot and function a PCI device gets on `bus`: `addr`'s, or the
/// lowest free slot (on a PCIe port 10.0 offers only slot 0).
fn pci_slot(
    ctx: &Context<'_>,
    bus: &Bus,
    addr: Option<(u8, u8)>,
    driver: &str,
    v: Version,
) -> Result<(u8, u8), QmpError> {
    let devices = ctx.machine.devices();
    let taken = |devfn: (u8, u8)| -> Result<(), QmpError> {
        if devices.builtin_at(bus, devfn) {
            return Err(QmpError::generic(format!(
                "mock-qemu: PCI slot {} function {} of {} is taken by the machine's own devices",
                devfn.0, devfn.1, bus.name
            )));
        }
        if let Some(d) = devices.at(&bus.name, devfn) {
            return Err(QmpError::generic(format!(
                "PCI: slot {} function {} not available for {driver}, in use by {},id={}",
                devfn.0,
                devfn.1,
                d.driver,
                d.id.as_deref().unwrap_or("(null)")
            )));
        }
        Ok(())
    };
    match addr {
        Some(devfn) => {
            taken(devfn)?;
            Ok(devfn)
        }
        None if bus.port && v >= Version::V10_0 => match devices.at(&bus.name, (0, 0)) {
            Some(d) => Err(QmpError::generic(format!(
                "PCI: slot 0 function 0 already occupied by {}, new func {driver} cannot be exposed to guest.",
                d.driver
            ))),
            None => Ok((0, 0)),
        },
        None => devices.free_slot(bus).map(|s| (s, 0)).ok_or_else(|| {
            QmpError::generic(format!(
                "PCI: no slot/function available for {driver}, all in use or reserved"
            ))
        }),
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
        if let Some(bus) = ctx.machine.devices().bus(&device.bus) {
            if !bus.hotpluggable {
                return Err(QmpError::generic(format!(
                    "Bus '{}' does not support hotplugging",
                    bus.name
                )));
            }
        }
        match device.kind {
            // ACPI (or PCIe native) hot-unplug: the guest must eject the
            // device; a guest that never runs (or has no OS) never does.
            DeviceKind::Opaque { pci: false } => {
                return Err(QmpError::generic(format!(
                    "mock-qemu: unplugging a '{}' is not implemented by the mock",
                    device.driver
                )))
            }
            DeviceKind::VirtioBlkPci
            | DeviceKind::VirtioScsiPci
            | DeviceKind::PcieRootPort
            | DeviceKind::Opaque { pci: true } => {
                ctx.machine.devices_mut().set_unplug_pending(&device.path);
                if ctx.machine.run_state() == RunState::Running {
                    eject_pending(ctx);
                }
            }
            // A SCSI disk leaves its bus at once; DEVICE_DELETED follows
            // the reply.
            DeviceKind::ScsiHd => remove(ctx, &device),
        }
        Ok(QObject::Dict(QDict::new()))
    }
}

/// Removes a device (its BlockBackend goes, its node stays if the monitor
/// owns it) and raises `DEVICE_DELETED` after the reply: first for a
/// virtio device's `virtio-backend` child (which has no id), then for the
/// device.
fn remove(ctx: &mut Context<'_>, device: &Device) {
    if device.kind.is_disk() {
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
    }
    ctx.machine.devices_mut().remove(&device.path);
    if matches!(
        device.kind,
        DeviceKind::VirtioBlkPci | DeviceKind::VirtioScsiPci
    ) {
        ctx.machine.emit_after_reply(ModelEvent::DeviceDeleted {
            device: None,
            path: format!("{}/virtio-backend", device.path),
        });
    }
    ctx.machine.emit_after_reply(ModelEvent::DeviceDeleted {
        device: device.id.clone(),
        path: device.path.clone(),
    });
}

/// Mock-only (`--mock-guest-unplug`): the running guest ejects every
/// device it was asked to unplug, with what is plugged below it. Without
/// the option nothing happens, as with a paused or OS-less guest.
pub(super) fn eject_pending(ctx: &mut Context<'_>) {
    if ctx.machine.devices().guest_unplug() {
        eject_all_pending(ctx);
    }
}

/// Ejects every device whose unplug was requested, oldest first, each
/// with what is plugged below it (what a reset of the machine does).
pub(super) fn eject_all_pending(ctx: &mut Context<'_>) {
    for path in ctx.machine.devices().pending_unplugs() {
        for d in ctx.machine.devices().subtree(&path) {
            remove(ctx, &d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Core, CoreConfig, Delivery};
    use crate::profile::{Flavor, Profile};
    use crate::qmp::json::JsonStreamer;

    fn send(core: &mut Core, sid: u64, text: &str) -> Delivery {
        let mut items = Vec::new();
        let mut s = JsonStreamer::new();
        s.feed(text.as_bytes(), &mut items);
        let item = items.into_iter().next().expect("one message");
        core.handle(sid, item)
    }

    fn core_with(args: &[&str], version: Version) -> Core {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let cfg = crate::cmdline::parse("qemu-system-x86_64", &args, |_| None).unwrap();
        let profile = Profile::get(version, Flavor::System).unwrap();
        let mut core = Core::new(profile, &CoreConfig::default());
        core.run_cmdline(&cfg).unwrap();
        core
    }

    #[test]
    fn a_command_line_disk_is_in_query_block_and_its_node_in_use() {
        let mut core = core_with(
            &[
                "-M",
                "pc",
                "-blockdev",
                r#"{"driver": "null-co", "node-name": "n0"}"#,
                "-device",
                "virtio-blk-pci,drive=n0,id=vd0",
            ],
            Version::V10_0,
        );
        let (sid, _) = core.open_session();
        send(&mut core, sid, r#"{"execute": "qmp_capabilities"}"#);
        let d = send(&mut core, sid, r#"{"execute": "query-block"}"#);
        let reply = d.reply.unwrap();
        assert!(reply.contains(r#""qdev": "/machine/peripheral/vd0/virtio-backend""#));
        assert!(reply.contains(r#""node-name": "n0""#));
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "blockdev-del", "arguments": {"node-name": "n0"}}"#,
        );
        assert!(d.reply.unwrap().contains("Node n0 is in use"));
    }

    #[test]
    fn scsi_unplug_is_synchronous_and_pci_unplug_waits_for_the_guest() {
        let mut core = core_with(&["-M", "pc"], Version::V7_2);
        let (sid, _) = core.open_session();
        for c in [
            r#"{"execute": "qmp_capabilities"}"#,
            r#"{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0"}}"#,
            r#"{"execute": "device_add", "arguments": {"driver": "virtio-scsi-pci", "id": "scsi0"}}"#,
            r#"{"execute": "device_add", "arguments": {"driver": "scsi-hd", "drive": "n0", "id": "sd0"}}"#,
        ] {
            assert_eq!(send(&mut core, sid, c).reply.unwrap(), r#"{"return": {}}"#);
        }
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "device_del", "arguments": {"id": "scsi0"}}"#,
        );
        assert!(d.after.is_empty() && d.events.is_empty());
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "device_del", "arguments": {"id": "sd0"}}"#,
        );
        assert_eq!(d.after.len(), 1);
        assert!(d.after[0].contains(r#""event": "DEVICE_DELETED""#));
        assert!(core.machine().devices().find("sd0").is_none());
        assert!(core.machine().devices().find("scsi0").is_some());
    }

    #[test]
    fn a_guest_that_answers_ejects_pci_devices_once_it_runs() {
        let mut core = core_with(
            &[
                "-M",
                "pc",
                "--mock-guest-unplug",
                "-blockdev",
                r#"{"driver": "null-co", "node-name": "n0"}"#,
                "-blockdev",
                r#"{"driver": "null-co", "node-name": "n1"}"#,
                "-device",
                "virtio-blk-pci,drive=n0,id=vd0",
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-device",
                "scsi-hd,drive=n1,id=sd0",
            ],
            Version::V10_0,
        );
        let (sid, _) = core.open_session();
        send(&mut core, sid, r#"{"execute": "qmp_capabilities"}"#);
        // A paused guest answers nothing: the request waits for `cont`.
        send(&mut core, sid, r#"{"execute": "stop"}"#);
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "device_del", "arguments": {"id": "vd0"}}"#,
        );
        assert!(d.after.is_empty());
        let d = send(&mut core, sid, r#"{"execute": "cont"}"#);
        assert_eq!(d.after.len(), 2, "{:?}", d.after);
        assert!(d.after[0].contains(r#""path": "/machine/peripheral/vd0/virtio-backend""#));
        assert!(d.after[1].contains(r#""device": "vd0""#));
        // Running: a controller goes at once, its disk first.
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "device_del", "arguments": {"id": "scsi0"}}"#,
        );
        assert_eq!(d.after.len(), 3, "{:?}", d.after);
        assert!(d.after[0].contains(r#""device": "sd0""#));
        assert!(d.after[2].contains(r#""device": "scsi0""#));
        assert_eq!(core.machine().devices().iter().count(), 0);
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "blockdev-del", "arguments": {"node-name": "n1"}}"#,
        );
        assert_eq!(d.reply.unwrap(), r#"{"return": {}}"#);
    }

    #[test]
    fn a_libvirt_command_line_starts_with_models_the_mock_does_not_simulate() {
        let mut core = core_with(
            &[
                "-machine",
                "pc-q35-7.2,usb=off,vmport=off,dump-guest-core=off",
                "-accel",
                "tcg",
                "-device",
                r#"{"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x2"}"#,
                "-device",
                r#"{"driver":"pcie-root-port","port":17,"chassis":2,"id":"pci.2","bus":"pcie.0","addr":"0x2.0x1"}"#,
                "-device",
                r#"{"driver":"pcie-root-port","port":18,"chassis":3,"id":"pci.3","bus":"pcie.0","addr":"0x2.0x2"}"#,
                "-device",
                r#"{"driver":"qemu-xhci","p2":15,"p3":15,"id":"usb","bus":"pci.2","addr":"0x0"}"#,
                "-blockdev",
                r#"{"driver":"null-co","node-name":"libvirt-1-format"}"#,
                "-device",
                r#"{"driver":"virtio-blk-pci","bus":"pci.3","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}"#,
                "-netdev",
                r#"{"type":"user","id":"hostnet0"}"#,
                "-device",
                r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:00:00:01","bus":"pci.1","addr":"0x0"}"#,
                "-device",
                r#"{"driver":"usb-tablet","id":"input0","bus":"usb.0","port":"1"}"#,
            ],
            Version::V10_0,
        );
        assert_eq!(core.machine().devices().iter().count(), 7);
        let (sid, _) = core.open_session();
        send(&mut core, sid, r#"{"execute": "qmp_capabilities"}"#);
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "device_add", "arguments": {"driver": "virtio-net-pci", "id": "net1", "bus": "pci.1"}}"#,
        );
        assert!(d
            .reply
            .unwrap()
            .contains("mock-qemu: device model 'virtio-net-pci'"));
        // The NIC holds its port's slot.
        let d = send(
            &mut core,
            sid,
            r#"{"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "drive": "libvirt-1-format", "id": "d", "bus": "pci.1", "addr": "0x0"}}"#,
        );
        assert!(d
            .reply
            .unwrap()
            .contains("in use by virtio-net-pci,id=net0"));
    }

    #[test]
    fn machine_none_has_no_pci_bus() {
        let args = ["-M", "none", "-device", "virtio-scsi-pci,id=s"];
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let cfg = crate::cmdline::parse("qemu-system-x86_64", &args, |_| None).unwrap();
        let profile = Profile::get(Version::V10_0, Flavor::System).unwrap();
        let mut core = Core::new(profile, &CoreConfig::default());
        assert_eq!(
            core.run_cmdline(&cfg).unwrap_err(),
            "-device virtio-scsi-pci,id=s: No 'PCI' bus found for device 'virtio-scsi-pci'"
        );
    }

    #[test]
    fn ids_follow_qemu_rules() {
        assert!(id_wellformed("vd0"));
        assert!(id_wellformed("a-b.c_d"));
        assert!(!id_wellformed("1bad"));
        assert!(!id_wellformed(""));
        assert!(!id_wellformed("a b"));
    }
}
