//! Normalization: what real QEMU varies from run to run is masked before
//! two transcripts are compared. Each rule is documented in
//! `fixtures/README.md` (section "Normalization").
//!
//! 1. Event `timestamp` values become `{"seconds": 0, "microseconds": 0}`.
//! 2. The target's private work folder is written `<workdir>`.
//! 3. Generated node names (`#block` + a counter + two random digits in
//!    QEMU) become `#block~1`, `#block~2`, … in order of first appearance in
//!    the transcript ([`auto_node_names`]).
//! 4. Events right after a request are placed before it
//!    ([`events_before_requests`]): when an asynchronous event arrives
//!    relative to the client's next write is timing.
//!
//! Rules for job progress, generated node names and drain pairs come with
//! the graph and job suites.

use crate::transcript::Entry;

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

/// Moves events that arrive right after a request before that request.
///
/// An event QEMU raises asynchronously (a job finishing after its command
/// answered) reaches the client whenever it happens; whether the client had
/// already written its next request by then is timing, not behaviour. Events
/// still stay in their order relative to each other and to every reply.
pub fn events_before_requests(entries: &mut [Entry]) {
    let is_event = |e: &Entry| matches!(e, Entry::Recv(l) if l.contains("\"event\": "));
    let is_request = |e: &Entry| matches!(e, Entry::Sent(_) | Entry::SentRaw(_));
    let mut i = 1;
    while i < entries.len() {
        if is_event(&entries[i]) {
            // Bubble it up past the requests just above it.
            let mut j = i;
            while j > 0 && is_request(&entries[j - 1]) {
                entries.swap(j - 1, j);
                j -= 1;
            }
        }
        i += 1;
    }
}

/// Renames generated node names by order of first appearance, across the
/// received lines of one transcript.
pub fn auto_node_names(lines: &mut [&mut String]) {
    const P: &str = "#block";
    let mut seen: Vec<String> = Vec::new();
    for line in lines.iter_mut() {
        if !line.contains(P) {
            continue;
        }
        let mut out = String::with_capacity(line.len());
        let mut rest = line.as_str();
        while let Some(pos) = rest.find(P) {
            let digits = rest[pos + P.len()..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            out.push_str(&rest[..pos + P.len()]);
            if digits == 0 {
                rest = &rest[pos + P.len()..];
                continue;
            }
            let name = &rest[pos..pos + P.len() + digits];
            let k = match seen.iter().position(|s| s == name) {
                Some(k) => k + 1,
                None => {
                    seen.push(name.to_owned());
                    seen.len()
                }
            };
            out.push_str(&format!("~{k}"));
            rest = &rest[pos + P.len() + digits..];
        }
        out.push_str(rest);
        **line = out;
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
    fn events_move_before_the_requests_they_follow() {
        let ev = |n: u8| Entry::Recv(format!("{{\"event\": \"E{n}\"}}"));
        let mut e = vec![
            Entry::Recv("{\"return\": {}}".into()),
            Entry::Sent("q".into()),
            ev(1),
            ev(2),
            Entry::Recv("{\"return\": []}".into()),
        ];
        events_before_requests(&mut e);
        assert_eq!(
            e,
            vec![
                Entry::Recv("{\"return\": {}}".into()),
                ev(1),
                ev(2),
                Entry::Sent("q".into()),
                Entry::Recv("{\"return\": []}".into())
            ]
        );
    }

    #[test]
    fn generated_node_names_are_numbered_by_first_appearance() {
        let mut a = String::from(r##"{"node-name": "#block233", "x": "#block149"}"##);
        let mut b = String::from(r##"["#block149", "#block", "#block233x"]"##);
        auto_node_names(&mut [&mut a, &mut b]);
        assert_eq!(a, r##"{"node-name": "#block~1", "x": "#block~2"}"##);
        assert_eq!(b, r##"["#block~2", "#block", "#block~1x"]"##);
    }

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
