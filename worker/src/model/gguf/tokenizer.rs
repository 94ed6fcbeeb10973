//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, rebuilt as a
//! Hugging Face `tokenizers` tokenizer the way transformers rebuilds it
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`), so the token ids are the same.
//!
//! Supported: `tokenizer.ggml.model = llama`, SentencePiece BPE (Llama 2, Mistral, Gemma: the
//! merges recovered from the vocabulary, byte fallback, the `▁` space), and
//! `tokenizer.ggml.model = gpt2`, byte-level BPE: the vocabulary (tokens not
//! spelled in the byte alphabet are respelled), the merges, GPT-2's byte-level
//! pre-tokenizer — or, for the pre-tokenizer types transformers knows (`llama3`/`llama-bpe`,
//! `qwen2`, …), their split regex — control tokens (type 3) as special tokens and
//! user-defined ones (type 4) as added tokens.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{GgufError, GgufFile, MetaValue};
use crate::tokenization::SpecialTokens;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` type, when it has one.
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's reversible byte → printable character table.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut table = vec!['\0'; 256];
    for &b in &printable {
        table[b as usize] = char::from_u32(b).unwrap();
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            table[b as usize] = char::from_u32(256 + n).unwrap();
            printable.push(b);
            n += 1;
        }
    }
    table
}

/// The tokens of GGUF token type `wanted` (3: control, 4: user-defined), in vocabulary order.
fn tokens_of_type<'a>(
    tokens: &'a [&'a str],
    types: &'a [i64],
    wanted: i64,
) -> impl Iterator<Item = &'a str> + 'a {
    tokens
        .iter()
        .zip(types)
        .filter(move |(_, t)| **t == wanted)
        .map(|(token, _)| *token)
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Option<Vec<&'a str>> {
    file.metadata
        .get(key)?
        .as_array()?
        .iter()
        .map(MetaValue::as_str)
        .collect()
}

impl GgufFile {
    /// The file's tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer, GgufError> {
        let missing = |key: &str| GgufError::Metadata {
            path: self.path.clone(),
            key: key.into(),
        };
        let kind = self
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        match kind {
            "gpt2" => self.byte_level_tokenizer(),
            "llama" => self.sentencepiece_tokenizer(),
            _ => Err(GgufError::Format {
                path: self.path.clone(),
                message: format!(
                    "tokenizer type `{kind}` is not supported; supported: gpt2 (byte-level \
                     BPE), llama (SentencePiece BPE)"
                ),
            }),
        }
    }

    /// `tokenizer.ggml.model = gpt2`: byte-level BPE, as transformers' `GPT2Tokenizer`.
    fn byte_level_tokenizer(&self) -> Result<Tokenizer, GgufError> {
        let missing = |key: &str| GgufError::Metadata {
            path: self.path.clone(),
            key: key.into(),
        };
        let tokens = strings(self, "tokenizer.ggml.tokens")
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = strings(self, "tokenizer.ggml.merges")
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let types = self.token_types();

        let spelling = bytes_to_unicode();
        let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let spelled = if in_alphabet(t) {
                    t.to_string()
                } else {
                    t.bytes().map(|b| spelling[b as usize]).collect()
                };
                (spelled, i as u32)
            })
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .filter_map(|m| m.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
            .fuse_unk(false)
            .build()
            .map_err(|e| GgufError::Format {
                path: self.path.clone(),
                message: format!("the tokenizer's vocabulary and merges: {e}"),
            })?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = self
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        let pre_tokenizer: PreTokenizerWrapper = match split_regex(pre) {
            Some(regex) => Sequence::new(vec![
                Split::new(
                    SplitPattern::Regex(regex.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| GgufError::Format {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?
                .into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            None => ByteLevel::new(false, true, true).into(),
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        let typed = |wanted: i64| tokens_of_type(&tokens, &types, wanted);
        // A control token spelled outside the byte alphabet is a mislabel transformers skips.
        let control: Vec<AddedToken> = typed(3)
            .filter(|t| in_alphabet(t))
            .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        tokenizer
            .add_special_tokens(control)
            .map_err(|e| GgufError::Format {
                path: self.path.clone(),
                message: format!("adding the special tokens: {e}"),
            })?;
        let user: Vec<AddedToken> = typed(4)
            .map(|t| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        tokenizer.add_tokens(user).map_err(|e| GgufError::Format {
            path: self.path.clone(),
            message: format!("adding the special tokens: {e}"),
        })?;
        Ok(tokenizer)
    }

    /// `tokenizer.ggml.model = llama`: a SentencePiece BPE vocabulary (Llama 2, Mistral, Gemma)
    /// as transformers rebuilds it: the merges are not in the file and are recovered from the
    /// vocabulary ([`sentencepiece_merges`]); unknown characters fall back to byte tokens
    /// (`<0x..>`); spaces are `▁`. Llama's tokenizer (`LlamaTokenizer`) marks the first word
    /// with a `▁` (Metaspace, prepend "first"); Gemma's (`GemmaTokenizer`) prepends nothing,
    /// and its files spell runs of spaces as spaces, which are respelled as `▁`s.
    fn sentencepiece_tokenizer(&self) -> Result<Tokenizer, GgufError> {
        let format = |message: String| GgufError::Format {
            path: self.path.clone(),
            message,
        };
        let tokens = strings(self, "tokenizer.ggml.tokens").ok_or_else(|| GgufError::Metadata {
            path: self.path.clone(),
            key: "tokenizer.ggml.tokens".into(),
        })?;
        let types = self.token_types();
        let gemma = matches!(self.architecture(), "gemma" | "gemma2" | "gemma3");
        let spelled: Vec<String> = tokens
            .iter()
            .map(|t| {
                let blank = t.contains(' ') && t.chars().all(char::is_whitespace);
                if gemma && blank {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.to_string()
                }
            })
            .collect();
        // Gemma's scores do not follow its merge order; the order of its tokens does.
        let scores: Vec<f64> = if gemma {
            (0..tokens.len()).map(|i| -(i as f64)).collect()
        } else {
            let scores: Option<Vec<f64>> = self
                .metadata
                .get("tokenizer.ggml.scores")
                .and_then(MetaValue::as_array)
                .map(|v| v.iter().filter_map(MetaValue::as_float).collect());
            scores
                .filter(|s| s.len() == tokens.len())
                .ok_or_else(|| GgufError::Metadata {
                    path: self.path.clone(),
                    key: "tokenizer.ggml.scores".into(),
                })?
        };
        let merges = sentencepiece_merges(&spelled, &scores);
        let vocab: tokenizers::models::bpe::Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut bpe = BPE::builder()
            .vocab_and_merges(vocab.clone(), merges)
            .fuse_unk(true)
            .byte_fallback(true);
        if gemma {
            bpe = bpe.unk_token("<unk>".into());
        }
        let bpe = bpe
            .build()
            .map_err(|e| format(format!("the tokenizer's vocabulary: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let replace = |from: &str, to: &str| {
            Replace::new(from, to).map_err(|e| format(format!("the tokenizer's spaces: {e}")))
        };
        let mut decoders: Vec<DecoderWrapper> = vec![
            replace("\u{2581}", " ")?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if gemma {
            tokenizer
                .with_normalizer(Some(replace(" ", "\u{2581}")?))
                .map_err(|e| format(format!("the tokenizer's spaces: {e}")))?;
            let split = Split::new(
                SplitPattern::String(" ".into()),
                SplitDelimiterBehavior::MergedWithPrevious,
                false,
            )
            .map_err(|e| format(e.to_string()))?;
            tokenizer.with_pre_tokenizer(Some(split));
        } else {
            let metaspace = Metaspace::new('\u{2581}', PrependScheme::First, false);
            tokenizer.with_pre_tokenizer(Some(metaspace));
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

        let typed = |wanted: i64| tokens_of_type(&tokens, &types, wanted);
        let control: Vec<AddedToken> = typed(3)
            .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        tokenizer
            .add_special_tokens(control)
            .map_err(|e| format(format!("adding the special tokens: {e}")))?;
        // User-defined tokens as they are spelled in the vocabulary (Gemma's respelled runs of
        // spaces are not, and transformers leaves them out).
        let user: Vec<AddedToken> = typed(4)
            .filter(|t| vocab.contains_key(*t))
            .map(|t| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        tokenizer
            .add_tokens(user)
            .map_err(|e| format(format!("adding the user-defined tokens: {e}")))?;
        Ok(tokenizer)
    }

    /// `tokenizer.ggml.token_type`, one per token (empty when absent).
    fn token_types(&self) -> Vec<i64> {
        self.metadata
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .map(|v| v.iter().filter_map(MetaValue::as_int).collect())
            .unwrap_or_default()
    }

    /// The special tokens' text, from their ids.
    pub fn special_tokens(&self) -> SpecialTokens {
        let tokens = strings(self, "tokenizer.ggml.tokens").unwrap_or_default();
        let token = |key: &str| {
            let id = self.metadata.get(key)?.as_int()? as usize;
            tokens.get(id).map(|t| t.to_string())
        };
        SpecialTokens {
            bos: token("tokenizer.ggml.bos_token_id"),
            eos: token("tokenizer.ggml.eos_token_id"),
            pad: token("tokenizer.ggml.padding_token_id"),
            unk: token("tokenizer.ggml.unknown_token_id"),
        }
    }
}

/// The merges a SentencePiece BPE vocabulary implies, as transformers' `generate_merges`
/// recovers them: every split of a token into two tokens of the vocabulary, ordered by the
/// token's score (best first; among equal scores the longer left piece, then the longer right
/// piece, first), the splits of one token by their pieces' ids. Tokens spelled twice count once,
/// at their first place with their last id and score, as a Python dict keeps them.
pub fn sentencepiece_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        if id.insert(token, i).is_none() {
            order.push(token);
        }
        score.insert(token, scores[i]);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &token in &order {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (l, r, score[token]))
            .collect();
        local.sort_by_key(|(l, r, _)| (id[l], id[r]));
        merges.extend(local);
    }
    // Stable, as Python's sorted(..., reverse=True).
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }
}
