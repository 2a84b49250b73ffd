//! Stateful fuzzing of the block layer: sequences of typed block operations
//! through `mock_qemu::core::Core`. Input and properties:
//! `mock_qemu_fuzz::blockops`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mock_qemu_fuzz::blockops::BlockopsInput;

fuzz_target!(|input: BlockopsInput| {
    mock_qemu_fuzz::blockops::run(&input);
});
