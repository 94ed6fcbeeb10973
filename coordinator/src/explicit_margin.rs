//! Where a job's explicit margin came from, and — when a reward model gave it and the data
//! had a margin of its own — how well the two agree.
//!
//! With `--reward-model`, `rm_margin` is the reward model's `rm_chosen − rm_rejected` and the
//! data's own margin is kept in `scores/` as `data_rm_margin`. The agreement is the Spearman
//! rank correlation of the two over the rows where both are known (ties take their average
//! rank), and the share of pairs each side prefers the rejected response in (a negative
//! margin). `summary.json` records it under `explicit_margin`; the report shows it with a
//! scatter plot of one margin against the other.

use apscore_core::columns;
use apscore_core::job_definition::REWARD_MODEL_IDENTITY;
use apscore_core::parquet_io::read_whole;
use apscore_core::storage::Location;
use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::OutputError;
use crate::ranking::RankRows;
use crate::scored::Scored;
use crate::summary::KeyFacts;

/// The explicit margin of a job, as `summary.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplicitMarginFacts {
    /// `reward_model` or `data`.
    pub source: String,
    /// The reward model, `source (sha256:…)`, when it gave the margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<String>,
    /// Share of scored pairs whose explicit margin is negative (the reward model, or the data,
    /// prefers the rejected response).
    pub prefers_rejected_share: f64,
    /// How the reward model's margin agrees with the data's own, when both exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
}

/// The reward model's margin against the data's own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Rows where both margins are known.
    pub rows: u64,
    /// Spearman's rank correlation of the two margins (`None` when either is constant).
    pub spearman: Option<f64>,
    /// Share of those rows where the data's margin is negative.
    pub data_prefers_rejected_share: f64,
    /// Share of those rows where the two margins have opposite signs.
    pub sign_disagreement_share: f64,
}

/// The data's own margins beside the reward model's (`NaN` where unknown), when the job had a
/// reward model and the data a margin.
pub struct DataMargins(pub Vec<f64>);

/// What `facts` and the rows say about the job's explicit margin; reads `data_rm_margin` from
/// the parts when there is one.
pub async fn explicit_margin(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    facts: &KeyFacts,
) -> Result<(ExplicitMarginFacts, Option<DataMargins>), OutputError> {
    let reward_model = facts
        .scoring_setup
        .as_ref()
        .and_then(|s| s.model.as_ref())
        .and_then(|m| m.reward_model.as_ref());
    let prefers_rejected_share = negative_share(&rows.rm_margin);
    let Some(reward_model) = reward_model else {
        return Ok((
            ExplicitMarginFacts {
                source: "data".into(),
                reward_model: None,
                prefers_rejected_share,
                agreement: None,
            },
            None,
        ));
    };
    let identity = facts
        .model
        .split_once(REWARD_MODEL_IDENTITY)
        .map_or_else(|| reward_model.source.clone(), |(_, id)| id.to_string());
    let data = if facts.layout.explicit.is_some() {
        Some(read_data_margins(output, scored).await?)
    } else {
        None
    };
    let facts = ExplicitMarginFacts {
        source: "reward_model".into(),
        reward_model: Some(identity),
        prefers_rejected_share,
        agreement: data.as_ref().map(|d| agreement(&rows.rm_margin, &d.0)),
    };
    Ok((facts, data))
}

/// `data_rm_margin` of every scored row, in row order (`NaN` where null).
async fn read_data_margins(output: &Location, scored: &Scored) -> Result<DataMargins, OutputError> {
    let mut margins = Vec::new();
    for part in &scored.parts {
        let file = output.input_file(&part.path).await?;
        let mut stream = read_whole(&file, Some(&[columns::DATA_RM_MARGIN])).await?;
        while let Some(batch) = stream.try_next().await? {
            let column = batch.column(0).as_primitive::<Float64Type>();
            margins.extend(column.iter().map(|v| v.unwrap_or(f64::NAN)));
        }
    }
    Ok(DataMargins(margins))
}

/// The agreement of `reward` and `data` over the rows where `data` is known.
pub fn agreement(reward: &[f64], data: &[f64]) -> Agreement {
    let (reward, data): (Vec<f64>, Vec<f64>) = reward
        .iter()
        .zip(data)
        .filter(|(_, d)| d.is_finite())
        .map(|(&r, &d)| (r, d))
        .unzip();
    let n = reward.len();
    let disagree = reward
        .iter()
        .zip(&data)
        .filter(|(r, d)| (**r < 0.0) != (**d < 0.0))
        .count();
    Agreement {
        rows: n as u64,
        spearman: pearson(&ranks(&reward), &ranks(&data)),
        data_prefers_rejected_share: negative_share(&data),
        sign_disagreement_share: if n == 0 {
            0.0
        } else {
            disagree as f64 / n as f64
        },
    }
}

fn negative_share(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|v| **v < 0.0).count() as f64 / values.len() as f64
}

/// 1-based ranks, ties sharing their average rank.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_unstable_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold rank (start + 1 + end) / 2 on average.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Pearson's correlation; `None` with fewer than two values or a constant side.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_follows_ranks_with_ties_averaged() {
        // A monotone transform keeps the ranks: correlation 1; reversed: −1.
        let reward = [0.5, -2.0, 3.0, 1.0];
        let same_order = [10.0, 1.0, 1000.0, 20.0];
        let a = agreement(&reward, &same_order);
        assert_eq!(a.spearman, Some(1.0));
        let reversed: Vec<f64> = same_order.iter().map(|v| -v).collect();
        assert!((agreement(&reward, &reversed).spearman.unwrap() + 1.0).abs() < 1e-12);
        // Ties: scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138.
        let a = agreement(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((a.spearman.unwrap() - 0.9486832980505138).abs() < 1e-12);
        // Unknown data margins are left out; a constant side has no correlation.
        let a = agreement(&[1.0, -1.0, 2.0], &[f64::NAN, -3.0, 4.0]);
        assert_eq!(a.rows, 2);
        assert_eq!(a.sign_disagreement_share, 0.0);
        assert_eq!(a.data_prefers_rejected_share, 0.5);
        assert_eq!(agreement(&[1.0, 2.0], &[5.0, 5.0]).spearman, None);
        let a = agreement(&[1.0, -1.0, 2.0, -0.5], &[1.0, 1.0, -2.0, -1.0]);
        assert_eq!(a.sign_disagreement_share, 0.5);
    }
}
