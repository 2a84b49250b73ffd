//! Fuzz harnesses for mock-qemu, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and the seed corpus generator in `examples/`.
//!
//! - [`blockops`]: stateful fuzzing of the block layer: typed block
//!   operations through a [`mock_qemu::core::Core`] (graph and job
//!   invariants, event sequences against the job transition table, every
//!   job ends once time advances, determinism).
//! - [`codec`]: QEMU's JSON stream parser and writer (split invariance,
//!   writer/parser round trip, error text shape).
//! - [`session`]: whole QMP sessions against a [`mock_qemu::core::Core`]
//!   (wire shape of every line, `id` echo, one reply per input item,
//!   negotiation rules, event fan-out, determinism).
//! - [`qcow2`]: the mock's qcow2 header parser (image files are client
//!   input too).
//! - [`memhost`]: the in-memory image files the session target's core uses.
//! - [`seed`]: turns the conformance scenarios into seed inputs.
//!
//! Every check panics with a message naming the property that failed, so a
//! libFuzzer crash report says what went wrong.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod blockops;
pub mod codec;
pub mod memhost;
pub mod qcow2;
pub mod seed;
pub mod session;
pub mod wire;
