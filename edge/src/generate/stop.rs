//! Stop sequences (OpenAI's `stop`): generation ends where the text first
//! contains one of them, and no text from the stop sequence on is ever
//! shown, in a stream either: text that could still turn out to begin a
//! stop sequence is held back until it cannot (or the generation ends).
//! Matching is on text, so a stop sequence split across tokens is found.

/// Finds stop sequences in the text of a generation as it grows.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// The text so far (cut at a stop sequence once one is found).
    text: String,
    /// Bytes of `text` already shown.
    shown: usize,
    hit: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self { stops, ..Self::default() }
    }

    /// Appends a piece of text: the text that may be shown now, and whether
    /// a stop sequence ended the generation.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.hit {
            return (String::new(), true);
        }
        self.text.push_str(piece);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A new match ends in the new text: it starts at most `longest - 1`
        // bytes before it.
        let mut from = self.shown.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        if let Some(at) = found {
            self.text.truncate(at);
            self.hit = true;
            return (self.release(at), true);
        }
        // Hold back the longest tail that is the start of a stop sequence.
        let len = self.text.len();
        let hold = (1..longest.min(len - self.shown + 1))
            .rev()
            .find(|&k| {
                self.text.is_char_boundary(len - k) && self.stops.iter().any(|s| s.starts_with(&self.text[len - k..]))
            })
            .unwrap_or(0);
        (self.release(len - hold), false)
    }

    fn release(&mut self, upto: usize) -> String {
        let piece = self.text[self.shown..upto].to_string();
        self.shown = upto;
        piece
    }

    /// Whether a stop sequence ended the generation.
    pub fn hit(&self) -> bool {
        self.hit
    }

    /// The whole text to show: up to the stop sequence, or everything when
    /// none came (held-back text included).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut shown = Vec::new();
        let mut hit = false;
        for p in pieces {
            let (s, h) = m.push(p);
            shown.push(s);
            if h {
                hit = true;
                break;
            }
        }
        (shown, hit, m.text().to_string())
    }

    #[test]
    fn a_stop_across_pieces_ends_the_text_before_it() {
        let (shown, hit, text) = run(&["\nUser:"], &["Hello", " world\n", "Us", "er: more"]);
        assert!(hit);
        assert_eq!(text, "Hello world");
        assert_eq!(shown, vec!["Hello", " world", "", ""], "the newline was held back, then dropped");
        assert_eq!(shown.concat(), text);
    }

    #[test]
    fn held_back_text_is_shown_once_it_cannot_start_a_stop() {
        let (shown, hit, text) = run(&["END"], &["a E", "N", "x", "y"]);
        assert!(!hit);
        assert_eq!(shown, vec!["a ", "", "ENx", "y"]);
        assert_eq!(text, "a ENxy");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_safe() {
        let (_, hit, text) = run(&["zz", "é!"], &["café", "! then zz"]);
        assert!(hit);
        assert_eq!(text, "caf");
        let (shown, hit, text) = run(&["ü"], &["aéb"]);
        assert!(!hit);
        assert_eq!((shown.concat(), text), ("aéb".to_string(), "aéb".to_string()));
        let (_, hit, text) = run(&[], &["anything"]);
        assert!(!hit);
        assert_eq!(text, "anything");
    }
}
