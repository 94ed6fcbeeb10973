//! The settings of a job's model that every worker applies the same way: the compute dtype,
//! the tokenization profile and which end of a too-long prompt is kept.
//!
//! They travel in the job definition and go into the job id. Their serialised names (`f32`,
//! `simpo`, `keep_end`, …) are the ones the command line and the job file use, and the ones
//! earlier versions wrote as strings: job ids stay the same.

use serde::{Deserialize, Serialize};

/// The dtype the forward pass computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::F16 => "f16",
        }
    }
}

impl std::fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ComputeDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(ComputeDtype::F32),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            "f16" | "float16" => Ok(ComputeDtype::F16),
            other => Err(format!("unknown dtype `{other}`: use f32, bf16 or f16")),
        }
    }
}

/// How conversations become scored tokens (see `docs/models.md#tokenization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The paper's reference preprocessing: prompt and response rendered separately, BOS and
    /// EOS added, then truncated.
    Simpo,
    /// Prompt and response rendered as one conversation; what follows the generation prompt
    /// is scored.
    Conversation,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Simpo => "simpo",
            Profile::Conversation => "conversation",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "simpo" => Ok(Profile::Simpo),
            "conversation" => Ok(Profile::Conversation),
            other => Err(format!(
                "unknown tokenization profile `{other}`: use simpo or conversation"
            )),
        }
    }
}

/// Which end of a too-long prompt is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    KeepEnd,
    KeepStart,
}

impl TruncationMode {
    pub fn name(self) -> &'static str {
        match self {
            TruncationMode::KeepEnd => "keep_end",
            TruncationMode::KeepStart => "keep_start",
        }
    }
}

impl std::str::FromStr for TruncationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep_end" => Ok(TruncationMode::KeepEnd),
            "keep_start" => Ok(TruncationMode::KeepStart),
            other => Err(format!(
                "unknown truncation mode `{other}`: use keep_end or keep_start"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serialised names are part of every job id: they must not change.
    #[test]
    fn settings_serialise_as_their_command_line_names() {
        for dtype in [ComputeDtype::F32, ComputeDtype::Bf16, ComputeDtype::F16] {
            let json = serde_json::to_string(&dtype).unwrap();
            assert_eq!(json, format!("\"{}\"", dtype.name()));
            assert_eq!(dtype.name().parse::<ComputeDtype>(), Ok(dtype));
        }
        for profile in [Profile::Simpo, Profile::Conversation] {
            let json = serde_json::to_string(&profile).unwrap();
            assert_eq!(json, format!("\"{}\"", profile.name()));
            assert_eq!(profile.name().parse::<Profile>(), Ok(profile));
        }
        for mode in [TruncationMode::KeepEnd, TruncationMode::KeepStart] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.name()));
            assert_eq!(mode.name().parse::<TruncationMode>(), Ok(mode));
        }
        assert!("int8".parse::<ComputeDtype>().is_err());
    }
}
