//! From streamed token bytes to printable text.
//!
//! A byte-level BPE token can end in the middle of a UTF-8 character, so bytes are printed
//! only once they form whole characters (bytes that can never be UTF-8 become U+FFFD). Text
//! that might be the start of a stop string is held back until it is clear that it is not,
//! so that nothing of a stop string is ever printed.

/// The text of one sample as its tokens arrive.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    stops: Vec<String>,
    pending: Vec<u8>, // bytes of an unfinished UTF-8 character
    text: String,     // everything decoded so far (cut at a stop string once one is seen)
    emitted: usize,   // bytes of `text` already handed out
    stopped: bool,
}

impl TextStream {
    /// A stream that ends at the first occurrence of any of `stops` (empty strings ignored).
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..TextStream::default()
        }
    }

    /// Adds the bytes of one token and returns the text that is now final (maybe empty). When
    /// a stop string appears, returns the text before it and the stream is stopped.
    pub fn push(&mut self, bytes: &[u8]) -> &str {
        if self.stopped {
            return "";
        }
        self.pending.extend_from_slice(bytes);
        let mut rest = self.pending.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    self.text.push_str(std::str::from_utf8(valid).expect("checked valid"));
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            rest = after; // an unfinished character: wait for more bytes
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        let start = self.emitted;
        let end = match self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            Some(at) => {
                self.text.truncate(at);
                self.stopped = true;
                at
            }
            None => self.text.len() - self.held_back(),
        };
        self.emitted = end; // never below `start`: held-back text covers any unfinished stop string
        &self.text[start..self.emitted]
    }

    /// Bytes at the end of the text that could begin a stop string.
    fn held_back(&self) -> usize {
        let longest_prefix = |stop: &String| {
            stop.char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .filter(|&i| self.text.ends_with(&stop[..i]))
                .max()
                .unwrap_or(0)
        };
        self.stops.iter().map(longest_prefix).max().unwrap_or(0)
    }

    /// The end of the sample: returns the text still held back (an unfinished character
    /// becomes U+FFFD).
    pub fn finish(&mut self) -> &str {
        let start = self.emitted;
        if !self.stopped {
            if !self.pending.is_empty() {
                self.text.push(char::REPLACEMENT_CHARACTER);
                self.pending.clear();
            }
            self.stopped = true;
            self.emitted = self.text.len();
        }
        &self.text[start..self.emitted]
    }

    /// True once a stop string was seen (or [`TextStream::finish`] was called).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The sample's text so far, up to (not including) a stop string.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes each chunk, collecting what is printed, then finishes.
    fn run(stops: &[&str], chunks: &[&[u8]]) -> (Vec<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stops);
        let mut printed: Vec<String> = chunks.iter().map(|c| stream.push(c).to_string()).collect();
        printed.push(stream.finish().to_string());
        (printed, stream.text().to_string())
    }

    #[test]
    fn a_character_split_across_tokens_is_printed_once_whole() {
        let euro = "€".as_bytes(); // 3 bytes
        let (printed, text) = run(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
        assert_eq!(printed, ["a", "", "", "€", "b", ""]);
        assert_eq!(text, "a€b");
    }

    #[test]
    fn invalid_and_unfinished_bytes_become_replacement_characters() {
        let (printed, text) = run(&[], &[b"x\xff", b"y", &"€".as_bytes()[..2]]);
        assert_eq!(printed, ["x\u{FFFD}", "y", "", "\u{FFFD}"]);
        assert_eq!(text, "x\u{FFFD}y\u{FFFD}");
    }

    #[test]
    fn a_stop_string_is_never_printed_even_across_tokens() {
        let (printed, text) = run(&["\n\n", "END"], &[b"Hello", b" E", b"N", b"D", b"more"]);
        assert_eq!(printed.concat(), "Hello ");
        assert_eq!(text, "Hello ");
        // A false start is released as soon as it cannot be a stop string any more.
        let (printed, text) = run(&["END"], &[b"EN", b"x", b"\n"]);
        assert_eq!(printed, ["", "ENx", "\n", ""]);
        assert_eq!(text, "ENx\n");
        let (printed, _) = run(&["\n\n"], &[b"a\n", b"\nb"]);
        assert_eq!(printed.concat(), "a");
    }
}
