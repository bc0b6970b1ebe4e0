//! Meta's MusicGen ("Simple and Controllable Music Generation", Copet et al. 2023)
//! in candle, faithful to Hugging Face transformers' `modeling_musicgen.py`.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use musicgen::{compute_pool, GenerationRequest, HubOptions, MusicGen};
//!
//! let request = GenerationRequest {
//!     prompt: "dusty boom-bap drums, 90 bpm".into(),
//!     frames: 250, // 5 s at 50 frames per second
//!     ..Default::default()
//! };
//! let cancel = AtomicBool::new(false);
//! let mut model = MusicGen::from_source(
//!     &request.model,
//!     &HubOptions::default(),
//!     request.device,
//!     request.precision,
//!     compute_pool(2)?,
//!     &mut |p| eprintln!("{p:?}"),
//!     &cancel,
//! )?;
//! let take = model.generate(&request, &mut |_| {}, &cancel)?;
//! assert_eq!(take.audio.len(), 250 * 640);
//! # Ok::<(), musicgen::Error>(())
//! ```

#[cfg(feature = "bench")]
pub mod bench;
pub mod chroma;
pub mod config;
pub mod decoder;
pub mod encodec;
pub mod error;
mod gemv;
pub mod hub;
#[cfg(feature = "bench")]
pub mod metrics;
pub mod model;
pub mod qgemv;
pub mod request;
pub mod sampling;
pub mod wav;

pub use error::{Error, Result};
pub use hub::{DownloadProgress, HubOptions, ModelFiles};
pub use model::{
    compute_pool, select_device, CodeSource, Conditioning, Generation, MusicGen, Progress, Timings,
};
pub use request::{
    frames_for_duration, DeviceChoice, GenerationRequest, Melody, ModelSource, Precision,
    MAX_FRAMES, MAX_PROMPT_TOKENS,
};
pub use sampling::{LogitsProcessor, Sampling};

/// The engine's version, stored with every take.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");
