//! Fuzz `ballast::path::canonical`: never a panic, and what it accepts is
//! truly canonical: absolute, no empty, `.` or `..` segment, no encoded or
//! raw separator, nothing left to decode, and a fixed point.
#![no_main]

use ballast::path::canonical;
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = canonical(path) else {
        return;
    };
    assert!(c.starts_with('/'), "{c:?}");
    assert!(!c.contains("//"), "{c:?}");
    assert!(c.split('/').all(|s| s != "." && s != ".."), "{c:?}");
    assert!(!c.contains('\\') && !c.bytes().any(|b| b.is_ascii_control()), "{c:?}");
    let bytes = c.as_bytes();
    for (i, _) in c.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(hex.iter().all(|h| !h.is_ascii_lowercase()), "{c:?}");
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~/\\\0".contains(&value)),
            "{c:?} still encodes {value:#x}"
        );
    }
    assert!(matches!(canonical(&c), Ok(Cow::Borrowed(_))), "{c:?} is not a fixed point");
});
