//! Terminal text: widths, wrapping with a hanging indent, truncation and colors. Widths
//! count characters: everything the CLI prints (`→`, `·`, `…`, `×` included) is one
//! column wide.

use std::ffi::OsStr;

/// A line no narrower than this is laid out, whatever the terminal says: below it, wrapping
/// makes text harder to read than overflowing does.
const MIN_TEXT_WIDTH: usize = 20;

pub fn width_of(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to `max` columns, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if width_of(text) <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// `text` cut to `max` columns from the start, beginning with `…` when cut.
pub fn truncate_start(text: &str, max: usize) -> String {
    let width = width_of(text);
    if width <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut = String::from('…');
    cut.extend(text.chars().skip(width - (max - 1)));
    cut
}

/// `label` then `chunks` separated by spaces, in lines of at most `width` columns; later
/// lines are indented by the label's width. Lines break between chunks, and inside a
/// chunk, at its spaces, only when the chunk does not fit on a line of its own. A word
/// wider than a line overflows it. `styled_label` is what is printed for the label (the
/// same text, perhaps with colors).
pub fn hanging<S: AsRef<str>>(
    label: &str,
    styled_label: &str,
    chunks: &[S],
    width: usize,
) -> String {
    hanging_indent(label, styled_label, chunks, width, width_of(label))
}

/// [`hanging`], with later lines indented by `indent` columns.
pub fn hanging_indent<S: AsRef<str>>(
    label: &str,
    styled_label: &str,
    chunks: &[S],
    width: usize,
    indent: usize,
) -> String {
    let rooms = Rooms {
        first: width.saturating_sub(width_of(label)).max(MIN_TEXT_WIDTH),
        rest: width.saturating_sub(indent).max(MIN_TEXT_WIDTH),
    };
    let mut lines = vec![String::new()];
    for chunk in chunks {
        let chunk = chunk.as_ref();
        if !rooms.place(&mut lines, chunk) {
            for word in chunk.split(' ').filter(|w| !w.is_empty()) {
                if !rooms.place(&mut lines, word) {
                    match lines.last_mut() {
                        Some(last) if last.is_empty() => last.push_str(word),
                        _ => lines.push(word.to_string()),
                    }
                }
            }
        }
    }
    let pad = " ".repeat(indent);
    let mut text = String::from(styled_label);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            text.push('\n');
            text.push_str(&pad);
        }
        text.push_str(line);
    }
    text
}

/// The columns left for text on the first line and on the others.
struct Rooms {
    first: usize,
    rest: usize,
}

impl Rooms {
    /// Appends `piece` to the last line, or to a new one; false when it fits on neither.
    fn place(&self, lines: &mut Vec<String>, piece: &str) -> bool {
        let piece_width = width_of(piece);
        let room = if lines.len() == 1 {
            self.first
        } else {
            self.rest
        };
        let last = lines.last_mut().expect("there is always a line");
        if last.is_empty() {
            if piece_width <= room {
                last.push_str(piece);
                return true;
            }
            return false;
        }
        if width_of(last) + 1 + piece_width <= room {
            last.push(' ');
            last.push_str(piece);
            return true;
        }
        if piece_width <= self.rest {
            lines.push(piece.to_string());
            return true;
        }
        false
    }
}

/// Whether to color: only on a terminal, and never when `NO_COLOR` is set to anything
/// (<https://no-color.org>).
pub fn color_wanted(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// ANSI styling that is a no-op when colors are off.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    pub enabled: bool,
}

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.enabled {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    pub fn green(self, text: &str) -> String {
        self.wrap("32", text)
    }

    pub fn yellow(self, text: &str) -> String {
        self.wrap("33", text)
    }

    pub fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }

    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(
            truncate("nginx → 127.0.0.1:9000", 30),
            "nginx → 127.0.0.1:9000"
        );
        assert_eq!(truncate("nginx → 127.0.0.1:9000", 10), "nginx → 1…");
        assert_eq!(width_of(&truncate("nginx → 127.0.0.1:9000", 10)), 10);
        assert_eq!(truncate("abc", 0), "");
        assert_eq!(
            truncate_start("unix:/run/php/php-fpm.sock", 13),
            "…php-fpm.sock"
        );
        assert_eq!(truncate_start("abc", 3), "abc");
        assert_eq!(truncate_start("abc", 0), "");
    }

    #[test]
    fn hanging_indent_breaks_between_chunks_first() {
        let chunks = ["aaaa bbbb ·", "cccc dddd ·", "eeee"];
        let text = hanging("Label: ", "Label: ", &chunks, 7 + 24);
        assert_eq!(text, "Label: aaaa bbbb · cccc dddd ·\n       eeee");
    }

    #[test]
    fn long_chunks_break_at_spaces() {
        let summary = "one two three four five six seven eight nine ten eleven twelve";
        let words: Vec<&str> = summary.split(' ').collect();
        let text = hanging("Cause: ", "Cause: ", &[summary], 7 + 20);
        assert_eq!(
            text,
            "Cause: one two three four\n       five six seven eight\n       nine ten eleven\n       twelve"
        );
        assert_eq!(text, hanging("Cause: ", "Cause: ", &words, 27));
    }

    #[test]
    fn long_words_overflow_rather_than_vanish() {
        let word = "x".repeat(30);
        let text = hanging("L: ", "L: ", &["a", &word, "b"], 23);
        assert_eq!(text, format!("L: a\n   {word}\n   b"));
    }

    #[test]
    fn colors_need_a_terminal_and_no_no_color() {
        assert!(color_wanted(true, None));
        assert!(color_wanted(true, Some(OsStr::new(""))));
        assert!(!color_wanted(true, Some(OsStr::new("1"))));
        assert!(!color_wanted(false, None));
        assert_eq!(Paint { enabled: false }.bold("x"), "x");
        assert_eq!(Paint { enabled: true }.bold("x"), "\x1b[1mx\x1b[0m");
    }
}
