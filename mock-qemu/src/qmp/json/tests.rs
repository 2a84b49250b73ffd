//! Tests of the JSON streamer and writer against behaviour observed on real
//! QEMU (10.0.2, 7.2.22, 5.2.0 qemu-storage-daemon over QMP).

use rstest::rstest;

use super::*;
use crate::qmp::qobject::{QDict, QNum, QObject};

fn parse_all(input: &[u8]) -> Vec<Parsed> {
    let mut s = JsonStreamer::new();
    let mut out = Vec::new();
    s.feed(input, &mut out);
    out
}

fn parse_bytewise(input: &[u8]) -> Vec<Parsed> {
    let mut s = JsonStreamer::new();
    let mut out = Vec::new();
    for b in input {
        s.feed(std::slice::from_ref(b), &mut out);
    }
    out
}

fn err(desc: &str) -> Parsed {
    Parsed::Error(desc.to_owned())
}

/// The wire form of each item as the QMP monitor would answer it: values
/// echoed through `to_json`, errors as the JSON-quoted desc.
fn wire(items: &[Parsed]) -> Vec<String> {
    items
        .iter()
        .map(|p| match p {
            Parsed::Value(v) => to_json(v),
            Parsed::Error(e) => format!("error {}", to_json(&QObject::Str(e.clone()))),
        })
        .collect()
}

fn one_value(input: &[u8]) -> QObject {
    match parse_all(input).as_slice() {
        [Parsed::Value(v)] => v.clone(),
        other => panic!("expected one value from {input:?}, got {other:?}"),
    }
}

fn dict(members: &[(&str, QObject)]) -> QObject {
    let mut d = QDict::new();
    for (k, v) in members {
        d.put(*k, v.clone());
    }
    QObject::Dict(d)
}

// ---------------------------------------------------------------------------
// Parse errors observed on real QEMU (identical on 10.0.2, 7.2.22 and 5.2.0).

#[rstest]
#[case::double_comma(br#"{"execute": "query-version",,}"#, &["JSON parse error, expecting value"])]
#[case::trailing_comma_dict(br#"{"a": 1,}"#, &["JSON parse error, expecting value"])]
#[case::bare_key(br#"{execute: "query-version"}"#, &["JSON parse error, invalid keyword 'execute'"])]
#[case::dup_key(br#"{"execute": "query-version", "id": 1, "id": 2}"#, &["JSON parse error, duplicate key"])]
#[case::nonstring_key(b"{1:2}", &["JSON parse error, key is not a string in object"])]
#[case::dict_key(b"{{}:2}", &["JSON parse error, key is not a string in object"])]
#[case::missing_colon(br#"{"a" 1}"#, &["JSON parse error, missing : in object pair"])]
#[case::missing_comma_dict(br#"{"a":1 "b":2}"#, &["JSON parse error, expected separator in dict"])]
#[case::missing_comma_list(b"[1 2]", &["JSON parse error, expected separator in list"])]
#[case::dict_closed_by_bracket(br#"{"a":1 ]"#, &["JSON parse error, expected separator in dict"])]
#[case::mismatched_immediately(b"[}", &["JSON parse error, expecting value"])]
#[case::lone_close(b"}", &["JSON parse error, expecting value"])]
#[case::lone_colon(b":", &["JSON parse error, expecting value"])]
#[case::list_trailing_comma(b"[1,]", &["JSON parse error, expecting value"])]
#[case::bad_keyword(b"[tru]", &["JSON parse error, invalid keyword 'tru'"])]
#[case::lone_ctrl(b"\x01", &["JSON parse error, stray '\u{1}'"])]
#[case::lone_nul(b"\x00", &["JSON parse error, stray ''"])]
#[case::nul_in_string(b"\"ab\x00c\"", &["JSON parse error, stray '\"ab'"])]
#[case::leading_zero(b"01", &["JSON parse error, stray '01'"])]
#[case::percent(b"%d", &["JSON parse error, stray '%'"])]
#[case::invalid_escape(br#""\q""#, &["JSON parse error, invalid escape sequence in string"])]
#[case::short_hex(br#""\u12xyz""#, &[r"JSON parse error, \u12xy is not a valid Unicode character"])]
#[case::short_hex_at_end(br#""\u12""#, &[r#"JSON parse error, \u12" is not a valid Unicode character"#])]
#[case::bad_pair(br#""\uD800\u0041""#, &[r"JSON parse error, \uD800 is not a valid Unicode character"])]
#[case::lone_lead(br#""\uD800""#, &[r"JSON parse error, \uD800 is not a valid Unicode character"])]
#[case::lone_trail(br#""\uDC00""#, &[r"JSON parse error, \uDC00 is not a valid Unicode character"])]
#[case::nonchar_escape(br#""\uFFFF""#, &[r"JSON parse error, \uFFFF is not a valid Unicode character"])]
#[case::nonchar_pair(br#""\uDBFF\uDFFF""#, &[r"JSON parse error, \uDBFF\uDFFF is not a valid Unicode character"])]
#[case::nonchar_raw(b"\"\xef\xbf\xbf\"", &["JSON parse error, invalid UTF-8 sequence in string"])]
#[case::overlong_raw(b"{\"a\": \"\xc0\xaf\"}", &["JSON parse error, invalid UTF-8 sequence in string"])]
#[case::surrogate_raw(b"\"\xed\xa0\x80\"", &["JSON parse error, invalid UTF-8 sequence in string"])]
#[case::five_byte_raw(b"\"\xf8\x88\x80\x80\x80\"", &["JSON parse error, invalid UTF-8 sequence in string"])]
#[case::truncated_raw(b"\"\xe2\x82\"", &["JSON parse error, invalid UTF-8 sequence in string"])]
#[case::tab_in_string(b"{\"a\":\"x\ty\"}", &["JSON parse error, stray '\"x\t'", "JSON parse error, expecting value"])]
#[case::bad_bytes_in_string(
    b"{\"execute\": \"\xff\xfe\"}",
    &["JSON parse error, stray '\"\u{FFFD}'", "JSON parse error, stray '\u{FFFD}'", "JSON parse error, expecting value"]
)]
fn parse_errors(#[case] input: &[u8], #[case] expected: &[&str]) {
    let want: Vec<Parsed> = expected.iter().map(|e| err(e)).collect();
    assert_eq!(parse_all(input), want);
    assert_eq!(parse_bytewise(input), want);
}

#[test]
fn invalid_bytes_come_out_on_the_wire_as_qemu_writes_them() {
    // Observed bytes: "desc": "JSON parse error, stray '\"\uFFFD'" etc.
    let got = wire(&parse_all(b"{\"execute\": \"\xff\xfe\"}"));
    assert_eq!(
        got,
        [
            r#"error "JSON parse error, stray '\"\uFFFD'""#,
            r#"error "JSON parse error, stray '\uFFFD'""#,
            r#"error "JSON parse error, expecting value""#,
        ]
    );
    assert_eq!(
        wire(&parse_all(b"\x01")),
        [r#"error "JSON parse error, stray '\u0001'""#]
    );
}

#[test]
fn trailing_close_after_a_value_is_a_separate_error() {
    for tail in [b" }", b" ]"] {
        let mut input = br#"{"execute":"query-version","id":"a"}"#.to_vec();
        input.extend_from_slice(tail);
        let got = parse_all(&input);
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Parsed::Value(QObject::Dict(_))));
        assert_eq!(got[1], err("JSON parse error, expecting value"));
    }
}

#[test]
fn error_discards_the_partial_message_and_resynchronises() {
    // `[}` fails at once; the `]` that follows is then an error of its own.
    let mut s = JsonStreamer::new();
    let mut out = Vec::new();
    s.feed(b"[}", &mut out);
    assert_eq!(out, [err("JSON parse error, expecting value")]);
    s.feed(b"]", &mut out);
    assert_eq!(out.len(), 2);
    // After a lexical error inside a string, the rest of the string is
    // skipped up to a structural character.
    let got = parse_all(b"\x01abc def{\"a\":1}");
    assert_eq!(
        got,
        [
            err("JSON parse error, stray '\u{1}'"),
            Parsed::Value(dict(&[("a", 1i64.into())]))
        ]
    );
    // Whitespace and TAB do not end recovery, newline does.
    let got = parse_all(b"\x01x\ty 1\n2 ");
    assert_eq!(
        got,
        [
            err("JSON parse error, stray '\u{1}'"),
            Parsed::Value(2i64.into())
        ]
    );
    // 0xFF ends recovery and is an error itself.
    let got = parse_all(b"\x01x\xff");
    assert_eq!(
        got,
        [
            err("JSON parse error, stray '\u{1}'"),
            err("JSON parse error, stray '\u{FFFD}'")
        ]
    );
}

#[test]
fn incomplete_tokens_wait_for_more_input() {
    assert_eq!(parse_all(b"1e"), []);
    assert_eq!(parse_all(b"-"), []);
    assert_eq!(parse_all(b"foo"), []);
    assert_eq!(parse_all(b"42"), []);
    assert_eq!(parse_all(b"42 "), [Parsed::Value(42i64.into())]);
    assert_eq!(parse_all(b"\"abc"), []);
}

#[test]
fn finish_flushes_like_json_message_parser_flush() {
    let cases: &[(&[u8], &[Parsed])] = &[
        (b"", &[]),
        (b"  ", &[]),
        (b"42", &[Parsed::Value(QObject::Num(QNum::I64(42)))]),
        (b"true", &[Parsed::Value(QObject::Bool(true))]),
        (b"1e", &[]),
        (b"\"abc", &[]),
        (b"{\"a\": 1", &[]),
        (b"[1, 2", &[]),
        (b"{", &[]),
    ];
    let expected_after: &[&[&str]] = &[
        &[],
        &[],
        &[],
        &[],
        &["JSON parse error, stray '1e'"],
        &["JSON parse error, stray '\"abc'"],
        &["JSON parse error, premature EOI"],
        &["JSON parse error, premature EOI"],
        &["JSON parse error, premature EOI"],
    ];
    for ((input, before), after) in cases.iter().zip(expected_after) {
        let mut s = JsonStreamer::new();
        let mut out = Vec::new();
        s.feed(input, &mut out);
        let mut want: Vec<Parsed> = Vec::new();
        if before.is_empty() {
            assert!(out.is_empty(), "{input:?}: {out:?}");
        }
        s.finish(&mut out);
        want.extend(before.iter().cloned());
        want.extend(after.iter().map(|e| err(e)));
        assert_eq!(out, want, "input {input:?}");
        // Reusable afterwards.
        let mut out = Vec::new();
        s.feed(b"[1] ", &mut out);
        assert_eq!(out, [Parsed::Value(QObject::List(vec![1i64.into()]))]);
    }
}

// ---------------------------------------------------------------------------
// Accepted input.

#[test]
fn single_quoted_strings_are_accepted() {
    let v = one_value(b"{'execute': 'query-version'}");
    assert_eq!(v, dict(&[("execute", "query-version".into())]));
    let v = one_value(br#"['it\'s "q" \"x\"']"#);
    assert_eq!(v, QObject::List(vec![r#"it's "q" "x""#.into()]));
}

#[test]
fn whitespace_only_input_produces_nothing() {
    assert_eq!(parse_all(b" \t\r\n "), []);
    let mut s = JsonStreamer::new();
    let mut out = Vec::new();
    s.feed(b" \n\n\t ", &mut out);
    s.finish(&mut out);
    assert!(out.is_empty());
}

#[test]
fn concatenated_values_in_one_chunk() {
    let got = parse_all(br#"{"execute":"a"}{"execute":"b"}[1]"x"7 null"#);
    assert_eq!(
        got,
        [
            Parsed::Value(dict(&[("execute", "a".into())])),
            Parsed::Value(dict(&[("execute", "b".into())])),
            Parsed::Value(QObject::List(vec![1i64.into()])),
            Parsed::Value("x".into()),
            Parsed::Value(7i64.into()),
        ]
    );
    // `null` is still pending: a keyword ends only at the next byte.
    let mut s = JsonStreamer::new();
    let mut out = Vec::new();
    s.feed(b"null", &mut out);
    assert!(out.is_empty());
    s.finish(&mut out);
    assert_eq!(out, [Parsed::Value(QObject::Null)]);
}

#[test]
fn one_object_split_over_many_feeds() {
    let input = br#"{"execute": "blockdev-add", "arguments": {"node-name": "n\u00e9", "driver": "null-co", "size": 1e3}, "id": [1, 2]}"#;
    let whole = parse_all(input);
    assert_eq!(whole.len(), 1);
    assert_eq!(parse_bytewise(input), whole);
    for cut in 0..input.len() {
        let mut s = JsonStreamer::new();
        let mut out = Vec::new();
        s.feed(&input[..cut], &mut out);
        assert!(out.is_empty());
        s.feed(&input[cut..], &mut out);
        assert_eq!(out, whole, "cut at {cut}");
    }
}

#[test]
fn bytewise_feeding_matches_whole_feeding_on_messy_input() {
    let input: &[u8] = b"{\"a\": [1, 2.5e3, -0, 'x\\u00e9\\uD83D\\uDE00']} }\x01junk\n[1 2]\
        {\"execute\": \"\xff\xfe\"} 01 %% \"\\q\" {'k':{}} \"\xc0\x80\" [[[]]] 1e400 \"a\x7fb\"";
    let whole = parse_all(input);
    assert!(whole.len() > 10, "{whole:?}");
    assert_eq!(parse_bytewise(input), whole);
}

#[test]
fn nesting_depth_limit() {
    let ok = [b"[".repeat(1024), b"]".repeat(1024)].concat();
    let got = parse_all(&ok);
    assert_eq!(got.len(), 1);
    assert!(matches!(got[0], Parsed::Value(QObject::List(_))));
    // The writer copes with the depth, too.
    let Parsed::Value(v) = &got[0] else {
        unreachable!()
    };
    assert_eq!(to_json(v), String::from_utf8(ok.clone()).unwrap());

    let mixed = [b"{\"a\":[".repeat(512), b"]}".repeat(512)].concat();
    assert!(matches!(parse_all(&mixed).as_slice(), [Parsed::Value(_)]));

    // 1025 deep: the limit error at the 1025th '[', after which every ']'
    // is a stray closing bracket (as observed on QEMU).
    let bad = [b"[".repeat(1025), b"]".repeat(1025)].concat();
    let got = parse_all(&bad);
    assert_eq!(got[0], err("JSON nesting depth limit exceeded"));
    assert_eq!(got.len(), 1026);
    assert!(got[1..]
        .iter()
        .all(|p| *p == err("JSON parse error, expecting value")));
    assert_eq!(parse_bytewise(&bad), got);

    let deep_dict = [b"{\"a\":".repeat(1025), b"1".to_vec(), b"}".repeat(1025)].concat();
    let got = parse_all(&deep_dict);
    assert_eq!(got[0], err("JSON nesting depth limit exceeded"));
}

#[test]
fn very_deep_mismatched_input_does_not_overflow() {
    // Mismatched closers keep the counts low while brackets pile up.
    let input = b"[}".repeat(100_000);
    let got = parse_all(&input);
    assert_eq!(got.len(), 100_000);
    let input = [b"[".repeat(1024), b"}".repeat(5000)].concat();
    let got = parse_all(&input);
    assert_eq!(got.len(), 5000);
}

#[test]
fn token_size_limit() {
    let limits = Limits {
        token_size: 100,
        token_count: MAX_TOKEN_COUNT,
        nesting: MAX_NESTING,
    };
    // A string token of exactly the limit passes the lexer but not the
    // streamer (`token_size + len + 1 > MAX`); one byte less is fine.
    let mut s = JsonStreamer::with_limits(limits);
    let mut out = Vec::new();
    let ok = format!("\"{}\"", "x".repeat(97)); // 99 bytes
    s.feed(ok.as_bytes(), &mut out);
    assert!(matches!(out.as_slice(), [Parsed::Value(QObject::Str(_))]));
    out.clear();
    let edge = format!("\"{}\"", "x".repeat(98)); // 100 bytes
    s.feed(edge.as_bytes(), &mut out);
    assert_eq!(out, [err("JSON token size limit exceeded")]);
    out.clear();
    // A token beyond the limit is cut by the lexer; the rest of the string
    // is then lexed as JSON from the start state.
    let long = format!("\"{}\" ", "x".repeat(101));
    s.feed(long.as_bytes(), &mut out);
    assert_eq!(
        out,
        [
            err("JSON token size limit exceeded"),
            err("JSON parse error, invalid keyword 'x'")
        ]
    );
    // Sum of tokens in one message counts too.
    let mut s = JsonStreamer::with_limits(limits);
    let mut out = Vec::new();
    let msg = format!("[\"{}\", \"{}\"]", "a".repeat(48), "b".repeat(48));
    s.feed(msg.as_bytes(), &mut out);
    assert_eq!(
        out,
        [
            err("JSON token size limit exceeded"),
            err("JSON parse error, expecting value")
        ]
    );
}

#[test]
fn token_size_limit_real_value() {
    // A 64 MiB keyword: the lexer cuts it at MAX_TOKEN_SIZE + 1 bytes.
    let mut s = JsonStreamer::new();
    let mut out = Vec::new();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..64 {
        s.feed(&chunk, &mut out);
    }
    assert!(out.is_empty());
    s.feed(b"aa ", &mut out);
    assert_eq!(
        out,
        [
            err("JSON token size limit exceeded"),
            err("JSON parse error, invalid keyword 'a'")
        ]
    );
}

#[test]
fn token_count_limit() {
    let limits = Limits {
        token_size: MAX_TOKEN_SIZE,
        token_count: 5,
        nesting: MAX_NESTING,
    };
    let mut s = JsonStreamer::with_limits(limits);
    let mut out = Vec::new();
    s.feed(b"[1,2] ", &mut out); // 5 tokens
    assert!(matches!(out.as_slice(), [Parsed::Value(_)]));
    out.clear();
    s.feed(b"[1,2,3]", &mut out); // 6th token fails; then "3", "]"
                                  // The "3" is only emitted when "]" ends it, so it is the token that
                                  // trips the limit; the "]" that follows is then stray.
    assert_eq!(
        out,
        [
            err("JSON token count limit exceeded"),
            err("JSON parse error, expecting value")
        ]
    );
}

#[test]
fn token_count_limit_real_value() {
    let mut input = b"[".to_vec();
    input.extend(b"1,".repeat(MAX_TOKEN_COUNT / 2));
    input.extend(b"1]");
    // "[" then N/2 pairs "1" ",": the last "," is token N+1 and trips the
    // limit; the final "1" is then a value of its own and "]" is stray.
    let got = parse_all(&input);
    assert_eq!(
        got,
        [
            err("JSON token count limit exceeded"),
            Parsed::Value(1i64.into()),
            err("JSON parse error, expecting value"),
        ]
    );
}

#[test]
fn keyword_error_message_is_truncated_like_vsnprintf_1024() {
    let kw = "k".repeat(2000);
    let got = parse_all(format!("[{kw}]").as_bytes());
    let msg = format!("invalid keyword '{kw}'");
    assert_eq!(got, [err(&format!("JSON parse error, {}", &msg[..1023]))]);
}

// ---------------------------------------------------------------------------
// Values.

#[test]
fn strings_decode_escapes_and_modified_utf8() {
    let v = one_value(br#""a\"b\\c\/d\'e\b\f\n\r\t\u0041\u00e9\u20AC\uD83D\uDE00\u0000""#);
    assert_eq!(
        v,
        QObject::Str("a\"b\\c/d'e\u{8}\u{c}\n\r\tA\u{e9}\u{20ac}\u{1F600}\0".into())
    );
    // Raw multi-byte UTF-8, DEL, and modified UTF-8's C0 80 for NUL.
    let v = one_value(b"\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x7f\xc0\x80\"");
    assert_eq!(v, QObject::Str("\u{e9}\u{20ac}\u{1F600}\u{7f}\0".into()));
}

#[test]
fn numbers_are_typed_like_qemu() {
    assert_eq!(
        one_value(b"[42]"),
        QObject::List(vec![QObject::Num(QNum::I64(42))])
    );
    assert_eq!(
        one_value(b"[-0]"),
        QObject::List(vec![QObject::Num(QNum::I64(0))])
    );
    assert_eq!(
        one_value(b"[-9223372036854775808, 9223372036854775808, 18446744073709551615]"),
        QObject::List(vec![
            QObject::Num(QNum::I64(i64::MIN)),
            QObject::Num(QNum::U64(9_223_372_036_854_775_808)),
            QObject::Num(QNum::U64(u64::MAX)),
        ])
    );
    assert_eq!(
        one_value(b"[18446744073709551616, -9223372036854775809, 1.0, 1e400, -1e400, -0.0]"),
        QObject::List(vec![
            QObject::Num(QNum::Double(18446744073709551616.0)),
            QObject::Num(QNum::Double(-9223372036854775809.0)),
            QObject::Num(QNum::Double(1.0)),
            QObject::Num(QNum::Double(f64::INFINITY)),
            QObject::Num(QNum::Double(f64::NEG_INFINITY)),
            QObject::Num(QNum::Double(-0.0)),
        ])
    );
}

/// Observed: `"id": [1e400, -0, 3.5, 0.1, 1e100, 18446744073709551616,
/// 1e-7, -1e-320, 123456789.125, 1e21, 1e15, -0.0]` echoed by QEMU.
#[test]
fn numbers_echo_like_qemu_10_and_5_2() {
    let input = b"[1e400, -0, 3.5, 0.1, 1e100, 18446744073709551616, 1e-7, -1e-320, 123456789.125, 1e21, 1e15, -0.0]";
    let v = one_value(input);
    assert_eq!(
        to_json(&v),
        "[inf, 0, 3.5, 0.10000000000000001, 1e+100, 1.8446744073709552e+19, \
         9.9999999999999995e-08, -9.9998886718268301e-321, 123456789.125, 1e+21, \
         1000000000000000, -0]"
    );
    assert_eq!(
        to_json_with(&v, Style::Legacy),
        "[inf, 0, 3.5, 0.1, 10000000000000000159028911097599180468360808563945281389781327557747838772170381060813469985856815104, \
         18446744073709551616, 0, -0, 123456789.125, 1000000000000000000000, 1000000000000000, -0]"
    );
}

#[rstest]
#[case(0.0, "0")]
#[case(-0.0, "-0")]
#[case(3.5, "3.5")]
#[case(42.0, "42")]
#[case(0.1, "0.10000000000000001")]
#[case(1e100, "1e+100")]
#[case(1e16, "10000000000000000")]
#[case(1e17, "1e+17")]
#[case(1e-4, "0.0001")]
#[case(1e-5, "1.0000000000000001e-05")]
#[case(123.456, "123.456")]
#[case::tie_to_even(9_007_199_254_740_985.0 / 4.0, "2251799813685246.2")]
#[case(f64::MAX, "1.7976931348623157e+308")]
#[case(f64::MIN_POSITIVE, "2.2250738585072014e-308")]
#[case(5e-324, "4.9406564584124654e-324")]
#[case(f64::INFINITY, "inf")]
#[case(f64::NEG_INFINITY, "-inf")]
#[case(f64::NAN, "nan")]
#[case(-f64::NAN, "-nan")]
fn double_spelling_modern(#[case] v: f64, #[case] want: &str) {
    assert_eq!(format_double(v, Style::Modern), want);
}

#[rstest]
#[case(0.0, "0")]
#[case(-0.0, "-0")]
#[case(3.5, "3.5")]
#[case(0.1, "0.1")]
#[case(1e-7, "0")]
#[case(0.0000005, "0")]
#[case(2.5e-6, "0.000003")]
#[case(0.0000015, "0.000002")]
#[case(123456.0000005, "123456.000001")]
#[case(1.25, "1.25")]
#[case(18446744073709551616.0, "18446744073709551616")]
#[case(f64::INFINITY, "inf")]
#[case(f64::NEG_INFINITY, "-inf")]
fn double_spelling_legacy(#[case] v: f64, #[case] want: &str) {
    assert_eq!(format_double(v, Style::Legacy), want);
}

#[test]
fn integers_are_written_plainly() {
    let v = QObject::List(vec![
        QObject::Num(QNum::I64(i64::MIN)),
        QObject::Num(QNum::U64(u64::MAX)),
        QObject::Num(QNum::I64(-1)),
    ]);
    assert_eq!(
        to_json(&v),
        "[-9223372036854775808, 18446744073709551615, -1]"
    );
}

// ---------------------------------------------------------------------------
// Writer.

/// Observed: the id string "a/b\u0000\b\f\n\r\t<DEL>\uD83D\uDE00é\u0080\u001f
/// \\ \'\" \/ <C0 80> <EF BF BD>" echoed by QEMU 10.0.2 and 5.2.0 as below.
#[test]
fn string_escapes_like_qemu() {
    let input = b"\"a/b\\u0000\\b\\f\\n\\r\\t\x7f\\uD83D\\uDE00\xc3\xa9\\u0080\\u001f \\\\ \\'\\\" \\/ \xc0\x80 \xef\xbf\xbd\"";
    let v = one_value(input);
    assert_eq!(
        to_json(&v),
        r#""a/b\u0000\b\f\n\r\t\u007F\uD83D\uDE00\u00E9\u0080\u001F \\ '\" / \u0000 \uFFFD""#
    );
}

#[rstest]
#[case("", r#""""#)]
#[case("plain", r#""plain""#)]
#[case("\0", r#""\u0000""#)]
#[case("\u{1}\u{1f}\u{7f}", r#""\u0001\u001F\u007F""#)]
#[case("\u{b}", r#""\u000B""#)]
#[case("/", r#""/""#)]
#[case("'", r#""'""#)]
#[case("\u{1F600}", r#""\uD83D\uDE00""#)]
#[case("\u{10FFFD}", r#""\uDBFF\uDFFD""#)]
#[case("\u{FFFF}\u{FDD0}\u{1FFFE}", r#""\uFFFD\uFFFD\uFFFD""#)]
#[case("\u{FFFD}\u{FFFC}", r#""\uFFFD\uFFFC""#)]
#[case("\u{e9}\u{abcd}", r#""\u00E9\uABCD""#)]
fn writer_string_escapes(#[case] s: &str, #[case] want: &str) {
    assert_eq!(to_json(&QObject::Str(s.into())), want);
}

#[test]
fn writer_layout_and_member_order() {
    assert_eq!(to_json(&QObject::Null), "null");
    assert_eq!(to_json(&QObject::Bool(true)), "true");
    assert_eq!(to_json(&QObject::Bool(false)), "false");
    assert_eq!(to_json(&QObject::List(vec![])), "[]");
    assert_eq!(to_json(&QObject::Dict(QDict::new())), "{}");
    let v = dict(&[
        (
            "error",
            dict(&[("class", "GenericError".into()), ("desc", "x".into())]),
        ),
        ("id", 1i64.into()),
    ]);
    assert_eq!(
        to_json(&v),
        r#"{"id": 1, "error": {"class": "GenericError", "desc": "x"}}"#
    );
    let v = QObject::List(vec![QObject::Null, QObject::List(vec![]), 1i64.into()]);
    assert_eq!(to_json(&v), "[null, [], 1]");
    // Keys are escaped like strings.
    let v = dict(&[("a\"\u{e9}", QObject::Null)]);
    assert_eq!(to_json(&v), r#"{"a\"\u00E9": null}"#);
}

#[test]
fn round_trip_of_a_typical_qmp_reply() {
    // QEMU builds the version dict in schema order (major, minor, micro);
    // its hash-bucket order then puts them on the wire as observed.  (Parsing
    // the wire text inserts them in another order: "minor" and "micro"
    // share a bucket, so that order does not survive a re-parse — in QEMU
    // neither.)
    let built = br#"{"return": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "id": "a"}"#;
    let observed = br#"{"return": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "id": "a"}"#;
    assert_eq!(to_json(&one_value(built)).as_bytes(), observed);
    assert_eq!(
        to_json(&one_value(observed)),
        r#"{"return": {"qemu": {"minor": 0, "micro": 2, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "id": "a"}"#
    );

    let error = br#"{"id": 7, "error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}"#;
    assert_eq!(to_json(&one_value(error)).as_bytes(), error);

    let event = br#"{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "job0"}}"#;
    let v = one_value(event);
    assert_eq!(to_json(&v).as_bytes(), event);

    let greeting = br#"{"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}, "capabilities": ["oob"]}}"#;
    let v = one_value(greeting);
    assert_eq!(
        to_json(&v),
        r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#
    );

    // Parsing a reordered reply and writing it back yields QEMU's order.
    let v = one_value(br#"{"id": "a", "return": {}}"#);
    assert_eq!(to_json(&v), r#"{"return": {}, "id": "a"}"#);
}

#[test]
fn lossy_conversion_matches_qemus_decoder() {
    assert_eq!(lossy_from_bytes(b"abc"), "abc");
    assert_eq!(lossy_from_bytes(b"a\x00b"), "a");
    assert_eq!(lossy_from_bytes(b"\xc0\x80x"), "\0x");
    // One U+FFFD per well-formed but invalid sequence (overlong, surrogate,
    // noncharacter, beyond U+10FFFF), and per lone or cut-short byte.
    assert_eq!(lossy_from_bytes(b"\xe0\x80\xaf|"), "\u{FFFD}|");
    assert_eq!(lossy_from_bytes(b"\xed\xa0\x80|"), "\u{FFFD}|");
    assert_eq!(lossy_from_bytes(b"\xef\xbf\xbf|"), "\u{FFFD}|");
    assert_eq!(lossy_from_bytes(b"\xf8\x88\x80\x80\x80|"), "\u{FFFD}|");
    assert_eq!(lossy_from_bytes(b"\xe2\x82|"), "\u{FFFD}|");
    assert_eq!(lossy_from_bytes(b"\x80\xbf"), "\u{FFFD}\u{FFFD}");
    assert_eq!(lossy_from_bytes(b"\xff\xfe"), "\u{FFFD}\u{FFFD}");
    assert_eq!(
        lossy_from_bytes("\u{e9}\u{1F600}".as_bytes()),
        "\u{e9}\u{1F600}"
    );
}

#[test]
fn feed_is_linear_time() {
    // ~1 MB of small QMP commands, and one ~1 MB array.
    let cmd =
        br#"{"execute": "query-block-jobs", "arguments": {"a": [1, 2.5, "x\u00e9"]}, "id": 12345}"#;
    let mut input = Vec::new();
    while input.len() < 1 << 20 {
        input.extend_from_slice(cmd);
        input.push(b'\n');
    }
    let n = input.len() / (cmd.len() + 1);
    let start = std::time::Instant::now();
    let got = parse_all(&input);
    assert_eq!(got.len(), n);

    let mut big = b"[".to_vec();
    for i in 0..150_000 {
        big.extend_from_slice(format!("{i},").as_bytes());
    }
    big.extend_from_slice(b"\"end\"]");
    let got = parse_all(&big);
    assert!(matches!(got.as_slice(), [Parsed::Value(QObject::List(l))] if l.len() == 150_001));
    // Generous bound that still catches quadratic behaviour in debug builds.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn arbitrary_bytes_never_panic_and_split_invariance_holds() {
    // A small deterministic fuzz: random bytes biased towards JSON syntax.
    let alphabet: &[u8] = b"{}[]:,\"'\\ute0123456789.-+Eaz \t\n\x00\x01\x7f\x80\xbf\xc0\xc3\xa9\xe2\xed\xf0\xf8\xfe\xff%";
    let mut seed: u64 = 0x1234_5678_9abc_def0;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let len = (next() % 200) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut a = JsonStreamer::new();
        let mut out_a = Vec::new();
        a.feed(&input, &mut out_a);
        a.finish(&mut out_a);
        let mut b = JsonStreamer::new();
        let mut out_b = Vec::new();
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let k = 1 + (next() % 7) as usize;
            let (h, t) = rest.split_at(k.min(rest.len()));
            b.feed(h, &mut out_b);
            rest = t;
        }
        b.finish(&mut out_b);
        assert_eq!(out_a, out_b, "input {input:?}");
        for item in &out_a {
            if let Parsed::Value(v) = item {
                // Everything parsed re-serializes to ASCII and parses back.
                let text = to_json(v);
                assert!(text.is_ascii());
            }
        }
    }
}
