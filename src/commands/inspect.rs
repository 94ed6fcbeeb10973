//! `apscore inspect-model PATH`: what a checkpoint holds, as apscore reads it — useful when a
//! checkpoint does not load.

use std::collections::BTreeMap;

use anyhow::Context;
use apscore_core::job_definition::ChatTemplateOverride;
use apscore_worker::job_model::default_batch_tokens;
use apscore_worker::model::gguf::GgufFile;
use apscore_worker::model::sizing::memory_needs;
use apscore_worker::model::{
    Checkpoint, CheckpointFormat, ComputeDtype, DeviceSpec, Head, load_model,
};
use apscore_worker::tokenization::TokenizationParams;
use clap::Args;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Hugging Face model directory or a GGUF file; local or in object storage.
    pub path: String,

    /// Also load every weight on the CPU, to check that each tensor fits the model.
    #[arg(long)]
    pub load: bool,

    /// Local folder for models downloaded from object storage.
    #[arg(long, env = "APSCORE_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,

    /// A Jinja chat template in place of the checkpoint's, as `run --chat-template` would use.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<String>,

    /// Padded tokens per forward batch for the memory figures (default: each device's, 512 on
    /// the CPU and 32768 on CUDA).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: Option<u64>,

    /// Longest sequence, for the memory figures (attention blocks where they are kept whole).
    #[arg(long, default_value_t = 2048)]
    pub max_length: u64,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let cache = crate::args::placement::cache_dir(args.model_cache.as_deref());
    let mut checkpoint = Checkpoint::open(&args.path, &cache)
        .await
        .with_context(|| format!("cannot open {}", args.path))?;
    let template_in_force = match args.chat_template.as_deref() {
        Some(path) => {
            let template = ChatTemplateOverride::read(path)?;
            checkpoint.chat_template = template.text.clone();
            format!("--chat-template {}", template.identity())
        }
        None => "the checkpoint's".to_string(),
    };
    let c = &checkpoint.config;
    let row = |k: &str, v: String| println!("{k:<22} {v}");
    row("checkpoint", checkpoint.source.clone());
    match &checkpoint.format {
        CheckpointFormat::Safetensors { weight_files, .. } => {
            row(
                "format",
                format!("safetensors, {} file(s)", weight_files.len()),
            );
            row(
                "stored dtype",
                c.stored_dtype
                    .clone()
                    .unwrap_or_else(|| "(not stated)".into()),
            );
        }
        CheckpointFormat::Gguf { file } => {
            let gguf = GgufFile::read(file)?;
            row(
                "format",
                format!(
                    "GGUF v{}, architecture `{}`",
                    gguf.version,
                    gguf.architecture()
                ),
            );
            let types: BTreeMap<String, usize> = gguf.tensor_types();
            let text: Vec<String> = types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
            row("tensor types", text.join(", "));
        }
    }
    row("architecture", c.architecture.clone());
    row(
        "head",
        match c.head {
            Head::LanguageModel => "language model (log-probs: --model, --reference-model)".into(),
            Head::Score { pad_token_id } => format!(
                "reward score, read at the last token that is not the pad token ({}): \
                 --reward-model",
                pad_token_id.map_or_else(|| "none".into(), |id| id.to_string())
            ),
            Head::Gated { gating: g, .. } => format!(
                "ArmoRM: {} objectives mixed by a gating network ({} × {} hidden, temperature \
                 {}): --reward-model",
                g.objectives, g.n_hidden, g.hidden_dim, g.temperature
            ),
        },
    );
    row(
        "parameters",
        format!("{:.1} M", c.parameter_count() as f64 / 1e6),
    );
    row("layers", c.num_layers.to_string());
    row("hidden size", c.hidden_size.to_string());
    row("intermediate size", c.intermediate_size.to_string());
    row(
        "attention heads",
        format!(
            "{} (key/value heads {}, head dim {})",
            c.num_heads, c.num_kv_heads, c.head_dim
        ),
    );
    row("vocabulary", c.vocab_size.to_string());
    row(
        "rope",
        format!("theta {}, scaling {:?}", c.rope_theta, c.rope_scaling),
    );
    row("rms norm eps", c.rms_norm_eps.to_string());
    row("tied embeddings", c.tie_word_embeddings.to_string());
    let d = &c.design;
    let a = &d.attention;
    row(
        "biases",
        format!("q/k/v {}, o {}, mlp {}", a.qkv_bias, a.o_bias, d.mlp_bias),
    );
    row(
        "design",
        format!(
            "norm {:?}, activation {:?}, embeddings scaled {}, post-norms {}, q/k norm {}, attention scale {:.6}",
            d.norm,
            d.activation,
            d.embedding_scale,
            d.norms.post_attention.is_some(),
            a.qk_norm,
            a.scale
        ),
    );
    if a.softcap.is_some() || d.final_softcap.is_some() {
        let show = |c: Option<f64>| c.map_or_else(|| "none".into(), |c| c.to_string());
        row(
            "soft-capping",
            format!(
                "attention {}, final {}",
                show(a.softcap),
                show(d.final_softcap)
            ),
        );
    }
    let sliding: Vec<String> = d
        .windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.map(|w| format!("{i}:{w}")))
        .collect();
    if !sliding.is_empty() {
        row("sliding window (layer:window)", sliding.join(" "));
    }
    let s = &checkpoint.special_tokens;
    let show = |t: &Option<String>| t.clone().unwrap_or_else(|| "(none)".into());
    row("bos / eos", format!("{} / {}", show(&s.bos), show(&s.eos)));
    match checkpoint.pair_tokenizer(TokenizationParams::default()) {
        Ok(tokenizer) => {
            let ids = tokenizer.encode("Hello, world!").unwrap_or_default();
            row("tokenizer", format!("loads; \"Hello, world!\" → {ids:?}"));
        }
        Err(e) => row("tokenizer", format!("does not load: {e}")),
    }
    for (device, dtype) in [
        (DeviceSpec::Cpu, ComputeDtype::F32),
        (DeviceSpec::Cuda(0), ComputeDtype::Bf16),
    ] {
        let batch = args
            .batch_tokens
            .unwrap_or_else(|| default_batch_tokens(device));
        let needs = memory_needs(c, device, dtype, batch, args.max_length);
        row(
            &format!(
                "memory {} {}",
                if device == DeviceSpec::Cpu {
                    "cpu"
                } else {
                    "cuda"
                },
                dtype.name()
            ),
            format!("{} (--batch-tokens {batch})", needs.arithmetic()),
        );
    }
    let first_line = checkpoint.chat_template.lines().next().unwrap_or("");
    row("chat template in force", template_in_force);
    row(
        "chat template",
        format!(
            "{} characters; mentions system: {}; starts: {}",
            checkpoint.chat_template.len(),
            checkpoint.chat_template.contains("system")
                || checkpoint.chat_template.contains("<|im_start|>"),
            first_line.chars().take(60).collect::<String>()
        ),
    );
    if args.load {
        match load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32) {
            Ok(_) => row("weights", "every tensor loads and fills the model".into()),
            Err(e) => row("weights", format!("do not load: {e}")),
        }
    } else {
        row(
            "weights",
            "not loaded (add --load to check every tensor)".into(),
        );
    }
    Ok(())
}
