//! Guest devices as state: the machine type's buses and the storage
//! devices (`virtio-blk-pci`, `virtio-scsi-pci`, `scsi-hd`) with their QOM
//! paths. A disk's BlockBackend lives in the graph under the owner name
//! [`Device::backend_owner`]; this table holds what qdev knows.

/// A device model the mock knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `virtio-blk-pci`: a PCI disk (its BlockBackend belongs to the
    /// `virtio-backend` child).
    VirtioBlkPci,
    /// `virtio-scsi-pci`: a PCI SCSI controller (provides a SCSI bus).
    VirtioScsiPci,
    /// `scsi-hd`: a disk on a SCSI bus.
    ScsiHd,
    /// `pcie-root-port`: a PCIe port (provides a hot-pluggable PCIe bus
    /// named by its id, for one device).
    PcieRootPort,
    /// A model the mock does not simulate, given on the command line (a
    /// launcher's NIC, USB controller, …): it only holds its id and, for a
    /// PCI device, its slot.
    Opaque {
        /// It sits on a PCI bus.
        pci: bool,
    },
}

impl DeviceKind {
    /// From a driver name.
    pub fn from_driver(driver: &str) -> Option<DeviceKind> {
        match driver {
            "virtio-blk-pci" => Some(DeviceKind::VirtioBlkPci),
            "virtio-scsi-pci" => Some(DeviceKind::VirtioScsiPci),
            "scsi-hd" => Some(DeviceKind::ScsiHd),
            "pcie-root-port" => Some(DeviceKind::PcieRootPort),
            _ => None,
        }
    }

    /// The driver name.
    pub fn driver(self) -> &'static str {
        match self {
            DeviceKind::VirtioBlkPci => "virtio-blk-pci",
            DeviceKind::VirtioScsiPci => "virtio-scsi-pci",
            DeviceKind::ScsiHd => "scsi-hd",
            DeviceKind::PcieRootPort => "pcie-root-port",
            DeviceKind::Opaque { .. } => "",
        }
    }

    /// The bus type it plugs into (`No 'PCI' bus found …`).
    pub fn bus_type(self) -> &'static str {
        match self {
            DeviceKind::VirtioBlkPci
            | DeviceKind::VirtioScsiPci
            | DeviceKind::PcieRootPort
            | DeviceKind::Opaque { pci: true } => "PCI",
            DeviceKind::ScsiHd => "SCSI",
            DeviceKind::Opaque { pci: false } => "",
        }
    }

    /// The device that owns the `drive` property (`Property
    /// 'virtio-blk-device.drive' can't find value …`): virtio-blk-pci
    /// aliases it to its virtio-blk-device child.
    pub fn drive_owner(self) -> &'static str {
        match self {
            DeviceKind::VirtioBlkPci => "virtio-blk-device",
            DeviceKind::VirtioScsiPci => "virtio-scsi-pci",
            DeviceKind::ScsiHd => "scsi-hd",
            DeviceKind::PcieRootPort => "pcie-root-port",
            DeviceKind::Opaque { .. } => "",
        }
    }

    /// Whether it is a disk (has a `drive`).
    pub fn is_disk(self) -> bool {
        matches!(self, DeviceKind::VirtioBlkPci | DeviceKind::ScsiHd)
    }
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The qdev id (`None`: anonymous).
    pub id: Option<String>,
    /// The model.
    pub kind: DeviceKind,
    /// The driver name (`virtio-blk-pci`, `qemu-xhci`, …).
    pub driver: String,
    /// Its QOM path (`/machine/peripheral/ID`,
    /// `/machine/peripheral-anon/device[N]`).
    pub path: String,
    /// The name of the bus it sits on (`pci.0`, `pcie.0`, a root port's
    /// id, `ID.0` of a SCSI controller).
    pub bus: String,
    /// A PCI device's slot and function on its bus.
    pub devfn: Option<(u8, u8)>,
    /// `device_del` asked the guest to release it (ACPI PCI hot-unplug),
    /// and the guest has not.
    pub unplug_pending: bool,
}

impl Device {
    /// What `query-block` calls the device (`qdev`) and permission errors
    /// name (`block device '…'`): the id of a device that has one, else
    /// its path; a virtio-blk-pci's BlockBackend belongs to its
    /// `virtio-backend` child, which has no id.
    pub fn qdev(&self) -> String {
        match (self.kind, &self.id) {
            (DeviceKind::VirtioBlkPci, _) => format!("{}/virtio-backend", self.path),
            (_, Some(id)) => id.clone(),
            (_, None) => self.path.clone(),
        }
    }

    /// The owner name of its BlockBackend in the graph.
    pub fn backend_owner(&self) -> String {
        format!("device:{}", self.qdev())
    }
}

/// The owner-name prefix of devices' BlockBackends in the graph.
pub const BACKEND_PREFIX: &str = "device:";

/// A bus devices plug into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bus {
    /// Its name (`pci.0`, `pcie.0`, `pci.1`, `scsi0.0`).
    pub name: String,
    /// `PCI` or `SCSI`.
    pub kind: &'static str,
    /// Devices may be added and removed while the machine exists.
    pub hotpluggable: bool,
    /// A PCIe port's bus (one device, in slot 0).
    pub port: bool,
}

/// Every device, in creation order, and the machine's buses.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    /// The machine type (`None`: QEMU's default, `pc`).
    machine: Option<String>,
    list: Vec<Device>,
    /// Mock-only: the guest ejects devices it is asked to unplug.
    guest_unplug: bool,
}

impl Devices {
    /// Sets the machine type (`-M`).
    pub fn set_machine_type(&mut self, machine: Option<&str>) {
        self.machine = machine.map(str::to_owned);
    }

    /// Mock-only (`--mock-guest-unplug`): the running guest answers PCI
    /// unplug requests.
    pub fn set_guest_unplug(&mut self, on: bool) {
        self.guest_unplug = on;
    }

    /// Whether the guest answers unplug requests.
    pub fn guest_unplug(&self) -> bool {
        self.guest_unplug
    }

    /// The buses a device provides (a root port's, a controller's).
    pub fn buses_of(&self, d: &Device) -> Vec<String> {
        match (d.kind, &d.id) {
            (DeviceKind::PcieRootPort, Some(id)) => vec![id.clone()],
            (DeviceKind::VirtioScsiPci, id) => {
                vec![format!("{}.0", id.as_deref().unwrap_or("scsi"))]
            }
            _ => vec![],
        }
    }

    /// A device and everything plugged below it, children first (the
    /// order QEMU unrealizes them in). Each device once, even where ids
    /// make bus names collide (`x.0` of a controller `x` and a port `x.0`).
    pub fn subtree(&self, path: &str) -> Vec<Device> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        self.collect(path, &mut seen, &mut out);
        out
    }

    fn collect(
        &self,
        path: &str,
        seen: &mut std::collections::BTreeSet<String>,
        out: &mut Vec<Device>,
    ) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        let Some(d) = self.list.iter().find(|d| d.path == path) else {
            return;
        };
        for bus in self.buses_of(d) {
            for child in self.list.iter().filter(|c| c.bus == bus) {
                self.collect(&child.path, seen, out);
            }
        }
        out.push(d.clone());
    }

    /// Every device whose unplug the guest was asked for, oldest first.
    pub fn pending_unplugs(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|d| d.unplug_pending)
            .map(|d| d.path.clone())
            .collect()
    }

    /// Whether the machine has vCPUs (every type but `none`).
    pub fn has_cpus(&self) -> bool {
        self.machine.as_deref() != Some("none")
    }

    /// Every device, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Device> {
        self.list.iter()
    }

    /// The device with this id, or this QOM path.
    pub fn find(&self, id_or_path: &str) -> Option<&Device> {
        if id_or_path.starts_with('/') {
            self.list.iter().find(|d| d.path == id_or_path)
        } else {
            self.list
                .iter()
                .find(|d| d.id.as_deref() == Some(id_or_path))
        }
    }

    /// The path a new device gets: `/machine/peripheral/ID`, or the lowest
    /// free `device[N]` under `/machine/peripheral-anon` (QOM's `[*]`).
    pub fn path_for(&self, id: Option<&str>) -> String {
        match id {
            Some(id) => format!("/machine/peripheral/{id}"),
            None => (0..)
                .map(|n| format!("/machine/peripheral-anon/device[{n}]"))
                .find(|p| !self.list.iter().any(|d| &d.path == p))
                .unwrap_or_default(),
        }
    }

    /// The machine's PCI root bus: `pcie.0` (not hot-pluggable) for q35
    /// types, `pci.0` for the others, none for `none`.
    pub fn root_bus(&self) -> Option<Bus> {
        let m = self.machine.as_deref().unwrap_or("pc");
        if m == "none" {
            return None;
        }
        let q35 = m == "q35" || m.starts_with("pc-q35");
        Some(Bus {
            name: if q35 { "pcie.0" } else { "pci.0" }.into(),
            kind: "PCI",
            hotpluggable: !q35,
            port: false,
        })
    }

    /// The buses devices provide, in creation order.
    fn device_buses(&self) -> impl Iterator<Item = Bus> + '_ {
        self.list.iter().filter_map(|d| match (d.kind, &d.id) {
            (DeviceKind::PcieRootPort, Some(id)) => Some(Bus {
                name: id.clone(),
                kind: "PCI",
                hotpluggable: true,
                port: true,
            }),
            (DeviceKind::VirtioScsiPci, id) => Some(Bus {
                name: format!("{}.0", id.as_deref().unwrap_or("scsi")),
                kind: "SCSI",
                hotpluggable: true,
                port: false,
            }),
            _ => None,
        })
    }

    /// A bus by name.
    pub fn bus(&self, name: &str) -> Option<Bus> {
        self.root_bus()
            .into_iter()
            .chain(self.device_buses())
            .find(|b| b.name == name)
    }

    /// The first bus of a type (`PCI`, `SCSI`): where a device without
    /// `bus` goes.
    pub fn first_bus(&self, kind: &str) -> Option<Bus> {
        self.root_bus()
            .into_iter()
            .chain(self.device_buses())
            .find(|b| b.kind == kind)
    }

    /// The device at a slot and function of a PCI bus, if any.
    pub fn at(&self, bus: &str, devfn: (u8, u8)) -> Option<&Device> {
        self.list
            .iter()
            .find(|d| d.bus == bus && d.devfn == Some(devfn))
    }

    /// Whether a slot and function of a root bus is taken by the machine's
    /// own devices (host bridge; PIIX3 on `pc`, ICH9 functions on q35).
    pub fn builtin_at(&self, bus: &Bus, devfn: (u8, u8)) -> bool {
        match bus.name.as_str() {
            "pci.0" => devfn.0 == 0 || devfn.0 == 1,
            "pcie.0" => devfn == (0, 0) || (devfn.0 == 0x1f && matches!(devfn.1, 0 | 2 | 3)),
            _ => false,
        }
    }

    /// The lowest slot whose function 0 is free (`PCI_DEVFN_AUTO`).
    pub fn free_slot(&self, bus: &Bus) -> Option<u8> {
        (0..32u8).find(|s| !self.builtin_at(bus, (*s, 0)) && self.at(&bus.name, (*s, 0)).is_none())
    }

    /// Adds a device.
    pub fn add(&mut self, device: Device) {
        self.list.push(device);
    }

    /// Marks a device's unplug as requested.
    pub fn set_unplug_pending(&mut self, path: &str) {
        if let Some(d) = self.list.iter_mut().find(|d| d.path == path) {
            d.unplug_pending = true;
        }
    }

    /// Removes a device; returns it.
    pub fn remove(&mut self, path: &str) -> Option<Device> {
        let i = self.list.iter().position(|d| d.path == path)?;
        Some(self.list.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: Option<&str>, kind: DeviceKind, d: &Devices) -> Device {
        Device {
            id: id.map(str::to_owned),
            kind,
            driver: kind.driver().to_owned(),
            path: d.path_for(id),
            bus: "pci.0".into(),
            devfn: None,
            unplug_pending: false,
        }
    }

    #[test]
    fn anonymous_paths_take_the_lowest_free_index() {
        let mut d = Devices::default();
        let a = dev(None, DeviceKind::VirtioScsiPci, &d);
        d.add(a);
        let b = dev(None, DeviceKind::ScsiHd, &d);
        assert_eq!(b.path, "/machine/peripheral-anon/device[1]");
        assert_eq!(b.qdev(), "/machine/peripheral-anon/device[1]");
        d.add(b);
        d.remove("/machine/peripheral-anon/device[0]");
        assert_eq!(d.path_for(None), "/machine/peripheral-anon/device[0]");
    }

    #[test]
    fn colliding_bus_names_do_not_loop() {
        let mut d = Devices::default();
        let mut port = dev(Some("x.0"), DeviceKind::PcieRootPort, &d);
        port.bus = "pci.0".into();
        d.add(port);
        // A controller `x` provides `x.0` too, and sits on the port's bus.
        let mut ctl = dev(Some("x"), DeviceKind::VirtioScsiPci, &d);
        ctl.bus = "x.0".into();
        d.add(ctl);
        let sub = d.subtree("/machine/peripheral/x");
        assert_eq!(sub.len(), 1);
        let sub = d.subtree("/machine/peripheral/x.0");
        assert_eq!(sub.len(), 2);
    }

    #[test]
    fn qdev_names_the_virtio_backend_of_a_virtio_blk() {
        let d = Devices::default();
        let v = dev(Some("vd0"), DeviceKind::VirtioBlkPci, &d);
        assert_eq!(v.qdev(), "/machine/peripheral/vd0/virtio-backend");
        let s = dev(Some("sd0"), DeviceKind::ScsiHd, &d);
        assert_eq!(s.qdev(), "sd0");
        assert_eq!(d.root_bus().map(|b| b.name), Some("pci.0".to_owned()));
    }
}
