//! QEMU-compatible JSON streaming parser and writer (being written).
