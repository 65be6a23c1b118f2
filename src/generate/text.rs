//! Generation as text: [`TextGenerator`] runs a [`Generator`], decodes each sample's tokens
//! with the tokenizer as they arrive, ends a sample at a stop string and says why each sample
//! ended.

use super::generator::{Finish, Generator, Token};
use super::stream::TextStream;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One generated token of one sample, with the text it made final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextToken {
    /// Which sample (0..num_samples) it belongs to.
    pub sample: usize,
    pub id: u32,
    /// Text of the sample that is final now (often empty: a character split between tokens,
    /// or text that might begin a stop string, waits for the next tokens). On a sample's last
    /// token it holds everything still waiting. A stop string and the stop token are never
    /// part of it. Always empty without a tokenizer.
    pub text: String,
    /// Set on a sample's last token: why the sample ended.
    pub finish: Option<Finish>,
}

/// Streams generated tokens with their text, as an iterator of [`TextToken`]s.
///
/// Each sample's text is what its tokens decode to, up to (not including) the first stop
/// string or the stop token; a sample that reaches a stop string ends there and costs nothing
/// more. Ids beyond the tokenizer (a vocabulary padded past it) decode as U+FFFD.
pub struct TextGenerator<'a> {
    tokens: Generator<'a>,
    tokenizer: Option<&'a Tokenizer>,
    texts: Vec<TextStream>,      // one per sample
    finish: Vec<Option<Finish>>, // one per sample, set on its last token
}

impl<'a> TextGenerator<'a> {
    /// Decodes the samples of `tokens` with `tokenizer`, ending each at the first of `stops`
    /// (empty strings are ignored). Without a tokenizer there is no text, only ids and finish
    /// reasons, and stop strings are an error.
    pub fn new(tokens: Generator<'a>, tokenizer: Option<&'a Tokenizer>, stops: &[String]) -> Result<Self> {
        if tokenizer.is_none() && stops.iter().any(|s| !s.is_empty()) {
            return Err(Error::Input("stop strings need a tokenizer to see text".into()));
        }
        let samples = tokens.num_samples();
        Ok(TextGenerator {
            tokens,
            tokenizer,
            texts: vec![TextStream::new(stops); samples],
            finish: vec![None; samples],
        })
    }

    /// Why `sample` ended; `None` while it runs. A sample that ends without any token
    /// (max_new_tokens 0) ended by length.
    pub fn finish(&self, sample: usize) -> Option<Finish> {
        self.finish[sample].or_else(|| {
            let untouched = self.tokens.is_finished(sample) && self.tokens.new_tokens(sample).is_empty();
            untouched.then_some(Finish::Length)
        })
    }

    /// The text of `sample` so far (the prompt not included); `None` without a tokenizer.
    pub fn text(&self, sample: usize) -> Option<&str> {
        self.tokenizer.map(|_| self.texts[sample].text())
    }

    /// The ids generated so far for `sample` (the prompt not included), stop token included.
    pub fn new_tokens(&self, sample: usize) -> &[u32] {
        self.tokens.new_tokens(sample)
    }

    /// Decodes one token into its sample's text and decides whether the sample ends here.
    fn decode(&mut self, token: Token) -> Result<TextToken> {
        let Token { sample, id, mut finish } = token;
        let mut text = String::new();
        if let Some(tokenizer) = self.tokenizer {
            let stream = &mut self.texts[sample];
            // The stop token (<|endoftext|>) ends the text; it is not part of it.
            if finish != Some(Finish::StopToken) {
                text.push_str(stream.push(&tokenizer.decode_bytes_lossy(&[id])));
            }
            if stream.is_stopped() {
                self.tokens.stop_sample(sample)?; // (nothing to do if the token ended the sample anyway)
                finish = Some(Finish::StopString);
            }
            if finish.is_some() {
                text.push_str(stream.finish());
            }
        }
        self.finish[sample] = finish;
        Ok(TextToken {
            sample,
            id,
            text,
            finish,
        })
    }
}

impl Iterator for TextGenerator<'_> {
    type Item = Result<TextToken>;

    fn next(&mut self) -> Option<Result<TextToken>> {
        let token = self.tokens.next()?;
        Some(token.and_then(|token| self.decode(token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::GenerateOptions;
    use crate::model::Gpt;
    use crate::rng::Rng;
    use crate::Config;

    /// A random 12-token model (so sampling is close to uniform) and a tokenizer for its first
    /// `known` ids: the letters from 'a'.
    fn model_and_tokenizer(known: u8) -> (Gpt, Tokenizer) {
        let model = Gpt::new(Config::new(12, 64, 16, 1, 2), 7).unwrap();
        let tokenizer = Tokenizer::char_level((b'a'..b'a' + known).map(char::from).collect()).unwrap();
        (model, tokenizer)
    }

    /// Every token of a run (seed 1, prompt "a") and the generator after it.
    fn run<'a>(
        model: &'a Gpt,
        tokenizer: Option<&'a Tokenizer>,
        options: GenerateOptions,
        stops: &[&str],
    ) -> (Vec<TextToken>, TextGenerator<'a>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let tokens = Generator::new(model, &[0], options, &mut Rng::new(1)).unwrap();
        let mut generator = TextGenerator::new(tokens, tokenizer, &stops).unwrap();
        let all = generator.by_ref().collect::<Result<Vec<_>>>().unwrap();
        (all, generator)
    }

    fn options(max_new_tokens: usize, num_samples: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            num_samples,
            ..GenerateOptions::default()
        }
    }

    /// What `sample` printed: the concatenated texts of its tokens.
    fn printed(tokens: &[TextToken], sample: usize) -> String {
        tokens
            .iter()
            .filter(|t| t.sample == sample)
            .map(|t| t.text.as_str())
            .collect()
    }

    /// The finish reasons reported on `sample`'s tokens, in order.
    fn finishes(tokens: &[TextToken], sample: usize) -> Vec<Finish> {
        tokens
            .iter()
            .filter(|t| t.sample == sample)
            .filter_map(|t| t.finish)
            .collect()
    }

    #[test]
    fn without_stops_the_text_is_the_decoded_tokens_and_samples_end_by_length() {
        let (model, tokenizer) = model_and_tokenizer(12);
        let (tokens, generator) = run(&model, Some(&tokenizer), options(20, 3), &[]);
        for s in 0..3 {
            let text = tokenizer.decode(generator.new_tokens(s)).unwrap();
            assert_eq!(generator.new_tokens(s).len(), 20);
            assert_eq!(
                (printed(&tokens, s), generator.text(s)),
                (text.clone(), Some(text.as_str()))
            );
            assert_eq!(finishes(&tokens, s), [Finish::Length]);
            assert_eq!(generator.finish(s), Some(Finish::Length));
        }
    }

    #[test]
    fn a_stop_string_ends_its_sample_before_it_and_the_others_go_on() {
        let (model, tokenizer) = model_and_tokenizer(12);
        let (free, freely) = run(&model, Some(&tokenizer), options(40, 3), &[]);
        // A stop string that sample 1 reaches: two letters from the middle of its text.
        let text = freely.text(1).unwrap().to_string();
        let stop = &text[10..12];
        let (tokens, stopped) = run(&model, Some(&tokenizer), options(40, 3), &[stop]);
        let at = text.find(stop).unwrap();
        assert_eq!(printed(&tokens, 1), text[..at]);
        assert_eq!(stopped.text(1), Some(&text[..at]));
        assert_eq!(
            stopped.new_tokens(1),
            &freely.new_tokens(1)[..at + 2],
            "it ends on the token that completes it"
        );
        assert_eq!(finishes(&tokens, 1), [Finish::StopString]);
        assert_eq!(stopped.finish(1), Some(Finish::StopString));
        for s in [0, 2] {
            let own = freely.text(s).unwrap();
            let end = own.find(stop).unwrap_or(own.len());
            assert_eq!(printed(&tokens, s), own[..end], "sample {s}");
            let expected = if end < own.len() {
                Finish::StopString
            } else {
                Finish::Length
            };
            assert_eq!(stopped.finish(s), Some(expected), "sample {s}");
        }
        assert!(tokens.len() < free.len());
    }

    #[test]
    fn text_held_back_for_a_stop_string_that_never_comes_is_released_at_the_end() {
        let (model, tokenizer) = model_and_tokenizer(12);
        let (_, freely) = run(&model, Some(&tokenizer), options(15, 1), &[]);
        let text = freely.text(0).unwrap().to_string();
        // The text's last letter then one the model cannot make: held back to the end.
        let stop = format!("{}z", &text[text.len() - 1..]);
        let (tokens, generator) = run(&model, Some(&tokenizer), options(15, 1), &[&stop, ""]);
        assert_eq!(tokens.last().unwrap().text.chars().last(), text.chars().last());
        assert_eq!(printed(&tokens, 0), text);
        assert_eq!(generator.finish(0), Some(Finish::Length));
    }

    #[test]
    fn the_stop_token_ends_its_sample_and_is_not_part_of_the_text() {
        let (model, tokenizer) = model_and_tokenizer(12);
        let (_, freely) = run(&model, Some(&tokenizer), options(20, 1), &[]);
        let ids = freely.new_tokens(0);
        let stop_token = ids[5];
        let at = ids.iter().position(|&id| id == stop_token).unwrap();
        let options = GenerateOptions {
            stop_tokens: vec![stop_token],
            ..options(20, 1)
        };
        let (tokens, generator) = run(&model, Some(&tokenizer), options, &[]);
        assert_eq!(generator.new_tokens(0), &ids[..=at], "the stop token is still reported");
        assert_eq!(generator.text(0).unwrap(), tokenizer.decode(&ids[..at]).unwrap());
        assert_eq!(tokens.last().unwrap().text, "");
        assert_eq!(finishes(&tokens, 0), [Finish::StopToken]);
    }

    #[test]
    fn samples_without_new_tokens_end_by_length() {
        let (model, tokenizer) = model_and_tokenizer(12);
        let (tokens, generator) = run(&model, Some(&tokenizer), options(0, 2), &["a"]);
        assert!(tokens.is_empty());
        for s in 0..2 {
            assert_eq!(
                (generator.finish(s), generator.text(s)),
                (Some(Finish::Length), Some(""))
            );
        }
    }

    #[test]
    fn without_a_tokenizer_there_are_ids_and_finish_reasons_but_no_text() {
        let (model, _) = model_and_tokenizer(12);
        let (tokens, generator) = run(&model, None, options(5, 2), &[]);
        assert_eq!(tokens.len(), 10);
        assert!(tokens.iter().all(|t| t.text.is_empty()));
        assert_eq!((generator.text(0), generator.finish(1)), (None, Some(Finish::Length)));
        let tokens = Generator::new(&model, &[0], options(5, 1), &mut Rng::new(1)).unwrap();
        let refused = TextGenerator::new(tokens, None, &["a".to_string()]);
        assert!(matches!(refused, Err(Error::Input(_))));
    }

    #[test]
    fn ids_beyond_the_tokenizer_are_replacement_characters() {
        let (model, tokenizer) = model_and_tokenizer(6); // ids 6..12 have no text
        let (tokens, generator) = run(&model, Some(&tokenizer), options(30, 1), &[]);
        let expected: String = tokens
            .iter()
            .map(|t| tokenizer.decode(&[t.id]).unwrap_or_else(|_| "\u{FFFD}".into()))
            .collect();
        assert!(expected.contains('\u{FFFD}') && expected.chars().any(|c| c != '\u{FFFD}'));
        assert_eq!(generator.text(0), Some(expected.as_str()));
    }
}
