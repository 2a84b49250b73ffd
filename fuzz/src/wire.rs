//! Helpers shared by the harnesses: parsing with the mock's own streamer and
//! walking [`QObject`]s.

use mock_qemu::qmp::json::{JsonStreamer, Parsed, Style};
use mock_qemu::qmp::qobject::{QNum, QObject};

/// Everything a fresh streamer yields for `bytes` followed by end of input.
pub fn parse_all(bytes: &[u8]) -> Vec<Parsed> {
    let mut streamer = JsonStreamer::new();
    let mut out = Vec::new();
    streamer.feed(bytes, &mut out);
    streamer.finish(&mut out);
    out
}

/// Parses text that must hold exactly one JSON value (a wire line).
pub fn parse_one(text: &str) -> Result<QObject, String> {
    let mut items = parse_all(text.as_bytes());
    match items.as_slice() {
        [Parsed::Value(_)] => match items.pop() {
            Some(Parsed::Value(v)) => Ok(v),
            _ => unreachable!(),
        },
        _ => Err(format!("expected exactly one value, parsed {items:?}")),
    }
}

/// A wire line as QEMU writes it: printable ASCII only (the writer escapes
/// everything else), hence a single line without CR or LF.
pub fn check_printable_ascii(line: &str) -> Result<(), String> {
    match line.bytes().position(|b| !(0x20..=0x7E).contains(&b)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "byte {:#04x} at offset {i} is not printable ASCII",
            line.as_bytes()[i]
        )),
    }
}

/// Whether the value holds a non-finite double (written as `inf`/`nan`,
/// which no JSON parser, QEMU's included, reads back).
pub fn has_non_finite(v: &QObject) -> bool {
    any_double(v, &|d| !d.is_finite())
}

/// Whether the value holds a NaN (QEMU's `strtod` never yields one for a
/// JSON number, so a parsed NaN is a parser bug).
pub fn has_nan(v: &QObject) -> bool {
    any_double(v, &|d| d.is_nan())
}

fn any_double(v: &QObject, pred: &dyn Fn(f64) -> bool) -> bool {
    match v {
        QObject::Num(QNum::Double(d)) => pred(*d),
        QObject::List(items) => items.iter().any(|i| any_double(i, pred)),
        QObject::Dict(d) => d.iter_inserted().any(|(_, i)| any_double(i, pred)),
        _ => false,
    }
}

/// Largest error of QEMU 5.2's `%f` spelling: half a unit in the sixth
/// decimal, plus what reading the decimal back may add.
fn legacy_tolerance(d: f64) -> f64 {
    5e-7 * (1.0 + 1e-9) + d.abs() * 4.0 * f64::EPSILON
}

fn as_f64(n: &QNum) -> f64 {
    match *n {
        QNum::I64(i) => i as f64,
        QNum::U64(u) => u as f64,
        QNum::Double(d) => d,
    }
}

/// How a number written in `style` must read back.
fn number_reads_back(orig: &QNum, back: &QNum, style: Style) -> bool {
    match (orig, back) {
        (QNum::I64(a), QNum::I64(b)) => a == b,
        (QNum::U64(a), QNum::U64(b)) => a == b,
        (QNum::I64(_) | QNum::U64(_), _) => false,
        (QNum::Double(d), back) => match style {
            // `%.17g` is exact; an integral value below 1e17 is spelled
            // without '.' or exponent and comes back as an integer (-0 as 0).
            Style::Modern => match *back {
                QNum::Double(e) => d.to_bits() == e.to_bits(),
                QNum::I64(i) => d.fract() == 0.0 && d.abs() < 1e17 && i as f64 == *d,
                QNum::U64(_) => false,
            },
            // `%f` keeps six decimals (and every integer digit).
            Style::Legacy => (as_f64(back) - d).abs() <= legacy_tolerance(*d),
        },
    }
}

/// Checks that `back`, parsed from `orig` written in `style`, is the same
/// value: same structure, strings and members (in any order), numbers as
/// [`number_reads_back`] allows. Returns the path of the first difference.
pub fn same_value(orig: &QObject, back: &QObject, style: Style) -> Result<(), String> {
    fn walk(orig: &QObject, back: &QObject, style: Style, path: &mut String) -> Result<(), String> {
        let same = match (orig, back) {
            (QObject::Null, QObject::Null) => true,
            (QObject::Bool(a), QObject::Bool(b)) => a == b,
            (QObject::Str(a), QObject::Str(b)) => a == b,
            (QObject::Num(a), QObject::Num(b)) => number_reads_back(a, b, style),
            (QObject::List(a), QObject::List(b)) => {
                if a.len() != b.len() {
                    return Err(format!("{path}: {} items became {}", a.len(), b.len()));
                }
                for (n, (x, y)) in a.iter().zip(b).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{n}]"));
                    walk(x, y, style, path)?;
                    path.truncate(len);
                }
                true
            }
            (QObject::Dict(a), QObject::Dict(b)) => {
                if a.len() != b.len() {
                    return Err(format!("{path}: {} members became {}", a.len(), b.len()));
                }
                for (k, x) in a.iter_inserted() {
                    let Some(y) = b.get(k) else {
                        return Err(format!("{path}: member {k:?} lost"));
                    };
                    let len = path.len();
                    path.push_str(&format!(".{k:?}"));
                    walk(x, y, style, path)?;
                    path.truncate(len);
                }
                true
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(format!("{path}: {orig:?} read back as {back:?}"))
        }
    }
    walk(orig, back, style, &mut String::from("$"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mock_qemu::qmp::json::to_json_with;

    #[test]
    fn numbers_read_back_as_documented() {
        for (v, style) in [
            (-0.0, Style::Modern),
            (1.0, Style::Modern),
            (0.1, Style::Modern),
            (1e300, Style::Modern),
            (1e-7, Style::Legacy),
            (0.1, Style::Legacy),
            (1e20, Style::Legacy),
            (-123.456789, Style::Legacy),
        ] {
            let orig = QObject::from(v);
            let back = parse_one(&to_json_with(&orig, style)).unwrap();
            same_value(&orig, &back, style).unwrap();
        }
        assert!(same_value(&QObject::from(0.5), &QObject::from(1i64), Style::Modern).is_err());
    }
}
