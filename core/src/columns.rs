//! Names of the columns apscore writes (`docs/outputs.md`); they follow the reference code so
//! its own scripts read apscore's outputs.

pub const ROW_ID: &str = "row_id";
pub const SOURCE_FILE: &str = "source_file";
pub const SOURCE_ROW: &str = "source_row";

pub const CHOSEN_LOGPS: &str = "chosen_logps";
pub const REJECTED_LOGPS: &str = "rejected_logps";
pub const CHOSEN_LOGPS_NORM: &str = "chosen_logps_norm";
pub const REJECTED_LOGPS_NORM: &str = "rejected_logps_norm";
pub const CHOSEN_TOKENS: &str = "chosen_tokens";
pub const REJECTED_TOKENS: &str = "rejected_tokens";
pub const LOGP_MARGIN: &str = "logp_margin";
pub const LOGP_MARGIN_NORM: &str = "logp_margin_norm";
pub const LOGP_MARGIN_ABS: &str = "logp_margin_abs";
pub const LOGP_MARGIN_NORM_ABS: &str = "logp_margin_norm_abs";
pub const RM_MARGIN: &str = "rm_margin";
pub const TRUNCATED: &str = "truncated";
/// Log-prob sums under the reference model, and the DPO implicit margin
/// `(chosen_logps − ref_chosen_logps) − (rejected_logps − ref_rejected_logps)`: written only
/// when a reference model is given.
pub const REF_CHOSEN_LOGPS: &str = "ref_chosen_logps";
pub const REF_REJECTED_LOGPS: &str = "ref_rejected_logps";
pub const DPO_MARGIN: &str = "dpo_margin";
pub const Z_DPO_MARGIN_ABS: &str = "z_dpo_margin_abs";

/// A reward model's score of each response (`--reward-model`): `rm_margin` is then their
/// difference, and the data's own margin, when it has one, is kept as `data_rm_margin`.
pub const RM_CHOSEN: &str = "rm_chosen";
pub const RM_REJECTED: &str = "rm_rejected";
pub const DATA_RM_MARGIN: &str = "data_rm_margin";

pub const Z_RM_MARGIN: &str = "z_rm_margin";
pub const Z_LOGP_MARGIN_NORM_ABS: &str = "z_logp_margin_norm_abs";
pub const ALIGNMENT_POTENTIAL: &str = "alignment_potential";
/// The value rows were ranked by under the job's metric (M_AP for `ap`).
pub const SCORE: &str = "score";
pub const RANK: &str = "rank";
pub const SELECTED: &str = "selected";
pub const REASON: &str = "reason";

/// The columns a worker appends to each scored row in `scores/`, in order (the first four,
/// [`LOGP_COLUMNS`], not where the input carries them precomputed; then, with a reference
/// model, [`REFERENCE_COLUMNS`]).
pub const SCORE_COLUMNS: [&str; 15] = [
    CHOSEN_LOGPS,
    REJECTED_LOGPS,
    CHOSEN_LOGPS_NORM,
    REJECTED_LOGPS_NORM,
    CHOSEN_TOKENS,
    REJECTED_TOKENS,
    LOGP_MARGIN,
    LOGP_MARGIN_NORM,
    LOGP_MARGIN_ABS,
    LOGP_MARGIN_NORM_ABS,
    RM_MARGIN,
    TRUNCATED,
    ROW_ID,
    SOURCE_FILE,
    SOURCE_ROW,
];

/// The log-prob columns: a model's, or the input's own when it carries them precomputed (then
/// `scores/` leaves them in the input, unless it copies the input).
pub const LOGP_COLUMNS: [&str; 4] = [
    CHOSEN_LOGPS,
    REJECTED_LOGPS,
    CHOSEN_LOGPS_NORM,
    REJECTED_LOGPS_NORM,
];

/// The columns a reference model adds to `scores/`.
pub const REFERENCE_COLUMNS: [&str; 3] = [REF_CHOSEN_LOGPS, REF_REJECTED_LOGPS, DPO_MARGIN];

/// The columns a reward model adds to `scores/` (then [`DATA_RM_MARGIN`] when the data has
/// its own margin).
pub const REWARD_COLUMNS: [&str; 2] = [RM_CHOSEN, RM_REJECTED];

/// Whether apscore writes a column of this name into `scores/` (an input column of that name
/// is replaced there).
pub fn is_score_column(name: &str) -> bool {
    SCORE_COLUMNS.contains(&name)
        || REFERENCE_COLUMNS.contains(&name)
        || REWARD_COLUMNS.contains(&name)
        || name == DATA_RM_MARGIN
}

/// Float columns apscore computes whose values are nearly all distinct. They are written
/// without a dictionary (it would only cost time) and with the byte-stream-split encoding,
/// which lets zstd find what little redundancy floats have: smaller files, faster writes.
pub const DISTINCT_FLOAT_COLUMNS: [&str; 17] = [
    RM_CHOSEN,
    RM_REJECTED,
    REF_CHOSEN_LOGPS,
    REF_REJECTED_LOGPS,
    DPO_MARGIN,
    Z_DPO_MARGIN_ABS,
    CHOSEN_LOGPS,
    REJECTED_LOGPS,
    CHOSEN_LOGPS_NORM,
    REJECTED_LOGPS_NORM,
    LOGP_MARGIN,
    LOGP_MARGIN_NORM,
    LOGP_MARGIN_ABS,
    LOGP_MARGIN_NORM_ABS,
    Z_LOGP_MARGIN_NORM_ABS,
    ALIGNMENT_POTENTIAL,
    SCORE,
];

/// Float columns apscore computes from the explicit margin. Taken from the data's ratings
/// (UltraFeedback's 1–10 scores), they hold a few dozen distinct values, which a dictionary
/// stores in a few bits each (a fifth of what byte-stream-split gives); from a reward model
/// they are all distinct. So: a small dictionary first, byte-stream-split once it fills.
pub const EXPLICIT_MARGIN_COLUMNS: [&str; 3] = [RM_MARGIN, DATA_RM_MARGIN, Z_RM_MARGIN];

/// Of [`DISTINCT_FLOAT_COLUMNS`], those `ranking.parquet` is sorted by (`score`, and the
/// alignment potential when it is the score, as by default): the only ones whose min/max
/// statistics let a reader skip row groups, so the only ones written with them.
pub const SORTED_FLOAT_COLUMNS: [&str; 2] = [ALIGNMENT_POTENTIAL, SCORE];

/// Integer columns apscore computes whose values are all distinct: no dictionary either, and
/// delta encoding (they mostly count up by one).
pub const DISTINCT_INTEGER_COLUMNS: [&str; 3] = [ROW_ID, SOURCE_ROW, RANK];
