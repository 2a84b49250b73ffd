//! QEMU's JSON stream parser and writer: split invariance, round trip,
//! error text. Input layout and properties: `mock_qemu_fuzz::codec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mock_qemu_fuzz::codec::run(data);
});
