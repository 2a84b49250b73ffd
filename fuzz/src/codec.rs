//! The `codec` target: QEMU's JSON stream parser and writer.
//!
//! Input layout (raw bytes, no `Arbitrary`, so that any byte stream is a
//! seed after one leading `0x00`):
//!
//! ```text
//! [n] [len_1] … [len_n] [payload …]
//! ```
//!
//! `n` is the low nibble of the first byte (0..=15, clamped to what is
//! there); the `len_i` (0..=255) are chunk lengths, applied in a cycle over
//! the payload (a 0 is an empty `feed` call). `n = 0`, or all lengths 0,
//! feeds the payload as one chunk.
//!
//! Properties (see [`run`]):
//! 1. split invariance: feeding the payload whole, in the chunks above, or
//!    one byte at a time yields the same items, both before and after
//!    `finish` (QEMU's parser is a pure stream parser);
//! 2. `finish` only appends items, and leaves the streamer as new: feeding
//!    the payload again to the same streamer yields the same items again;
//! 3. every error `desc` is non-empty and starts with `JSON ` (a parse
//!    error or one of the three limit errors);
//! 4. no parsed double is NaN (`strtod` never yields one from a JSON number);
//! 5. every value written by `to_json` (QEMU 6.0+ spelling) is printable
//!    ASCII and, unless it holds a non-finite double (written `inf`/`nan`
//!    like QEMU does, and unreadable like in QEMU), reads back as the same
//!    value: same strings and members, doubles bit-exact, except that an
//!    integral double below 1e17 is spelled as an integer and reads back as
//!    one (`-0` as `0`);
//! 6. writing is a fixpoint with period 2 from the first read-back on:
//!    re-reading reverses the order of members that share a QDict bucket
//!    (QEMU inserts a bucket's members at its head), so writing twice more
//!    gives the same text;
//! 7. `to_json_with(Style::Legacy)` (QEMU 5.2's `%f`) is printable ASCII and
//!    reads back as the same value with doubles within half a unit of the
//!    sixth decimal.

use mock_qemu::qmp::json::{to_json, to_json_with, JsonStreamer, Parsed, Style};
use mock_qemu::qmp::qobject::QObject;

use crate::wire::{check_printable_ascii, has_nan, has_non_finite, parse_one, same_value};

/// The error descriptions that are not `JSON parse error, …`.
const LIMIT_ERRORS: [&str; 3] = [
    "JSON token size limit exceeded",
    "JSON token count limit exceeded",
    "JSON nesting depth limit exceeded",
];

/// A decoded `codec` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecInput<'a> {
    /// Chunk lengths, applied in a cycle.
    pub chunk_lens: Vec<usize>,
    /// The bytes fed to the parser.
    pub payload: &'a [u8],
}

impl<'a> CodecInput<'a> {
    /// Decodes the layout described in the module documentation.
    pub fn decode(data: &'a [u8]) -> Self {
        let Some((&first, rest)) = data.split_first() else {
            return CodecInput {
                chunk_lens: Vec::new(),
                payload: &[],
            };
        };
        let n = usize::from(first & 0x0F).min(rest.len());
        let (lens, payload) = rest.split_at(n);
        CodecInput {
            chunk_lens: lens.iter().map(|&l| usize::from(l)).collect(),
            payload,
        }
    }

    /// The payload cut into chunks.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        if self.chunk_lens.iter().all(|&l| l == 0) {
            return vec![self.payload];
        }
        let mut rest = self.payload;
        let mut out = Vec::new();
        for &len in self.chunk_lens.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(len.min(rest.len()));
            out.push(chunk);
            rest = tail;
        }
        out
    }
}

/// Encodes a payload fed whole (for seeds).
pub fn encode_whole(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 1);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// Items after feeding `chunks`, and after `finish` as well.
fn feed_chunks(streamer: &mut JsonStreamer, chunks: &[&[u8]]) -> (Vec<Parsed>, Vec<Parsed>) {
    let mut items = Vec::new();
    for chunk in chunks {
        streamer.feed(chunk, &mut items);
    }
    let fed = items.clone();
    streamer.finish(&mut items);
    (fed, items)
}

/// Runs one input through every property; panics on a violation.
pub fn run(data: &[u8]) {
    let input = CodecInput::decode(data);
    let payload = input.payload;

    let (fed, all) = feed_chunks(&mut JsonStreamer::new(), &[payload]);
    assert!(
        all.starts_with(&fed),
        "finish changed items it had already emitted: fed {fed:?}, finished {all:?}"
    );
    // Before any comparison: NaN would make equal items compare unequal.
    for item in &all {
        check_item(item);
    }

    let mut streamer = JsonStreamer::new();
    let (fed_split, all_split) = feed_chunks(&mut streamer, &input.chunks());
    assert_eq!(
        fed_split, fed,
        "feeding in chunks {:?} differs from feeding whole",
        input.chunk_lens
    );
    assert_eq!(
        all_split, all,
        "finish after chunks {:?} differs from finish after feeding whole",
        input.chunk_lens
    );

    let bytewise: Vec<&[u8]> = payload.chunks(1).collect();
    let (fed_bytes, all_bytes) = feed_chunks(&mut JsonStreamer::new(), &bytewise);
    assert_eq!(fed_bytes, fed, "feeding byte by byte differs from whole");
    assert_eq!(all_bytes, all, "finish after bytewise feed differs");

    // `finish` left the streamer as new.
    let (fed_again, all_again) = feed_chunks(&mut streamer, &[payload]);
    assert_eq!(fed_again, fed, "a finished streamer is not reset (feed)");
    assert_eq!(all_again, all, "a finished streamer is not reset (finish)");
}

/// Properties 3 to 7 for one parsed item.
pub fn check_item(item: &Parsed) {
    match item {
        Parsed::Error(desc) => {
            assert!(
                desc.starts_with("JSON parse error, ") || LIMIT_ERRORS.contains(&desc.as_str()),
                "error desc is not a QEMU JSON error: {desc:?}"
            );
        }
        Parsed::Value(v) => {
            assert!(!has_nan(v), "parsed a NaN: {v:?}");
            check_round_trip(v);
        }
    }
}

fn reread(text: &str, what: &str) -> QObject {
    parse_one(text).unwrap_or_else(|e| panic!("{what} {text:?} does not read back: {e}"))
}

fn check_round_trip(v: &QObject) {
    let modern = to_json(v);
    if let Err(e) = check_printable_ascii(&modern) {
        panic!("to_json output {modern:?}: {e}");
    }
    let legacy = to_json_with(v, Style::Legacy);
    if let Err(e) = check_printable_ascii(&legacy) {
        panic!("legacy output {legacy:?}: {e}");
    }
    if has_non_finite(v) {
        return; // `inf`/`nan`, as QEMU writes them: not JSON.
    }

    let back = reread(&modern, "to_json output");
    if let Err(e) = same_value(v, &back, Style::Modern) {
        panic!("to_json output {modern:?} reads back differently: {e}");
    }
    let t2 = to_json(&back);
    let t3 = to_json(&reread(&t2, "rewritten"));
    let t4 = to_json(&reread(&t3, "rewritten twice"));
    assert_eq!(
        t4, t2,
        "writing and reading is not a period-2 fixpoint (from {modern:?})"
    );

    let back = reread(&legacy, "legacy output");
    if let Err(e) = same_value(v, &back, Style::Legacy) {
        panic!("legacy output {legacy:?} reads back differently: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_decodes_and_chunks_cycle() {
        let data = [2u8, 3, 0, b'a', b'b', b'c', b'd', b'e', b'f', b'g'];
        let input = CodecInput::decode(&data);
        assert_eq!(input.chunk_lens, [3, 0]);
        assert_eq!(input.payload, b"abcdefg");
        let chunks: Vec<&[u8]> = input.chunks();
        assert_eq!(chunks, [&b"abc"[..], b"", b"def", b"", b"g"]);
        assert_eq!(CodecInput::decode(&encode_whole(b"xy")).chunks(), [b"xy"]);
        assert_eq!(CodecInput::decode(&[]).payload, b"");
        assert_eq!(CodecInput::decode(&[0x0F, 1]).chunk_lens, [1]);
    }

    #[test]
    fn known_inputs_pass() {
        for input in [
            &b"{\"execute\": \"qmp_capabilities\"}\n"[..],
            b"[1, -0, 0.1, 1e999, -1e999, 18446744073709551616, 1e16]",
            b"{'a': 'b', \"\\u0000\": \"\\uD83D\\uDE00\xC0\x80\"} 1 2 ]",
            b"{\"a\": 1, \"b\": 2, \"c\": [true, false, null]}",
            b"\"\\u\" \x01 \xFF {\"x\": ",
            &[b'['; 1100],
        ] {
            run(&encode_whole(input));
            run(&[3, 1, 7, 0]
                .iter()
                .chain(input)
                .copied()
                .collect::<Vec<u8>>());
        }
    }
}
