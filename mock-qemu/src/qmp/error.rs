//! QMP error replies: `{"class": …, "desc": …}`.
//!
//! A `desc` is protocol data, copied from what real QEMU sends (recorded
//! transcripts are the ground truth). It is never built from a Rust error's
//! `Display` text.

use std::fmt;

/// QEMU's five error classes (`qapi/error.json` `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything not listed below.
    GenericError,
    /// Unknown command, negotiation state errors.
    CommandNotFound,
    /// `block-job-*` on an unknown job.
    DeviceNotActive,
    /// `block-commit` device lookup, system-emulator tray/medium commands.
    DeviceNotFound,
    /// KVM lacks a capability.
    KVMMissingCap,
}

impl ErrorClass {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }

    /// The class a wire name stands for.
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        Some(match name {
            "GenericError" => ErrorClass::GenericError,
            "CommandNotFound" => ErrorClass::CommandNotFound,
            "DeviceNotActive" => ErrorClass::DeviceNotActive,
            "DeviceNotFound" => ErrorClass::DeviceNotFound,
            "KVMMissingCap" => ErrorClass::KVMMissingCap,
            _ => return None,
        })
    }
}

/// An error reply as QEMU would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// QEMU's exact text.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError` with the given text.
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// An error of a given class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.desc)
    }
}

impl std::error::Error for QmpError {}
