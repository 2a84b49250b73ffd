//! QEMU's JSON lexer (`qobject/json-lexer.c`): a table-driven DFA.
//!
//! The table below is QEMU's `json_lexer[][256]` for a lexer *without*
//! interpolation (the QMP monitor never enables it, so `%` is a lexical
//! error).  Cells that are not set are `JSON_ERROR` (0).  A cell with the
//! [`LOOKAHEAD`] bit set means "the byte ends the current token but is not
//! part of it; feed it again from the start state".
//!
//! Resynchronisation after an error goes through `IN_RECOVERY`, which skips
//! bytes until a structural character (`[ ] { } : ,`), an ASCII control
//! character other than TAB, or one of the impossible UTF-8 bytes 0xFE/0xFF.

/// Token kinds handed from the lexer to the streamer.
///
/// `Oversize` stands for QEMU passing the *lexer state* as token type when a
/// token grows beyond `MAX_TOKEN_SIZE`; the streamer only ever sees it as a
/// token that is neither structural, an error, nor end of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    Str,
    /// A lexical error; the token text is the offending input.
    Error,
    /// A token that exceeded the lexer's size limit.
    Oversize,
    /// `json_lexer_flush()`'s final pseudo-token.
    EndOfInput,
}

// Lexer states (values as in QEMU, minus the interpolation states).
const JSON_ERROR: u8 = 0;
const IN_RECOVERY: u8 = 1;
const IN_DQ_STRING_ESCAPE: u8 = 2;
const IN_DQ_STRING: u8 = 3;
const IN_SQ_STRING_ESCAPE: u8 = 4;
const IN_SQ_STRING: u8 = 5;
const IN_ZERO: u8 = 6;
const IN_EXP_DIGITS: u8 = 7;
const IN_EXP_SIGN: u8 = 8;
const IN_EXP_E: u8 = 9;
const IN_MANTISSA: u8 = 10;
const IN_MANTISSA_DIGITS: u8 = 11;
const IN_DIGITS: u8 = 12;
const IN_SIGN: u8 = 13;
const IN_KEYWORD: u8 = 14;
/// The start state.
pub(crate) const IN_START: u8 = 15;
const N_STATES: usize = 16;

// Token types (terminal "states"), as in `json-parser-int.h`.
const JSON_LCURLY: u8 = 100;
const JSON_RCURLY: u8 = 101;
const JSON_LSQUARE: u8 = 102;
const JSON_RSQUARE: u8 = 103;
const JSON_COLON: u8 = 104;
const JSON_COMMA: u8 = 105;
const JSON_INTEGER: u8 = 106;
const JSON_FLOAT: u8 = 107;
const JSON_KEYWORD: u8 = 108;
const JSON_STRING: u8 = 109;

/// Transition does not consume the byte.
const LOOKAHEAD: u8 = 0x80;

const fn set(row: &mut [u8; 256], lo: u8, hi: u8, v: u8) {
    let mut c = lo as usize;
    while c <= hi as usize {
        row[c] = v;
        c += 1;
    }
}

/// `TERMINAL(state)`: every byte ends the token (with lookahead).
const fn terminal(v: u8) -> [u8; 256] {
    [v | LOOKAHEAD; 256]
}

const fn build() -> [[u8; 256]; N_STATES] {
    let mut t = [[JSON_ERROR; 256]; N_STATES];

    // error recovery
    let mut r = [JSON_ERROR; 256];
    set(&mut r, 0, 0x1F, IN_START | LOOKAHEAD);
    set(&mut r, 0x20, 0xFD, IN_RECOVERY);
    set(&mut r, 0xFE, 0xFF, IN_START | LOOKAHEAD);
    r[b'\t' as usize] = IN_RECOVERY;
    r[b'[' as usize] = IN_START | LOOKAHEAD;
    r[b']' as usize] = IN_START | LOOKAHEAD;
    r[b'{' as usize] = IN_START | LOOKAHEAD;
    r[b'}' as usize] = IN_START | LOOKAHEAD;
    r[b':' as usize] = IN_START | LOOKAHEAD;
    r[b',' as usize] = IN_START | LOOKAHEAD;
    t[IN_RECOVERY as usize] = r;

    // double quote string
    let mut r = [JSON_ERROR; 256];
    set(&mut r, 0x20, 0xFD, IN_DQ_STRING);
    t[IN_DQ_STRING_ESCAPE as usize] = r;
    let mut r = [JSON_ERROR; 256];
    set(&mut r, 0x20, 0xFD, IN_DQ_STRING);
    r[b'\\' as usize] = IN_DQ_STRING_ESCAPE;
    r[b'"' as usize] = JSON_STRING;
    t[IN_DQ_STRING as usize] = r;

    // single quote string
    let mut r = [JSON_ERROR; 256];
    set(&mut r, 0x20, 0xFD, IN_SQ_STRING);
    t[IN_SQ_STRING_ESCAPE as usize] = r;
    let mut r = [JSON_ERROR; 256];
    set(&mut r, 0x20, 0xFD, IN_SQ_STRING);
    r[b'\\' as usize] = IN_SQ_STRING_ESCAPE;
    r[b'\'' as usize] = JSON_STRING;
    t[IN_SQ_STRING as usize] = r;

    // zero
    let mut r = terminal(JSON_INTEGER);
    set(&mut r, b'0', b'9', JSON_ERROR);
    r[b'.' as usize] = IN_MANTISSA;
    t[IN_ZERO as usize] = r;

    // float
    let mut r = terminal(JSON_FLOAT);
    set(&mut r, b'0', b'9', IN_EXP_DIGITS);
    t[IN_EXP_DIGITS as usize] = r;

    let mut r = [JSON_ERROR; 256];
    set(&mut r, b'0', b'9', IN_EXP_DIGITS);
    t[IN_EXP_SIGN as usize] = r;

    let mut r = [JSON_ERROR; 256];
    r[b'-' as usize] = IN_EXP_SIGN;
    r[b'+' as usize] = IN_EXP_SIGN;
    set(&mut r, b'0', b'9', IN_EXP_DIGITS);
    t[IN_EXP_E as usize] = r;

    let mut r = terminal(JSON_FLOAT);
    set(&mut r, b'0', b'9', IN_MANTISSA_DIGITS);
    r[b'e' as usize] = IN_EXP_E;
    r[b'E' as usize] = IN_EXP_E;
    t[IN_MANTISSA_DIGITS as usize] = r;

    let mut r = [JSON_ERROR; 256];
    set(&mut r, b'0', b'9', IN_MANTISSA_DIGITS);
    t[IN_MANTISSA as usize] = r;

    // number
    let mut r = terminal(JSON_INTEGER);
    set(&mut r, b'0', b'9', IN_DIGITS);
    r[b'e' as usize] = IN_EXP_E;
    r[b'E' as usize] = IN_EXP_E;
    r[b'.' as usize] = IN_MANTISSA;
    t[IN_DIGITS as usize] = r;

    let mut r = [JSON_ERROR; 256];
    r[b'0' as usize] = IN_ZERO;
    set(&mut r, b'1', b'9', IN_DIGITS);
    t[IN_SIGN as usize] = r;

    // keywords
    let mut r = terminal(JSON_KEYWORD);
    set(&mut r, b'a', b'z', IN_KEYWORD);
    t[IN_KEYWORD as usize] = r;

    // start
    let mut r = [JSON_ERROR; 256];
    r[b'"' as usize] = IN_DQ_STRING;
    r[b'\'' as usize] = IN_SQ_STRING;
    r[b'0' as usize] = IN_ZERO;
    set(&mut r, b'1', b'9', IN_DIGITS);
    r[b'-' as usize] = IN_SIGN;
    r[b'{' as usize] = JSON_LCURLY;
    r[b'}' as usize] = JSON_RCURLY;
    r[b'[' as usize] = JSON_LSQUARE;
    r[b']' as usize] = JSON_RSQUARE;
    r[b',' as usize] = JSON_COMMA;
    r[b':' as usize] = JSON_COLON;
    set(&mut r, b'a', b'z', IN_KEYWORD);
    r[b' ' as usize] = IN_START;
    r[b'\t' as usize] = IN_START;
    r[b'\r' as usize] = IN_START;
    r[b'\n' as usize] = IN_START;
    t[IN_START as usize] = r;

    t
}

static TABLE: [[u8; 256]; N_STATES] = build();

fn token_type(state: u8) -> Option<Tok> {
    Some(match state {
        JSON_LCURLY => Tok::LCurly,
        JSON_RCURLY => Tok::RCurly,
        JSON_LSQUARE => Tok::LSquare,
        JSON_RSQUARE => Tok::RSquare,
        JSON_COLON => Tok::Colon,
        JSON_COMMA => Tok::Comma,
        JSON_INTEGER => Tok::Integer,
        JSON_FLOAT => Tok::Float,
        JSON_KEYWORD => Tok::Keyword,
        JSON_STRING => Tok::Str,
        _ => return None,
    })
}

/// The lexer proper: current DFA state and the token text accumulated so far.
#[derive(Debug)]
pub(crate) struct Lexer {
    state: u8,
    token: Vec<u8>,
    max_token_size: usize,
}

impl Lexer {
    pub(crate) fn new(max_token_size: usize) -> Self {
        Lexer {
            state: IN_START,
            token: Vec::with_capacity(64),
            max_token_size,
        }
    }

    /// `json_lexer_feed_char()`.  `flush` feeds a virtual NUL that is never
    /// consumed, which drives every pending token to completion or error.
    #[inline]
    pub(crate) fn feed_byte(&mut self, ch: u8, flush: bool, emit: &mut impl FnMut(Tok, &[u8])) {
        loop {
            if flush && self.state == IN_START {
                break;
            }
            let next = TABLE[usize::from(self.state)][usize::from(ch)];
            let consumed = !flush && next & LOOKAHEAD == 0;
            let new_state = next & !LOOKAHEAD;
            if consumed {
                self.token.push(ch);
            }
            if let Some(tok) = token_type(new_state) {
                emit(tok, &self.token);
                self.token.clear();
                self.state = IN_START;
            } else {
                match new_state {
                    IN_START => {
                        self.token.clear();
                        self.state = IN_START;
                    }
                    JSON_ERROR => {
                        emit(Tok::Error, &self.token);
                        self.token.clear();
                        self.state = IN_RECOVERY;
                    }
                    IN_RECOVERY => {
                        self.token.clear();
                        self.state = IN_RECOVERY;
                    }
                    s => self.state = s,
                }
            }
            if consumed {
                break;
            }
        }

        // Do not let a single token grow to an arbitrarily large size.
        if self.token.len() > self.max_token_size {
            emit(Tok::Oversize, &self.token);
            self.token.clear();
            self.state = IN_START;
        }
    }

    /// `json_lexer_flush()`: finish the pending token, then end of input.
    pub(crate) fn flush(&mut self, emit: &mut impl FnMut(Tok, &[u8])) {
        self.feed_byte(0, true, emit);
        debug_assert_eq!(self.state, IN_START);
        emit(Tok::EndOfInput, &self.token);
    }

    /// Releases memory held after an unusually large token.
    pub(crate) fn shrink(&mut self) {
        if self.token.is_empty() && self.token.capacity() > 1 << 16 {
            self.token = Vec::with_capacity(64);
        }
    }
}
