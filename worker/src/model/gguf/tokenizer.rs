//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, rebuilt as a
//! Hugging Face `tokenizers` tokenizer the way transformers rebuilds it
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`), so the token ids are the same.
//!
//! Supported: `tokenizer.ggml.model = gpt2`, byte-level BPE: the vocabulary (tokens not
//! spelled in the byte alphabet are respelled), the merges, GPT-2's byte-level
//! pre-tokenizer — or, for the pre-tokenizer types transformers knows (`llama3`/`llama-bpe`,
//! `qwen2`, …), their split regex — control tokens (type 3) as special tokens and
//! user-defined ones (type 4) as added tokens.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
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
        if kind != "gpt2" {
            return Err(GgufError::Format {
                path: self.path.clone(),
                message: format!(
                    "tokenizer type `{kind}` is not supported; supported: gpt2 (byte-level BPE)"
                ),
            });
        }
        let tokens = strings(self, "tokenizer.ggml.tokens")
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = strings(self, "tokenizer.ggml.merges")
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let types: Vec<i64> = self
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .map(|v| v.iter().filter_map(MetaValue::as_int).collect())
            .unwrap_or_default();

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

        let typed = |wanted: i64| {
            tokens
                .iter()
                .zip(&types)
                .filter(move |(_, t)| **t == wanted)
                .map(|(token, _)| *token)
        };
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
