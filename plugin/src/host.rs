//! Facts about the host that the audio thread publishes as atomics (sample
//! rate, tempo, time signature) for the editor and for planning takes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::request::HostTime;

pub struct HostInfo {
    sample_rate: AtomicU32,
    /// f64 bits; NaN while the host has given no tempo.
    tempo: AtomicU64,
    /// numerator << 16 | denominator; 0 while unknown.
    time_signature: AtomicU32,
}

impl Default for HostInfo {
    fn default() -> Self {
        Self {
            sample_rate: AtomicU32::new(0),
            tempo: AtomicU64::new(f64::NAN.to_bits()),
            time_signature: AtomicU32::new(0),
        }
    }
}

impl HostInfo {
    /// Real-time safe: stores only. Values out of range are ignored.
    pub fn publish(&self, tempo: Option<f64>, numerator: Option<i32>, denominator: Option<i32>) {
        if let Some(t) = tempo.filter(|t| t.is_finite() && *t > 0.0) {
            self.tempo.store(t.to_bits(), Ordering::Relaxed);
        }
        if let (Some(n), Some(d)) = (numerator, denominator) {
            if (1..=64).contains(&n) && (1..=64).contains(&d) {
                self.time_signature
                    .store(((n as u32) << 16) | d as u32, Ordering::Relaxed);
            }
        }
    }

    /// The host's rate; 0 before the plugin is first activated.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate.load(Ordering::Acquire)
    }

    pub fn set_sample_rate(&self, rate: u32) {
        self.sample_rate.store(rate, Ordering::Release);
    }

    pub fn tempo(&self) -> Option<f64> {
        let t = f64::from_bits(self.tempo.load(Ordering::Relaxed));
        t.is_finite().then_some(t)
    }

    pub fn time_signature(&self) -> Option<(u32, u32)> {
        let v = self.time_signature.load(Ordering::Relaxed);
        (v != 0).then_some((v >> 16, v & 0xffff))
    }

    /// Tempo and time signature together, for planning a take.
    pub fn time(&self) -> HostTime {
        HostTime {
            tempo: self.tempo(),
            time_signature: self.time_signature(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_published_and_bad_values_ignored() {
        let h = HostInfo::default();
        assert_eq!(h.time(), HostTime::default());
        h.publish(Some(90.0), Some(7), Some(8));
        h.publish(Some(f64::NAN), Some(0), Some(8));
        h.publish(Some(-5.0), Some(3), Some(99));
        assert_eq!(h.tempo(), Some(90.0));
        assert_eq!(h.time_signature(), Some((7, 8)));
    }
}
