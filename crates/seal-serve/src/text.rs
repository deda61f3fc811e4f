//! The text side of one choice: which part of the decoded text may be sent
//! yet, and where a stop string cuts it.
//!
//! After each token the choice's tokens are decoded in full (so the text
//! always equals the tokenizer's decoding of everything generated), and
//! [`TextTracker::update`] returns the new text that is safe to send:
//! text that ends in an incomplete UTF-8 sequence (U+FFFD) waits for the
//! next token, and so does a tail that could be the start of a stop string.
//! A stop string found in the unsent text ends the choice, cut before it.

/// What [`TextTracker::update`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Update {
    /// New text to send (may be empty).
    pub delta: String,
    /// A stop string was found: the choice ends, its text cut before it.
    pub stopped: bool,
}

/// The part of a choice's text already sent, and its stop strings.
#[derive(Debug, Clone, Default)]
pub(crate) struct TextTracker {
    stops: Vec<String>,
    /// Bytes of the decoded text sent so far.
    sent: usize,
    /// The latest decoded text.
    text: String,
}

impl TextTracker {
    /// A tracker for a choice that ends at any of `stops` (non-empty strings).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            sent: 0,
            text: String::new(),
        }
    }

    /// The latest decoded text.
    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Takes the full decoding of the choice's tokens after a new token.
    /// Only the settled text is searched for stop strings and sent: not a
    /// tail of U+FFFD (an incomplete UTF-8 sequence that the next token may
    /// complete into another character).
    pub fn update(&mut self, text: String) -> Update {
        self.text = text;
        let settled = self.text.trim_end_matches('\u{FFFD}').len();
        self.advance(settled)
    }

    /// Ends the choice (end of sequence or budget): everything not sent
    /// yet, cut at a stop string found in it.
    pub fn finish(&mut self) -> Update {
        let mut update = self.advance(self.text.len());
        if !update.stopped {
            let from = floor_char_boundary(&self.text, self.sent);
            update.delta.push_str(&self.text[from..]);
            self.sent = self.text.len();
        }
        update
    }

    /// Sends what is safe in `text[..settled]`, or cuts at a stop string.
    fn advance(&mut self, settled: usize) -> Update {
        let from = floor_char_boundary(&self.text, self.sent);
        if let Some(cut) = find_stop(&self.text[..settled], from, &self.stops) {
            let delta = self.text[from..cut].to_string();
            self.text.truncate(cut);
            self.sent = cut;
            return Update {
                delta,
                stopped: true,
            };
        }
        let held = held_suffix(&self.text[..settled], &self.stops);
        let end = settled - held;
        let delta = if end > from {
            self.sent = end;
            self.text[from..end].to_string()
        } else {
            String::new()
        };
        Update {
            delta,
            stopped: false,
        }
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Byte offset of the earliest stop string that starts at or after `from`.
fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
        .min()
}

/// Length in bytes of the longest tail of `text` that is a proper prefix
/// of a stop string (it could become one with more text).
fn held_suffix(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .filter_map(|stop| {
            (1..stop.len())
                .rev()
                .filter(|&k| stop.is_char_boundary(k))
                .find(|&k| text.ends_with(&stop[..k]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds growing texts; returns what was sent and whether it stopped.
    fn run(stops: &[&str], texts: &[&str]) -> (Vec<String>, bool, String) {
        let mut t = TextTracker::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        for text in texts {
            let u = t.update(text.to_string());
            sent.push(u.delta);
            if u.stopped {
                return (sent, true, t.text().to_string());
            }
        }
        let end = t.finish();
        sent.push(end.delta);
        (sent, end.stopped, t.text().to_string())
    }

    #[test]
    fn text_is_sent_as_it_comes_without_stops() {
        let (sent, stopped, text) = run(&[], &["He", "Hel", "Hello"]);
        assert_eq!(sent, ["He", "l", "lo", ""]);
        assert!(!stopped);
        assert_eq!(text, "Hello");
    }

    #[test]
    fn a_possible_stop_prefix_is_held_then_released_or_cut() {
        // "EN" could start "END": held back, then released when it cannot.
        let (sent, stopped, _) = run(&["END"], &["ab", "abE", "abEN", "abENx"]);
        assert_eq!(sent, ["ab", "", "", "ENx", ""]);
        assert!(!stopped);
        // ... or cut when it completes.
        let (sent, stopped, text) = run(&["END", "zz"], &["ab", "abE", "abEN", "abEND!"]);
        assert_eq!(sent, ["ab", "", "", ""]);
        assert!(stopped);
        assert_eq!(text, "ab");
        // The earliest of several stops wins; text before it is sent.
        let (sent, _, text) = run(&["c", "ab"], &["xxabc"]);
        assert_eq!((sent, text.as_str()), (vec!["xx".to_string()], "xx"));
    }

    #[test]
    fn incomplete_utf8_waits_and_the_end_flushes_everything() {
        let (sent, _, _) = run(&[], &["a\u{FFFD}", "aé", "aé\u{FFFD}"]);
        assert_eq!(sent, ["a", "é", "", "\u{FFFD}"]);
        // A stop string is not matched on an unfinished character ...
        let (sent, stopped, text) = run(&["a\u{FFFD}"], &["a\u{FFFD}", "aé"]);
        assert_eq!(
            (sent.concat(), stopped, text.as_str()),
            ("aé".into(), false, "aé")
        );
        // ... but it is at the end, when the character stays unfinished.
        let (sent, stopped, text) = run(&["\u{FFFD}"], &["ab\u{FFFD}"]);
        assert_eq!(
            (sent.concat(), stopped, text.as_str()),
            ("ab".into(), true, "ab")
        );
        // Multi-byte stop strings are held on char boundaries.
        let (sent, stopped, text) = run(&["éé"], &["xé", "xéé"]);
        assert_eq!(sent, ["x", ""]);
        assert!(stopped);
        assert_eq!(text, "x");
    }
}
