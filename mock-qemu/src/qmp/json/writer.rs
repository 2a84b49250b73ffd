//! QEMU's compact JSON writer (`qobject/json-writer.c`, `qobject/qjson.c`)
//! and the modified-UTF-8 decoder it relies on (`util/unicode.c`).

use std::fmt::Write as _;

use crate::qmp::qobject::{QNum, QObject};

/// How doubles are spelled on the wire; everything else is identical across
/// the QEMU versions checked (5.2, 7.2, 10.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// QEMU 6.0 and later (`json_writer_double`): `printf("%.17g")`, e.g.
    /// `0.10000000000000001`, `1e+100`, `1.8446744073709552e+19`, `inf`, `-0`.
    #[default]
    Modern,
    /// QEMU 5.2 and earlier (`qnum_to_string`): `printf("%f")` with trailing
    /// zeros and a trailing `.` stripped, e.g. `0.1`, `18446744073709551616`,
    /// `0` for `1e-7`, `inf`, `-0`.
    Legacy,
}

/// QEMU's `is_valid_codepoint()`: in range, not a surrogate, not one of the
/// 66 Unicode noncharacters.
pub(crate) fn is_valid_codepoint(cp: i64) -> bool {
    if !(0..=0x10FFFF).contains(&cp) {
        return false;
    }
    if (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE {
        return false;
    }
    !(0xD800..=0xDFFF).contains(&cp)
}

/// QEMU's `mod_utf8_codepoint(s + i, 6, &end)` on a buffer that behaves as
/// if NUL-terminated at `s.len()`.  Returns the code point (or -1) and the
/// index just past what was consumed.
pub(crate) fn mod_utf8_codepoint(s: &[u8], i: usize) -> (i64, usize) {
    const MIN_CP: [i64; 5] = [0x80, 0x800, 0x10000, 0x20_0000, 0x400_0000];
    let at = |j: usize| s.get(j).copied().unwrap_or(0);
    let first = at(i);
    if first == 0 {
        return (-1, i);
    }
    let mut p = i + 1;
    let cp = if first < 0x80 {
        i64::from(first)
    } else if first >= 0xFE || first & 0x40 == 0 {
        -1 // impossible byte, or unexpected continuation byte
    } else {
        let len = first.leading_ones() as usize; // 2..=6
        let mut cp = i64::from(first & (0xFF >> (len + 1)));
        for _ in 1..len {
            let byte = at(p);
            if byte & 0xC0 != 0x80 {
                return (-1, p); // continuation byte missing
            }
            p += 1;
            cp = (cp << 6) | i64::from(byte & 0x3F);
        }
        if !is_valid_codepoint(cp) || (cp < MIN_CP[len - 2] && !(cp == 0 && len == 2)) {
            -1
        } else {
            cp
        }
    };
    (cp, p)
}

/// Renders raw bytes the way QEMU's JSON writer would read them as a C
/// string: stops at the first NUL byte, decodes modified UTF-8, and turns
/// every invalid sequence (and every noncharacter) into U+FFFD. `C0 80`
/// becomes U+0000.
///
/// Serializing the result with [`to_json`] yields exactly the bytes QEMU
/// writes for the same raw string (e.g. an error message quoting bad input).
pub fn lossy_from_bytes(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        // Fast path: valid UTF-8 without NUL decodes to itself, apart from
        // noncharacters, which QEMU's decoder rejects.
        if !bytes.contains(&0) {
            return s
                .chars()
                .map(|c| if is_noncharacter(c) { '\u{FFFD}' } else { c })
                .collect();
        }
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while bytes.get(i).copied().unwrap_or(0) != 0 {
        let (cp, end) = mod_utf8_codepoint(bytes, i);
        let c = u32::try_from(cp)
            .ok()
            .and_then(char::from_u32)
            .unwrap_or('\u{FFFD}');
        out.push(c);
        i = end;
    }
    out
}

fn is_noncharacter(c: char) -> bool {
    let cp = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE
}

/// `quoted_str()`: `"`, `\`, BS, FF, LF, CR, TAB get short escapes, other
/// control characters and everything from DEL up become `\uXXXX` (upper-case
/// hex, surrogate pairs beyond the BMP); `/` is not escaped.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain_start = 0;
    for (idx, c) in s.char_indices() {
        if (' '..'\x7f').contains(&c) && c != '"' && c != '\\' {
            continue;
        }
        out.push_str(&s[plain_start..idx]);
        plain_start = idx + c.len_utf8();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => {
                let cp = if is_noncharacter(c) {
                    0xFFFD
                } else {
                    u32::from(c)
                };
                if cp > 0xFFFF {
                    let v = cp - 0x10000;
                    let _ = write!(
                        out,
                        "\\u{:04X}\\u{:04X}",
                        0xD800 + (v >> 10),
                        0xDC00 + (v & 0x3FF)
                    );
                } else {
                    let _ = write!(out, "\\u{cp:04X}");
                }
            }
        }
    }
    out.push_str(&s[plain_start..]);
    out.push('"');
}

/// glibc's spelling of non-finite values (`inf`, `-inf`, `nan`, `-nan`).
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some(if v.is_sign_negative() { "-nan" } else { "nan" })
    } else if v.is_infinite() {
        Some(if v < 0.0 { "-inf" } else { "inf" })
    } else {
        None
    }
}

/// Removes trailing zeros of a fractional part, then a bare trailing `.`.
fn trim_fraction(s: &mut String) {
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
}

/// `printf("%.17g", v)` as glibc does it (correctly rounded, ties to even).
fn format_g17(v: f64) -> String {
    const P: i32 = 17;
    if let Some(s) = non_finite(v) {
        return s.to_owned();
    }
    let mut out = String::new();
    if v.is_sign_negative() {
        out.push('-');
    }
    // 17 significant digits, exactly rounded: "d.dddddddddddddddde<X>".
    let sci = format!("{:.*e}", (P - 1) as usize, v.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let x: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    if (-4..P).contains(&x) {
        let mut s = String::new();
        if x >= 0 {
            let int_len = (x + 1) as usize;
            s.push_str(&digits[..int_len]);
            s.push('.');
            s.push_str(&digits[int_len..]);
        } else {
            s.push_str("0.");
            for _ in 0..(-x - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        }
        trim_fraction(&mut s);
        out.push_str(&s);
    } else {
        let mut m = format!("{}.{}", &digits[..1], &digits[1..]);
        trim_fraction(&mut m);
        out.push_str(&m);
        let _ = write!(out, "e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs());
    }
    out
}

/// QEMU 5.2's `qnum_to_string()`: `printf("%f")`, then trailing zeros and a
/// trailing `.` stripped.
fn format_f_trimmed(v: f64) -> String {
    if let Some(s) = non_finite(v) {
        return s.to_owned();
    }
    let mut s = String::new();
    if v.is_sign_negative() {
        s.push('-');
    }
    let _ = write!(s, "{:.6}", v.abs());
    // QEMU strips zeros even without a '.', but "%f" always has one here.
    trim_fraction(&mut s);
    s
}

/// How QEMU spells a double on the wire in the given [`Style`].
pub fn format_double(v: f64, style: Style) -> String {
    match style {
        Style::Modern => format_g17(v),
        Style::Legacy => format_f_trimmed(v),
    }
}

fn write_value(out: &mut String, v: &QObject, style: Style) {
    match v {
        QObject::Null => out.push_str("null"),
        QObject::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        QObject::Num(QNum::I64(i)) => {
            let _ = write!(out, "{i}");
        }
        QObject::Num(QNum::U64(u)) => {
            let _ = write!(out, "{u}");
        }
        QObject::Num(QNum::Double(d)) => out.push_str(&format_double(*d, style)),
        QObject::Str(s) => write_str(out, s),
        QObject::Raw(text) => out.push_str(text),
        QObject::List(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        QObject::Dict(d) => {
            out.push('{');
            for (n, (k, item)) in d.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item, style);
            }
            out.push('}');
        }
    }
}

/// Appends QEMU's compact serialization of `v` to `out` (no trailing CRLF).
pub fn write_json(out: &mut String, v: &QObject, style: Style) {
    write_value(out, v, style);
}

/// QEMU's compact wire serialization of a QObject, as `qobject_to_json()`
/// produces it (QEMU 6.0+ number spelling), without the trailing `"\r\n"`.
///
/// Separators are `", "` and `": "`, dict members come out in
/// [`QDict::iter`](crate::qmp::qobject::QDict::iter) order, and the output
/// is pure ASCII.
pub fn to_json(v: &QObject) -> String {
    to_json_with(v, Style::Modern)
}

/// Like [`to_json`], with the number spelling of the given QEMU generation.
pub fn to_json_with(v: &QObject, style: Style) -> String {
    let mut out = String::new();
    write_value(&mut out, v, style);
    out
}
