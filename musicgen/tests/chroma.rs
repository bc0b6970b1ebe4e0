//! Melody chroma against transformers' `MusicgenMelodyFeatureExtractor`: the
//! same one-hot frames, exactly.
//!
//! Fairness of the exact comparison: `make_reference.py` records, per signal,
//! the smallest gap between a frame's largest and second-largest inf-normalised
//! chroma value. The port's energies are computed in f64 from an f32 FFT, and
//! differ from torch's f32 ones by far less than those gaps, which the test
//! prints next to the port's own margins.

mod common;

use common::{model_dir, Reference};
use musicgen::chroma::{
    argmax_with_margin, chroma_from_audio, chroma_from_notes, classes, raw_chroma, ChromaConfig,
};
use musicgen::request::Pcm;

fn reference_classes(r: &Reference, key: &str) -> Vec<usize> {
    r.get(key)
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f.iter().sum::<f32>(), 1.0, "{key}: not one-hot");
            f.iter().position(|&v| v == 1.0).unwrap()
        })
        .collect()
}

#[test]
fn chroma_matches_the_feature_extractor() {
    let r = Reference::load("tiny-melody");
    let config =
        ChromaConfig::from_file(&model_dir("tiny-melody").join("preprocessor_config.json"))
            .unwrap();
    assert_eq!(config, ChromaConfig::default());
    for signal in ["sine", "chords", "short"] {
        let audio = r.floats(&format!("chroma.{signal}.audio"));
        let want = reference_classes(&r, &format!("chroma.{signal}.features"));
        let got = classes(&chroma_from_audio(&config, &Pcm::mono(audio.clone(), 32_000)).unwrap());
        let margin = raw_chroma(&config, &audio)
            .iter()
            .map(|f| argmax_with_margin(f).1)
            .fold(f64::MAX, f64::min);
        println!(
            "{signal}: {} frames; reference's closest margin {:.3e}, the port's {margin:.3e}",
            want.len(),
            r.meta["chroma"][signal]["min_margin"].as_f64().unwrap()
        );
        assert_eq!(got, want, "{signal}");
    }
}

#[test]
fn the_reference_melody_and_its_notes_agree_away_from_note_edges() {
    let r = Reference::load("tiny-melody");
    let config = ChromaConfig::default();
    let notes = r.notes();
    let want = reference_classes(&r, "chroma.sine.features");
    let got = classes(&chroma_from_notes(&config, &notes, want.len()).unwrap());
    let reach = (config.n_fft / 2) as f64 / config.sampling_rate as f64;
    let edges: Vec<f64> = notes.iter().flat_map(|n| [n.start_s, n.end_s]).collect();
    let mut differ = 0;
    for (t, (g, w)) in got.iter().zip(&want).enumerate() {
        let time = t as f64 * config.frame_period_s();
        if edges.iter().any(|e| (time - e).abs() < reach) {
            differ += usize::from(g != w);
        } else {
            assert_eq!(g, w, "frame {t} ({time:.2} s), away from every note edge");
        }
    }
    println!(
        "{differ} of {} frames differ, all within n_fft/2 of a note edge",
        want.len()
    );
    assert!(differ <= edges.len(), "{differ} frames differ");
}
