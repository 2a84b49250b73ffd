//! mock-qemu: a fake QEMU that speaks QMP as real QEMU does.
#![warn(missing_docs)]

pub mod qmp;
