//! Schema-driven argument validation (being written).
