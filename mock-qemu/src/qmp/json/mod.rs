//! QEMU-compatible JSON streaming parser and writer.
//!
//! A faithful model of QEMU's JSON stack as the QMP monitor uses it
//! (QEMU 5.2 … 10.0 behave the same here, except for how doubles are
//! written, see [`Style`]):
//!
//! * the lexer (`qobject/json-lexer.c`) is the same table-driven DFA,
//!   including error recovery: after a lexical error, input is skipped up to
//!   the next structural character (`[ ] { } : ,`), ASCII control character
//!   other than TAB, or byte 0xFE/0xFF;
//! * the streamer (`qobject/json-streamer.c`) queues tokens until braces and
//!   brackets balance, enforces the token size (64 MiB), token count (2 Mi)
//!   and nesting (1024) limits, and resets after every value or error;
//! * the parser (`qobject/json-parser.c`) produces the same values and the
//!   same first error message;
//! * the writer (`qobject/json-writer.c`) produces the same bytes.
//!
//! Errors carry the exact `desc` QEMU puts on the wire, e.g.
//! `JSON parse error, expecting value` or `JSON nesting depth limit
//! exceeded`.  Raw input bytes quoted in a message (`stray '…'`) are
//! rendered as QEMU's writer renders them: invalid UTF-8 becomes U+FFFD and
//! the text stops at a NUL byte.

mod lexer;
mod parser;
mod writer;

#[cfg(test)]
mod tests;

pub use writer::{format_double, lossy_from_bytes, to_json, to_json_with, write_json, Style};

use crate::qmp::qobject::QObject;
use lexer::{Lexer, Tok};
use parser::Token;

/// Largest token, and largest sum of token sizes in one message (QEMU's
/// `MAX_TOKEN_SIZE`, 64 MiB).
pub const MAX_TOKEN_SIZE: usize = 64 << 20;
/// Most tokens in one message (QEMU's `MAX_TOKEN_COUNT`, 2 Mi).
pub const MAX_TOKEN_COUNT: usize = 2 << 20;
/// Deepest accepted nesting of arrays and objects (QEMU's `MAX_NESTING`).
pub const MAX_NESTING: i64 = 1 << 10;

/// One complete top-level item of a JSON input stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A parsed value.
    Value(QObject),
    /// A parse error, holding QEMU's exact error description.
    Error(String),
}

/// The limits, adjustable for tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    token_size: usize,
    token_count: usize,
    nesting: i64,
}

const QEMU_LIMITS: Limits = Limits {
    token_size: MAX_TOKEN_SIZE,
    token_count: MAX_TOKEN_COUNT,
    nesting: MAX_NESTING,
};

/// `JSONMessageParser` minus the lexer: the queued tokens of the message
/// being collected.
#[derive(Debug)]
struct Queue {
    brace_count: i64,
    bracket_count: i64,
    tokens: Vec<Token>,
    text: Vec<u8>,
    token_size: usize,
    limits: Limits,
}

impl Queue {
    fn reset(&mut self) {
        self.brace_count = 0;
        self.bracket_count = 0;
        self.tokens.clear();
        self.text.clear();
        self.token_size = 0;
        if self.text.capacity() > 1 << 20 {
            self.text = Vec::new();
        }
        if self.tokens.capacity() > 1 << 16 {
            self.tokens = Vec::new();
        }
    }

    fn emit_and_reset(&mut self, out: &mut Vec<Parsed>, item: Parsed) {
        self.reset();
        out.push(item);
    }

    fn parse_queue(&self) -> Parsed {
        match parser::parse(&self.tokens, &self.text) {
            Ok(v) => Parsed::Value(v),
            Err(e) => Parsed::Error(e),
        }
    }

    /// `json_message_process_token()`.
    fn process_token(&mut self, kind: Tok, input: &[u8], out: &mut Vec<Parsed>) {
        match kind {
            Tok::LCurly => self.brace_count += 1,
            Tok::RCurly => self.brace_count -= 1,
            Tok::LSquare => self.bracket_count += 1,
            Tok::RSquare => self.bracket_count -= 1,
            Tok::Error => {
                // "%s" stops at a NUL byte.
                let shown = input.split(|&b| b == 0).next().unwrap_or_default();
                let mut msg = b"JSON parse error, stray '".to_vec();
                msg.extend_from_slice(shown);
                msg.push(b'\'');
                return self.emit_and_reset(out, Parsed::Error(lossy_from_bytes(&msg)));
            }
            Tok::EndOfInput => {
                if self.tokens.is_empty() {
                    return;
                }
                let item = self.parse_queue();
                return self.emit_and_reset(out, item);
            }
            _ => {}
        }

        // Security limits on memory and recursion per message.
        if self.token_size + input.len() + 1 > self.limits.token_size {
            return self
                .emit_and_reset(out, Parsed::Error("JSON token size limit exceeded".into()));
        }
        if self.tokens.len() + 1 > self.limits.token_count {
            return self
                .emit_and_reset(out, Parsed::Error("JSON token count limit exceeded".into()));
        }
        if self.bracket_count + self.brace_count > self.limits.nesting {
            return self.emit_and_reset(
                out,
                Parsed::Error("JSON nesting depth limit exceeded".into()),
            );
        }

        // Both bounded by the size limit (64 MiB), so they fit u32.
        let start = self.text.len() as u32;
        self.text.extend_from_slice(input);
        self.tokens.push(Token {
            kind,
            start,
            end: self.text.len() as u32,
        });
        self.token_size += input.len();

        if (self.brace_count > 0 || self.bracket_count > 0)
            && self.brace_count >= 0
            && self.bracket_count >= 0
        {
            return; // the message is not complete yet
        }

        let item = self.parse_queue();
        self.emit_and_reset(out, item);
    }
}

/// Incremental parser fed arbitrary byte chunks (a QMP input stream has no
/// framing): QEMU's `JSONMessageParser`.
///
/// Feeding the same bytes in any split produces the same items.
#[derive(Debug)]
pub struct JsonStreamer {
    lexer: Lexer,
    queue: Queue,
}

impl Default for JsonStreamer {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonStreamer {
    /// A streamer in its initial state, with QEMU's limits.
    pub fn new() -> Self {
        Self::with_limits(QEMU_LIMITS)
    }

    fn with_limits(limits: Limits) -> Self {
        JsonStreamer {
            lexer: Lexer::new(limits.token_size),
            queue: Queue {
                brace_count: 0,
                bracket_count: 0,
                tokens: Vec::new(),
                text: Vec::new(),
                token_size: 0,
                limits,
            },
        }
    }

    /// Feed bytes; push every completed top-level item to `out` in order.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Parsed>) {
        let queue = &mut self.queue;
        let mut emit = |kind: Tok, input: &[u8]| queue.process_token(kind, input, out);
        for &b in bytes {
            self.lexer.feed_byte(b, false, &mut emit);
        }
        self.lexer.shrink();
    }

    /// End of input (connection closed): flush what QEMU would flush
    /// (`json_message_parser_flush()`): a pending token is completed (or
    /// reported as stray), then an incomplete message is parsed, which
    /// reports its error (typically `JSON parse error, premature EOI`).
    ///
    /// The streamer is back in its initial state afterwards.
    pub fn finish(&mut self, out: &mut Vec<Parsed>) {
        let queue = &mut self.queue;
        let mut emit = |kind: Tok, input: &[u8]| queue.process_token(kind, input, out);
        self.lexer.flush(&mut emit);
        self.lexer.shrink();
        // QEMU's flush leaves no tokens queued (it asserts so).
        self.queue.reset();
    }
}
