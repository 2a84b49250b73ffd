//! Whole QMP sessions against `mock_qemu::core::Core`, driven like the
//! server drives it. Input and properties: `mock_qemu_fuzz::session`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mock_qemu_fuzz::session::SessionInput;

fuzz_target!(|input: SessionInput| {
    mock_qemu_fuzz::session::run(&input);
});
