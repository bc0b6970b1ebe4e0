//! Token selection from a codebook's (already guided) logits, as transformers'
//! logits warpers do it for MusicGen: temperature, then top-k, then top-p, then a
//! draw from the softmax; or greedy argmax.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the next code of each codebook is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Sampling {
    /// The most likely code (the first of equal maxima).
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the `top_k` most
    /// likely codes (ties with the k-th kept), then to the smallest set whose mass
    /// reaches `top_p` (`None`: no restriction).
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    },
}

/// The one place codes are drawn: holds the seeded generator, so a seed fixes a run.
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    sampling: Sampling,
    rng: ChaCha20Rng,
    /// Scratch space reused across calls: (index, value) of the candidates.
    scratch: Vec<(u32, f64)>,
}

impl LogitsProcessor {
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self {
            sampling,
            rng: ChaCha20Rng::seed_from_u64(seed),
            scratch: Vec::new(),
        }
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Chooses one code from one codebook's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
            } => {
                let u = self.uniform();
                let candidates = nucleus(logits, temperature, top_k, top_p, &mut self.scratch);
                draw(candidates, u)
            }
        }
    }

    /// A uniform draw in [0, 1) with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        // NaN never wins; the first of equal maxima does, as torch.argmax.
        if v > logits[best] || logits[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The candidates and their probabilities (summing to 1), most likely first, after
/// temperature, top-k and top-p, following transformers' `TopKLogitsWarper` and
/// `TopPLogitsWarper`.
pub fn nucleus<'a>(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    scratch: &'a mut Vec<(u32, f64)>,
) -> &'a [(u32, f64)] {
    scratch.clear();
    scratch.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, &v)| (i as u32, v as f64 / temperature)),
    );
    if scratch.is_empty() {
        scratch.push((0, 0.0));
    }
    // Descending by value; equal values keep index order.
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if let Some(k) = top_k {
        let k = k.clamp(1, scratch.len());
        // The k first in that order, without sorting the rest (a codebook has
        // thousands of codes, top-k keeps hundreds).
        scratch.select_nth_unstable_by(k - 1, order);
        // Everything below the k-th value goes; ties with it stay.
        let kth = scratch[k - 1].1;
        let mut keep = k;
        for i in k..scratch.len() {
            if scratch[i].1 >= kth {
                scratch.swap(keep, i);
                keep += 1;
            }
        }
        scratch.truncate(keep);
    }
    scratch.sort_unstable_by(order);
    // Softmax over what is left.
    let max = scratch[0].1;
    let mut total = 0.0;
    for c in scratch.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1;
    }
    for c in scratch.iter_mut() {
        c.1 /= total;
    }
    if let Some(p) = top_p {
        if p < 1.0 {
            // A code stays while the mass of the codes before it is below p; the
            // most likely always stays.
            let mut before = 0.0;
            let mut keep = 0;
            for c in scratch.iter() {
                if keep > 0 && before >= p {
                    break;
                }
                before += c.1;
                keep += 1;
            }
            scratch.truncate(keep);
            let total: f64 = scratch.iter().map(|c| c.1).sum();
            for c in scratch.iter_mut() {
                c.1 /= total;
            }
        }
    }
    scratch
}

/// Inverse-CDF draw from candidates whose probabilities sum to 1.
fn draw(candidates: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(i, p) in candidates {
        acc += p;
        if u < acc {
            return i;
        }
    }
    candidates.last().map(|c| c.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// The distribution transformers defines, computed independently: top-k by the
    /// k-th largest value, top-p over an ascending sort with `cumsum <= 1 - p` removed.
    fn reference_probs(logits: &[f32], t: f64, k: Option<usize>, p: Option<f64>) -> Vec<f64> {
        let mut scores: Vec<f64> = logits.iter().map(|&v| v as f64 / t).collect();
        if let Some(k) = k {
            let mut sorted = scores.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k.min(sorted.len()) - 1];
            for s in scores.iter_mut() {
                if *s < kth {
                    *s = f64::NEG_INFINITY;
                }
            }
        }
        if let Some(p) = p {
            let probs = softmax(&scores);
            let mut order: Vec<usize> = (0..scores.len()).collect();
            // torch leaves the order of ties open; among equals the lower index ranks higher.
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
            let mut cum = 0.0;
            let n = order.len();
            for (rank, &i) in order.iter().enumerate() {
                cum += probs[i];
                if cum <= 1.0 - p && rank < n - 1 {
                    scores[i] = f64::NEG_INFINITY;
                }
            }
        }
        softmax(&scores)
    }

    /// Pearson's chi-squared statistic of observed counts against expected probabilities
    /// (cells with zero expectation must have zero counts).
    fn chi_squared(counts: &[u64], probs: &[f64], n: u64) -> (f64, usize) {
        let mut stat = 0.0;
        let mut cells = 0;
        for (c, p) in counts.iter().zip(probs) {
            if *p == 0.0 {
                assert_eq!(*c, 0, "drew a code outside the allowed set");
                continue;
            }
            let e = *p * n as f64;
            stat += (*c as f64 - e).powi(2) / e;
            cells += 1;
        }
        (stat, cells - 1)
    }

    /// Upper 0.1% point of chi-squared with `df` degrees of freedom
    /// (Wilson-Hilferty approximation; z = 3.09).
    fn chi2_critical(df: usize) -> f64 {
        let d = df as f64;
        let z = 3.090_232;
        d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
    }

    fn test_logits() -> Vec<f32> {
        // 24 codes with a spread of probabilities, a tie, and a near-tie.
        (0..24)
            .map(|i| ((i * 7919) % 23) as f32 * 0.25 - 2.0)
            .chain([3.5, 3.5])
            .collect()
    }

    #[test]
    fn top_k_by_selection_keeps_what_a_full_sort_keeps() {
        // What `nucleus` computed by sorting every code: the same candidates in the
        // same order with the same probabilities, bit for bit.
        fn sorted(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
            let mut c: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| (i as u32, v as f64))
                .collect();
            c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let kth = c[k.clamp(1, c.len()) - 1].1;
            let keep = c.iter().take_while(|x| x.1 >= kth).count();
            c.truncate(keep);
            let max = c[0].1;
            let total: f64 = c.iter().map(|x| (x.1 - max).exp()).sum();
            c.iter()
                .map(|&(i, v)| (i, (v - max).exp() / total))
                .collect()
        }
        let mut state = 17u64;
        for case in 0..200 {
            // 2048 codes on a coarse grid (many ties), zeros of both signs, NaNs.
            let logits: Vec<f32> = (0..2048)
                .map(|i| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    match (state >> 33) % 50 {
                        0 => 0.0,
                        1 => -0.0,
                        2 if case % 2 == 0 && i % 3 == 0 => f32::NAN,
                        r => (r as f32 - 25.0) * 0.5,
                    }
                })
                .collect();
            for k in [1, 2, 50, 250, 2047, 2048, 5000] {
                let mut scratch = Vec::new();
                let got = nucleus(&logits, 1.0, Some(k), None, &mut scratch).to_vec();
                let want = sorted(&logits, k);
                assert_eq!(got.len(), want.len(), "case {case} k {k}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.0, w.0, "case {case} k {k}");
                    assert_eq!(g.1.to_bits(), w.1.to_bits(), "case {case} k {k}");
                }
            }
        }
    }

    fn check_distribution(t: f64, k: Option<usize>, p: Option<f64>) {
        let logits = test_logits();
        let expected = reference_probs(&logits, t, k, p);
        let mut proc = LogitsProcessor::new(
            Sampling::Sample {
                temperature: t,
                top_k: k,
                top_p: p,
            },
            1234,
        );
        let n = 200_000u64;
        let mut counts = vec![0u64; logits.len()];
        for _ in 0..n {
            counts[proc.sample(&logits) as usize] += 1;
        }
        let (stat, df) = chi_squared(&counts, &expected, n);
        if df == 0 {
            return;
        }
        assert!(
            stat < chi2_critical(df),
            "chi-squared {stat:.1} over {df} dof for t={t} k={k:?} p={p:?}"
        );
    }

    #[test]
    fn sampling_fits_softmax_with_temperature() {
        check_distribution(1.0, None, None);
        check_distribution(0.7, None, None);
        check_distribution(1.5, None, None);
    }

    #[test]
    fn sampling_fits_top_k() {
        check_distribution(1.0, Some(5), None);
        check_distribution(0.8, Some(12), None);
        // k = 2 with two tied maxima, k = 1 with a tie keeps both.
        check_distribution(1.0, Some(1), None);
    }

    #[test]
    fn sampling_fits_top_p_and_top_k_then_top_p() {
        check_distribution(1.0, None, Some(0.5));
        check_distribution(1.0, None, Some(0.9));
        check_distribution(1.2, Some(10), Some(0.8));
        check_distribution(1.0, None, Some(0.0));
    }

    #[test]
    fn nucleus_sets_match_the_reference_definition() {
        let logits = test_logits();
        let mut scratch = Vec::new();
        for (t, k, p) in [
            (1.0, Some(3), None),
            (1.0, None, Some(0.3)),
            (0.5, Some(8), Some(0.6)),
            (2.0, None, Some(0.99)),
        ] {
            let expected = reference_probs(&logits, t, k, p);
            let got = nucleus(&logits, t, k, p, &mut scratch);
            let mut dense = vec![0.0; logits.len()];
            for &(i, pr) in got {
                dense[i as usize] = pr;
            }
            for (a, b) in dense.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-12, "{dense:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let logits = test_logits();
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: Some(20),
            top_p: None,
        };
        let run = |seed| {
            let mut p = LogitsProcessor::new(s, seed);
            (0..64).map(|_| p.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 * 0.1).collect();
        let mut p = LogitsProcessor::new(
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(1),
                top_p: None,
            },
            3,
        );
        let mut g = LogitsProcessor::new(Sampling::Greedy, 3);
        for _ in 0..100 {
            assert_eq!(p.sample(&logits), g.sample(&logits));
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
    }
}
