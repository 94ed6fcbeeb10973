//! Helpers shared by the worker's fidelity tests: the fixture folder and its pairs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[path = "../../../tests/common/smollm2.rs"]
mod smollm2;
#[allow(unused_imports)]
pub use smollm2::smollm2_gguf;

use apscore_core::pairs::{Conversation, Message};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn message(v: &Value) -> Message {
    Message {
        role: v["role"].as_str().unwrap().into(),
        content: v["content"].as_str().unwrap().into(),
    }
}

/// The fixture pairs as the UltraFeedback layout reads them (prompt messages and responses).
pub fn conversations() -> Vec<Conversation> {
    let pairs = read_json(&fixtures().join("pairs.json"));
    pairs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let chosen = p["chosen"].as_array().unwrap();
            let rejected = p["rejected"].as_array().unwrap();
            Conversation {
                prompt: chosen[..chosen.len() - 1].iter().map(message).collect(),
                chosen: message(chosen.last().unwrap()),
                rejected: message(rejected.last().unwrap()),
            }
        })
        .collect()
}
