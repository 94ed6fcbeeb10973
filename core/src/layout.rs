//! Which columns of a preference dataset hold what: the dataset layout.
//!
//! apscore recognises the layouts preference data ships in (see [`SchemaKind`]) from the
//! Parquet schema alone, before any row is read; the user can force a kind or name columns.
//! Every input file must fit the layout detected on the first; a missing or mistyped column is
//! an error naming the file, the column, what was expected and what was found.

use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

/// The dataset layouts apscore knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaKind {
    /// UltraFeedback-binarized: `chosen`/`rejected` message lists, `score_chosen`, `score_rejected`.
    UltraFeedback,
    /// SimPO's ArmoRM-annotated data: message lists and `all_rm_scores` (margin = max − min).
    ArmoRm,
    /// Plain strings `prompt`, `chosen`, `rejected` with numeric score columns.
    Plain,
}

impl SchemaKind {
    pub fn name(self) -> &'static str {
        match self {
            SchemaKind::UltraFeedback => "ultrafeedback",
            SchemaKind::ArmoRm => "armorm",
            SchemaKind::Plain => "plain",
        }
    }
}

/// What the user asked for; `None` fields are detected.
#[derive(Debug, Clone, Default)]
pub struct LayoutOptions {
    /// Force a layout instead of detecting it.
    pub schema: Option<SchemaKind>,
    pub prompt_column: Option<String>,
    pub chosen_column: Option<String>,
    pub rejected_column: Option<String>,
    pub score_chosen_column: Option<String>,
    pub score_rejected_column: Option<String>,
    pub rm_scores_column: Option<String>,
    pub rm_margin_column: Option<String>,
    /// The job needs the prompt/response text (it runs a model).
    pub require_text: bool,
    /// The job needs precomputed log-prob columns (it does not run a model).
    pub require_logps: bool,
    /// A reward model gives the explicit margin: the data's own is optional (kept when
    /// present, to compare).
    pub reward_model: bool,
}

/// How a text column stores its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    /// A plain string.
    String,
    /// A list of `{content, role}` messages.
    Messages,
}

/// A text column and how it stores its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextColumn {
    pub name: String,
    pub kind: TextKind,
}

/// The columns holding the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextColumns {
    pub prompt: Option<TextColumn>,
    pub chosen: TextColumn,
    pub rejected: TextColumn,
}

/// Where the explicit (reward-model) margin comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExplicitMargin {
    /// `chosen − rejected` of two numeric columns.
    ScorePair { chosen: String, rejected: String },
    /// `max − min` of a `list<number>` column.
    RmScores { column: String },
    /// A numeric column that already holds the margin.
    Column { column: String },
}

/// Precomputed per-response log-prob columns (the reference code's processed datasets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogpColumns {
    pub chosen: String,
    pub rejected: String,
    pub chosen_norm: String,
    pub rejected_norm: String,
    /// `chosen_tokens`/`rejected_tokens`, when the data carries them.
    pub tokens: Option<(String, String)>,
}

impl Default for LogpColumns {
    fn default() -> Self {
        LogpColumns {
            chosen: "chosen_logps".into(),
            rejected: "rejected_logps".into(),
            chosen_norm: "chosen_logps_norm".into(),
            rejected_norm: "rejected_logps_norm".into(),
            tokens: None,
        }
    }
}

/// The detected layout of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetLayout {
    pub kind: SchemaKind,
    pub text: Option<TextColumns>,
    /// The data's own explicit margin; `None` only when a reward model gives it.
    pub explicit: Option<ExplicitMargin>,
    pub logps: Option<LogpColumns>,
}

/// The dataset does not have the columns the job needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "{file}: missing column `{column}` (expected {expected}); the file has columns: {found}"
    )]
    MissingColumn {
        file: String,
        column: String,
        expected: String,
        found: String,
    },
    #[error("{file}: column `{column}` has type {found}, expected {expected}")]
    WrongType {
        file: String,
        column: String,
        expected: String,
        found: String,
    },
    #[error(
        "{file}: no explicit reward margin found: expected `all_rm_scores` (list of numbers), \
         or `score_chosen` and `score_rejected`, or `rm_margin`; name yours with \
         --rm-scores-column, --score-chosen-column/--score-rejected-column or --rm-margin-column \
         (the file has columns: {found})"
    )]
    NoExplicitMargin { file: String, found: String },
}

const NUMBER: &str = "a number (float or integer)";
const STRING: &str = "a string";
const MESSAGES: &str = "a list of {content: string, role: string} messages";
const STRING_OR_MESSAGES: &str = "a string or a list of {content: string, role: string} messages";
const NUMBER_LIST: &str = "a list of numbers";

impl DatasetLayout {
    /// Detects the layout from the first file's schema.
    pub fn detect(file: &str, schema: &Schema, opts: &LayoutOptions) -> Result<Self, LayoutError> {
        let check = Checker { file, schema };
        let explicit = detect_explicit(&check, opts)?;

        let chosen_name = opts.chosen_column.as_deref().unwrap_or("chosen");
        let rejected_name = opts.rejected_column.as_deref().unwrap_or("rejected");
        let prompt_name = opts.prompt_column.as_deref().unwrap_or("prompt");
        let has_text = check.has(chosen_name) || check.has(rejected_name);
        let text = if has_text || opts.require_text {
            let chosen = check.text(chosen_name)?;
            let rejected = check.text(rejected_name)?;
            if chosen.kind != rejected.kind {
                return Err(
                    check.wrong_type(rejected_name, &format!("the same kind as `{chosen_name}`"))
                );
            }
            let prompt = if check.has(prompt_name) || opts.prompt_column.is_some() {
                Some(check.text(prompt_name)?)
            } else if chosen.kind == TextKind::String {
                // Plain strings need the prompt: there is no conversation to take it from.
                Some(check.text(prompt_name)?)
            } else {
                None
            };
            Some(TextColumns {
                prompt,
                chosen,
                rejected,
            })
        } else {
            None
        };

        let kind = match (&explicit, &text) {
            (Some(ExplicitMargin::RmScores { .. }), _) => SchemaKind::ArmoRm,
            (_, Some(t)) if t.chosen.kind == TextKind::Messages => SchemaKind::UltraFeedback,
            _ => SchemaKind::Plain,
        };
        let kind = match opts.schema {
            None => kind,
            Some(forced) => {
                check_forced(&check, forced, &explicit, &text)?;
                forced
            }
        };

        let defaults = LogpColumns::default();
        let logp_names = [
            &defaults.chosen,
            &defaults.rejected,
            &defaults.chosen_norm,
            &defaults.rejected_norm,
        ];
        let logps = if opts.require_logps || logp_names.iter().all(|n| check.has(n)) {
            for name in logp_names {
                check.number(
                    name,
                    "precomputed log-probs (this command does not run a model)",
                )?;
            }
            let tokens = if check.has("chosen_tokens") && check.has("rejected_tokens") {
                check.number("chosen_tokens", NUMBER)?;
                check.number("rejected_tokens", NUMBER)?;
                Some(("chosen_tokens".to_string(), "rejected_tokens".to_string()))
            } else {
                None
            };
            Some(LogpColumns { tokens, ..defaults })
        } else {
            None
        };

        Ok(DatasetLayout {
            kind,
            text,
            explicit,
            logps,
        })
    }

    /// Checks that another file of the dataset has this layout's columns with usable types.
    pub fn check(&self, file: &str, schema: &Schema) -> Result<(), LayoutError> {
        let check = Checker { file, schema };
        match &self.explicit {
            Some(ExplicitMargin::ScorePair { chosen, rejected }) => {
                check.number(chosen, NUMBER)?;
                check.number(rejected, NUMBER)?;
            }
            Some(ExplicitMargin::RmScores { column }) => check.number_list(column)?,
            Some(ExplicitMargin::Column { column }) => check.number(column, NUMBER)?,
            None => {}
        }
        if let Some(text) = &self.text {
            for column in [
                Some(&text.chosen),
                Some(&text.rejected),
                text.prompt.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                let found = check.text(&column.name)?;
                if found.kind != column.kind {
                    let expected = match column.kind {
                        TextKind::String => STRING,
                        TextKind::Messages => MESSAGES,
                    };
                    return Err(check.wrong_type(&column.name, expected));
                }
            }
        }
        if let Some(logps) = &self.logps {
            for name in [
                &logps.chosen,
                &logps.rejected,
                &logps.chosen_norm,
                &logps.rejected_norm,
            ] {
                check.number(name, NUMBER)?;
            }
            if let Some((c, r)) = &logps.tokens {
                check.number(c, NUMBER)?;
                check.number(r, NUMBER)?;
            }
        }
        Ok(())
    }

    /// The input columns scoring reads, in a stable order.
    pub fn needed_columns(&self) -> Vec<String> {
        let mut columns = Vec::new();
        if let Some(text) = &self.text {
            if let Some(p) = &text.prompt {
                columns.push(p.name.clone());
            }
            columns.push(text.chosen.name.clone());
            columns.push(text.rejected.name.clone());
        }
        match &self.explicit {
            Some(ExplicitMargin::ScorePair { chosen, rejected }) => {
                columns.push(chosen.clone());
                columns.push(rejected.clone());
            }
            Some(ExplicitMargin::RmScores { column } | ExplicitMargin::Column { column }) => {
                columns.push(column.clone())
            }
            None => {}
        }
        if let Some(l) = &self.logps {
            columns.extend([
                l.chosen.clone(),
                l.rejected.clone(),
                l.chosen_norm.clone(),
                l.rejected_norm.clone(),
            ]);
            if let Some((c, r)) = &l.tokens {
                columns.extend([c.clone(), r.clone()]);
            }
        }
        columns
    }

    /// The text columns that hold message lists (of structs with `content` and `role`).
    pub fn message_list_columns(&self) -> Vec<&str> {
        let Some(text) = &self.text else {
            return Vec::new();
        };
        [
            text.prompt.as_ref(),
            Some(&text.chosen),
            Some(&text.rejected),
        ]
        .into_iter()
        .flatten()
        .filter(|c| c.kind == TextKind::Messages)
        .map(|c| c.name.as_str())
        .collect()
    }

    /// A one-line description for logs and the summary.
    pub fn describe(&self) -> String {
        let explicit = match &self.explicit {
            Some(ExplicitMargin::ScorePair { chosen, rejected }) => {
                format!("{chosen} − {rejected}")
            }
            Some(ExplicitMargin::RmScores { column }) => format!("max({column}) − min({column})"),
            Some(ExplicitMargin::Column { column }) => column.clone(),
            None => "none in the data".into(),
        };
        let text = match &self.text {
            Some(t) => format!(
                "{} text",
                match t.chosen.kind {
                    TextKind::String => "string",
                    TextKind::Messages => "message-list",
                }
            ),
            None => "no text".into(),
        };
        let logps = if self.logps.is_some() {
            "precomputed log-probs"
        } else {
            "no log-probs"
        };
        format!(
            "{} layout: rm_margin = {explicit}; {text}; {logps}",
            self.kind.name()
        )
    }
}

/// The data's explicit margin: named by the options, else detected; with a reward model the
/// data may have none.
fn detect_explicit(
    check: &Checker<'_>,
    opts: &LayoutOptions,
) -> Result<Option<ExplicitMargin>, LayoutError> {
    match detect_data_margin(check, opts) {
        Err(LayoutError::NoExplicitMargin { .. }) if opts.reward_model => Ok(None),
        found => found.map(Some),
    }
}

fn detect_data_margin(
    check: &Checker<'_>,
    opts: &LayoutOptions,
) -> Result<ExplicitMargin, LayoutError> {
    if let Some(column) = &opts.rm_margin_column {
        check.number(column, NUMBER)?;
        return Ok(ExplicitMargin::Column {
            column: column.clone(),
        });
    }
    if let Some(column) = &opts.rm_scores_column {
        check.number_list(column)?;
        return Ok(ExplicitMargin::RmScores {
            column: column.clone(),
        });
    }
    let chosen = opts
        .score_chosen_column
        .as_deref()
        .unwrap_or("score_chosen");
    let rejected = opts
        .score_rejected_column
        .as_deref()
        .unwrap_or("score_rejected");
    let pair_named = opts.score_chosen_column.is_some() || opts.score_rejected_column.is_some();
    let want_rm_scores = opts.schema == Some(SchemaKind::ArmoRm);
    if !pair_named && (want_rm_scores || check.has("all_rm_scores")) {
        check.number_list("all_rm_scores")?;
        return Ok(ExplicitMargin::RmScores {
            column: "all_rm_scores".into(),
        });
    }
    let wants_pair = pair_named
        || matches!(
            opts.schema,
            Some(SchemaKind::UltraFeedback | SchemaKind::Plain)
        );
    if wants_pair || (check.has(chosen) && check.has(rejected)) {
        check.number(chosen, NUMBER)?;
        check.number(rejected, NUMBER)?;
        return Ok(ExplicitMargin::ScorePair {
            chosen: chosen.into(),
            rejected: rejected.into(),
        });
    }
    if check.has("rm_margin") {
        check.number("rm_margin", NUMBER)?;
        return Ok(ExplicitMargin::Column {
            column: "rm_margin".into(),
        });
    }
    Err(LayoutError::NoExplicitMargin {
        file: check.file.into(),
        found: check.columns(),
    })
}

fn check_forced(
    check: &Checker<'_>,
    forced: SchemaKind,
    explicit: &Option<ExplicitMargin>,
    text: &Option<TextColumns>,
) -> Result<(), LayoutError> {
    let text_kind = text
        .as_ref()
        .map(|t| (t.chosen.name.as_str(), t.chosen.kind));
    match (forced, text_kind) {
        (SchemaKind::UltraFeedback | SchemaKind::ArmoRm, Some((name, TextKind::String))) => {
            Err(check.wrong_type(name, MESSAGES))
        }
        (SchemaKind::Plain, Some((name, TextKind::Messages))) => {
            Err(check.wrong_type(name, STRING))
        }
        (SchemaKind::ArmoRm, _) if !matches!(explicit, Some(ExplicitMargin::RmScores { .. })) => {
            Err(check.missing("all_rm_scores", NUMBER_LIST))
        }
        _ => Ok(()),
    }
}

/// Column checks against one file's schema, with errors that name the file.
struct Checker<'a> {
    file: &'a str,
    schema: &'a Schema,
}

impl Checker<'_> {
    fn has(&self, name: &str) -> bool {
        self.schema.field_with_name(name).is_ok()
    }

    fn columns(&self) -> String {
        let names: Vec<_> = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    fn missing(&self, column: &str, expected: &str) -> LayoutError {
        LayoutError::MissingColumn {
            file: self.file.into(),
            column: column.into(),
            expected: expected.into(),
            found: self.columns(),
        }
    }

    fn wrong_type(&self, column: &str, expected: &str) -> LayoutError {
        let found = self
            .schema
            .field_with_name(column)
            .map(|f| f.data_type().to_string())
            .unwrap_or_else(|_| "nothing".into());
        LayoutError::WrongType {
            file: self.file.into(),
            column: column.into(),
            expected: expected.into(),
            found,
        }
    }

    fn field(&self, column: &str, expected: &str) -> Result<&Field, LayoutError> {
        self.schema
            .field_with_name(column)
            .map_err(|_| self.missing(column, expected))
    }

    fn number(&self, column: &str, expected: &str) -> Result<(), LayoutError> {
        let field = self.field(column, expected)?;
        if is_number(field.data_type()) {
            Ok(())
        } else {
            Err(self.wrong_type(column, NUMBER))
        }
    }

    fn number_list(&self, column: &str) -> Result<(), LayoutError> {
        let field = self.field(column, NUMBER_LIST)?;
        match list_item(field.data_type()) {
            Some(item) if is_number(item) => Ok(()),
            _ => Err(self.wrong_type(column, NUMBER_LIST)),
        }
    }

    fn text(&self, column: &str) -> Result<TextColumn, LayoutError> {
        let field = self.field(column, STRING_OR_MESSAGES)?;
        let kind = if is_string(field.data_type()) {
            TextKind::String
        } else if is_message_list(field.data_type()) {
            TextKind::Messages
        } else {
            return Err(self.wrong_type(column, STRING_OR_MESSAGES));
        };
        Ok(TextColumn {
            name: column.into(),
            kind,
        })
    }
}

pub(crate) fn is_number(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Dictionary(_, v) if v.is_numeric())
}

/// A string column, including dictionary-encoded strings (pandas categoricals).
pub(crate) fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

pub(crate) fn list_item(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => Some(f.data_type()),
        DataType::FixedSizeList(f, _) => Some(f.data_type()),
        _ => None,
    }
}

fn is_message_list(t: &DataType) -> bool {
    match list_item(t) {
        Some(DataType::Struct(fields)) => ["content", "role"].iter().all(|name| {
            fields
                .iter()
                .any(|f| f.name() == name && is_string(f.data_type()))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Fields;
    use std::sync::Arc;

    fn messages() -> DataType {
        let item = DataType::Struct(Fields::from(vec![
            Field::new("content", DataType::Utf8, true),
            Field::new("role", DataType::Utf8, true),
        ]));
        DataType::List(Arc::new(Field::new("item", item, true)))
    }

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    fn logps() -> Vec<(&'static str, DataType)> {
        [
            "chosen_logps",
            "rejected_logps",
            "chosen_logps_norm",
            "rejected_logps_norm",
        ]
        .into_iter()
        .map(|n| (n, DataType::Float64))
        .collect()
    }

    #[test]
    fn detects_ultrafeedback() {
        let mut f = vec![
            ("prompt", DataType::Utf8),
            ("chosen", messages()),
            ("rejected", messages()),
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Float64),
        ];
        f.extend(logps());
        let layout =
            DatasetLayout::detect("a.parquet", &schema(&f), &LayoutOptions::default()).unwrap();
        assert_eq!(layout.kind, SchemaKind::UltraFeedback);
        assert!(layout.logps.is_some());
        assert_eq!(layout.text.unwrap().prompt.unwrap().kind, TextKind::String);
    }

    #[test]
    fn detects_armorm() {
        let scores = DataType::List(Arc::new(Field::new("item", DataType::Float64, true)));
        let f = vec![
            ("chosen", messages()),
            ("rejected", messages()),
            ("all_rm_scores", scores),
        ];
        let layout =
            DatasetLayout::detect("a.parquet", &schema(&f), &LayoutOptions::default()).unwrap();
        assert_eq!(layout.kind, SchemaKind::ArmoRm);
        assert!(layout.logps.is_none());
    }

    #[test]
    fn missing_logps_names_file_and_column() {
        let f = vec![
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Int32),
        ];
        let opts = LayoutOptions {
            require_logps: true,
            ..Default::default()
        };
        let err = DatasetLayout::detect("d/x.parquet", &schema(&f), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("d/x.parquet") && msg.contains("`chosen_logps`"),
            "{msg}"
        );
        assert!(msg.contains("`score_chosen`"), "lists found columns: {msg}");
    }

    #[test]
    fn mistyped_score_names_type() {
        let f = vec![
            ("score_chosen", DataType::Utf8),
            ("score_rejected", DataType::Float64),
        ];
        let err =
            DatasetLayout::detect("x.parquet", &schema(&f), &LayoutOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`score_chosen` has type Utf8, expected a number"),
            "{msg}"
        );
    }

    #[test]
    fn plain_strings_need_a_prompt() {
        let f = vec![
            ("chosen", DataType::Utf8),
            ("rejected", DataType::Utf8),
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Float64),
        ];
        let err =
            DatasetLayout::detect("x.parquet", &schema(&f), &LayoutOptions::default()).unwrap_err();
        assert!(err.to_string().contains("missing column `prompt`"), "{err}");
    }

    #[test]
    fn dictionary_strings_are_strings() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let f = vec![
            ("prompt", dict.clone()),
            ("chosen", dict.clone()),
            ("rejected", dict),
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Int64),
        ];
        let layout = DatasetLayout::detect("x", &schema(&f), &LayoutOptions::default()).unwrap();
        assert_eq!(layout.kind, SchemaKind::Plain);
    }

    #[test]
    fn second_file_must_match() {
        let f = vec![
            ("prompt", DataType::Utf8),
            ("chosen", messages()),
            ("rejected", messages()),
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Float64),
        ];
        let layout = DatasetLayout::detect("a", &schema(&f), &LayoutOptions::default()).unwrap();
        let g = vec![
            ("prompt", DataType::Utf8),
            ("chosen", DataType::Utf8),
            ("rejected", messages()),
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Float64),
        ];
        let err = layout.check("b.parquet", &schema(&g)).unwrap_err();
        assert!(
            err.to_string().starts_with("b.parquet: column `chosen`"),
            "{err}"
        );
    }

    #[test]
    fn forced_schema_must_fit() {
        let f = vec![
            ("prompt", DataType::Utf8),
            ("chosen", DataType::Utf8),
            ("rejected", DataType::Utf8),
            ("score_chosen", DataType::Float64),
            ("score_rejected", DataType::Float64),
        ];
        let opts = LayoutOptions {
            schema: Some(SchemaKind::UltraFeedback),
            ..Default::default()
        };
        let err = DatasetLayout::detect("x", &schema(&f), &opts).unwrap_err();
        assert!(
            err.to_string().contains("expected a list of {content"),
            "{err}"
        );
    }
}
