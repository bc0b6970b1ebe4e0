//! Audio in and out: WAV files (16/24/32-bit integer and 32-bit float in, 32-bit
//! float out) and sample-rate conversion with rubato.

use std::path::Path;

use rubato::{FftFixedIn, Resampler};

use crate::error::{Error, Result};
use crate::request::Pcm;

/// Writes mono 32-bit float PCM.
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    write_wav_interleaved(path, samples, 1, sample_rate)
}

/// Writes interleaved 32-bit float PCM of `channels` channels.
pub fn write_wav_interleaved(
    path: &Path,
    samples: &[f32],
    channels: u16,
    sample_rate: u32,
) -> Result<()> {
    if channels == 0 || !samples.len().is_multiple_of(channels as usize) {
        return Err(Error::InvalidRequest(format!(
            "{} samples are not whole frames of {channels} channels",
            samples.len()
        )));
    }
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let io = |e: hound::Error| match e {
        hound::Error::IoError(e) => Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
        other => Error::BadFile {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(io)?;
    for &s in samples {
        w.write_sample(s).map_err(io)?;
    }
    w.finalize().map_err(io)
}

/// Reads a WAV file as planar f32, one vector per channel: 16, 24 or 32-bit
/// integer (scaled to [-1, 1)) or 32-bit float. A file that is not such a WAV is
/// [`Error::BadWav`]; one with no samples, [`Error::EmptyAudio`] (`what` names it).
pub fn read_wav_channels(path: &Path, what: &'static str) -> Result<Pcm> {
    let bad = |reason: String| Error::BadWav {
        path: path.to_path_buf(),
        reason,
    };
    let mut r = match hound::WavReader::open(path) {
        Ok(r) => r,
        Err(hound::Error::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let spec = r.spec();
    let channels = spec.channels as usize;
    if channels == 0 {
        return Err(bad("the header declares 0 channels".into()));
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => r
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?,
        (hound::SampleFormat::Int, bits @ (16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            r.samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?
        }
        (format, bits) => {
            return Err(bad(format!(
            "{bits}-bit {} samples are not supported (16, 24 or 32-bit integer, or 32-bit float)",
            match format {
                hound::SampleFormat::Float => "float",
                hound::SampleFormat::Int => "integer",
            }
        )))
        }
    };
    if interleaved.is_empty() {
        return Err(Error::EmptyAudio { what });
    }
    let frames = interleaved.len() / channels;
    let mut planar = vec![Vec::with_capacity(frames); channels];
    for frame in interleaved.chunks_exact(channels) {
        for (c, &v) in frame.iter().enumerate() {
            planar[c].push(v);
        }
    }
    Ok(Pcm {
        channels: planar,
        sample_rate: spec.sample_rate,
    })
}

/// Maps PCM to `channels` channels: a mono model gets the average of all
/// channels; a stereo model gets mono copied to both sides, or the first two.
pub fn to_channels(pcm: &Pcm, channels: usize) -> Pcm {
    let n = pcm.channels.len();
    let out = if n == channels {
        pcm.channels.clone()
    } else if channels == 1 {
        let len = pcm.len();
        vec![(0..len)
            .map(|i| pcm.channels.iter().map(|c| c[i]).sum::<f32>() / n as f32)
            .collect()]
    } else if n == 1 {
        vec![pcm.channels[0].clone(); channels]
    } else {
        pcm.channels[..channels.min(n)].to_vec()
    };
    Pcm {
        channels: out,
        sample_rate: pcm.sample_rate,
    }
}

/// Planar PCM from interleaved samples of `channels` channels.
pub fn deinterleave(samples: &[f32], channels: usize, sample_rate: u32) -> Pcm {
    let channels = channels.max(1);
    Pcm {
        channels: (0..channels)
            .map(|c| samples.iter().skip(c).step_by(channels).copied().collect())
            .collect(),
        sample_rate,
    }
}

/// Interleaved samples from planar PCM.
pub fn interleave(pcm: &Pcm) -> Vec<f32> {
    let n = pcm.len();
    let mut out = Vec::with_capacity(n * pcm.channels.len());
    for i in 0..n {
        out.extend(pcm.channels.iter().map(|c| c[i]));
    }
    out
}

/// Resamples every channel to `to` Hz (see [`resample`]).
pub fn resample_pcm(pcm: &Pcm, to: u32) -> Result<Pcm> {
    Ok(Pcm {
        channels: pcm
            .channels
            .iter()
            .map(|c| resample(c, pcm.sample_rate, to))
            .collect::<Result<_>>()?,
        sample_rate: to,
    })
}

/// Reads a WAV file as mono f32 (channels averaged) and its sample rate.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let bad = |e: hound::Error| Error::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut r = hound::WavReader::open(path).map_err(bad)?;
    let spec = r.spec();
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>().map_err(bad)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(bad)?
        }
    };
    let mono = interleaved
        .chunks(channels)
        .map(|c| c.iter().sum::<f32>() / channels as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Converts `input` from `from` Hz to `to` Hz with rubato's synchronous FFT
/// resampler: an exact rational ratio and a linear-phase filter. The output has
/// `round(len * to / from)` samples, aligned with the input (the filter's delay,
/// half an FFT, is removed; the FFT is sized so that half is a whole sample).
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::InvalidRequest(format!(
            "sample rates must be positive (got {from} Hz -> {to} Hz)"
        )));
    }
    if from == to || input.is_empty() {
        return Ok(input.to_vec());
    }
    let (from, to) = (from as usize, to as usize);
    let unit = from / gcd(from, to);
    // An even number of FFT units of at least 1024 input samples.
    let chunk = 2 * unit * 1024usize.div_ceil(2 * unit);
    let err = |e: &dyn std::fmt::Display| Error::InvalidRequest(format!("resampling: {e}"));
    let mut resampler = FftFixedIn::<f32>::new(from, to, chunk, 1, 1).map_err(|e| err(&e))?;
    let delay = resampler.output_delay();
    let expected = (input.len() as f64 * to as f64 / from as f64).round() as usize;
    let mut out = Vec::with_capacity(expected + delay + 2 * chunk * to / from);
    let mut padded = vec![0f32; chunk];
    let mut pos = 0;
    // Whole chunks of input, then zeros until the delayed output covers it all.
    while out.len() < delay + expected {
        let n = input.len().saturating_sub(pos).min(chunk);
        padded[..n].copy_from_slice(&input[pos..pos + n]);
        padded[n..].fill(0.0);
        pos += n;
        let o = resampler.process(&[&padded], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&o[0]);
    }
    out.drain(..delay);
    out.truncate(expected);
    Ok(out)
}

/// Resamples a loop as a loop: the input is padded circularly (its end before its
/// start, its start after its end) so the filter sees the seam as the loop plays
/// it, and the output is the `round(len * to / from)` samples of one period.
pub fn resample_loop(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == to || input.is_empty() {
        return resample(input, from, to);
    }
    let (f, t) = (from as usize, to as usize);
    // Whole periods of the rate ratio, so the padding maps to whole output samples.
    let unit = f / gcd(f, t);
    let pad = unit * 4096usize.div_ceil(unit);
    let mut padded = Vec::with_capacity(input.len() + 2 * pad);
    let n = input.len();
    padded.extend((0..pad).map(|i| input[(n - pad % n + i) % n]));
    padded.extend_from_slice(input);
    padded.extend((0..pad).map(|i| input[i % n]));
    let out = resample(&padded, from, to)?;
    let skip = pad * t / f;
    let len = (n as f64 * t as f64 / f as f64).round() as usize;
    Ok(out[skip..skip + len].to_vec())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32)
            .collect()
    }

    #[test]
    fn resampling_keeps_length_and_phase() {
        let input = sine(440.0, 32_000, 32_000);
        for to in [44_100u32, 48_000, 96_000, 22_050, 44_099] {
            let out = resample(&input, 32_000, to).unwrap();
            assert_eq!(out.len(), to as usize);
            let expected = sine(440.0, to, to as usize);
            // Away from the edges the resampled sine matches the ideal one.
            let margin = to as usize / 20;
            let err = out[margin..out.len() - margin]
                .iter()
                .zip(&expected[margin..])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "{to} Hz: max error {err}");
        }
    }

    #[test]
    fn a_loop_resamples_without_a_seam() {
        // A whole number of periods: the loop is seamless at 32 kHz, and must stay
        // seamless, with no edge ringing, at the host rate.
        let input = sine(500.0, 32_000, 32_000);
        for to in [44_100u32, 48_000] {
            let out = resample_loop(&input, 32_000, to).unwrap();
            assert_eq!(out.len(), to as usize);
            let want = sine(500.0, to, to as usize);
            let err = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "{to} Hz: max error {err} (edges included)");
            // The plain resampler rings at the edges, where it sees silence.
            let plain = resample(&input, 32_000, to).unwrap();
            let edge = (plain[0] - want[0])
                .abs()
                .max((plain[plain.len() - 1] - want[want.len() - 1]).abs());
            assert!(
                edge > err,
                "the loop-aware path should beat the plain one at the seam"
            );
        }
    }

    #[test]
    fn wav_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples = sine(100.0, 32_000, 1000);
        write_wav(&path, &samples, 32_000).unwrap();
        let (back, rate) = read_wav(&path).unwrap();
        assert_eq!(rate, 32_000);
        assert_eq!(back, samples);
    }

    fn write_spec(path: &Path, spec: hound::WavSpec, frames: &[Vec<f64>]) {
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for frame in frames {
            for &v in frame {
                match spec.sample_format {
                    hound::SampleFormat::Float => w.write_sample(v as f32).unwrap(),
                    hound::SampleFormat::Int => {
                        let full = (1i64 << (spec.bits_per_sample - 1)) as f64;
                        w.write_sample((v * full).round() as i32).unwrap()
                    }
                }
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn every_supported_wav_format_reads_back_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<f64>> = (0..100)
            .map(|i| vec![(i as f64 / 100.0) - 0.5, 0.25 - i as f64 / 400.0])
            .collect();
        for (format, bits) in [
            (hound::SampleFormat::Int, 16u16),
            (hound::SampleFormat::Int, 24),
            (hound::SampleFormat::Int, 32),
            (hound::SampleFormat::Float, 32),
        ] {
            let path = dir.path().join(format!("{bits}-{format:?}.wav"));
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: 44_100,
                bits_per_sample: bits,
                sample_format: format,
            };
            write_spec(&path, spec, &frames);
            let pcm = read_wav_channels(&path, "audio prompt").unwrap();
            assert_eq!(pcm.sample_rate, 44_100);
            assert_eq!(pcm.channels.len(), 2);
            let tol = 1.5 / (1u64 << (bits - 1)) as f32;
            for (i, f) in frames.iter().enumerate() {
                for (channel, &want) in pcm.channels.iter().zip(f) {
                    let err = (channel[i] - want as f32).abs();
                    assert!(err <= tol.max(1e-7), "{bits} bit {format:?}: {err}");
                }
            }
            // Averaged for a mono model; the mono mix copied for stereo.
            let mono = to_channels(&pcm, 1);
            assert!(
                (mono.channels[0][10] - (pcm.channels[0][10] + pcm.channels[1][10]) / 2.0).abs()
                    < 1e-7
            );
            let both = to_channels(&mono, 2);
            assert_eq!(both.channels[0], both.channels[1]);
        }
    }

    #[test]
    fn unreadable_unsupported_and_empty_wavs_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.wav");
        std::fs::write(&garbage, b"RIFF nonsense, not a wave file").unwrap();
        assert!(matches!(
            read_wav_channels(&garbage, "audio prompt"),
            Err(Error::BadWav { .. })
        ));
        let eight = dir.path().join("8bit.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 8,
            sample_format: hound::SampleFormat::Int,
        };
        write_spec(&eight, spec, &[vec![0.5]]);
        let err = read_wav_channels(&eight, "audio prompt").unwrap_err();
        assert!(
            matches!(err, Error::BadWav { .. }) && err.to_string().contains("8-bit"),
            "{err}"
        );
        let empty = dir.path().join("empty.wav");
        write_wav(&empty, &[], 32_000).unwrap();
        let err = read_wav_channels(&empty, "melody").unwrap_err();
        assert!(matches!(err, Error::EmptyAudio { what: "melody" }), "{err}");
        assert!(matches!(
            read_wav_channels(&dir.path().join("missing.wav"), "melody"),
            Err(Error::MissingFile { .. })
        ));
    }

    #[test]
    fn unwritable_path_is_an_io_error() {
        let err = write_wav(Path::new("/nonexistent-dir/x.wav"), &[0.0], 32_000).unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        assert!(err.to_string().contains("/nonexistent-dir/x.wav"));
    }
}
