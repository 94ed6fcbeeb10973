//! A checkpoint: a Hugging Face model directory or a llama.cpp GGUF file, what it holds and
//! where its files are.
//!
//! `config.json`; `model.safetensors`, or shards listed in `model.safetensors.index.json`;
//! `tokenizer.json`; `tokenizer_config.json` (special tokens, and the chat template in older
//! checkpoints) or `chat_template.jinja` (where transformers 5 saves it);
//! `special_tokens_map.json` when the special tokens are only there. A `*.gguf` file holds
//! all of it (see [`super::gguf`]). A checkpoint in object storage is downloaded once into a
//! local cache directory and read from there.

use std::path::{Path, PathBuf};

use apscore_core::storage::{Location, StorageError};
use serde_json::Value;

use super::config::{ConfigError, ModelConfig};
use super::gguf::{GgufError, GgufFile};
use crate::reward_tokenization::RewardTokenizer;
use crate::tokenization::{PairTokenizer, SpecialTokens, TokenizationParams};

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{dir}: no {what}")]
    Missing { dir: String, what: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// How the checkpoint stores its weights and tokenizer.
#[derive(Debug, Clone)]
pub enum CheckpointFormat {
    /// A Hugging Face directory: safetensors weights and `tokenizer.json`.
    Safetensors {
        weight_files: Vec<PathBuf>,
        tokenizer_file: PathBuf,
    },
    /// One llama.cpp GGUF file with weights, tokenizer and chat template.
    Gguf { file: PathBuf },
}

/// The files of a checkpoint on local disk, with its config and tokenizer settings parsed.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where the user said the model is (a path or URL), for messages and the summary.
    pub source: String,
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub format: CheckpointFormat,
    pub chat_template: String,
    pub special_tokens: SpecialTokens,
}

impl Checkpoint {
    /// Opens a checkpoint directory or GGUF file, local or in object storage (downloaded
    /// into `cache`).
    pub async fn open(source: &str, cache: &Path) -> Result<Self, CheckpointError> {
        let location = Location::parse(source)?;
        let gguf = source.ends_with(".gguf");
        let path = if location.is_local() {
            PathBuf::from(source.strip_prefix("file://").unwrap_or(source))
        } else if gguf {
            download_file(&location, cache).await?
        } else {
            download(&location, cache).await?
        };
        let mut checkpoint = if gguf {
            Self::open_gguf(&path)?
        } else {
            Self::open_dir(&path)?
        };
        checkpoint.source = source.to_string();
        Ok(checkpoint)
    }

    /// Opens a local checkpoint directory.
    pub fn open_dir(dir: &Path) -> Result<Self, CheckpointError> {
        let shown = dir.display().to_string();
        let missing = |what: &str| CheckpointError::Missing {
            dir: shown.clone(),
            what: what.to_string(),
        };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(missing(
                "config.json (is this a Hugging Face model directory?)",
            ));
        }
        let config = ModelConfig::parse(&read(&config_path)?, &config_path.display().to_string())?;

        let weight_files = weight_files(dir)?;
        let tokenizer_file = dir.join("tokenizer.json");
        if !tokenizer_file.is_file() {
            return Err(missing("tokenizer.json"));
        }
        let tokenizer_config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
        let special_map = read_json_if_exists(&dir.join("special_tokens_map.json"))?;
        let token = |name: &str| -> Option<String> {
            [&tokenizer_config, &special_map]
                .into_iter()
                .flatten()
                .find_map(|json| token_text(json.get(name)?))
        };
        let special_tokens = SpecialTokens {
            bos: token("bos_token"),
            eos: token("eos_token"),
            pad: token("pad_token"),
            unk: token("unk_token"),
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            read(&jinja)?
        } else {
            tokenizer_config
                .as_ref()
                .and_then(|c| template_text(c.get("chat_template")?))
                .ok_or_else(|| {
                    missing("chat template (chat_template.jinja, or chat_template in tokenizer_config.json)")
                })?
        };
        Ok(Checkpoint {
            source: shown,
            dir: dir.to_path_buf(),
            config,
            format: CheckpointFormat::Safetensors {
                weight_files,
                tokenizer_file,
            },
            chat_template,
            special_tokens,
        })
    }

    /// Opens a local GGUF file.
    pub fn open_gguf(file: &Path) -> Result<Self, CheckpointError> {
        let gguf = GgufFile::read(file)?;
        let config = gguf.config()?;
        let chat_template = gguf
            .chat_template()
            .ok_or_else(|| CheckpointError::Missing {
                dir: gguf.path.clone(),
                what: "chat template (tokenizer.chat_template)".into(),
            })?
            .to_string();
        Ok(Checkpoint {
            source: gguf.path.clone(),
            dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            config,
            format: CheckpointFormat::Gguf {
                file: file.to_path_buf(),
            },
            chat_template,
            special_tokens: gguf.special_tokens(),
        })
    }

    /// The files whose content decides the scores.
    fn content_files(&self) -> Vec<PathBuf> {
        match &self.format {
            CheckpointFormat::Safetensors {
                weight_files,
                tokenizer_file,
            } => {
                let mut files = vec![self.dir.join("config.json"), tokenizer_file.clone()];
                files.extend(weight_files.iter().cloned());
                files
            }
            CheckpointFormat::Gguf { file } => vec![file.clone()],
        }
    }
}

impl Checkpoint {
    /// `sha256:<hex>` over the files that decide the scores (config, tokenizer, chat
    /// template, weights), each preceded by its name: the model identity in the summary.
    pub fn content_hash(&self) -> Result<String, CheckpointError> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let mut hasher = Sha256::new();
        let files = self.content_files();
        hasher.update(self.chat_template.as_bytes());
        let mut buffer = vec![0u8; 1 << 20];
        for path in files {
            let io = |source| CheckpointError::Io {
                path: path.display().to_string(),
                source,
            };
            hasher.update(path.file_name().unwrap_or_default().as_encoded_bytes());
            let mut file = std::fs::File::open(&path).map_err(io)?;
            loop {
                let n = file.read(&mut buffer).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
        }
        let digest = hasher.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    }

    /// The checkpoint's tokenizer and chat template, set up for `params`.
    pub fn pair_tokenizer(
        &self,
        params: TokenizationParams,
    ) -> Result<PairTokenizer, CheckpointError> {
        let (path, tokenizer) = self.tokenizer()?;
        PairTokenizer::new(tokenizer, &self.chat_template, &self.special_tokens, params)
            .map_err(|e| invalid(path, e))
    }

    /// A reward model's tokenizer and chat template, taking conversations of up to
    /// `max_length` tokens.
    pub fn reward_tokenizer(&self, max_length: usize) -> Result<RewardTokenizer, CheckpointError> {
        let (path, tokenizer) = self.tokenizer()?;
        RewardTokenizer::new(
            tokenizer,
            &self.chat_template,
            &self.special_tokens,
            max_length,
            self.config.head,
        )
        .map_err(|e| invalid(path, e))
    }

    /// The tokenizer, and the file it comes from.
    fn tokenizer(&self) -> Result<(String, tokenizers::Tokenizer), CheckpointError> {
        Ok(match &self.format {
            CheckpointFormat::Safetensors { tokenizer_file, .. } => {
                let path = tokenizer_file.display().to_string();
                let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_file)
                    .map_err(|e| invalid(path.clone(), e))?;
                (path, tokenizer)
            }
            CheckpointFormat::Gguf { file } => {
                let gguf = GgufFile::read(file)?;
                (gguf.path.clone(), gguf.tokenizer()?)
            }
        })
    }
}

fn invalid(path: String, error: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid {
        path,
        message: error.to_string(),
    }
}

fn read(path: &Path) -> Result<String, CheckpointError> {
    std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>, CheckpointError> {
    if !path.is_file() {
        return Ok(None);
    }
    serde_json::from_str(&read(path)?)
        .map(Some)
        .map_err(|e| CheckpointError::Invalid {
            path: path.display().to_string(),
            message: format!("not JSON: {e}"),
        })
}

/// A special token is a string, or an `AddedToken` object with `content`.
fn token_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A chat template is a string, or a list of named templates of which `default` is used.
fn template_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// `model.safetensors`, or the shards the index names, in order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let Some(index) = read_json_if_exists(&index_path)? else {
        return Err(CheckpointError::Missing {
            dir: dir.display().to_string(),
            what: "weights (model.safetensors or model.safetensors.index.json)".into(),
        });
    };
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| CheckpointError::Invalid {
            path: index_path.display().to_string(),
            message: "no weight_map".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(absent) = paths.iter().find(|p| !p.is_file()) {
        return Err(CheckpointError::Missing {
            dir: dir.display().to_string(),
            what: format!(
                "{} (named in model.safetensors.index.json)",
                absent.file_name().unwrap_or_default().to_string_lossy()
            ),
        });
    }
    Ok(paths)
}

/// The cache entry of a location: its URL with every unusual character replaced.
fn cache_name(location: &Location) -> String {
    location
        .display()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn io_error(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Copies the object `relative` under `location` to `target`, unless `target` already has
/// `size` bytes; written beside it first and renamed, so a cached file is always whole.
async fn fetch_object(
    location: &Location,
    relative: &str,
    size: u64,
    target: &Path,
) -> Result<(), CheckpointError> {
    if std::fs::metadata(target).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    tracing::info!(from = %location.display_of(&location.path_of(relative)), bytes = size, "downloading the model");
    let bytes = location.get_if_exists(relative).await?.unwrap_or_default();
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, &bytes).map_err(|e| io_error(&partial, e))?;
    std::fs::rename(&partial, target).map_err(|e| io_error(target, e))
}

/// Downloads one file (a GGUF checkpoint) into the cache; returns its local path.
async fn download_file(location: &Location, cache: &Path) -> Result<PathBuf, CheckpointError> {
    let dir = cache.join("models");
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let target = dir.join(cache_name(location));
    let size = location.input_file("").await?.size;
    fetch_object(location, "", size, &target).await?;
    Ok(target)
}

/// Downloads the checkpoint files under `location` into a cache folder named after the URL;
/// files already there with the same size are kept.
async fn download(location: &Location, cache: &Path) -> Result<PathBuf, CheckpointError> {
    let dir = cache.join("models").join(cache_name(location));
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let objects = location.list_all().await?;
    if objects.is_empty() {
        return Err(CheckpointError::Missing {
            dir: location.display().to_string(),
            what: "files".into(),
        });
    }
    for object in objects {
        let relative = object
            .location
            .as_ref()
            .strip_prefix(location.prefix().as_ref())
            .unwrap_or(object.location.as_ref())
            .trim_start_matches('/')
            .to_string();
        if relative.is_empty() || relative.contains('/') {
            continue;
        }
        fetch_object(location, &relative, object.size, &dir.join(&relative)).await?;
    }
    Ok(dir)
}
