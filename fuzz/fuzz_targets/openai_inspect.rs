//! Fuzz `ballast::openai::inspect` through its fuzz entry point: every
//! endpoint, with and without normalisation rules. It must never panic, a
//! rewritten body must parse as JSON and inspect to itself, and error
//! messages stay short.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ballast::openai::fuzz_inspect(data);
});
