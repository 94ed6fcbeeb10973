//! Reading preference pairs out of record batches: margins, log-probs and the conversation.
//!
//! [`PairColumns`] takes one batch and the [`DatasetLayout`], casts the columns it needs to a
//! few plain types once, and then answers per row. A row that cannot be scored yields a
//! [`RowProblem`] whose text is the human-readable `reason` of `rejected_rows.parquet`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::layout::{DatasetLayout, ExplicitMargin, TextColumn, TextKind};

/// Why one row cannot be scored; becomes the row's `reason` in `rejected_rows.parquet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem(pub String);

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn problem(text: impl Into<String>) -> RowProblem {
    RowProblem(text.into())
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The conversation of one pair: prompt messages and the two responses (which messages they
/// are depends on the dataset layout: `docs/models.md#tokenization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub prompt: Vec<Message>,
    pub chosen: Message,
    pub rejected: Message,
    /// The messages before the rejected response when the rejected message list has its own
    /// that differ from `prompt` (the chosen list's); `None` otherwise. The policy's
    /// tokenization uses `prompt` for both, as the reference does; a reward model reads each
    /// conversation as the data holds it.
    pub rejected_prompt: Option<Vec<Message>>,
}

impl Conversation {
    /// The messages before the rejected response, as the data holds them.
    pub fn rejected_prompt(&self) -> &[Message] {
        self.rejected_prompt.as_deref().unwrap_or(&self.prompt)
    }
}

/// Log-probs of one response under the scoring model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResponseLogps {
    /// Σ log π(y_t | x, y_<t) over the response tokens.
    pub sum: f64,
    /// `sum / tokens`.
    pub mean: f64,
    /// Number of response tokens, when known.
    pub tokens: Option<u64>,
}

/// A batch's precomputed values, a column at a time ([`PairColumns::precomputed_columns`]).
pub struct PrecomputedColumns<'a> {
    /// The explicit margin of each row.
    pub rm_margin: Vec<f64>,
    /// `chosen_logps`, `rejected_logps`, `chosen_logps_norm`, `rejected_logps_norm`.
    pub logps: [&'a [f64]; 4],
    /// The chosen and rejected token counts, when the data has them.
    pub tokens: Option<[&'a [f64]; 2]>,
}

/// A batch's columns, cast once, read row by row.
pub struct PairColumns {
    explicit: Option<ExplicitArrays>,
    logps: Option<[Float64Array; 4]>,
    tokens: Option<[Float64Array; 2]>,
    text: Option<TextArrays>,
}

enum ExplicitArrays {
    Pair(Float64Array, Float64Array, String, String),
    Scores(ListArray, String),
    Column(Float64Array, String),
}

struct TextArrays {
    prompt: Option<TextArray>,
    chosen: TextArray,
    rejected: TextArray,
}

// Three of these exist per batch: their size does not matter.
#[allow(clippy::large_enum_variant)]
enum TextArray {
    Strings(String, StringArray),
    Messages {
        name: String,
        list: ListArray,
        /// `None` when the batch was read without the messages' contents: the messages then
        /// have empty contents, enough to check a row's shape and nothing more (scoring without
        /// a model leaves them out where the file's statistics prove none is null).
        content: Option<StringArray>,
        role: StringArray,
    },
}

impl PairColumns {
    /// Prepares `batch` (which holds at least the layout's needed columns) for reading.
    pub fn new(batch: &RecordBatch, layout: &DatasetLayout) -> Result<Self, ArrowError> {
        let column = |name: &str| -> Result<&ArrayRef, ArrowError> {
            batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("column `{name}` was not read")))
        };
        let numbers = |name: &str| -> Result<Float64Array, ArrowError> {
            Ok(cast(column(name)?, &DataType::Float64)?
                .as_primitive::<Float64Type>()
                .clone())
        };
        let explicit = match &layout.explicit {
            Some(ExplicitMargin::ScorePair { chosen, rejected }) => Some(ExplicitArrays::Pair(
                numbers(chosen)?,
                numbers(rejected)?,
                chosen.clone(),
                rejected.clone(),
            )),
            Some(ExplicitMargin::RmScores { column: name }) => {
                let target =
                    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
                let list = cast(column(name)?, &target)?.as_list::<i32>().clone();
                Some(ExplicitArrays::Scores(list, name.clone()))
            }
            Some(ExplicitMargin::Column { column: name }) => {
                Some(ExplicitArrays::Column(numbers(name)?, name.clone()))
            }
            None => None,
        };
        let logps = match &layout.logps {
            Some(l) => Some([
                numbers(&l.chosen)?,
                numbers(&l.rejected)?,
                numbers(&l.chosen_norm)?,
                numbers(&l.rejected_norm)?,
            ]),
            None => None,
        };
        let tokens = match layout.logps.as_ref().and_then(|l| l.tokens.as_ref()) {
            Some((c, r)) => Some([numbers(c)?, numbers(r)?]),
            None => None,
        };
        let text = match &layout.text {
            Some(t) => Some(TextArrays {
                prompt: t
                    .prompt
                    .as_ref()
                    .map(|p| text_array(column(&p.name)?, p))
                    .transpose()?,
                chosen: text_array(column(&t.chosen.name)?, &t.chosen)?,
                rejected: text_array(column(&t.rejected.name)?, &t.rejected)?,
            }),
            None => None,
        };
        Ok(PairColumns {
            explicit,
            logps,
            tokens,
            text,
        })
    }

    /// The data's explicit reward margin of `row`; `None` when the data has none (a reward
    /// model gives it).
    pub fn rm_margin(&self, row: usize) -> Result<Option<f64>, RowProblem> {
        let Some(explicit) = &self.explicit else {
            return Ok(None);
        };
        match explicit {
            ExplicitArrays::Pair(c, r, c_name, r_name) => {
                let c = finite(c, row, c_name)?;
                let r = finite(r, row, r_name)?;
                check_finite(c - r, "rm_margin (score difference)").map(Some)
            }
            ExplicitArrays::Column(m, name) => finite(m, row, name).map(Some),
            ExplicitArrays::Scores(list, name) => {
                if list.is_null(row) {
                    return Err(problem(format!("`{name}` is null")));
                }
                let scores = list.value(row);
                let scores = scores.as_primitive::<Float64Type>();
                if scores.is_empty() {
                    return Err(problem(format!("`{name}` is an empty list")));
                }
                let mut lo = f64::INFINITY;
                let mut hi = f64::NEG_INFINITY;
                for (i, v) in scores.iter().enumerate() {
                    match v {
                        Some(v) if v.is_finite() && v.abs() <= MAX_MAGNITUDE => {
                            lo = lo.min(v);
                            hi = hi.max(v);
                        }
                        Some(v) if v.is_finite() => {
                            return Err(problem(format!(
                                "`{name}`[{i}] is {v:e}, beyond ±1e100: too large for the job's \
                                 statistics"
                            )));
                        }
                        Some(v) => return Err(problem(format!("`{name}`[{i}] is {v}"))),
                        None => return Err(problem(format!("`{name}`[{i}] is null"))),
                    }
                }
                check_finite(hi - lo, "rm_margin (max − min)").map(Some)
            }
        }
    }

    /// Precomputed log-probs of the chosen and rejected responses of `row`.
    pub fn logps(&self, row: usize) -> Option<Result<(ResponseLogps, ResponseLogps), RowProblem>> {
        let [c, r, cn, rn] = self.logps.as_ref()?;
        Some((|| {
            let names = [
                "chosen_logps",
                "rejected_logps",
                "chosen_logps_norm",
                "rejected_logps_norm",
            ];
            let chosen_sum = finite(c, row, names[0])?;
            let rejected_sum = finite(r, row, names[1])?;
            let chosen_mean = finite(cn, row, names[2])?;
            let rejected_mean = finite(rn, row, names[3])?;
            let (chosen_tokens, rejected_tokens) = match &self.tokens {
                Some([ct, rt]) => (
                    Some(token_count(ct, row, "chosen_tokens")?),
                    Some(token_count(rt, row, "rejected_tokens")?),
                ),
                None => (None, None),
            };
            Ok((
                ResponseLogps {
                    sum: chosen_sum,
                    mean: chosen_mean,
                    tokens: chosen_tokens,
                },
                ResponseLogps {
                    sum: rejected_sum,
                    mean: rejected_mean,
                    tokens: rejected_tokens,
                },
            ))
        })())
    }

    /// The batch's precomputed values a column at a time, when every row is usable as it
    /// stands: no text to check, the explicit margin from two score columns or one margin
    /// column, and every score, log-prob and token count present, finite and within
    /// ±[`MAX_MAGNITUDE`] (token counts at least 1). `None` otherwise: the batch is then read
    /// row by row, which names each row's problem. The values are those the row-by-row
    /// reading gives.
    pub fn precomputed_columns(&self) -> Option<PrecomputedColumns<'_>> {
        if self.text.is_some() {
            return None;
        }
        let [c, r, cn, rn] = self.logps.as_ref()?;
        if ![c, r, cn, rn].into_iter().all(usable) {
            return None;
        }
        let tokens = match &self.tokens {
            Some([ct, rt]) => {
                let counts = |a: &Float64Array| {
                    usable(a) && a.values().iter().fold(true, |ok, &v| ok & (v >= 1.0))
                };
                if !(counts(ct) && counts(rt)) {
                    return None;
                }
                Some([ct.values().as_ref(), rt.values().as_ref()])
            }
            None => None,
        };
        let rm_margin = match self.explicit.as_ref()? {
            // Both within ±1e100: their difference is finite.
            ExplicitArrays::Pair(chosen, rejected, ..) if usable(chosen) && usable(rejected) => {
                chosen
                    .values()
                    .iter()
                    .zip(rejected.values().iter())
                    .map(|(c, r)| c - r)
                    .collect()
            }
            ExplicitArrays::Column(margin, _) if usable(margin) => margin.values().to_vec(),
            _ => return None,
        };
        Some(PrecomputedColumns {
            rm_margin,
            logps: [c.values(), r.values(), cn.values(), rn.values()],
            tokens,
        })
    }

    /// The conversation of `row`; `None` when the data has no text.
    pub fn conversation(&self, row: usize) -> Option<Result<Conversation, RowProblem>> {
        let text = self.text.as_ref()?;
        Some(build_conversation(text, row))
    }
}

fn build_conversation(text: &TextArrays, row: usize) -> Result<Conversation, RowProblem> {
    if let Some(prompt @ TextArray::Messages { .. }) = &text.prompt {
        let prompt = prompt.messages(row)?;
        if prompt.is_empty() {
            return Err(problem(format!(
                "`{}` is an empty message list",
                text.prompt_name()
            )));
        }
        let chosen = last_response(&text.chosen, row)?;
        let rejected = last_response(&text.rejected, row)?;
        return Ok(Conversation {
            prompt,
            chosen,
            rejected,
            rejected_prompt: None,
        });
    }
    match (&text.chosen, &text.rejected) {
        (TextArray::Messages { .. }, TextArray::Messages { .. }) => {
            let mut chosen_all = text.chosen.messages(row)?;
            let chosen = last_response(&text.chosen, row)?;
            chosen_all.pop();
            if chosen_all.is_empty() {
                return Err(problem(format!(
                    "`{}` holds only the response: no prompt message precedes it",
                    text.chosen.name()
                )));
            }
            let rejected = last_response(&text.rejected, row)?;
            let mut rejected_all = text.rejected.messages(row)?;
            rejected_all.pop();
            let rejected_prompt =
                (!rejected_all.is_empty() && rejected_all != chosen_all).then_some(rejected_all);
            Ok(Conversation {
                prompt: chosen_all,
                chosen,
                rejected,
                rejected_prompt,
            })
        }
        _ => {
            let prompt = match &text.prompt {
                Some(p) => p.string(row)?,
                None => return Err(problem("no prompt column")),
            };
            let chosen = text.chosen.string(row)?;
            let rejected = text.rejected.string(row)?;
            Ok(Conversation {
                prompt: vec![Message {
                    role: "user".into(),
                    content: prompt,
                }],
                chosen: Message {
                    role: "assistant".into(),
                    content: chosen,
                },
                rejected: Message {
                    role: "assistant".into(),
                    content: rejected,
                },
                rejected_prompt: None,
            })
        }
    }
}

fn last_response(array: &TextArray, row: usize) -> Result<Message, RowProblem> {
    match array {
        TextArray::Strings(_, _) => Ok(Message {
            role: "assistant".into(),
            content: array.string(row)?,
        }),
        TextArray::Messages { name, .. } => {
            let messages = array.messages(row)?;
            let Some(last) = messages.last() else {
                return Err(problem(format!("`{name}` is an empty message list")));
            };
            if last.role != "assistant" {
                return Err(problem(format!(
                    "the last message of `{name}` is from `{}`, expected `assistant`",
                    last.role
                )));
            }
            Ok(last.clone())
        }
    }
}

impl TextArrays {
    fn prompt_name(&self) -> &str {
        self.prompt.as_ref().map_or("prompt", |p| p.name())
    }
}

impl TextArray {
    fn name(&self) -> &str {
        match self {
            TextArray::Strings(name, _) => name,
            TextArray::Messages { name, .. } => name,
        }
    }

    fn string(&self, row: usize) -> Result<String, RowProblem> {
        match self {
            TextArray::Strings(name, a) => {
                if a.is_null(row) {
                    Err(problem(format!("`{name}` is null")))
                } else {
                    Ok(a.value(row).to_string())
                }
            }
            TextArray::Messages { name, .. } => Err(problem(format!("`{name}` is not a string"))),
        }
    }

    fn messages(&self, row: usize) -> Result<Vec<Message>, RowProblem> {
        let TextArray::Messages {
            name,
            list,
            content,
            role,
        } = self
        else {
            return Err(problem(format!("`{}` is not a message list", self.name())));
        };
        if list.is_null(row) {
            return Err(problem(format!("`{name}` is null")));
        }
        let offsets = list.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        let mut out = Vec::with_capacity(end - start);
        for (n, i) in (start..end).enumerate() {
            if role.is_null(i) {
                return Err(problem(format!(
                    "message {} of `{name}` has no role",
                    n + 1
                )));
            }
            if content.as_ref().is_some_and(|c| c.is_null(i)) {
                return Err(problem(format!(
                    "message {} of `{name}` has no content",
                    n + 1
                )));
            }
            out.push(Message {
                role: role.value(i).to_string(),
                content: content
                    .as_ref()
                    .map_or_else(String::new, |c| c.value(i).to_string()),
            });
        }
        Ok(out)
    }
}

fn text_array(array: &ArrayRef, column: &TextColumn) -> Result<TextArray, ArrowError> {
    match column.kind {
        TextKind::String => Ok(TextArray::Strings(
            column.name.clone(),
            cast(array, &DataType::Utf8)?.as_string::<i32>().clone(),
        )),
        TextKind::Messages => {
            let list: ListArray = match array.data_type() {
                DataType::List(_) => array.as_list::<i32>().clone(),
                DataType::LargeList(field) => cast(array, &DataType::List(Arc::clone(field)))?
                    .as_list::<i32>()
                    .clone(),
                other => {
                    return Err(ArrowError::CastError(format!(
                        "`{}`: cannot read {other} as a message list",
                        column.name
                    )));
                }
            };
            let items = list.values().as_struct();
            let field = |name: &str| -> Result<StringArray, ArrowError> {
                let child = items.column_by_name(name).ok_or_else(|| {
                    ArrowError::SchemaError(format!("`{}` messages have no `{name}`", column.name))
                })?;
                // A null message struct reads as a null content and role.
                let child = match items.nulls() {
                    Some(nulls) if nulls.null_count() > 0 => {
                        let data = child.to_data().into_builder().nulls(Some(
                            arrow::buffer::NullBuffer::union(Some(nulls), child.nulls())
                                .expect("non-empty"),
                        ));
                        arrow::array::make_array(data.build()?)
                    }
                    _ => Arc::clone(child),
                };
                Ok(cast(&child, &DataType::Utf8)?.as_string::<i32>().clone())
            };
            Ok(TextArray::Messages {
                name: column.name.clone(),
                content: items
                    .column_by_name("content")
                    .map(|_| field("content"))
                    .transpose()?,
                role: field("role")?,
                list,
            })
        }
    }
}

/// The largest magnitude of a score, margin or log-prob apscore takes. Beyond it the job-wide
/// statistics (sums of squared deviations over up to billions of rows) could overflow f64;
/// real data is many orders of magnitude below it.
pub const MAX_MAGNITUDE: f64 = 1e100;

/// The value of `name` at `row`: present, finite and within ±[`MAX_MAGNITUDE`].
fn finite(array: &Float64Array, row: usize, name: &str) -> Result<f64, RowProblem> {
    if array.is_null(row) {
        return Err(problem(format!("`{name}` is null")));
    }
    let v = array.value(row);
    if !v.is_finite() {
        Err(problem(format!("`{name}` is {v}")))
    } else if v.abs() > MAX_MAGNITUDE {
        Err(problem(format!(
            "`{name}` is {v:e}, beyond ±1e100: too large for the job's statistics"
        )))
    } else {
        Ok(v)
    }
}

/// Every value of `array` present, finite and within ±[`MAX_MAGNITUDE`], as [`finite`]
/// requires of each.
fn usable(array: &Float64Array) -> bool {
    // A fold rather than `all`: no early exit, so the comparison runs on whole vectors.
    array.null_count() == 0
        && array
            .values()
            .iter()
            .fold(true, |ok, v| ok & (v.abs() <= MAX_MAGNITUDE))
}

fn check_finite(v: f64, what: &str) -> Result<f64, RowProblem> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(problem(format!("{what} overflows to {v}")))
    }
}

fn token_count(array: &Float64Array, row: usize, name: &str) -> Result<u64, RowProblem> {
    let v = finite(array, row, name)?;
    if v < 1.0 {
        Err(problem(format!("zero response tokens (`{name}` is {v})")))
    } else {
        Ok(v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutOptions;
    use arrow::array::{ListBuilder, StringBuilder, StructBuilder};
    use arrow::datatypes::Fields;

    fn message_fields() -> Fields {
        Fields::from(vec![
            Field::new("content", DataType::Utf8, true),
            Field::new("role", DataType::Utf8, true),
        ])
    }

    fn messages(rows: &[Option<Vec<(&str, &str)>>]) -> ArrayRef {
        let mut b = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0));
        for row in rows {
            match row {
                Some(msgs) => {
                    for (role, content) in msgs {
                        let s = b.values();
                        s.field_builder::<StringBuilder>(0)
                            .unwrap()
                            .append_value(content);
                        s.field_builder::<StringBuilder>(1)
                            .unwrap()
                            .append_value(role);
                        s.append(true);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Arc::new(b.finish())
    }

    /// A batch of precomputed pairs without text: scores, log-probs and token counts.
    fn precomputed_batch(columns: [Vec<Option<f64>>; 8]) -> (RecordBatch, DatasetLayout) {
        let names = [
            "score_chosen",
            "score_rejected",
            "chosen_logps",
            "rejected_logps",
            "chosen_logps_norm",
            "rejected_logps_norm",
            "chosen_tokens",
            "rejected_tokens",
        ];
        let batch = RecordBatch::try_from_iter(
            names
                .into_iter()
                .zip(columns)
                .map(|(name, values)| (name, Arc::new(Float64Array::from(values)) as ArrayRef)),
        )
        .unwrap();
        let layout =
            DatasetLayout::detect("t", &batch.schema(), &LayoutOptions::default()).unwrap();
        (batch, layout)
    }

    #[test]
    fn precomputed_columns_hold_what_the_rows_give_and_only_when_every_row_is_usable() {
        let good = || -> [Vec<Option<f64>>; 8] {
            [
                vec![Some(8.0), Some(1.5), Some(-1e100)],
                vec![Some(5.0), Some(1.5), Some(1e100)],
                vec![Some(-12.5), Some(-0.0), Some(-3.25)],
                vec![Some(-20.0), Some(-1.0), Some(-1e-300)],
                vec![Some(-1.25), Some(-0.0), Some(-0.5)],
                vec![Some(-2.0), Some(-0.5), Some(-0.1)],
                vec![Some(10.0), Some(1.0), Some(6.5)],
                vec![Some(10.0), Some(2.0), Some(3.0)],
            ]
        };
        let (batch, layout) = precomputed_batch(good());
        let pairs = PairColumns::new(&batch, &layout).unwrap();
        let columns = pairs.precomputed_columns().expect("every row is usable");
        let [c, r, cn, rn] = columns.logps;
        let [ct, rt] = columns.tokens.expect("the batch has token counts");
        for row in 0..3 {
            assert_eq!(
                columns.rm_margin[row].to_bits(),
                pairs.rm_margin(row).unwrap().unwrap().to_bits()
            );
            let (chosen, rejected) = pairs.logps(row).unwrap().unwrap();
            assert_eq!([c[row], cn[row]], [chosen.sum, chosen.mean]);
            assert_eq!([r[row], rn[row]], [rejected.sum, rejected.mean]);
            assert_eq!(ct[row] as u64, chosen.tokens.unwrap());
            assert_eq!(rt[row] as u64, rejected.tokens.unwrap());
        }
        // One unusable value anywhere sends the batch row by row.
        let unusable = [None, Some(f64::NAN), Some(f64::INFINITY), Some(-2e100)];
        for column in 0..8 {
            for value in unusable {
                let mut bad = good();
                bad[column][1] = value;
                let (batch, layout) = precomputed_batch(bad);
                let pairs = PairColumns::new(&batch, &layout).unwrap();
                assert!(pairs.precomputed_columns().is_none(), "{column} {value:?}");
                assert!(pairs.rm_margin(1).is_err() || pairs.logps(1).unwrap().is_err());
            }
        }
        let mut no_tokens = good();
        no_tokens[6][2] = Some(0.5);
        let (batch, layout) = precomputed_batch(no_tokens);
        let pairs = PairColumns::new(&batch, &layout).unwrap();
        assert!(pairs.precomputed_columns().is_none());
        assert!(pairs.logps(2).unwrap().is_err());
    }

    #[test]
    fn reads_margins_and_conversations() {
        let chosen = messages(&[
            Some(vec![("user", "hi"), ("assistant", "hello")]),
            Some(vec![]),
            Some(vec![("user", "q"), ("assistant", "a"), ("user", "more")]),
            None,
        ]);
        let rejected = messages(&[
            Some(vec![("user", "hi"), ("assistant", "go away")]),
            Some(vec![("user", "x"), ("assistant", "y")]),
            Some(vec![("user", "q"), ("assistant", "b")]),
            Some(vec![("user", "q"), ("assistant", "b")]),
        ]);
        let sc: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(8.0),
            Some(1.0),
            None,
            Some(f64::NAN),
        ]));
        let sr: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![5, 1, 1, 1]));
        let batch = RecordBatch::try_from_iter([
            ("chosen", chosen),
            ("rejected", rejected),
            ("score_chosen", sc),
            ("score_rejected", sr),
        ])
        .unwrap();
        let layout =
            DatasetLayout::detect("t", &batch.schema(), &LayoutOptions::default()).unwrap();
        let cols = PairColumns::new(&batch, &layout).unwrap();
        assert_eq!(cols.rm_margin(0), Ok(Some(3.0)));
        assert_eq!(cols.rm_margin(2).unwrap_err().0, "`score_chosen` is null");
        assert_eq!(cols.rm_margin(3).unwrap_err().0, "`score_chosen` is NaN");
        let conv = cols.conversation(0).unwrap().unwrap();
        assert_eq!(
            conv.prompt,
            vec![Message {
                role: "user".into(),
                content: "hi".into()
            }]
        );
        assert_eq!(conv.rejected.content, "go away");
        assert_eq!(conv.rejected_prompt, None);
        assert_eq!(conv.rejected_prompt(), conv.prompt.as_slice());
        assert_eq!(
            cols.conversation(1).unwrap().unwrap_err().0,
            "`chosen` is an empty message list"
        );
        assert_eq!(
            cols.conversation(2).unwrap().unwrap_err().0,
            "the last message of `chosen` is from `user`, expected `assistant`"
        );
        assert_eq!(
            cols.conversation(3).unwrap().unwrap_err().0,
            "`chosen` is null"
        );
    }

    #[test]
    fn a_rejected_list_keeps_its_own_earlier_messages() {
        let chosen = messages(&[Some(vec![("user", "hi"), ("assistant", "hello")])]);
        let rejected = messages(&[Some(vec![("user", "hey"), ("assistant", "go away")])]);
        let batch =
            RecordBatch::try_from_iter([("chosen", chosen), ("rejected", rejected)]).unwrap();
        let options = LayoutOptions {
            reward_model: true,
            ..LayoutOptions::default()
        };
        let layout = DatasetLayout::detect("t", &batch.schema(), &options).unwrap();
        assert_eq!(layout.explicit, None);
        let cols = PairColumns::new(&batch, &layout).unwrap();
        assert_eq!(cols.rm_margin(0), Ok(None));
        let conv = cols.conversation(0).unwrap().unwrap();
        assert_eq!(conv.prompt[0].content, "hi");
        assert_eq!(conv.rejected_prompt()[0].content, "hey");
    }

    #[test]
    fn plain_dictionary_strings_read_as_text() {
        use arrow::array::DictionaryArray;
        use arrow::datatypes::Int32Type;
        let dict = |v: Vec<&'static str>| -> ArrayRef {
            Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>())
        };
        let batch = RecordBatch::try_from_iter([
            ("prompt", dict(vec!["q1", "q2"])),
            ("chosen", dict(vec!["good", "fine"])),
            ("rejected", dict(vec!["bad", "bad"])),
            (
                "score_chosen",
                Arc::new(Float64Array::from(vec![2.0, 3.0])) as ArrayRef,
            ),
            (
                "score_rejected",
                Arc::new(Float64Array::from(vec![1.0, 1.0])) as ArrayRef,
            ),
        ])
        .unwrap();
        let layout =
            DatasetLayout::detect("t", &batch.schema(), &LayoutOptions::default()).unwrap();
        let cols = PairColumns::new(&batch, &layout).unwrap();
        let c = cols.conversation(1).unwrap().unwrap();
        assert_eq!(c.prompt[0].content, "q2");
        assert_eq!(
            (c.chosen.content.as_str(), c.rejected.content.as_str()),
            ("fine", "bad")
        );
        assert_eq!(cols.rm_margin(1), Ok(Some(2.0)));
    }

    #[test]
    fn rm_scores_margin_is_max_minus_min() {
        let mut b = ListBuilder::new(arrow::array::Float64Builder::new());
        b.values().append_slice(&[0.1, 0.5, 0.25]);
        b.append(true);
        b.append(true); // empty
        b.values().append_value(1.0);
        b.values().append_null();
        b.append(true);
        let scores: ArrayRef = Arc::new(b.finish());
        let batch = RecordBatch::try_from_iter([("all_rm_scores", scores)]).unwrap();
        let layout =
            DatasetLayout::detect("t", &batch.schema(), &LayoutOptions::default()).unwrap();
        let cols = PairColumns::new(&batch, &layout).unwrap();
        assert_eq!(cols.rm_margin(0), Ok(Some(0.5 - 0.1)));
        assert_eq!(
            cols.rm_margin(1).unwrap_err().0,
            "`all_rm_scores` is an empty list"
        );
        assert_eq!(
            cols.rm_margin(2).unwrap_err().0,
            "`all_rm_scores`[1] is null"
        );
    }
}
