//! Finding a checkpoint's files: a local folder, or a Hugging Face hub repository
//! downloaded through hf-hub into the standard cache (shared with Python tools).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
use crate::request::ModelSource;

pub const CONFIG: &str = "config.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
pub const TOKENIZER: &str = "tokenizer.json";
/// Melody checkpoints: the chroma feature extractor's settings.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// The files of one checkpoint on local disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub generation_config: Option<PathBuf>,
    pub tokenizer: PathBuf,
    /// `preprocessor_config.json`, where the checkpoint has one (melody).
    pub preprocessor_config: Option<PathBuf>,
    /// One file, or the shards named by `model.safetensors.index.json`.
    pub weights: Vec<PathBuf>,
}

/// Download progress of one file, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadProgress {
    pub file: String,
    pub done: u64,
    pub total: u64,
}

/// Where and how the hub is reached. `Default` follows the environment as the
/// Python tools do: `HF_ENDPOINT`, `HF_HOME` (or `HF_HUB_CACHE`), `HF_HUB_OFFLINE`.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub endpoint: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub offline: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        let truthy =
            |v: String| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on");
        Self {
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()),
            cache_dir: std::env::var("HF_HUB_CACHE")
                .ok()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            offline: std::env::var("HF_HUB_OFFLINE").map(truthy).unwrap_or(false),
        }
    }
}

impl HubOptions {
    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }
}

fn weight_shards(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::BadFile {
        path: index_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| Error::BadFile {
        path: index_path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(bad("the weight map names no files".into()));
    }
    if let Some(f) = files
        .iter()
        .find(|f| f.contains("..") || Path::new(f).is_absolute())
    {
        return Err(bad(format!("shard name \"{f}\" leaves the model folder")));
    }
    Ok(files)
}

/// The files of a local checkpoint folder.
pub fn local_files(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir.to_path_buf(),
        });
    }
    let need = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::MissingFile { path: p })
        }
    };
    let config = need(CONFIG)?;
    let tokenizer = need(TOKENIZER)?;
    let generation_config = Some(dir.join(GENERATION_CONFIG)).filter(|p| p.is_file());
    let preprocessor_config = Some(dir.join(PREPROCESSOR_CONFIG)).filter(|p| p.is_file());
    let weights = if dir.join(WEIGHTS).is_file() {
        vec![dir.join(WEIGHTS)]
    } else if dir.join(WEIGHTS_INDEX).is_file() {
        weight_shards(&dir.join(WEIGHTS_INDEX))?
            .iter()
            .map(|f| need(f))
            .collect::<Result<Vec<_>>>()?
    } else {
        return Err(Error::MissingFile {
            path: dir.join(WEIGHTS),
        });
    };
    Ok(ModelFiles {
        config,
        generation_config,
        tokenizer,
        preprocessor_config,
        weights,
    })
}

/// The checkpoint's files from the local cache alone, if all are there.
fn cached_files(cache: &Cache, repo: &Repo) -> Option<ModelFiles> {
    let c = cache.repo(repo.clone());
    let config = c.get(CONFIG)?;
    let tokenizer = c.get(TOKENIZER)?;
    let weights = match c.get(WEIGHTS) {
        Some(w) => vec![w],
        None => {
            let index = c.get(WEIGHTS_INDEX)?;
            weight_shards(&index)
                .ok()?
                .iter()
                .map(|f| c.get(f))
                .collect::<Option<Vec<_>>>()?
        }
    };
    Some(ModelFiles {
        config,
        generation_config: c.get(GENERATION_CONFIG),
        tokenizer,
        preprocessor_config: c.get(PREPROCESSOR_CONFIG),
        weights,
    })
}

struct ProgressAdapter<'a> {
    file: String,
    done: u64,
    total: u64,
    report: &'a mut dyn FnMut(DownloadProgress),
}

impl hf_hub::api::Progress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size as u64;
        self.done = 0;
        (self.report)(DownloadProgress {
            file: self.file.clone(),
            done: 0,
            total: self.total,
        });
    }

    fn update(&mut self, size: usize) {
        self.done += size as u64;
        (self.report)(DownloadProgress {
            file: self.file.clone(),
            done: self.done,
            total: self.total,
        });
    }

    fn finish(&mut self) {}
}

/// The checkpoint's files on local disk: a local folder as it is; a hub model from
/// the cache when complete there, else downloaded into it with progress reported.
pub fn resolve(
    source: &ModelSource,
    options: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<ModelFiles> {
    let (id, revision) = match source {
        ModelSource::Local { path } => return local_files(path),
        ModelSource::Hub { id, revision } => (id, revision),
    };
    let repo = Repo::with_revision(id.clone(), RepoType::Model, revision.clone());
    let cache = options.cache();
    if let Some(files) = cached_files(&cache, &repo) {
        return Ok(files);
    }
    let cache_path = cache.path().display().to_string();
    if options.offline {
        return Err(Error::Hub(format!(
            "{id} is not in the Hugging Face cache at {cache_path}, and offline mode (HF_HUB_OFFLINE) forbids downloading it: connect once, or point --model at a local folder"
        )));
    }
    let mut builder = ApiBuilder::from_cache(cache)
        .with_progress(false)
        .with_retries(2);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder
        .build()
        .map_err(|e| Error::Hub(format!("cannot set up the hub client: {e}")))?;
    let api_repo = api.repo(repo);
    let unreachable = |e: hf_hub::api::sync::ApiError| {
        Error::Hub(format!(
            "cannot download {id} ({e}); it is not in the Hugging Face cache at {cache_path} either. Check the connection and the model id, or point --model at a local folder"
        ))
    };
    let info = api_repo.info().map_err(unreachable)?;
    let listed = |name: &str| info.siblings.iter().any(|s| s.rfilename == name);
    let mut fetch = |name: &str| -> Result<PathBuf> {
        let adapter = ProgressAdapter {
            file: name.to_string(),
            done: 0,
            total: 0,
            report: progress,
        };
        api_repo
            .download_with_progress(name, adapter)
            .map_err(unreachable)
    };
    for name in [CONFIG, TOKENIZER] {
        if !listed(name) {
            return Err(Error::Hub(format!(
                "{id} has no {name}: is it a MusicGen checkpoint in the transformers layout?"
            )));
        }
    }
    let config = fetch(CONFIG)?;
    let generation_config = if listed(GENERATION_CONFIG) {
        Some(fetch(GENERATION_CONFIG)?)
    } else {
        None
    };
    let tokenizer = fetch(TOKENIZER)?;
    let preprocessor_config = if listed(PREPROCESSOR_CONFIG) {
        Some(fetch(PREPROCESSOR_CONFIG)?)
    } else {
        None
    };
    let weights = if listed(WEIGHTS) {
        vec![fetch(WEIGHTS)?]
    } else if listed(WEIGHTS_INDEX) {
        let index = fetch(WEIGHTS_INDEX)?;
        weight_shards(&index)?
            .iter()
            .map(|f| fetch(f))
            .collect::<Result<Vec<_>>>()?
    } else {
        return Err(Error::Hub(format!(
            "{id} has no model.safetensors (nor a sharded index): only safetensors checkpoints are supported"
        )));
    };
    Ok(ModelFiles {
        config,
        generation_config,
        tokenizer,
        preprocessor_config,
        weights,
    })
}
