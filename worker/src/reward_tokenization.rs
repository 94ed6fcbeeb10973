//! From a conversation to the token ids a reward model scores (`docs/models.md#reward-models`).
//!
//! As transformers scores a conversation with a `*ForSequenceClassification` reward model for
//! a batch of one: the prompt's messages followed by the response as an assistant turn,
//! rendered by the **reward model's own** chat template (no generation prompt) and tokenized
//! as `apply_chat_template(conversation, tokenize=True)` does — without special tokens beyond
//! what the template writes. For message-list data, each side is its own list as the data holds
//! it (the rejected list's earlier messages too, where they differ from the chosen list's). There is no prompt/response split and no system message is
//! inserted: the reward model sees the conversation as the data holds it. A conversation
//! longer than the job's `--reward-max-length` rejects its row; it is never cut.

use apscore_core::pairs::{Conversation, Message, RowProblem};
use tokenizers::Tokenizer;

use crate::chat_template::{ChatTemplate, TemplateError};
use crate::model::Head;
use crate::model::reward_head::readout;
use crate::tokenization::SpecialTokens;

/// Both conversations of a pair as the reward model reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardPair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl RewardPair {
    /// Tokens of both conversations.
    pub fn len(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reward model's tokenizer and chat template, and the longest conversation it takes.
pub struct RewardTokenizer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    max_length: usize,
    /// Where the model reads a conversation: one it cannot read is rejected here.
    head: Head,
}

impl RewardTokenizer {
    pub fn new(
        mut tokenizer: Tokenizer,
        template_source: &str,
        special: &SpecialTokens,
        max_length: usize,
        head: Head,
    ) -> Result<Self, TemplateError> {
        tokenizer.with_padding(None);
        // Truncation settings saved in tokenizer.json would cut conversations silently.
        let _ = tokenizer.with_truncation(None);
        Ok(RewardTokenizer {
            tokenizer,
            template: ChatTemplate::new(template_source, special.template_names())?,
            max_length,
            head,
        })
    }

    /// The ids of the chosen and the rejected conversation of `conversation`.
    pub fn tokenize(&self, conversation: &Conversation) -> Result<RewardPair, RowProblem> {
        Ok(RewardPair {
            chosen: self.ids(&conversation.prompt, &conversation.chosen, "chosen")?,
            rejected: self.ids(
                conversation.rejected_prompt(),
                &conversation.rejected,
                "rejected",
            )?,
        })
    }

    fn ids(
        &self,
        prompt: &[Message],
        response: &Message,
        side: &str,
    ) -> Result<Vec<u32>, RowProblem> {
        let mut messages = prompt.to_vec();
        messages.push(response.clone());
        let text = self
            .template
            .render(&messages, false)
            .map_err(|e| RowProblem(format!("reward model's chat template: {e}")))?;
        let ids = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| RowProblem(format!("reward model's tokenizer failed: {e}")))?
            .get_ids()
            .to_vec();
        if ids.is_empty() {
            return Err(RowProblem(format!(
                "the {side} conversation renders to no tokens for the reward model"
            )));
        }
        if ids.len() > self.max_length {
            // No token count in the reason: rows rejected for one cause group under one reason.
            return Err(RowProblem(format!(
                "the {side} conversation is longer than --reward-max-length ({} tokens) for \
                 the reward model",
                self.max_length
            )));
        }
        readout(&self.head, &ids)
            .map_err(|reason| RowProblem(format!("the {side} conversation: {reason}")))?;
        Ok(ids)
    }
}
