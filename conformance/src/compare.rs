//! Comparing a transcript against a golden one.
//!
//! Received lines are compared as JSON values (member order ignored, as the
//! QMP spec allows) after normalization; in [`Mode::Bytes`] the normalized
//! text must also be identical, which checks framing, separators, escapes
//! and QEMU's member order. Lines that are not JSON (QEMU echoes `1e400`
//! as `inf`) are compared as text.

use crate::normalize::Normalizer;
use crate::transcript::{Entry, Transcript};

/// How strict the comparison is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON values must be equal.
    Json,
    /// JSON values and the normalized bytes must be equal.
    Bytes,
}

/// The first difference found.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// Index of the differing entry.
    pub index: usize,
    /// What differs.
    pub what: String,
    /// Golden entry (rendered), if any.
    pub expected: Option<String>,
    /// Actual entry (rendered), if any.
    pub actual: Option<String>,
    /// A unified diff of the two normalized transcripts.
    pub diff: String,
}

fn render_entry(e: &Entry) -> String {
    Transcript {
        header: vec![],
        entries: vec![e.clone()],
    }
    .render()
    .trim_end()
    .to_owned()
}

fn normalized(t: &Transcript, n: &Normalizer) -> Vec<Entry> {
    crate::normalize::float_job_events(crate::normalize::entries(t, n))
}

fn json_eq(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Compares `actual` with `golden`; `Ok` when they agree.
pub fn compare(
    golden: &Transcript,
    gn: &Normalizer,
    actual: &Transcript,
    an: &Normalizer,
    mode: Mode,
) -> Result<(), Box<Mismatch>> {
    let g = normalized(golden, gn);
    let a = normalized(actual, an);
    let diff = || {
        let gt = Transcript {
            header: vec![],
            entries: g.clone(),
        }
        .render();
        let at = Transcript {
            header: vec![],
            entries: a.clone(),
        }
        .render();
        similar::TextDiff::from_lines(&gt, &at)
            .unified_diff()
            .context_radius(3)
            .header("golden (real QEMU)", "actual")
            .to_string()
    };
    for i in 0..g.len().max(a.len()) {
        let (ge, ae) = (g.get(i), a.get(i));
        let what = match (ge, ae) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(Entry::Recv(x)), Some(Entry::Recv(y)))
            | (Some(Entry::RecvBadFraming(x)), Some(Entry::RecvBadFraming(y))) => {
                if !json_eq(x, y) {
                    "different message".to_owned()
                } else if mode == Mode::Bytes {
                    "same JSON value, different bytes (member order, spacing or escapes)".to_owned()
                } else {
                    continue;
                }
            }
            (Some(Entry::Recv(_)), Some(Entry::RecvBadFraming(_)))
            | (Some(Entry::RecvBadFraming(_)), Some(Entry::Recv(_))) => {
                "line framing differs (CRLF expected)".to_owned()
            }
            (Some(_), None) => "actual transcript ends early".to_owned(),
            (None, Some(_)) => "actual transcript has more".to_owned(),
            _ => "different entry".to_owned(),
        };
        return Err(Box::new(Mismatch {
            index: i,
            what,
            expected: ge.map(render_entry),
            actual: ae.map(render_entry),
            diff: diff(),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(lines: &[Entry]) -> Transcript {
        Transcript {
            header: vec![],
            entries: lines.to_vec(),
        }
    }

    #[test]
    fn member_order_matters_only_in_byte_mode() {
        let g = t(&[Entry::Recv(r#"{"return": {}, "id": 1}"#.into())]);
        let a = t(&[Entry::Recv(r#"{"id": 1, "return": {}}"#.into())]);
        let n = Normalizer::default();
        assert!(compare(&g, &n, &a, &n, Mode::Json).is_ok());
        let m = compare(&g, &n, &a, &n, Mode::Bytes).unwrap_err();
        assert!(m.what.contains("different bytes"), "{}", m.what);
    }

    #[test]
    fn a_missing_line_is_reported_with_a_diff() {
        let g = t(&[Entry::Recv("{\"return\": {}}".into()), Entry::Closed]);
        let a = t(&[Entry::Recv("{\"return\": {}}".into())]);
        let n = Normalizer::default();
        let m = compare(&g, &n, &a, &n, Mode::Json).unwrap_err();
        assert_eq!(m.index, 1);
        assert!(m.diff.contains("-== closed"), "{}", m.diff);
    }
}
