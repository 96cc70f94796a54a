//! Escaping of text that someone else wrote (a guest's console, process
//! names, agent answers, error messages quoting them) before it reaches the
//! user's terminal. A guest that could print raw control sequences could
//! retitle the window, rewrite the clipboard (OSC 52), hide lines behind a
//! CR, move the cursor over earlier output or ring the bell; here every such
//! character becomes visible text instead.
//!
//! One rule for every place: [`escape`] (strings) and [`StreamEscaper`]
//! (byte streams such as `vm logs`, whose chunks can split a UTF-8
//! character) both call [`escape_char`].

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether line breaks and tabs may pass (multi-line text such as a console
/// log or an error message) or are escaped too (one cell of a table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `\n` and `\t` pass; every other control character is escaped.
    MultiLine,
    /// Every control character, `\n` and `\t` included, is escaped.
    SingleLine,
}

/// Whether `c` reaches a terminal unchanged under `layout`.
fn passes(c: char, layout: Layout) -> bool {
    if layout == Layout::MultiLine && (c == '\n' || c == '\t') {
        return true;
    }
    // C0, DEL and C1 controls (U+009B is a one-character CSI on some
    // terminals), plus the bidi overrides and isolates, which reorder what
    // the user reads without being visible.
    !(c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

/// Append `c` to `out`, escaped when it may not pass: `\e` for ESC, the
/// usual `\r`, `\n`, `\t`, `\u{..}` for the rest.
pub fn escape_char(c: char, layout: Layout, out: &mut String) {
    if passes(c, layout) {
        out.push(c);
        return;
    }
    match c {
        '\x1b' => out.push_str("\\e"),
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `text` safe to print: borrowed when nothing needed escaping.
pub fn escape(text: &str, layout: Layout) -> Cow<'_, str> {
    if text.chars().all(|c| passes(c, layout)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        escape_char(c, layout, &mut out);
    }
    Cow::Owned(out)
}

/// [`escape`] for one table cell or one-line value.
pub fn line(text: &str) -> Cow<'_, str> {
    escape(text, Layout::SingleLine)
}

/// [`escape`] for multi-line text (line breaks and tabs kept).
pub fn text(text: &str) -> Cow<'_, str> {
    escape(text, Layout::MultiLine)
}

/// Escapes a byte stream chunk by chunk as multi-line text. Bytes that are
/// not UTF-8 become U+FFFD; a character split across two chunks is kept
/// until its end arrives.
#[derive(Debug, Default)]
pub struct StreamEscaper {
    pending: Vec<u8>,
}

impl StreamEscaper {
    /// The escaped text of `chunk` (plus what an earlier chunk left open).
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    push_escaped(valid, &mut out);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid_up_to` promises this prefix is UTF-8.
                    push_escaped(std::str::from_utf8(valid).unwrap_or_default(), &mut out);
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // An incomplete character at the end: wait for more.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// What is left at the end of the stream (an unfinished character).
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        self.pending.clear();
        char::REPLACEMENT_CHARACTER.to_string()
    }
}

fn push_escaped(text: &str, out: &mut String) {
    for c in text.chars() {
        escape_char(c, Layout::MultiLine, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csi_and_osc_sequences_become_visible() {
        // Clear screen + cursor home, then an OSC 52 clipboard write ended by BEL
        // and one ended by ST.
        let hostile = "a\x1b[2J\x1b[Hb\x1b]52;c;cm0gLXJmIH4=\x07c\x1b]0;title\x1b\\d";
        let shown = text(hostile);
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "{shown}"
        );
        assert_eq!(
            shown,
            "a\\e[2J\\e[Hb\\e]52;c;cm0gLXJmIH4=\\x07c\\e]0;title\\e\\d"
        );
    }

    #[test]
    fn carriage_return_and_bell_cannot_hide_or_ring() {
        assert_eq!(text("rm -rf /\rls\x07"), "rm -rf /\\rls\\x07");
        assert_eq!(line("sshd\nroot"), "sshd\\nroot");
        assert_eq!(text("line 1\nline 2\tcol"), "line 1\nline 2\tcol");
        assert_eq!(line("a\tb"), "a\\tb");
    }

    #[test]
    fn c1_controls_and_bidi_overrides_are_escaped() {
        // U+009B is a single-character CSI for terminals that honour C1.
        assert_eq!(text("x\u{9b}31mred"), "x\\x9b31mred");
        assert_eq!(line("evil\u{202e}txt.sh"), "evil\\u{202e}txt.sh");
        assert_eq!(text("\x7f"), "\\x7f");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let plain = "nginx: worker process — ünïcode ok";
        assert!(matches!(text(plain), Cow::Borrowed(_)));
        assert!(matches!(line(plain), Cow::Borrowed(_)));
    }

    #[test]
    fn stream_escaping_joins_split_characters_and_escapes_across_chunks() {
        let mut esc = StreamEscaper::default();
        let bytes = "é\x1b[31m!".as_bytes();
        // Split inside the two-byte é, then right after ESC.
        let mut out = esc.push(&bytes[..1]);
        assert_eq!(out, "");
        out += &esc.push(&bytes[1..3]);
        out += &esc.push(&bytes[3..]);
        out += &esc.finish();
        assert_eq!(out, "é\\e[31m!");
    }

    #[test]
    fn stream_escaping_replaces_invalid_utf8() {
        let mut esc = StreamEscaper::default();
        let mut out = esc.push(b"ok\xff\xfe\n\x1b");
        out += &esc.push(b"\xc3");
        out += &esc.finish();
        assert_eq!(out, "ok\u{fffd}\u{fffd}\n\\e\u{fffd}");
    }
}
