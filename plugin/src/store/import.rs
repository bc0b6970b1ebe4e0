//! Audio files as takes: WAV through hound (as the engine reads prompts),
//! FLAC, MP3 and Ogg Vorbis through symphonia; kept at their own rate (the
//! host's resampling and the engine's prompt resampling start from it).

use std::path::Path;

use musicgen::request::Pcm;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as DecodeError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::request::MAX_SECONDS;

/// Reads an audio file as planar PCM at its own rate: at most two channels
/// (the first two of more), at most [`MAX_SECONDS`], with samples that are
/// finite numbers. The error says why in words.
pub fn read_audio_file(path: &Path) -> Result<Pcm, String> {
    let is_wav = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    let mut pcm = if is_wav {
        musicgen::wav::read_wav_channels(path, "file").map_err(|e| e.to_string())?
    } else {
        decode(path)?
    };
    if pcm.is_empty() || pcm.channels.is_empty() {
        return Err("it holds no audio".into());
    }
    if pcm.sample_rate < 1000 {
        return Err(format!(
            "its sample rate of {} Hz is too low",
            pcm.sample_rate
        ));
    }
    pcm.channels.truncate(2);
    let seconds = pcm.duration_s();
    if seconds > MAX_SECONDS + 1e-6 {
        return Err(format!(
            "it is {seconds:.1} s long; takes are at most {MAX_SECONDS} s (5 minutes): trim it first"
        ));
    }
    pcm.check("file").map_err(|e| e.to_string())?;
    Ok(pcm)
}

fn decode(path: &Path) -> Result<Pcm, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| format!("not a readable audio file ({e})"))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or("it has no audio track")?;
    let track_id = track.id;
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| format!("its codec is not supported ({e})"))?;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut skipped = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(DecodeError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(DecodeError::ResetRequired) => break,
            Err(e) => return Err(format!("it is damaged ({e})")),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet: skip it, as players do; too many and give up.
            Err(DecodeError::DecodeError(_)) => {
                skipped += 1;
                if skipped > 16 {
                    return Err("it is damaged (too many undecodable packets)".into());
                }
                continue;
            }
            Err(e) => return Err(format!("it is damaged ({e})")),
        };
        let spec = *decoded.spec();
        rate = spec.rate;
        let n = spec.channels.count();
        let frames = decoded.frames();
        if channels.is_empty() {
            channels = vec![Vec::new(); n];
        }
        if n != channels.len() {
            return Err("its channel count changes midway".into());
        }
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        buf.copy_planar_ref(decoded);
        let samples = buf.samples();
        for (c, side) in channels.iter_mut().enumerate() {
            side.extend_from_slice(&samples[c * frames..(c + 1) * frames]);
        }
        if rate > 0 && channels[0].len() as f64 / rate as f64 > MAX_SECONDS + 1.0 {
            return Err(format!(
                "it is longer than {MAX_SECONDS} s (5 minutes): trim it first"
            ));
        }
    }
    Ok(Pcm {
        channels,
        sample_rate: rate,
    })
}
