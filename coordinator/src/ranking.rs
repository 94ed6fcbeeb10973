//! The alignment-potential ranking and the selection (`docs/metric.md`).
//!
//! ```text
//!   z(v)  = (v − mean(v)) / std(v)          population std (ddof = 0), f64, whole job;
//!                                           a column with std = 0 has z = 0 everywhere
//!   M_AP  = z(rm_margin) − w · z(|logp_margin_norm|)
//! ```
//!
//! Rows are sorted by the chosen metric's score, descending, ties broken by global input order
//! (`row_id`), and the first `k = floor(ratio · N)` (or `--top-k`) rows are selected. The
//! baselines of the paper are `explicit` (z(rm_margin)), `implicit` (−z(|implicit margin|)) and
//! `random` (a seeded hash of `row_id`, so it does not depend on how the job was sharded).

use apscore_core::rng;
use apscore_core::stats::{MarginStats, RunningStats};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// What rows are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Alignment potential: z(rm_margin) − w · z(|implicit margin|).
    Ap,
    /// The explicit margin alone: z(rm_margin).
    Explicit,
    /// The implicit margin alone: −z(|implicit margin|) (small margins first).
    Implicit,
    /// A seeded random order.
    Random,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Ap => "ap",
            Metric::Explicit => "explicit",
            Metric::Implicit => "implicit",
            Metric::Random => "random",
        }
    }
}

/// Which implicit reward margin the ranking uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImplicitMargin {
    /// SimPO style, reference-free: `logp_margin_norm` (the paper's default).
    #[default]
    Simpo,
    /// DPO style, with a reference model: `dpo_margin`.
    Dpo,
}

impl ImplicitMargin {
    /// The `scores/` column that holds this margin.
    pub fn column(self) -> &'static str {
        match self {
            ImplicitMargin::Simpo => apscore_core::columns::LOGP_MARGIN_NORM,
            ImplicitMargin::Dpo => apscore_core::columns::DPO_MARGIN,
        }
    }
}

/// How many rows to keep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// `floor(ratio · N)` rows.
    Ratio(f64),
    /// Exactly `k` rows (all of them when there are fewer).
    TopK(u64),
}

impl Selection {
    /// Rows kept out of `n` scored rows.
    pub fn count(self, n: usize) -> usize {
        match self {
            // The same arithmetic as the reference: int(ratio * len(ds)).
            Selection::Ratio(ratio) => ((ratio * n as f64).floor() as usize).min(n),
            Selection::TopK(k) => (k as usize).min(n),
        }
    }
}

/// The ranking parameters of a job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankingParams {
    pub metric: Metric,
    /// `w` in M_AP.
    pub implicit_weight: f64,
    /// Seed of the `random` metric.
    pub seed: u64,
    pub selection: Selection,
    /// The implicit margin in M_AP and the `implicit` baseline.
    #[serde(default)]
    pub implicit: ImplicitMargin,
}

/// The margins of every scored row, in input order (ascending `row_id`).
///
/// Memory is what limits a job's size, so a row costs 24 bytes here: its three margins. Its
/// `row_id` is not stored but derived from its position and the (usually few) rejected rows.
#[derive(Debug, Default, Clone)]
pub struct RankRows {
    pub rm_margin: Vec<f64>,
    pub logp_margin: Vec<f64>,
    pub logp_margin_norm: Vec<f64>,
    /// The DPO margin, only when the ranking uses it (empty otherwise).
    pub dpo_margin: Vec<f64>,

    /// `row_id`s of the rejected rows, ascending.
    pub rejected_row_ids: Vec<u64>,
}

impl RankRows {
    pub fn len(&self) -> usize {
        self.rm_margin.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rm_margin.is_empty()
    }

    /// The implicit margin the ranking uses at `position`: the DPO margin when loaded, else
    /// `logp_margin_norm`.
    pub fn implicit(&self, position: usize) -> f64 {
        match self.dpo_margin.get(position) {
            Some(&dpo) => dpo,
            None => self.logp_margin_norm[position],
        }
    }

    /// The `row_id` of the scored row at `position`: the position plus the number of rejected
    /// rows before it, found by bisection since `rejected[r] − r` never decreases.
    pub fn row_id(&self, position: usize) -> u64 {
        let p = position as u64;
        let rejected = &self.rejected_row_ids;
        // The smallest r with rejected[r] − r > p.
        let (mut lo, mut hi) = (0usize, rejected.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if rejected[mid] - mid as u64 <= p {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        p + lo as u64
    }
}

/// A standardisation `(v − mean) / std` with the dataset-wide statistics of one column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZScore {
    pub mean: f64,
    pub std: f64,
}

impl ZScore {
    /// From merged statistics; a column with std 0 (or no rows) standardises to 0.
    pub fn new(name: &str, stats: &RunningStats) -> Self {
        let std = stats.std();
        if stats.count > 0 && std == 0.0 {
            warn!(
                column = name,
                "standard deviation is 0: its z-score is 0 for every row"
            );
        }
        ZScore {
            mean: stats.mean,
            std,
        }
    }

    pub fn apply(&self, v: f64) -> f64 {
        if self.std == 0.0 {
            0.0
        } else {
            (v - self.mean) / self.std
        }
    }
}

/// The ranked rows.
#[derive(Debug, Clone)]
pub struct Ranking {
    /// Positions in [`RankRows`], best first.
    pub order: Vec<u32>,
    /// The first `selected` rows of `order` are selected.
    pub selected: usize,
    pub params: RankingParams,
    pub z_rm: ZScore,
    pub z_implicit: ZScore,
}

impl Ranking {
    /// The score the row at `position` was ranked by (recomputed: cheaper than storing it).
    pub fn score(&self, rows: &RankRows, position: usize) -> f64 {
        let z_rm = || self.z_rm.apply(rows.rm_margin[position]);
        let z_implicit = || self.z_implicit.apply(rows.implicit(position).abs());
        let score = match self.params.metric {
            Metric::Ap => alignment_potential(z_rm(), z_implicit(), self.params.implicit_weight),
            Metric::Explicit => z_rm(),
            Metric::Implicit => -z_implicit(),
            Metric::Random => random_score(self.params.seed, rows.row_id(position)),
        };
        // −0.0 and 0.0 are the same score: let the input order break that tie.
        score + 0.0
    }

    /// The score of the last selected row (the selection cutoff), if any row is selected.
    pub fn cutoff(&self, rows: &RankRows) -> Option<f64> {
        let last = self.selected.checked_sub(1)?;
        Some(self.score(rows, self.order[last] as usize))
    }
}

/// Alignment potential of one row.
pub fn alignment_potential(z_rm: f64, z_implicit_abs: f64, implicit_weight: f64) -> f64 {
    z_rm - implicit_weight * z_implicit_abs
}

/// A ranking that cannot be made: some row's score is not a number f64 can hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {metric} score of row {row_id} is {score} (z(rm_margin) = {z_rm}, z(|implicit \
     margin|) = {z_implicit}, w = {weight}): it cannot be ranked; a smaller --implicit-weight \
     keeps the scores finite"
)]
pub struct RankingError {
    pub metric: &'static str,
    pub row_id: u64,
    pub score: f64,
    pub z_rm: f64,
    pub z_implicit: f64,
    pub weight: f64,
}

/// Ranks `rows` with the job-wide `stats` (merged from the shards). Every score must be
/// finite: ranking by NaN or by an overflowed score would order rows arbitrarily.
pub fn rank(
    rows: &RankRows,
    stats: &MarginStats,
    params: &RankingParams,
) -> Result<Ranking, RankingError> {
    assert!(
        rows.len() <= u32::MAX as usize,
        "more than 2^32 scored rows in one job"
    );
    let mut ranking = Ranking {
        order: Vec::new(),
        selected: params.selection.count(rows.len()),
        params: *params,
        z_rm: ZScore::new("rm_margin", &stats.rm_margin),
        z_implicit: match params.implicit {
            ImplicitMargin::Simpo => {
                ZScore::new("logp_margin_norm_abs", &stats.logp_margin_norm_abs)
            }
            ImplicitMargin::Dpo => ZScore::new("dpo_margin_abs", &stats.dpo_margin_abs),
        },
    };
    // Each row keyed by an integer in rank order: sorting integers is about twice as fast
    // as comparing the floats (`total_cmp`) and then the positions.
    let mut keyed: Vec<(u64, u32)> = (0..rows.len())
        .into_par_iter()
        .map(|i| (rank_key(ranking.score(rows, i)), i as u32))
        .collect();
    if let Some(&(key, i)) = keyed.iter().find(|(key, _)| !score_of(*key).is_finite()) {
        let i = i as usize;
        return Err(RankingError {
            metric: params.metric.name(),
            row_id: rows.row_id(i),
            score: score_of(key),
            z_rm: ranking.z_rm.apply(rows.rm_margin[i]),
            z_implicit: ranking.z_implicit.apply(rows.implicit(i).abs()),
            weight: params.implicit_weight,
        });
    }
    // On every core: the sort is most of the ranking's time. Best first: key ascending, then
    // position ascending (rows are in input order, so the position breaks ties by `row_id`).
    keyed.par_sort_unstable();
    // `into_iter().map().collect()` reuses `keyed`'s memory for the order: the sort is where a
    // job's memory peaks.
    ranking.order = keyed.into_iter().map(|(_, i)| i).collect();
    Ok(ranking)
}

/// An integer that orders scores best (highest) first, as `f64::total_cmp` reversed does:
/// the bits of a positive score with the sign bit set, those of a negative one inverted, and
/// the whole inverted.
fn rank_key(score: f64) -> u64 {
    let bits = score.to_bits();
    let ascending = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    !ascending
}

/// The score a [`rank_key`] was made of.
fn score_of(key: u64) -> f64 {
    let ascending = !key;
    f64::from_bits(if ascending >> 63 == 1 {
        ascending & !(1 << 63)
    } else {
        !ascending
    })
}

/// The `random` metric's score of a row: uniform in [0, 1), fixed by the seed and the row.
pub fn random_score(seed: u64, row_id: u64) -> f64 {
    rng::unit_f64(rng::splitmix64(seed ^ rng::splitmix64(row_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rm: &[f64], lmn: &[f64]) -> RankRows {
        RankRows {
            rejected_row_ids: Vec::new(),
            rm_margin: rm.to_vec(),
            logp_margin: lmn.to_vec(),
            logp_margin_norm: lmn.to_vec(),
            dpo_margin: Vec::new(),
        }
    }

    fn order(r: &Ranking) -> Vec<u32> {
        r.order.clone()
    }

    fn stats_of(r: &RankRows) -> MarginStats {
        MarginStats::from_columns(&r.rm_margin, &r.logp_margin, &r.logp_margin_norm)
    }

    fn params(metric: Metric, selection: Selection) -> RankingParams {
        RankingParams {
            metric,
            implicit_weight: 1.0,
            seed: 42,
            selection,
            implicit: ImplicitMargin::Simpo,
        }
    }

    #[test]
    fn hand_computed_alignment_potential() {
        // rm = [1, 2, 3]: mean 2, std sqrt(2/3); |lmn| = [0.5, 0.5, 2]: mean 1, std sqrt(0.5)
        let r = rows(&[1.0, 2.0, 3.0], &[0.5, -0.5, 2.0]);
        let ranking = rank(
            &r,
            &stats_of(&r),
            &params(Metric::Ap, Selection::Ratio(0.4)),
        )
        .unwrap();
        let s = (2.0f64 / 3.0).sqrt();
        let t = 0.5f64.sqrt();
        let expected = [
            (1.0 - 2.0) / s - (0.5 - 1.0) / t,
            0.0 / s - (0.5 - 1.0) / t,
            1.0 / s - 1.0 / t,
        ];
        for (i, want) in expected.iter().enumerate() {
            let got = ranking.score(&r, i);
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // Scores ≈ [-0.518, 0.707, -0.189] → order 1, 2, 0; floor(0.4 · 3) = 1 selected.
        assert_eq!(order(&ranking), vec![1, 2, 0]);
        assert_eq!(ranking.selected, 1);
    }

    #[test]
    fn ties_break_by_input_order() {
        let r = rows(&[1.0, 1.0, 1.0, 2.0], &[0.1, 0.1, 0.1, 0.1]);
        let ranking = rank(&r, &stats_of(&r), &params(Metric::Ap, Selection::TopK(2))).unwrap();
        assert_eq!(order(&ranking), vec![3, 0, 1, 2]);
        assert_eq!(ranking.selected, 2);
    }

    #[test]
    fn constant_column_has_zero_z() {
        let r = rows(&[5.0, 5.0, 5.0], &[0.3, 0.1, 0.2]);
        let ranking = rank(
            &r,
            &stats_of(&r),
            &params(Metric::Ap, Selection::Ratio(1.0)),
        )
        .unwrap();
        // Only −z(|lmn|) counts: smallest |margin| first.
        assert_eq!(order(&ranking), vec![1, 2, 0]);
        assert!((0..3).all(|i| ranking.score(&r, i).is_finite()));
    }

    #[test]
    fn baselines() {
        let r = rows(&[3.0, 1.0, 2.0], &[0.1, 0.9, -0.5]);
        let s = stats_of(&r);
        let explicit = rank(&r, &s, &params(Metric::Explicit, Selection::TopK(3))).unwrap();
        assert_eq!(order(&explicit), vec![0, 2, 1]);
        let implicit = rank(&r, &s, &params(Metric::Implicit, Selection::TopK(3))).unwrap();
        assert_eq!(order(&implicit), vec![0, 2, 1]);
        let a = rank(&r, &s, &params(Metric::Random, Selection::TopK(3))).unwrap();
        let b = rank(&r, &s, &params(Metric::Random, Selection::TopK(3))).unwrap();
        assert_eq!(order(&a), order(&b), "random is seeded");
    }

    /// Keys order scores as `total_cmp` does, best first, and give the score back.
    #[test]
    fn rank_keys_order_scores_best_first() {
        let mut scores = vec![
            f64::INFINITY,
            f64::MAX,
            3.5,
            1.0,
            f64::MIN_POSITIVE,
            5e-324,
            0.0,
            -0.0,
            -5e-324,
            -1.0,
            -3.5,
            f64::MIN,
            f64::NEG_INFINITY,
        ];
        scores.extend((0..200).map(|i| ((i as f64) * 0.618).sin() * 10f64.powi(i % 9 - 4)));
        for a in &scores {
            assert_eq!(score_of(rank_key(*a)).to_bits(), a.to_bits(), "{a}");
            for b in &scores {
                assert_eq!(rank_key(*a).cmp(&rank_key(*b)), b.total_cmp(a), "{a} {b}");
            }
        }
        assert!(!score_of(rank_key(f64::NAN)).is_finite());
    }

    #[test]
    fn row_ids_skip_rejected_rows() {
        for rejected in [vec![], vec![0], vec![2], vec![0, 1, 5, 6, 9], vec![3, 4, 7]] {
            let n = 12;
            let scored: Vec<u64> = (0..n).filter(|id| !rejected.contains(id)).collect();
            let rows = RankRows {
                rm_margin: vec![0.0; scored.len()],
                logp_margin: vec![0.0; scored.len()],
                logp_margin_norm: vec![0.0; scored.len()],
                dpo_margin: Vec::new(),
                rejected_row_ids: rejected.clone(),
            };
            for (position, &id) in scored.iter().enumerate() {
                assert_eq!(rows.row_id(position), id, "rejected {rejected:?}");
            }
        }
    }

    #[test]
    fn selection_counts_follow_the_reference() {
        assert_eq!(Selection::Ratio(0.4).count(10), 4);
        assert_eq!(Selection::Ratio(0.4).count(7), 2);
        assert_eq!(Selection::Ratio(0.0).count(7), 0);
        assert_eq!(Selection::Ratio(1.0).count(7), 7);
        assert_eq!(Selection::TopK(100).count(7), 7);
    }
}
