//! Dataset-wide statistics built from partial statistics of shards.
//!
//! Each shard summarises a margin by (count, mean, M2) — M2 being the sum of squared deviations
//! from the mean — and the coordinator merges those summaries with the pairwise update of
//! Chan, Golub & LeVeque (1979). Merging in any grouping gives the single-pass result to within
//! rounding, so a job split into 4 shards or 4,000 ranks the same rows.

use serde::{Deserialize, Serialize};

/// Count, mean and M2 of one column of f64 values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    pub count: u64,
    pub mean: f64,
    /// Sum of squared deviations from `mean`.
    pub m2: f64,
}

impl RunningStats {
    /// Summarises `values` with two passes (mean first, then deviations): the most accurate
    /// way to summarise one chunk that is already in memory.
    pub fn from_values(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let m2 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        RunningStats {
            count: values.len() as u64,
            mean,
            m2,
        }
    }

    /// Adds one value (Welford's update).
    pub fn push(&mut self, value: f64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
    }

    /// Merges the summary of another, disjoint set of values into this one (Chan et al.).
    pub fn merge(&mut self, other: &RunningStats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n_a = self.count as f64;
        let n_b = other.count as f64;
        let n = n_a + n_b;
        let delta = other.mean - self.mean;
        self.mean += delta * (n_b / n);
        self.m2 += other.m2 + delta * delta * (n_a * n_b / n);
        self.count += other.count;
    }

    /// Population variance (ddof = 0, numpy's default); 0 for fewer than one value.
    pub fn variance(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).max(0.0)
        }
    }

    /// Population standard deviation (ddof = 0).
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }
}

/// The statistics of every margin of a set of scored pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MarginStats {
    pub rm_margin: RunningStats,
    pub logp_margin: RunningStats,
    pub logp_margin_norm: RunningStats,
    pub logp_margin_abs: RunningStats,
    pub logp_margin_norm_abs: RunningStats,
    /// The DPO implicit margin, when a reference model was given (count 0 otherwise).
    #[serde(default)]
    pub dpo_margin: RunningStats,
    #[serde(default)]
    pub dpo_margin_abs: RunningStats,
}

impl MarginStats {
    /// Summarises columns of margins of one chunk (all slices have the same length).
    pub fn from_columns(rm_margin: &[f64], logp_margin: &[f64], logp_margin_norm: &[f64]) -> Self {
        let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        MarginStats {
            rm_margin: RunningStats::from_values(rm_margin),
            logp_margin: RunningStats::from_values(logp_margin),
            logp_margin_norm: RunningStats::from_values(logp_margin_norm),
            logp_margin_abs: RunningStats::from_values(&abs(logp_margin)),
            logp_margin_norm_abs: RunningStats::from_values(&abs(logp_margin_norm)),
            dpo_margin: RunningStats::default(),
            dpo_margin_abs: RunningStats::default(),
        }
    }

    /// Adds the statistics of the DPO margins of the same rows.
    pub fn with_dpo(mut self, dpo_margin: &[f64]) -> Self {
        let abs: Vec<f64> = dpo_margin.iter().map(|x| x.abs()).collect();
        self.dpo_margin = RunningStats::from_values(dpo_margin);
        self.dpo_margin_abs = RunningStats::from_values(&abs);
        self
    }

    pub fn merge(&mut self, other: &MarginStats) {
        self.rm_margin.merge(&other.rm_margin);
        self.logp_margin.merge(&other.logp_margin);
        self.logp_margin_norm.merge(&other.logp_margin_norm);
        self.logp_margin_abs.merge(&other.logp_margin_abs);
        self.logp_margin_norm_abs.merge(&other.logp_margin_norm_abs);
        self.dpo_margin.merge(&other.dpo_margin);
        self.dpo_margin_abs.merge(&other.dpo_margin_abs);
    }

    /// Each margin's name with its statistics, in output order (the DPO margin only when
    /// the job has one).
    pub fn named(&self) -> Vec<(&'static str, &RunningStats)> {
        let mut named = vec![
            ("rm_margin", &self.rm_margin),
            ("logp_margin", &self.logp_margin),
            ("logp_margin_norm", &self.logp_margin_norm),
            ("logp_margin_abs", &self.logp_margin_abs),
            ("logp_margin_norm_abs", &self.logp_margin_norm_abs),
        ];
        if self.dpo_margin.count > 0 {
            named.push(("dpo_margin", &self.dpo_margin));
            named.push(("dpo_margin_abs", &self.dpo_margin_abs));
        }
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator so the property test needs no extra crate.
    fn values(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = crate::rng::splitmix64(state);
                let u = crate::rng::unit_f64(state);
                // Offset and spread vary with the seed: large offsets stress cancellation.
                (seed % 7) as f64 * 1e3 + (u - 0.5) * (1.0 + (seed % 5) as f64 * 10.0)
            })
            .collect()
    }

    fn relative(a: f64, b: f64) -> f64 {
        if a == b {
            0.0
        } else {
            (a - b).abs() / a.abs().max(b.abs())
        }
    }

    #[test]
    fn hand_computed_case() {
        // numpy: np.mean([1,2,3,4]) = 2.5, np.std([1,2,3,4]) = 1.118033988749895
        let s = RunningStats::from_values(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.count, 4);
        assert_eq!(s.mean, 2.5);
        assert!((s.std() - 1.118033988749895).abs() < 1e-15);
        let mut w = RunningStats::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            w.push(v);
        }
        assert!((w.std() - s.std()).abs() < 1e-15);
    }

    #[test]
    fn merging_nothing_changes_nothing() {
        let s = RunningStats::from_values(&[3.0, 5.0]);
        let mut a = s;
        a.merge(&RunningStats::default());
        assert_eq!(a, s);
        let mut b = RunningStats::default();
        b.merge(&s);
        assert_eq!(b, s);
    }

    /// Property: for many random splits of random data into chunks, merging the chunks'
    /// statistics in order equals the single-pass statistics to 1e-12 relative.
    #[test]
    fn merged_equals_single_pass() {
        for seed in 1..200u64 {
            let n = 1 + (crate::rng::splitmix64(seed) % 5000) as usize;
            let data = values(seed, n);
            let whole = RunningStats::from_values(&data);

            let mut merged = RunningStats::default();
            let mut start = 0;
            let mut cut_state = seed ^ 0xdead_beef;
            while start < n {
                cut_state = crate::rng::splitmix64(cut_state);
                let len = 1 + (cut_state % 700) as usize;
                let end = (start + len).min(n);
                merged.merge(&RunningStats::from_values(&data[start..end]));
                start = end;
            }
            assert_eq!(merged.count, whole.count);
            assert!(
                relative(merged.mean, whole.mean) < 1e-12,
                "seed {seed}: mean {} vs {}",
                merged.mean,
                whole.mean
            );
            assert!(
                relative(merged.std(), whole.std()) < 1e-12,
                "seed {seed}: std {} vs {}",
                merged.std(),
                whole.std()
            );
        }
    }

    #[test]
    fn merge_order_does_not_matter_beyond_rounding() {
        let chunks: Vec<_> = (0..50)
            .map(|s| RunningStats::from_values(&values(s + 3, 97)))
            .collect();
        let mut forward = RunningStats::default();
        chunks.iter().for_each(|c| forward.merge(c));
        let mut backward = RunningStats::default();
        chunks.iter().rev().for_each(|c| backward.merge(c));
        assert!(relative(forward.mean, backward.mean) < 1e-12);
        assert!(relative(forward.std(), backward.std()) < 1e-12);
    }
}
