//! Which columns of the input hold what, when not detected.

use apscore_core::layout::{LayoutOptions, SchemaKind};
use clap::{Args, ValueEnum};

/// Which columns hold what; detected from the data unless given.
#[derive(Debug, Args)]
#[command(next_help_heading = "Dataset layout")]
pub struct LayoutArgs {
    /// Dataset layout: `ultrafeedback` (message lists + score_chosen/score_rejected), `armorm`
    /// (message lists + all_rm_scores, margin = max − min), `plain` (string prompt, chosen and
    /// rejected + score columns). Detected from the columns when `auto`.
    #[arg(long, value_enum, default_value_t = SchemaArg::Auto)]
    pub schema: SchemaArg,

    /// Column with the prompt (a string or a message list). Default: `prompt`.
    #[arg(long)]
    pub prompt_column: Option<String>,

    /// Column with the chosen response or conversation. Default: `chosen`.
    #[arg(long)]
    pub chosen_column: Option<String>,

    /// Column with the rejected response or conversation. Default: `rejected`.
    #[arg(long)]
    pub rejected_column: Option<String>,

    /// Numeric column with the chosen response's reward; the margin is chosen − rejected.
    /// Default: `score_chosen`.
    #[arg(long)]
    pub score_chosen_column: Option<String>,

    /// Numeric column with the rejected response's reward. Default: `score_rejected`.
    #[arg(long)]
    pub score_rejected_column: Option<String>,

    /// List column of reward-model scores; the margin is max − min. Default: `all_rm_scores`.
    #[arg(long, conflicts_with_all = ["score_chosen_column", "score_rejected_column"])]
    pub rm_scores_column: Option<String>,

    /// Numeric column that already holds the explicit reward margin.
    #[arg(long, conflicts_with_all = ["score_chosen_column", "score_rejected_column", "rm_scores_column"])]
    pub rm_margin_column: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaArg {
    Auto,
    Ultrafeedback,
    Armorm,
    Plain,
}

impl LayoutArgs {
    pub fn options(&self) -> LayoutOptions {
        LayoutOptions {
            schema: match self.schema {
                SchemaArg::Auto => None,
                SchemaArg::Ultrafeedback => Some(SchemaKind::UltraFeedback),
                SchemaArg::Armorm => Some(SchemaKind::ArmoRm),
                SchemaArg::Plain => Some(SchemaKind::Plain),
            },
            prompt_column: self.prompt_column.clone(),
            chosen_column: self.chosen_column.clone(),
            rejected_column: self.rejected_column.clone(),
            score_chosen_column: self.score_chosen_column.clone(),
            score_rejected_column: self.score_rejected_column.clone(),
            rm_scores_column: self.rm_scores_column.clone(),
            rm_margin_column: self.rm_margin_column.clone(),
            require_text: false,
            require_logps: false,
            reward_model: false,
        }
    }
}
