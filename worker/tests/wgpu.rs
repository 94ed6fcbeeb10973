//! burn's kernels on a GPU through wgpu, against the transformers goldens of the fixture
//! models: the CubeCL code path that CUDA runs too (burn's flash attention with and without
//! masks, fusion, autotune), executed on a real Vulkan device. In CI that device is Mesa's
//! lavapipe, a software Vulkan implementation on the CPU (`.ci/run` installs it and runs the
//! ignored tests here with `--include-ignored`).
#![cfg(feature = "wgpu")]

use apscore_worker::model::ops::burn_attention_mask;
use apscore_worker::model::{
    Checkpoint, ComputeDtype, DeviceSpec, Kernels, PackedBatch, PackedRow, Packing, ScoringModel,
    load_cpu_model, load_model, wgpu_device,
};
use apscore_worker::scorer::{PairScores, ScorerProgress, score_pairs};
use apscore_worker::tokenization::TokenizedPair;
use burn::backend::wgpu::{CubeBackend, WgpuRuntime};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_cubecl::kernel::attention::{AttentionStrategy, attention};

mod common;
use common::*;

/// The first wgpu adapter (in CI the only one: lavapipe).
fn on_gpu(checkpoint: &Checkpoint) -> Box<dyn ScoringModel> {
    load_model(checkpoint, DeviceSpec::Wgpu(0), ComputeDtype::F32)
        .unwrap_or_else(|e| panic!("{}: {e}", checkpoint.source))
}

/// A small token budget: several padded batches of mixed lengths.
fn score(model: &dyn ScoringModel, pairs: &[TokenizedPair], packing: Packing) -> Vec<PairScores> {
    score_pairs(model, pairs, 400, packing, &ScorerProgress::default())
}

#[test]
#[ignore = "needs a Vulkan device (mesa-vulkan-drivers): bash .ci/run installs it"]
fn wgpu_scores_separate_rows_like_transformers() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = on_gpu(&checkpoint);
        // What a GPU runs by default: a row per response, plain causal rows, no mask.
        assert_eq!(model.packing(), Packing::Separate);
        let scores = score(model.as_ref(), &pairs, Packing::Separate);
        let worst =
            assert_equal_to_goldens(&format!("{name}, wgpu, separate rows"), &scores, &wanted);
        eprintln!("{name}, wgpu, separate rows: largest difference from transformers {worst:.2e}");
    }
}

#[test]
#[ignore = "needs a Vulkan device (mesa-vulkan-drivers): bash .ci/run installs it"]
fn wgpu_scores_packed_pairs_with_masks_like_transformers() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        // A pair's prompt once, both responses after it: every batch has a mask per row,
        // repeated over the heads.
        let scores = score(on_gpu(&checkpoint).as_ref(), &pairs, Packing::SharedPrefix);
        let worst =
            assert_equal_to_goldens(&format!("{name}, wgpu, packed pairs"), &scores, &wanted);
        eprintln!("{name}, wgpu, packed pairs: largest difference from transformers {worst:.2e}");
    }
}

/// The families' parts on burn's CubeCL kernels: Qwen3's per-head q/k norm, Gemma 2's scaled
/// embeddings, GeGLU, `query_pre_attn_scalar` (a scale other than 1/√d) and attention
/// soft-capping (burn's attention given `scale` and `softcap`: autotune does not pick the flash
/// kernel for them), alternating windows, Mistral's window; a row per response and packed pairs.
#[test]
#[ignore = "needs a Vulkan device (mesa-vulkan-drivers): bash .ci/run installs it"]
fn wgpu_scores_the_families_like_transformers() {
    for name in FAMILIES {
        let (checkpoint, golden) = open_family(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = on_gpu(&checkpoint);
        for packing in [Packing::Separate, Packing::SharedPrefix] {
            let scores = score(model.as_ref(), &pairs, packing);
            let what = format!("{name}, wgpu, {packing:?}");
            let worst = assert_equal_to_goldens(&what, &scores, &wanted);
            eprintln!("{what}: largest difference from transformers {worst:.2e}");
        }
    }
}

/// Keys further back than this many positions are hidden: shorter than most fixture pairs.
const WINDOW: usize = 24;

/// Every response's sum within 1e-4 of `want`'s and its token count equal; returns the
/// largest difference.
fn assert_close(what: &str, got: &[PairScores], want: &[PairScores]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (side, g, w) in [
            ("chosen", g.chosen, w.chosen),
            ("rejected", g.rejected, w.rejected),
        ] {
            assert_eq!(g.tokens, w.tokens, "{what} pair {i} {side}");
            worst = worst.max((g.sum - w.sum).abs());
            assert!(
                (g.sum - w.sum).abs() < 1e-4,
                "{what} pair {i} {side}: {} vs {}",
                g.sum,
                w.sum
            );
        }
    }
    worst
}

/// A sliding window (as Mistral's) on the grouped-query fixtures: wgpu's masked flash
/// attention, on rows of one response and on packed pairs, equals the CPU's host kernels
/// and burn's kernels on the CPU. transformers has no goldens for a window on these
/// checkpoints; the window's effect is checked to be real (the sums move away from the
/// windowless goldens).
#[test]
#[ignore = "needs a Vulkan device (mesa-vulkan-drivers): bash .ci/run installs it"]
fn wgpu_sliding_window_masks_like_the_cpu() {
    for name in ["llama-gqa", "qwen2-tied"] {
        let (mut checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        checkpoint.config.design.windows = vec![Some(WINDOW); checkpoint.config.num_layers];
        let cpu_model = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
        let cpu = score(cpu_model.as_ref(), &pairs, Packing::SharedPrefix);
        let burn_cpu = load_cpu_model(&checkpoint, Kernels::Burn).unwrap();
        let burn_cpu = score(burn_cpu.as_ref(), &pairs, Packing::Separate);
        assert_close(
            &format!("{name}, burn's kernels on the CPU"),
            &burn_cpu,
            &cpu,
        );

        let moved = cpu
            .iter()
            .zip(&wanted)
            .filter(|(s, w)| (s.chosen.sum - w["chosen"].as_f64().unwrap()).abs() > 1e-2)
            .count();
        assert!(
            moved >= pairs.len() / 4,
            "{name}: a window of {WINDOW} changes only {moved} of {} sums",
            pairs.len()
        );

        let gpu = on_gpu(&checkpoint);
        for packing in [Packing::Separate, Packing::SharedPrefix] {
            let scores = score(gpu.as_ref(), &pairs, packing);
            let what = format!("{name}, wgpu, window {WINDOW}, {packing:?}");
            let worst = assert_close(&what, &scores, &cpu);
            eprintln!("{what}: largest difference from the CPU {worst:.2e}");
        }
    }
}

/// burn's wgpu backend without fusion: its tensors are the kernels' own.
type Raw = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// `[rows, heads, len, dim]` values in [-2, 2), the same on every run.
fn values(seed: u64, shape: [usize; 4]) -> Vec<f32> {
    let mut state = seed;
    (0..shape.iter().product::<usize>())
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// `softmax(q·kᵀ / √d) · v` over the keys that are not hidden, in f64.
fn reference_attention(
    [q, k, v]: [&[f32]; 3],
    hidden: &[bool],
    [rows, heads, len, d]: [usize; 4],
) -> Vec<f64> {
    let mut out = vec![0f64; rows * heads * len * d];
    let at = |r: usize, h: usize, t: usize| ((r * heads + h) * len + t) * d;
    for r in 0..rows {
        for h in 0..heads {
            for i in 0..len {
                let visible: Vec<usize> = (0..len)
                    .filter(|&j| !hidden[(r * len + i) * len + j])
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|x| q[at(r, h, i) + x] as f64 * k[at(r, h, j) + x] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (&j, w) in visible.iter().zip(&weights) {
                    for x in 0..d {
                        out[at(r, h, i) + x] += w / total * v[at(r, h, j) + x] as f64;
                    }
                }
            }
        }
    }
    out
}

/// burn's attention kernels one by one, called as apscore calls them (the packed rows'
/// mask repeated over the heads in full, or no mask and the causal flag), against attention
/// computed here in f64: the fallback (matmuls and a masked softmax) that burn's autotune
/// picks on wgpu, and the flash kernel, which autotune passes over there. Rows of pairs with
/// up to 72 tokens: more than one 64-key tile.
#[test]
#[ignore = "needs a Vulkan device (mesa-vulkan-drivers): bash .ci/run installs it"]
fn burn_attention_kernels_read_packed_rows_masks() {
    let device = wgpu_device::select(0).unwrap().device;
    let (checkpoint, golden) = open("llama-gqa");
    let (pairs, _) = golden_pairs(&checkpoint, &golden);
    let rows: Vec<PackedRow> = pairs[..3].iter().map(PackedRow::pair).collect();
    let batch = PackedBatch::new(&rows.iter().collect::<Vec<_>>());
    let (heads, d) = (4, 16);
    let shape = [batch.rows, heads, batch.len, d];
    let [q, k, v] = [1, 2, 3].map(|seed| values(seed, shape));
    let tensor = |x: &[f32]| {
        Tensor::<Raw, 4>::from_data(TensorData::new(x.to_vec(), shape), &device)
            .into_primitive()
            .tensor()
    };
    let causal: Vec<bool> = (0..batch.rows * batch.len * batch.len)
        .map(|e| e % batch.len > (e / batch.len) % batch.len)
        .collect();
    let packed = batch.hidden_keys(usize::MAX);
    assert_ne!(packed, causal, "the rows hold pairs with two branches");
    for kernel in ["fallback", "flash"] {
        for (what, hidden) in [("packed rows' mask", &packed), ("causal", &causal)] {
            let mask = (what != "causal").then(|| {
                burn_attention_mask::<Raw>(hidden.clone(), &batch, heads, &device).into_primitive()
            });
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: mask.is_none(),
            };
            let out = attention::<WgpuRuntime>(
                tensor(&q),
                tensor(&k),
                tensor(&v),
                mask,
                None,
                options,
                match kernel {
                    "fallback" => AttentionStrategy::Fallback,
                    _ => AttentionStrategy::FlashUnit,
                },
            )
            .unwrap_or_else(|e| panic!("{kernel}, {what}: {e:?}"));
            let got = Tensor::<Raw, 4>::from_primitive(TensorPrimitive::Float(out))
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let want = reference_attention([&q, &k, &v], hidden, shape);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0f64, f64::max);
            eprintln!("burn's {kernel} attention, {what}: largest difference {worst:.2e}");
            // The flash kernel is less exact on lavapipe (about 1e-3 on values of ±2, with or
            // without a mask); a misread mask is off by whole units.
            let tolerance = if kernel == "flash" { 3e-3 } else { 1e-5 };
            assert!(
                worst < tolerance,
                "burn's {kernel} attention, {what}: {worst:.2e}"
            );
        }
    }
}

/// No such adapter: an error that names the device and lists what there is (or says there
/// is none), on any machine, with or without a Vulkan driver.
#[test]
fn a_missing_wgpu_adapter_is_an_error_naming_the_device() {
    let (checkpoint, _) = open("qwen2-tied");
    let err = load_model(&checkpoint, DeviceSpec::Wgpu(99), ComputeDtype::F32)
        .err()
        .expect("no machine has 100 wgpu adapters")
        .to_string();
    assert!(err.starts_with("--device wgpu:99: "), "{err}");
    assert!(
        err.contains("device found") || err.contains("there are only"),
        "{err}"
    );
}
