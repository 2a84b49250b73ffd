//! The wire: QEMU's JSON dialect, QMP messages, schema-driven argument checks.
//!
//! Nothing outside this module knows how QMP is framed or how QEMU orders,
//! escapes and parses JSON.

pub mod error;
pub mod json;
pub mod qobject;
pub mod schema;
pub mod shape;
