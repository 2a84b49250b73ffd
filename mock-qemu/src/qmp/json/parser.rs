//! QEMU's JSON parser (`qobject/json-parser.c`, `json_parser_parse()`),
//! run over the token queue the streamer collected for one message.
//!
//! QEMU's parser is recursive descent and keeps only the *first* error it
//! reports.  This one walks the same grammar with an explicit stack (no
//! recursion, so no stack overflow whatever the nesting) and returns at the
//! first error, which yields the same message.

use crate::qmp::qobject::{QDict, QNum, QObject};

use super::lexer::Tok;
use super::writer::{is_valid_codepoint, lossy_from_bytes, mod_utf8_codepoint};

/// One queued token: kind and byte range in the streamer's text buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub(crate) kind: Tok,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// `parse_error()`: the message is formatted into a 1024-byte buffer
/// (so at most 1023 bytes survive), then prefixed.
fn parse_error(msg: &[u8]) -> String {
    let msg = &msg[..msg.len().min(1023)];
    let mut full = b"JSON parse error, ".to_vec();
    full.extend_from_slice(msg);
    lossy_from_bytes(&full)
}

fn err<T>(msg: &str) -> Result<T, String> {
    Err(parse_error(msg.as_bytes()))
}

/// `cvt4hex()`: four hex digits at `s[i..]` (NUL-terminated semantics).
fn cvt4hex(s: &[u8], i: usize) -> i64 {
    let mut cp = 0i64;
    for k in 0..4 {
        let c = s.get(i + k).copied().unwrap_or(0);
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => 10 + c - b'a',
            b'A'..=b'F' => 10 + c - b'A',
            _ => return -1,
        };
        cp = (cp << 4) | i64::from(d);
    }
    cp
}

/// `parse_string()` on a complete string token (quotes included).
fn parse_string(tok: &[u8]) -> Result<String, String> {
    let quote = tok[0];
    let mut out = String::with_capacity(tok.len());
    let mut p = 1;
    // The lexer guarantees a closing quote; running off the end is treated
    // as the end of the string rather than a panic.
    while let Some(&c) = tok.get(p) {
        if c == quote {
            break;
        }
        if c == b'\\' {
            let beg = p;
            p += 1;
            let e = tok.get(p).copied().unwrap_or(0);
            p += 1;
            match e {
                b'"' => out.push('"'),
                b'\'' => out.push('\''),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let mut cp = cvt4hex(tok, p);
                    p += 4;
                    // surrogate pairs
                    if (0xD800..=0xDBFF).contains(&cp)
                        && tok.get(p) == Some(&b'\\')
                        && tok.get(p + 1) == Some(&b'u')
                    {
                        cp = 0x10000 + ((cp & 0x3FF) << 10);
                        let trailing = cvt4hex(tok, p + 2);
                        if (0xDC00..=0xDFFF).contains(&trailing) {
                            cp |= trailing & 0x3FF;
                            p += 6;
                        } else {
                            cp = -1;
                        }
                    }
                    if !is_valid_codepoint(cp) {
                        // "%.*s": stops at the token's terminating NUL.
                        let shown = &tok[beg..p.min(tok.len())];
                        let mut msg = shown.to_vec();
                        msg.extend_from_slice(b" is not a valid Unicode character");
                        return Err(parse_error(&msg));
                    }
                    // Valid and not a surrogate, so from_u32 cannot fail.
                    out.push(
                        u32::try_from(cp)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or('\u{FFFD}'),
                    );
                }
                _ => return err("invalid escape sequence in string"),
            }
        } else {
            let (cp, end) = mod_utf8_codepoint(tok, p);
            if cp < 0 {
                return err("invalid UTF-8 sequence in string");
            }
            out.push(
                u32::try_from(cp)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or('\u{FFFD}'),
            );
            p = end;
        }
    }
    Ok(out)
}

/// `parse_literal()` for numbers: i64 if it fits, else u64 (non-negative
/// only), else `strtod`.  Floats are always doubles.
fn parse_number(text: &[u8], integer: bool) -> QObject {
    let s = std::str::from_utf8(text).unwrap_or("0");
    if integer {
        if let Ok(i) = s.parse::<i64>() {
            return QObject::Num(QNum::I64(i));
        }
        if !s.starts_with('-') {
            if let Ok(u) = s.parse::<u64>() {
                return QObject::Num(QNum::U64(u));
            }
        }
    }
    // The lexer only lets JSON numbers through, which Rust parses (with
    // correct rounding and overflow to infinity) exactly as glibc's strtod.
    QObject::Num(QNum::Double(s.parse::<f64>().unwrap_or(f64::NAN)))
}

fn parse_keyword(text: &[u8]) -> Result<QObject, String> {
    match text {
        b"true" => Ok(QObject::Bool(true)),
        b"false" => Ok(QObject::Bool(false)),
        b"null" => Ok(QObject::Null),
        _ => {
            let mut msg = b"invalid keyword '".to_vec();
            msg.extend_from_slice(text);
            msg.push(b'\'');
            Err(parse_error(&msg))
        }
    }
}

/// An open container.
enum Frame {
    List(Vec<QObject>),
    /// A dict and, once its key has been parsed, the key of the member whose
    /// value is being parsed.
    Dict(QDict, Option<String>),
}

struct Cursor<'a> {
    tokens: &'a [Token],
    text: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.pos).map(|t| t.kind)
    }

    fn pop(&mut self) -> Option<(Tok, &'a [u8])> {
        let t = self.tokens.get(self.pos)?;
        self.pos += 1;
        Some((t.kind, &self.text[t.start as usize..t.end as usize]))
    }

    fn pop_kind(&mut self) -> Result<Tok, String> {
        match self.pop() {
            Some((k, _)) => Ok(k),
            None => err("premature EOI"),
        }
    }
}

/// `json_parser_parse()`: one value from the queued tokens, or QEMU's error
/// message (already prefixed with "JSON parse error, ").
pub(crate) fn parse(tokens: &[Token], text: &[u8]) -> Result<QObject, String> {
    let mut cur = Cursor {
        tokens,
        text,
        pos: 0,
    };
    let mut stack: Vec<Frame> = Vec::new();

    'value: loop {
        // parse_value()
        let Some(kind) = cur.peek() else {
            return err("premature EOI");
        };
        let mut value = match kind {
            Tok::LCurly | Tok::LSquare => {
                cur.pop();
                let Some(peek) = cur.peek() else {
                    return err("premature EOI");
                };
                if kind == Tok::LCurly {
                    if peek == Tok::RCurly {
                        cur.pop();
                        QObject::Dict(QDict::new())
                    } else {
                        stack.push(Frame::Dict(QDict::new(), None));
                        continue 'value; // the first key
                    }
                } else if peek == Tok::RSquare {
                    cur.pop();
                    QObject::List(Vec::new())
                } else {
                    stack.push(Frame::List(Vec::new()));
                    continue 'value; // the first element
                }
            }
            Tok::Integer | Tok::Float => {
                let (_, t) = cur.pop().unwrap_or((kind, b"0"));
                parse_number(t, kind == Tok::Integer)
            }
            Tok::Str => {
                let (_, t) = cur.pop().unwrap_or((kind, b"\"\""));
                QObject::Str(parse_string(t)?)
            }
            Tok::Keyword => {
                let (_, t) = cur.pop().unwrap_or((kind, b""));
                parse_keyword(t)?
            }
            _ => return err("expecting value"),
        };

        // A value is complete: hand it to the enclosing container, closing
        // as many containers as the following tokens close.
        loop {
            match stack.last_mut() {
                None => return Ok(value),
                Some(Frame::Dict(_, key @ None)) => {
                    // parse_pair(): the value just parsed is the key.
                    let QObject::Str(k) = value else {
                        return err("key is not a string in object");
                    };
                    if cur.pop_kind()? != Tok::Colon {
                        return err("missing : in object pair");
                    }
                    *key = Some(k);
                    continue 'value;
                }
                Some(Frame::Dict(dict, key @ Some(_))) => {
                    let k = key.take().unwrap_or_default();
                    if dict.contains_key(&k) {
                        return err("duplicate key");
                    }
                    dict.put(k, value);
                    match cur.pop_kind()? {
                        Tok::RCurly => {
                            value = match stack.pop() {
                                Some(Frame::Dict(d, _)) => QObject::Dict(d),
                                _ => return err("expecting value"), // cannot happen
                            };
                        }
                        Tok::Comma => {
                            if cur.peek().is_none() {
                                return err("premature EOI");
                            }
                            continue 'value; // next key
                        }
                        _ => return err("expected separator in dict"),
                    }
                }
                Some(Frame::List(items)) => {
                    items.push(value);
                    match cur.pop_kind()? {
                        Tok::RSquare => {
                            value = match stack.pop() {
                                Some(Frame::List(l)) => QObject::List(l),
                                _ => return err("expecting value"), // cannot happen
                            };
                        }
                        Tok::Comma => continue 'value, // next element
                        _ => return err("expected separator in list"),
                    }
                }
            }
        }
    }
}
