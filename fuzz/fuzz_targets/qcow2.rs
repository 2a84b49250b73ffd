//! The mock's qcow2 header parser on arbitrary file contents.
//! Properties: `mock_qemu_fuzz::qcow2`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mock_qemu_fuzz::qcow2::run(data);
});
