//! The one time source of the model: a virtual clock.
//!
//! Event timestamps and (later) job progress come from here, never from the
//! host's wall clock, so the same inputs give the same transcript.

/// A point in virtual time: microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtualTime(pub u64);

impl VirtualTime {
    /// Whole seconds.
    pub fn seconds(self) -> u64 {
        self.0 / 1_000_000
    }
    /// The microseconds within the second.
    pub fn subsec_micros(self) -> u64 {
        self.0 % 1_000_000
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: VirtualTime,
}

impl VirtualClock {
    /// A clock reading `epoch`.
    pub fn new(epoch: VirtualTime) -> Self {
        VirtualClock { now: epoch }
    }
    /// The current time.
    pub fn now(&self) -> VirtualTime {
        self.now
    }
    /// Moves time forward (saturating).
    pub fn advance(&mut self, micros: u64) {
        self.now = VirtualTime(self.now.0.saturating_add(micros));
    }
}
