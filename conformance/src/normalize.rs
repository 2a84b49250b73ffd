//! Normalization: what real QEMU varies from run to run is masked before
//! two transcripts are compared. Each rule is documented in
//! `fixtures/README.md` (section "Normalization").
//!
//! 1. Event `timestamp` values become `{"seconds": 0, "microseconds": 0}`.
//! 2. The target's private work folder is written `<workdir>`.
//!
//! Rules for job progress, generated node names and drain pairs come with
//! the graph and job suites.

/// Context for one transcript's normalization.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    /// Absolute paths to replace with `<workdir>`, longest first.
    pub workdirs: Vec<String>,
}

impl Normalizer {
    /// Normalizes one received line's text (bytes stay comparable: only
    /// the masked spans change).
    pub fn line(&self, line: &str) -> String {
        let mut s = mask_timestamps(line);
        for w in &self.workdirs {
            if !w.is_empty() {
                s = s.replace(w.as_str(), "<workdir>");
            }
        }
        s
    }
}

/// Replaces every `"timestamp": {…}` object's contents.
fn mask_timestamps(line: &str) -> String {
    const KEY: &str = "\"timestamp\": {";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(KEY) {
        out.push_str(&rest[..pos + KEY.len()]);
        let after = &rest[pos + KEY.len()..];
        match after.find('}') {
            Some(end) => {
                out.push_str("\"seconds\": 0, \"microseconds\": 0");
                rest = &after[end..];
            }
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_workdir_are_masked() {
        let n = Normalizer {
            workdirs: vec!["/tmp/abc".into()],
        };
        assert_eq!(
            n.line(r#"{"timestamp": {"seconds": 17, "microseconds": 5}, "event": "X", "data": {"f": "/tmp/abc/a.qcow2"}}"#),
            r#"{"timestamp": {"seconds": 0, "microseconds": 0}, "event": "X", "data": {"f": "<workdir>/a.qcow2"}}"#
        );
    }
}
