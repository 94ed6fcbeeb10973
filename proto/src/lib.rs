//! # apscore-proto: the coordinator–worker protocol
//!
//! `apscore.proto` compiled by tonic + prost ([`pb`]), and the thin conversion layer between
//! its messages and the domain types both sides work with ([`Shard`], [`ShardResult`],
//! [`MarginStats`]). Nothing else in apscore touches generated types for these.

use apscore_core::job_definition::{
    ChatTemplateOverride, JobDefinition, JobFile, ModelJob, RewardModelJob,
};
use apscore_core::shard::{Shard, ShardResult};
use apscore_core::stats::{MarginStats, RunningStats};

pub mod security;

/// The generated messages, client and server.
pub mod pb {
    tonic::include_proto!("apscore.v1");
}

/// The protocol version this build speaks. Bumped on any change a peer of another version
/// would misread; a coordinator refuses workers of another version.
/// 3: the job's model may carry a chat template that replaces the checkpoint's (a worker of 2
/// would ignore it and score with the checkpoint's own).
/// 4: the job may name a reward model that gives the explicit margin, and its dataset layout
/// may then have no margin of its own (a worker of 3 would ignore the one and refuse the
/// other).
pub const PROTOCOL_VERSION: u32 = 4;

/// A message lacked a field the protocol requires, or held one that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed {message}: `{field}` {problem}")]
pub struct MissingField {
    pub message: &'static str,
    pub field: &'static str,
    pub problem: String,
}

impl From<&JobDefinition> for pb::Job {
    fn from(j: &JobDefinition) -> Self {
        pb::Job {
            job_id: j.job_id.clone(),
            output: j.output.clone(),
            files: j
                .files
                .iter()
                .map(|f| pb::InputFile {
                    url: f.url.clone(),
                    size: f.size,
                })
                .collect(),
            // The layout is a nested description of column roles shared by both sides as
            // one Rust type; it travels as its JSON (the protocol version guards its shape).
            layout_json: serde_json::to_string(&j.layout).expect("a layout serialises"),
            scores_with_input: j.scores_with_input,
            model: j.model.as_ref().map(model_job_to_pb),
        }
    }
}

impl TryFrom<pb::Job> for JobDefinition {
    type Error = MissingField;

    fn try_from(j: pb::Job) -> Result<Self, MissingField> {
        let layout = serde_json::from_str(&j.layout_json).map_err(|e| MissingField {
            message: "Job",
            field: "layout_json",
            problem: format!("does not parse: {e}"),
        })?;
        Ok(JobDefinition {
            job_id: j.job_id,
            output: j.output,
            files: j
                .files
                .into_iter()
                .map(|f| JobFile {
                    url: f.url,
                    size: f.size,
                })
                .collect(),
            layout,
            model: j.model.map(model_job).transpose()?,
            scores_with_input: j.scores_with_input,
        })
    }
}

/// The job's model as it travels.
fn model_job_to_pb(m: &ModelJob) -> pb::ModelJob {
    pb::ModelJob {
        source: m.source.clone(),
        reference: m.reference.clone(),
        dtype: m.dtype.name().into(),
        profile: m.profile.name().into(),
        max_length: m.max_length,
        max_prompt_length: m.max_prompt_length,
        truncation_mode: m.truncation_mode.name().into(),
        batch_tokens: m.batch_tokens.unwrap_or(0),
        chat_template: m.chat_template.as_ref().map(|t| pb::ChatTemplate {
            name: t.name.clone(),
            text: t.text.clone(),
        }),
        reward_model: m.reward_model.as_ref().map(|r| pb::RewardModel {
            source: r.source.clone(),
            max_length: r.max_length,
        }),
    }
}

/// The job's model with its settings parsed: a value this build does not know is refused.
fn model_job(m: pb::ModelJob) -> Result<ModelJob, MissingField> {
    fn parsed<T: std::str::FromStr<Err = String>>(
        field: &'static str,
        value: &str,
    ) -> Result<T, MissingField> {
        value.parse().map_err(|problem| MissingField {
            message: "ModelJob",
            field,
            problem,
        })
    }
    Ok(ModelJob {
        dtype: parsed("dtype", &m.dtype)?,
        profile: parsed("profile", &m.profile)?,
        truncation_mode: parsed("truncation_mode", &m.truncation_mode)?,
        source: m.source,
        reference: m.reference,
        max_length: m.max_length,
        max_prompt_length: m.max_prompt_length,
        batch_tokens: (m.batch_tokens > 0).then_some(m.batch_tokens),
        // The identity is the text's: computed here, not taken on trust.
        chat_template: m
            .chat_template
            .map(|t| ChatTemplateOverride::new(t.name, t.text)),
        reward_model: m.reward_model.map(|r| RewardModelJob {
            source: r.source,
            max_length: r.max_length,
        }),
    })
}

impl From<&Shard> for pb::Shard {
    fn from(s: &Shard) -> Self {
        pb::Shard {
            index: s.index,
            file_index: s.file_index,
            row_group_start: s.row_groups.start as u64,
            row_group_end: s.row_groups.end as u64,
            first_row_id: s.first_row_id,
            first_source_row: s.first_source_row,
            rows: s.rows,
        }
    }
}

impl From<&pb::Shard> for Shard {
    fn from(s: &pb::Shard) -> Self {
        Shard {
            index: s.index,
            file_index: s.file_index,
            row_groups: s.row_group_start as usize..s.row_group_end as usize,
            first_row_id: s.first_row_id,
            first_source_row: s.first_source_row,
            rows: s.rows,
        }
    }
}

impl From<&RunningStats> for pb::RunningStats {
    fn from(s: &RunningStats) -> Self {
        pb::RunningStats {
            count: s.count,
            mean: s.mean,
            m2: s.m2,
        }
    }
}

/// An absent statistic is an empty one (count 0).
fn running_stats(s: Option<pb::RunningStats>) -> RunningStats {
    let s = s.unwrap_or_default();
    RunningStats {
        count: s.count,
        mean: s.mean,
        m2: s.m2,
    }
}

impl From<&MarginStats> for pb::MarginStats {
    fn from(s: &MarginStats) -> Self {
        pb::MarginStats {
            rm_margin: Some((&s.rm_margin).into()),
            logp_margin: Some((&s.logp_margin).into()),
            logp_margin_norm: Some((&s.logp_margin_norm).into()),
            logp_margin_abs: Some((&s.logp_margin_abs).into()),
            logp_margin_norm_abs: Some((&s.logp_margin_norm_abs).into()),
            dpo_margin: Some((&s.dpo_margin).into()),
            dpo_margin_abs: Some((&s.dpo_margin_abs).into()),
        }
    }
}

impl From<pb::MarginStats> for MarginStats {
    fn from(s: pb::MarginStats) -> Self {
        MarginStats {
            rm_margin: running_stats(s.rm_margin),
            logp_margin: running_stats(s.logp_margin),
            logp_margin_norm: running_stats(s.logp_margin_norm),
            logp_margin_abs: running_stats(s.logp_margin_abs),
            logp_margin_norm_abs: running_stats(s.logp_margin_norm_abs),
            dpo_margin: running_stats(s.dpo_margin),
            dpo_margin_abs: running_stats(s.dpo_margin_abs),
        }
    }
}

/// A finished shard as sent to the coordinator; `scores_path` is where its rows are.
pub fn result_to_pb(r: &ShardResult, scores_path: String) -> pb::ShardResult {
    pb::ShardResult {
        index: r.index,
        scored: r.scored,
        rejected: r.rejected,
        tokens: r.tokens,
        padded_tokens: r.padded_tokens,
        stats: Some((&r.stats).into()),
        scores_path,
        reward_tokens: r.reward_tokens,
    }
}

impl TryFrom<pb::ShardResult> for ShardResult {
    type Error = MissingField;

    fn try_from(r: pb::ShardResult) -> Result<Self, MissingField> {
        let stats = r.stats.ok_or(MissingField {
            message: "ShardResult",
            field: "stats",
            problem: "is missing".into(),
        })?;
        Ok(ShardResult {
            index: r.index,
            scored: r.scored,
            rejected: r.rejected,
            stats: stats.into(),
            tokens: r.tokens,
            padded_tokens: r.padded_tokens,
            reward_tokens: r.reward_tokens,
            attempt: None,
            reused: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_result_survives_the_wire_bit_for_bit() {
        let stats = MarginStats::from_columns(
            &[0.1, 2.5, -3.0],
            &[1.0 / 3.0, -7.25, 1e-300],
            &[0.2, 0.4, f64::MIN_POSITIVE],
        )
        .with_dpo(&[1.5, -0.5, 0.1]);
        let result = ShardResult {
            index: 7,
            scored: 3,
            rejected: 1,
            stats,
            tokens: 99,
            padded_tokens: 120,
            reward_tokens: 45,
            attempt: None,
            reused: false,
        };
        let wire = prost::Message::encode_to_vec(&result_to_pb(&result, "scores/x".into()));
        let back: pb::ShardResult = prost::Message::decode(wire.as_slice()).unwrap();
        assert_eq!(back.scores_path, "scores/x");
        assert_eq!(ShardResult::try_from(back).unwrap(), result);
    }

    #[test]
    fn a_chat_template_and_a_reward_model_travel_with_the_job() {
        use apscore_core::model_settings::{ComputeDtype, Profile, TruncationMode};
        let template = ChatTemplateOverride::new("simpo.jinja", "{{ bos_token }}".into());
        let job = ModelJob {
            source: "m".into(),
            reference: None,
            dtype: ComputeDtype::F32,
            profile: Profile::Simpo,
            max_length: 128,
            max_prompt_length: 96,
            truncation_mode: TruncationMode::KeepEnd,
            batch_tokens: None,
            chat_template: Some(template.clone()),
            reward_model: Some(RewardModelJob {
                source: "s3://b/rm".into(),
                max_length: 4096,
            }),
        };
        let wire = prost::Message::encode_to_vec(&model_job_to_pb(&job));
        let back: pb::ModelJob = prost::Message::decode(wire.as_slice()).unwrap();
        let back = model_job(back).unwrap();
        assert_eq!(back, job);
        let got = back.chat_template.unwrap();
        assert_eq!(
            (got.text.as_str(), &got.sha256),
            ("{{ bos_token }}", &template.sha256)
        );
        assert_eq!(got.name, "simpo.jinja");
    }

    #[test]
    fn a_shard_keeps_its_row_groups() {
        let shard = Shard {
            index: 3,
            file_index: 1,
            row_groups: 4..9,
            first_row_id: 1000,
            first_source_row: 40,
            rows: 55,
        };
        assert_eq!(Shard::from(&pb::Shard::from(&shard)), shard);
    }
}
