//! mock-qemu: a fake QEMU that speaks QMP as real QEMU does.
//!
//! Codemap (see ARCHITECTURE.md for the request flow and invariants):
//! - [`qmp`]: the wire. QEMU's JSON dialect (streaming parser, writer with
//!   QDict member order), QMP errors, the schema-driven argument checker.
//! - [`profile`]: recorded data of each impersonated QEMU (schema, version).
//! - [`core`]: the single owner of the state; QMP dispatch and negotiation.
//! - [`cmd`]: one struct per command.
//! - [`model`]: the sans-IO state model (machine, virtual clock).
//! - [`server`]: sessions and listeners (tokio).
//! - [`cmdline`]: QEMU's command line.
#![warn(missing_docs)]

pub mod cmd;
pub mod cmdline;
pub mod core;
pub mod host;
pub mod image;
pub mod model;
pub mod nbd;
pub mod profile;
pub mod qmp;
pub mod replies;
pub mod server;
pub mod sys;
