//! From a conversation to the token ids that are scored (`docs/models.md#tokenization`).
//!
//! Profile `simpo` (the default) reproduces the reference code's TRL 0.8-era SimPO
//! preprocessing: the prompt and each response are rendered with the chat template
//! separately, tokenized without special tokens, split where the prompt's tokens end (one
//! token earlier when the boundary token merged), BOS prepended to the prompt and EOS
//! appended to each response, then truncated. Profile `conversation` renders the prompt plus
//! the response as one conversation and scores what follows the rendered prompt with its
//! generation header; the template decides how a turn ends, so no EOS is appended.

use std::collections::BTreeMap;

use apscore_core::model_settings::{Profile, TruncationMode};
use apscore_core::pairs::{Conversation, Message, RowProblem};
use tokenizers::Tokenizer;

use crate::chat_template::ChatTemplate;

/// The profile, and the lengths and mode of truncation (`docs/models.md#tokenization`, step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizationParams {
    pub profile: Profile,
    pub max_length: usize,
    pub max_prompt_length: usize,
    pub truncation_mode: TruncationMode,
}

impl Default for TokenizationParams {
    fn default() -> Self {
        TokenizationParams {
            profile: Profile::Simpo,
            max_length: 2048,
            max_prompt_length: 1800,
            truncation_mode: TruncationMode::KeepEnd,
        }
    }
}

/// One response ready to score: its prompt's ids and its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizedResponse {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

impl TokenizedResponse {
    /// Tokens of the whole sequence.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.answer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Both responses of a pair, tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: TokenizedResponse,
    pub rejected: TokenizedResponse,
    /// A prompt or a response was cut to fit `max_length`.
    pub truncated: bool,
}

/// A tokenizer, its chat template and special tokens, and the parameters: turns
/// conversations into [`TokenizedPair`]s.
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    params: TokenizationParams,
    /// Tokenization step 1: the template knows system messages, so an empty one goes first.
    insert_system: bool,
}

/// The special tokens a checkpoint declares, as text.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

impl SpecialTokens {
    /// The special tokens' text under the names chat templates use (`bos_token`, …).
    pub fn template_names(&self) -> BTreeMap<String, String> {
        [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
            ("unk_token", &self.unk),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?)))
        .collect()
    }
}

/// The tokenizer cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenizationError {
    #[error("special token `{token}` ({which}) is not in the tokenizer's vocabulary")]
    UnknownSpecial { which: &'static str, token: String },
    #[error(transparent)]
    Template(#[from] crate::chat_template::TemplateError),
    #[error("--max-prompt-length ({prompt}) must be smaller than --max-length ({max})")]
    Lengths { prompt: usize, max: usize },
}

impl PairTokenizer {
    pub fn new(
        mut tokenizer: Tokenizer,
        template_source: &str,
        special: &SpecialTokens,
        params: TokenizationParams,
    ) -> Result<Self, TokenizationError> {
        if params.max_prompt_length >= params.max_length {
            return Err(TokenizationError::Lengths {
                prompt: params.max_prompt_length,
                max: params.max_length,
            });
        }
        tokenizer.with_padding(None);
        // Truncation settings saved in tokenizer.json would cut texts silently.
        let _ = tokenizer.with_truncation(None);
        let id_of = |which: &'static str, token: &Option<String>| -> Result<_, TokenizationError> {
            match token {
                None => Ok(None),
                Some(t) => match tokenizer.token_to_id(t) {
                    Some(id) => Ok(Some((id, t.clone()))),
                    None => Err(TokenizationError::UnknownSpecial {
                        which,
                        token: t.clone(),
                    }),
                },
            }
        };
        let bos = id_of("bos_token", &special.bos)?;
        let eos = id_of("eos_token", &special.eos)?;
        let names = special.template_names();
        let template = ChatTemplate::new(template_source, names)?;
        let insert_system =
            template_source.contains("system") || template_source.contains("<|im_start|>");
        Ok(PairTokenizer {
            tokenizer,
            template,
            bos,
            eos,
            params,
            insert_system,
        })
    }

    /// Ids of `text` without added special tokens (special-token text still maps to its id).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, RowProblem> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| RowProblem(format!("tokenizer failed: {e}")))
    }

    /// Tokenization steps 1–5 (`docs/models.md#tokenization`) for one pair.
    pub fn tokenize(&self, conversation: &Conversation) -> Result<TokenizedPair, RowProblem> {
        let mut prompt = conversation.prompt.clone();
        if self.insert_system && prompt.first().is_none_or(|m| m.role != "system") {
            prompt.insert(
                0,
                Message {
                    role: "system".into(),
                    content: String::new(),
                },
            );
        }
        let render = |messages: &[Message], generation: bool| {
            self.template
                .render(messages, generation)
                .map_err(|e| RowProblem(format!("chat template: {e}")))
        };
        let (mut chosen, mut rejected) = match self.params.profile {
            Profile::Simpo => {
                let text_prompt = render(&prompt, false)?;
                let response_text = |m: &Message| -> Result<String, RowProblem> {
                    let text = render(std::slice::from_ref(m), false)?;
                    Ok(match &self.bos {
                        Some((_, bos)) => text.strip_prefix(bos.as_str()).unwrap_or(&text).into(),
                        None => text,
                    })
                };
                let prompt_ids = self.encode(&text_prompt)?;
                let chosen = self.split(
                    &prompt_ids,
                    &text_prompt,
                    &response_text(&conversation.chosen)?,
                )?;
                let rejected = self.split(
                    &prompt_ids,
                    &text_prompt,
                    &response_text(&conversation.rejected)?,
                )?;
                // The reference refuses pairs whose two prompts differ by more than a token.
                let differing = chosen
                    .prompt
                    .iter()
                    .zip(&rejected.prompt)
                    .filter(|(a, b)| a != b)
                    .count();
                if differing > 1 || chosen.prompt.len().abs_diff(rejected.prompt.len()) > 1 {
                    return Err(RowProblem(
                        "the chosen and rejected prompts tokenize differently".into(),
                    ));
                }
                (chosen, rejected)
            }
            Profile::Conversation => {
                let text_prompt = render(&prompt, true)?;
                let prompt_ids = self.encode(&text_prompt)?;
                let full = |m: &Message| -> Result<String, RowProblem> {
                    let mut messages = prompt.clone();
                    messages.push(m.clone());
                    render(&messages, false)
                };
                let whole = |m: &Message| -> Result<TokenizedResponse, RowProblem> {
                    let text = full(m)?;
                    let ids = self.encode(&text)?;
                    if !text.starts_with(&text_prompt) {
                        return Err(RowProblem(
                            "chat template: the conversation does not start with the rendered prompt"
                                .into(),
                        ));
                    }
                    Ok(split_at_prompt(&prompt_ids, ids))
                };
                (whole(&conversation.chosen)?, whole(&conversation.rejected)?)
            }
        };

        // Step 5: BOS before each prompt, EOS after each answer (simpo only).
        for r in [&mut chosen, &mut rejected] {
            if let Some((bos, _)) = self.bos
                && r.prompt.first() != Some(&bos)
            {
                r.prompt.insert(0, bos);
            }
            if self.params.profile == Profile::Simpo
                && let Some((eos, _)) = self.eos
                && r.answer.last() != Some(&eos)
            {
                r.answer.push(eos);
            }
        }
        if chosen.answer.is_empty() || rejected.answer.is_empty() {
            return Err(RowProblem("a response has no tokens to score".into()));
        }

        // Step 6: truncation against the longer answer.
        let p = &self.params;
        let longer = chosen.answer.len().max(rejected.answer.len());
        let mut truncated = false;
        for r in [&mut chosen, &mut rejected] {
            if r.prompt.len() + longer > p.max_length && r.prompt.len() > p.max_prompt_length {
                truncated = true;
                r.prompt = match p.truncation_mode {
                    TruncationMode::KeepStart => r.prompt[..p.max_prompt_length].to_vec(),
                    TruncationMode::KeepEnd => {
                        r.prompt[r.prompt.len() - p.max_prompt_length..].to_vec()
                    }
                };
            }
        }
        for r in [&mut chosen, &mut rejected] {
            let keep = p.max_length - p.max_prompt_length;
            if r.prompt.len() + longer > p.max_length && r.answer.len() > keep {
                truncated = true;
                r.answer.truncate(keep);
            }
        }
        Ok(TokenizedPair {
            chosen,
            rejected,
            truncated,
        })
    }

    /// Step 4: tokenize prompt + response and find where the response starts.
    fn split(
        &self,
        prompt_ids: &[u32],
        text_prompt: &str,
        text_response: &str,
    ) -> Result<TokenizedResponse, RowProblem> {
        let full = self.encode(&format!("{text_prompt}{text_response}"))?;
        Ok(split_at_prompt(prompt_ids, full))
    }
}

/// The response starts where the prompt's ids end, or one token earlier when the last prompt
/// token merged with the response's first characters.
fn split_at_prompt(prompt_ids: &[u32], full: Vec<u32>) -> TokenizedResponse {
    let mut start = prompt_ids.len().min(full.len());
    if full[..start] != prompt_ids[..start] || start < prompt_ids.len() {
        start = start.saturating_sub(1);
    }
    TokenizedResponse {
        prompt: full[..start].to_vec(),
        answer: full[start..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_token_merge_moves_the_split_one_token_back() {
        let r = split_at_prompt(&[1, 2, 3], vec![1, 2, 9, 4]);
        assert_eq!(r.prompt, vec![1, 2]);
        assert_eq!(r.answer, vec![9, 4]);
        let r = split_at_prompt(&[1, 2, 3], vec![1, 2, 3, 4]);
        assert_eq!(r.prompt, vec![1, 2, 3]);
        assert_eq!(r.answer, vec![4]);
    }
}
