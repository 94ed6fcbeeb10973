//! `apscore sample`: synthetic preference datasets in the layouts apscore reads.
//!
//! The data looks like the real thing where it matters to apscore: varied response lengths,
//! multi-turn conversations, unicode and code, realistic score scales, optionally the
//! reference code's log-prob columns, and optionally broken rows of every kind apscore must
//! reject. Everything follows from `--seed`.

use std::sync::Arc;

use anyhow::Context;
use apscore_core::parquet_io::ParquetSink;
use apscore_core::rng::Rng;
use apscore_core::storage::Location;
use arrow::array::{
    ArrayRef, Float64Builder, ListBuilder, RecordBatch, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use clap::{Args, ValueEnum};
use tracing::info;

use crate::args::parse::parse_positive;

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Where to write: a `.parquet` file (with --files 1) or a folder that receives
    /// part-NNNNN.parquet files. Local or object-store URL.
    #[arg(long, short)]
    pub output: String,

    /// Number of preference pairs.
    #[arg(long, default_value_t = 1000)]
    pub rows: u64,

    /// Dataset layout to write.
    #[arg(long, value_enum, default_value_t = SampleSchema::Ultrafeedback)]
    pub schema: SampleSchema,

    /// Add the reference code's log-prob columns (chosen_logps, rejected_logps,
    /// chosen_logps_norm, rejected_logps_norm), as if a model had scored the pairs.
    #[arg(long)]
    pub with_logps: bool,

    /// Leave out the text columns (prompt, chosen, rejected, messages): only ids, scores and
    /// log-probs. For benchmarks of the ranking itself.
    #[arg(long)]
    pub no_text: bool,

    /// Scale the mean length of every text (prompt turns, responses) by this factor. At 1 a
    /// row carries about 2.3 KB of text: quick to score on a CPU. At 3 it carries about
    /// 6.6 KB, as many as an UltraFeedback-binarized row; for benchmarks of real-sized data.
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
    pub text_length: f64,

    /// Number of files to spread the rows over.
    #[arg(long, default_value_t = 1)]
    pub files: u64,

    /// Rows per Parquet row group (the unit shards are made of).
    #[arg(long, default_value_t = 10_000)]
    pub row_group_rows: u64,

    /// Replace this many rows with broken ones (null or NaN scores, empty conversations, a last
    /// message from the user, a response without content, …) that apscore must reject with a
    /// reason.
    #[arg(long, default_value_t = 0)]
    pub bad_rows: u64,

    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SampleSchema {
    /// UltraFeedback-binarized: prompt, chosen/rejected message lists, score_chosen/score_rejected.
    Ultrafeedback,
    /// SimPO/ArmoRM: prompt, chosen/rejected message lists, all_rm_scores.
    Armorm,
    /// Plain strings prompt/chosen/rejected with score_chosen/score_rejected.
    Plain,
}

pub async fn run(args: SampleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.files >= 1, "--files must be at least 1");
    anyhow::ensure!(
        args.row_group_rows >= 1,
        "--row-group-rows must be at least 1"
    );
    anyhow::ensure!(
        !(args.no_text && args.schema == SampleSchema::Plain && !args.with_logps),
        "--no-text without --with-logps leaves nothing but scores"
    );
    let single_file = args.output.ends_with(".parquet");
    anyhow::ensure!(
        !(single_file && args.files > 1),
        "--output names one .parquet file but --files is {}; give a folder instead",
        args.files
    );
    let location = Location::parse(&args.output)?;
    let generator = Generator::new(&args);
    let schema = generator.schema();
    let mut rng = Rng::new(args.seed);
    let bad = bad_row_positions(&mut rng, args.rows, args.bad_rows);

    let mut row = 0u64;
    for file in 0..args.files {
        let rows_in_file = args.rows / args.files + u64::from(file < args.rows % args.files);
        let (path, display) = if single_file {
            (location.prefix().clone(), location.display().to_string())
        } else {
            let relative = format!("part-{file:05}.parquet");
            let path = location.path_of(&relative);
            let display = location.display_of(&path);
            (path, display)
        };
        let file_name = display.clone();
        let mut sink =
            ParquetSink::create(location.store(), path, display, Arc::clone(&schema), &[])?;
        let mut written = 0;
        while written < rows_in_file {
            let n = args.row_group_rows.min(rows_in_file - written);
            let batch = generator
                .batch(&mut rng, row, n, &bad)
                .context("building sample rows")?;
            sink.write(&batch).await?;
            sink.end_row_group().await?;
            written += n;
            row += n;
        }
        sink.finish().await?;
        info!(file = %file_name, rows = rows_in_file, "wrote sample data");
    }
    println!(
        "wrote {} {} pairs{}{} to {}",
        args.rows,
        match args.schema {
            SampleSchema::Ultrafeedback => "ultrafeedback",
            SampleSchema::Armorm => "armorm",
            SampleSchema::Plain => "plain",
        },
        if args.with_logps {
            " with log-probs"
        } else {
            ""
        },
        if args.bad_rows > 0 {
            format!(" ({} broken on purpose)", args.bad_rows)
        } else {
            String::new()
        },
        location.display()
    );
    Ok(())
}

/// Distinct, sorted positions of the broken rows.
fn bad_row_positions(rng: &mut Rng, rows: u64, bad: u64) -> Vec<u64> {
    let bad = bad.min(rows);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < bad {
        picked.insert(rng.range(0, rows));
    }
    picked.into_iter().collect()
}

/// The ways a row is broken, in turn.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    NullScore,
    NanLogp,
    EmptyConversation,
    LastFromUser,
    InfiniteLogp,
    /// The rejected response's content is null (the rejected text, with plain strings).
    NullResponse,
}

const BREAKAGES: [Breakage; 6] = [
    Breakage::NullScore,
    Breakage::NanLogp,
    Breakage::EmptyConversation,
    Breakage::LastFromUser,
    Breakage::InfiniteLogp,
    Breakage::NullResponse,
];

struct Generator {
    schema: SampleSchema,
    with_logps: bool,
    no_text: bool,
    text_length: f64,
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ])
}

fn messages_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(
        DataType::Struct(message_fields()),
        true,
    )))
}

impl Generator {
    fn new(args: &SampleArgs) -> Self {
        Generator {
            schema: args.schema,
            with_logps: args.with_logps,
            no_text: args.no_text,
            text_length: args.text_length,
        }
    }

    fn messages(&self) -> bool {
        self.schema != SampleSchema::Plain
    }

    fn schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new("prompt_id", DataType::Utf8, false)];
        if !self.no_text {
            fields.push(Field::new("prompt", DataType::Utf8, true));
            let text = if self.messages() {
                messages_type()
            } else {
                DataType::Utf8
            };
            fields.push(Field::new("chosen", text.clone(), true));
            fields.push(Field::new("rejected", text, true));
            if self.schema == SampleSchema::Ultrafeedback {
                fields.push(Field::new("messages", messages_type(), true));
            }
        }
        if self.schema == SampleSchema::Armorm {
            fields.push(Field::new(
                "all_rm_scores",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            ));
        } else {
            fields.push(Field::new("score_chosen", DataType::Float64, true));
            fields.push(Field::new("score_rejected", DataType::Float64, true));
        }
        if self.with_logps {
            for name in [
                "chosen_logps",
                "rejected_logps",
                "chosen_logps_norm",
                "rejected_logps_norm",
            ] {
                fields.push(Field::new(name, DataType::Float64, true));
            }
        }
        Arc::new(Schema::new(fields))
    }

    /// Rows `first..first + n`.
    fn batch(
        &self,
        rng: &mut Rng,
        first: u64,
        n: u64,
        bad: &[u64],
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut ids = StringBuilder::new();
        let mut prompt = StringBuilder::new();
        let mut chosen_str = StringBuilder::new();
        let mut rejected_str = StringBuilder::new();
        let mut chosen_msgs = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0));
        let mut rejected_msgs = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0));
        let mut all_msgs = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0));
        let mut score_c = Float64Builder::new();
        let mut score_r = Float64Builder::new();
        let mut rm_scores = ListBuilder::new(Float64Builder::new());
        let mut logps: [Float64Builder; 4] = std::array::from_fn(|_| Float64Builder::new());

        for row in first..first + n {
            let breakage = bad
                .binary_search(&row)
                .ok()
                .map(|i| BREAKAGES[i % BREAKAGES.len()]);
            ids.append_value(format!("{:016x}", apscore_core::rng::splitmix64(row)));
            let pair = Pair::generate(rng, !self.no_text, self.text_length);

            if !self.no_text {
                prompt.append_value(&pair.turns[0]);
                if self.messages() {
                    let empty = matches!(breakage, Some(Breakage::EmptyConversation));
                    let last_from_user = matches!(breakage, Some(Breakage::LastFromUser));
                    let null_response = matches!(breakage, Some(Breakage::NullResponse));
                    append_conversation(
                        &mut chosen_msgs,
                        &pair.turns,
                        &pair.chosen,
                        empty,
                        last_from_user,
                        false,
                    );
                    append_conversation(
                        &mut rejected_msgs,
                        &pair.turns,
                        &pair.rejected,
                        false,
                        false,
                        null_response,
                    );
                    if self.schema == SampleSchema::Ultrafeedback {
                        append_conversation(
                            &mut all_msgs,
                            &pair.turns,
                            &pair.chosen,
                            empty,
                            last_from_user,
                            false,
                        );
                    }
                } else {
                    match breakage {
                        Some(Breakage::EmptyConversation | Breakage::LastFromUser) => {
                            chosen_str.append_null()
                        }
                        _ => chosen_str.append_value(&pair.chosen),
                    }
                    match breakage {
                        Some(Breakage::NullResponse) => rejected_str.append_null(),
                        _ => rejected_str.append_value(&pair.rejected),
                    }
                }
            }

            let null_score = matches!(breakage, Some(Breakage::NullScore))
                || (self.no_text
                    && matches!(
                        breakage,
                        Some(
                            Breakage::EmptyConversation
                                | Breakage::LastFromUser
                                | Breakage::NullResponse
                        )
                    ));
            if self.schema == SampleSchema::Armorm {
                if null_score {
                    rm_scores.append(true); // an empty score list
                } else {
                    let lo = pair.quality_rejected * 0.05;
                    let hi = pair.quality_chosen * 0.05;
                    rm_scores.values().append_value(hi);
                    for _ in 0..3 {
                        rm_scores.values().append_value(lo + (hi - lo) * rng.unit());
                    }
                    rm_scores.values().append_value(lo);
                    rm_scores.append(true);
                }
            } else {
                if null_score {
                    score_c.append_null();
                } else {
                    score_c.append_value(pair.quality_chosen);
                }
                score_r.append_value(pair.quality_rejected);
            }

            if self.with_logps {
                let values = [
                    pair.chosen_logps,
                    pair.rejected_logps,
                    pair.chosen_mean,
                    pair.rejected_mean,
                ];
                for (i, (builder, v)) in logps.iter_mut().zip(values).enumerate() {
                    let v = match breakage {
                        Some(Breakage::NanLogp) if i == 0 => f64::NAN,
                        Some(Breakage::InfiniteLogp) if i == 1 => f64::NEG_INFINITY,
                        _ => v,
                    };
                    builder.append_value(v);
                }
            }
        }

        let mut columns: Vec<ArrayRef> = vec![Arc::new(ids.finish())];
        if !self.no_text {
            columns.push(Arc::new(prompt.finish()));
            if self.messages() {
                columns.push(Arc::new(chosen_msgs.finish()));
                columns.push(Arc::new(rejected_msgs.finish()));
                if self.schema == SampleSchema::Ultrafeedback {
                    columns.push(Arc::new(all_msgs.finish()));
                }
            } else {
                columns.push(Arc::new(chosen_str.finish()));
                columns.push(Arc::new(rejected_str.finish()));
            }
        }
        if self.schema == SampleSchema::Armorm {
            columns.push(Arc::new(rm_scores.finish()));
        } else {
            columns.push(Arc::new(score_c.finish()));
            columns.push(Arc::new(score_r.finish()));
        }
        if self.with_logps {
            for mut b in logps {
                columns.push(Arc::new(b.finish()));
            }
        }
        RecordBatch::try_new(self.schema(), columns)
    }
}

fn append_conversation(
    list: &mut ListBuilder<StructBuilder>,
    turns: &[String],
    response: &str,
    empty: bool,
    last_from_user: bool,
    null_response: bool,
) {
    if !empty {
        let mut push = |role: &str, content: Option<&str>| {
            let s = list.values();
            s.field_builder::<StringBuilder>(0)
                .expect("content")
                .append_option(content);
            s.field_builder::<StringBuilder>(1)
                .expect("role")
                .append_value(role);
            s.append(true);
        };
        // turns alternate user, assistant, user, …; the last one is a user turn.
        for (i, turn) in turns.iter().enumerate() {
            push(if i % 2 == 0 { "user" } else { "assistant" }, Some(turn));
        }
        let role = if last_from_user { "user" } else { "assistant" };
        push(role, (!null_response).then_some(response));
    }
    list.append(true);
}

/// One synthetic pair before it is laid out in columns.
struct Pair {
    /// Prompt turns: user, assistant, user, … ending with a user turn.
    turns: Vec<String>,
    chosen: String,
    rejected: String,
    quality_chosen: f64,
    quality_rejected: f64,
    chosen_logps: f64,
    rejected_logps: f64,
    chosen_mean: f64,
    rejected_mean: f64,
}

impl Pair {
    /// A pair whose texts' mean lengths are scaled by `text_length`.
    fn generate(rng: &mut Rng, with_text: bool, text_length: f64) -> Pair {
        let n_user_turns = if rng.chance(0.25) { rng.range(2, 4) } else { 1 };
        let chosen_words = length(rng, 60.0 * text_length);
        let rejected_words = length(rng, 45.0 * text_length);
        let (turns, chosen, rejected) = if with_text {
            let mut turns = Vec::new();
            for t in 0..n_user_turns {
                let words = length(rng, 18.0 * text_length);
                turns.push(text(rng, words, true));
                if t + 1 < n_user_turns {
                    let words = length(rng, 40.0 * text_length);
                    turns.push(text(rng, words, false));
                }
            }
            (
                turns,
                text(rng, chosen_words, false),
                text(rng, rejected_words, false),
            )
        } else {
            (Vec::new(), String::new(), String::new())
        };
        // UltraFeedback-like quality scores on a 1–10 scale in steps of 0.25; chosen ≥ rejected.
        let quarter = |x: f64| (x * 4.0).round() / 4.0;
        let quality_chosen = quarter(6.5 + 1.8 * rng.normal()).clamp(1.0, 10.0);
        let gap = if rng.chance(0.05) {
            0.0
        } else {
            quarter(1.5 * rng.normal().abs() + 0.25)
        };
        let quality_rejected = (quality_chosen - gap).max(1.0);
        // Mean token log-probs near −0.3…−1.5; better responses a little more likely.
        let chosen_mean = -(0.9 + 0.35 * rng.normal()).abs() - 0.02 * (10.0 - quality_chosen);
        let rejected_mean = -(0.9 + 0.35 * rng.normal()).abs() - 0.02 * (10.0 - quality_rejected);
        let chosen_tokens = (chosen_words as f64 * 1.3).ceil() + 2.0;
        let rejected_tokens = (rejected_words as f64 * 1.3).ceil() + 2.0;
        Pair {
            turns,
            chosen,
            rejected,
            quality_chosen,
            quality_rejected,
            chosen_logps: chosen_mean * chosen_tokens,
            rejected_logps: rejected_mean * rejected_tokens,
            chosen_mean,
            rejected_mean,
        }
    }
}

/// A word count with a long tail (geometric-like around `mean`), at least 1.
fn length(rng: &mut Rng, mean: f64) -> usize {
    let u = rng.unit().max(1e-12);
    ((-u.ln() * mean) as usize).clamp(1, (mean * 12.0) as usize)
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "question",
    "data",
    "because",
    "therefore",
    "example",
    "first",
    "second",
    "finally",
    "consider",
    "value",
    "function",
    "result",
    "simple",
    "however",
    "note",
    "step",
    "list",
    "many",
    "people",
    "think",
    "important",
    "naïve",
    "café",
    "résumé",
    "größer",
    "日本語",
    "中文",
    "한국어",
    "Ελληνικά",
    "русский",
    "עברית",
    "العربية",
    "🙂",
    "🚀",
    "✅",
    "e=mc²",
    "½",
    "≈",
    "→",
    "42",
    "3.14159",
    "2026",
    "100%",
    "(see",
    "above)",
    "and/or",
];

const CODE: &[&str] = &[
    "```python\ndef add(a, b):\n    return a + b\n```",
    "```rust\nfn main() {\n    println!(\"hi\");\n}\n```",
    "`SELECT * FROM t WHERE x > 1;`",
    "    indented line\n\ttabbed line",
];

/// Text of `words` words; prompts end with a question mark, some answers carry code.
fn text(rng: &mut Rng, words: usize, question: bool) -> String {
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push_str(if rng.chance(0.03) {
                "\n\n"
            } else if rng.chance(0.02) {
                "  "
            } else {
                " "
            });
        }
        let w = *rng.pick(WORDS);
        if i == 0 || rng.chance(0.04) {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push_str(w);
        }
        if rng.chance(0.06) {
            out.push(if rng.chance(0.5) { '.' } else { ',' });
        }
    }
    if !question && rng.chance(0.1) {
        out.push_str("\n\n");
        let code: &&str = rng.pick(CODE);
        out.push_str(code);
    }
    out.push(if question { '?' } else { '.' });
    out
}
