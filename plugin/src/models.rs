//! The checkpoints the model picker offers, and whether each is already in the
//! Hugging Face cache.

use std::path::PathBuf;

/// A hub checkpoint the picker offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubModel {
    pub id: &'static str,
    /// The short name the picker shows.
    pub name: &'static str,
    /// Download size, GB.
    pub download_gb: f64,
}

/// The hub models the picker offers.
pub const HUB_MODELS: &[HubModel] = &[
    HubModel {
        id: "facebook/musicgen-small",
        name: "small",
        download_gb: 2.4,
    },
    HubModel {
        id: "facebook/musicgen-medium",
        name: "medium",
        download_gb: 8.0,
    },
    HubModel {
        id: "facebook/musicgen-large",
        name: "large",
        download_gb: 14.0,
    },
];

pub fn hub_model(id: &str) -> Option<&'static HubModel> {
    HUB_MODELS.iter().find(|m| m.id == id)
}

/// The hub cache folder, as hf-hub and Python tools find it.
fn hub_cache() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| dirs::cache_dir().map(|c| c.join("huggingface").join("hub")))
}

/// Whether a hub model is in the Hugging Face cache, and its size on disk.
pub fn hub_model_on_disk(id: &str) -> Option<u64> {
    let dir = hub_cache()?.join(format!("models--{}", id.replace('/', "--")));
    let blobs = std::fs::read_dir(dir.join("blobs")).ok()?;
    let size: u64 = blobs
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    (size > 0).then_some(size)
}
