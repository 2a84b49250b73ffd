//! conformance: scenarios, targets, recording and comparison of QMP transcripts.
//!
//! Codemap:
//! - [`scenario`]: the scenario format (`->` sends, `<-` expectations, directives).
//! - [`expect`]: patterns and matchers for expectations (`$any`, `$name:X`, …).
//! - [`transcript`]: recorded exchanges (`<-` lines exactly as received).
//! - [`play`]: plays a scenario over one connection, with sync markers.
//! - [`target`]: in-process mock, launched programs (mock binary, real QEMU), sockets.
//! - [`normalize`], [`compare`]: masking run-to-run variation; JSON and byte comparison.
//! - [`suite`]: where scenarios and golden transcripts live under `fixtures/`.
//! - [`runner`]: one case against one target, and its report.
//! - [`record`]: recording golden transcripts and profile data from real QEMU.
//! - [`matrix`]: what differs between QEMU versions (and whether the mock differs alike).
//! - [`client`]: checking QMP clients: the mock behind a judging, adversarial transport.
#![warn(missing_docs)]

pub mod client;
pub mod compare;
pub mod expect;
pub mod matrix;
pub mod normalize;
pub mod play;
pub mod probe;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod suite;
pub mod target;
pub mod transcript;
