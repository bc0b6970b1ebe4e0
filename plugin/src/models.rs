//! The checkpoints the model picker offers, and whether each is already in the
//! Hugging Face cache.

use std::path::PathBuf;

/// What a checkpoint can do beyond text to mono music.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Makes stereo takes.
    pub stereo: bool,
    /// Follows a melody (audio or MIDI notes).
    pub melody: bool,
}

impl Capabilities {
    /// A few words for the picker: "stereo, melody".
    pub fn describe(self) -> String {
        let mut parts = vec![if self.stereo { "stereo" } else { "mono" }];
        if self.melody {
            parts.push("follows a melody");
        }
        parts.join(", ")
    }
}

/// A hub checkpoint the picker offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HubModel {
    pub id: &'static str,
    /// The short name the picker shows.
    pub name: &'static str,
    /// Download size, GB (approximate).
    pub download_gb: f64,
    pub can: Capabilities,
}

const MONO: Capabilities = Capabilities {
    stereo: false,
    melody: false,
};
const STEREO: Capabilities = Capabilities {
    stereo: true,
    melody: false,
};
const MELODY: Capabilities = Capabilities {
    stereo: false,
    melody: true,
};
const STEREO_MELODY: Capabilities = Capabilities {
    stereo: true,
    melody: true,
};

/// The hub models the picker offers: the published MusicGen family.
pub const HUB_MODELS: &[HubModel] = &[
    HubModel {
        id: "facebook/musicgen-small",
        name: "small",
        download_gb: 2.4,
        can: MONO,
    },
    HubModel {
        id: "facebook/musicgen-medium",
        name: "medium",
        download_gb: 8.0,
        can: MONO,
    },
    HubModel {
        id: "facebook/musicgen-large",
        name: "large",
        download_gb: 14.0,
        can: MONO,
    },
    HubModel {
        id: "facebook/musicgen-stereo-small",
        name: "stereo small",
        download_gb: 2.4,
        can: STEREO,
    },
    HubModel {
        id: "facebook/musicgen-stereo-medium",
        name: "stereo medium",
        download_gb: 8.0,
        can: STEREO,
    },
    HubModel {
        id: "facebook/musicgen-stereo-large",
        name: "stereo large",
        download_gb: 14.0,
        can: STEREO,
    },
    HubModel {
        id: "facebook/musicgen-melody",
        name: "melody",
        download_gb: 6.2,
        can: MELODY,
    },
    HubModel {
        id: "facebook/musicgen-melody-large",
        name: "melody large",
        download_gb: 14.0,
        can: MELODY,
    },
    HubModel {
        id: "facebook/musicgen-stereo-melody",
        name: "stereo melody",
        download_gb: 6.2,
        can: STEREO_MELODY,
    },
    HubModel {
        id: "facebook/musicgen-stereo-melody-large",
        name: "stereo melody large",
        download_gb: 14.0,
        can: STEREO_MELODY,
    },
];

pub fn hub_model(id: &str) -> Option<&'static HubModel> {
    HUB_MODELS.iter().find(|m| m.id == id)
}

/// What a model can do: from the list for the published hub models, from its
/// `config.json` for a local folder (a few hundred bytes read; `None` when it
/// cannot be read) and other hub ids once they are in the cache.
pub fn capabilities(source: &musicgen::ModelSource) -> Option<Capabilities> {
    let config = match source {
        musicgen::ModelSource::Hub { id, .. } => {
            if let Some(m) = hub_model(id) {
                return Some(m.can);
            }
            let dir = hub_cache()?.join(format!("models--{}", id.replace('/', "--")));
            let snapshot = std::fs::read_dir(dir.join("snapshots"))
                .ok()?
                .next()?
                .ok()?;
            snapshot.path().join("config.json")
        }
        musicgen::ModelSource::Local { path } => path.join("config.json"),
    };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
    Some(Capabilities {
        stereo: json["decoder"]["audio_channels"].as_u64() == Some(2),
        melody: json["model_type"].as_str() == Some("musicgen_melody"),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_come_from_the_list_or_the_config() {
        let hub = |id: &str| musicgen::ModelSource::Hub {
            id: id.into(),
            revision: "main".into(),
        };
        assert_eq!(capabilities(&hub("facebook/musicgen-small")), Some(MONO));
        assert_eq!(
            capabilities(&hub("facebook/musicgen-stereo-melody")),
            Some(STEREO_MELODY)
        );
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        let local = |name: &str| musicgen::ModelSource::Local {
            path: fixtures.join(name),
        };
        assert_eq!(capabilities(&local("tiny-a")), Some(MONO));
        assert_eq!(capabilities(&local("tiny-stereo")), Some(STEREO));
        assert_eq!(capabilities(&local("tiny-melody")), Some(MELODY));
        assert_eq!(capabilities(&local("no-such-model")), None);
        assert_eq!(STEREO_MELODY.describe(), "stereo, follows a melody");
    }
}
