//! How far a run's logits are from a reference run's, per codebook: used to judge
//! quantized precisions against f32 with the same inputs (teacher forcing).

/// Agreement of one codebook's logits with the reference's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CodebookQuality {
    /// RMS of the difference over RMS of the reference logits.
    pub rel_rms: f64,
    /// Mean KL divergence KL(softmax(reference) || softmax(candidate)), in nats.
    pub kl: f64,
    /// Fraction of frames whose most likely code is the same.
    pub top1: f64,
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// Compares logits laid out as `(steps, codebooks, vocab)` with `steps = frames +
/// codebooks - 1`, over the positions that produce codes (the delay pattern's
/// padding positions are left out).
pub fn compare_logits(
    reference: &[f32],
    candidate: &[f32],
    codebooks: usize,
    vocab: usize,
    frames: usize,
) -> Vec<CodebookQuality> {
    let steps = frames + codebooks - 1;
    assert_eq!(
        reference.len(),
        steps * codebooks * vocab,
        "reference layout"
    );
    assert_eq!(candidate.len(), reference.len(), "candidate layout");
    (0..codebooks)
        .map(|c| {
            let (mut diff2, mut ref2, mut kl, mut agree) = (0f64, 0f64, 0f64, 0usize);
            for f in 0..frames {
                // Frame f of codebook c is produced at step f + c.
                let at = ((f + c) * codebooks + c) * vocab;
                let r = &reference[at..at + vocab];
                let q = &candidate[at..at + vocab];
                for (a, b) in r.iter().zip(q) {
                    diff2 += ((a - b) as f64).powi(2);
                    ref2 += (*a as f64).powi(2);
                }
                let (lr, lq) = (log_softmax(r), log_softmax(q));
                kl += lr
                    .iter()
                    .zip(&lq)
                    .map(|(a, b)| a.exp() * (a - b))
                    .sum::<f64>();
                agree += (crate::sampling::argmax(r) == crate::sampling::argmax(q)) as usize;
            }
            CodebookQuality {
                rel_rms: (diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt(),
                kl: kl / frames as f64,
                top1: agree as f64 / frames as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_agree_fully() {
        let (k, v, f) = (2, 5, 3);
        let logits: Vec<f32> = (0..(f + k - 1) * k * v).map(|i| (i % 7) as f32).collect();
        for q in compare_logits(&logits, &logits, k, v, f) {
            assert_eq!(q.rel_rms, 0.0);
            assert!(q.kl.abs() < 1e-12);
            assert_eq!(q.top1, 1.0);
        }
    }

    #[test]
    fn known_differences_are_measured() {
        // One codebook, one frame, vocab 2: reference [0, 0], candidate [ln 3, 0].
        let q = compare_logits(&[0.0, 0.0], &[3f32.ln(), 0.0], 1, 2, 1)[0];
        // KL(0.5,0.5 || 0.75,0.25) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)
        let want = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (2f64).ln();
        assert!((q.kl - want).abs() < 1e-6, "{} vs {want}", q.kl);
        let q = compare_logits(&[1.0, 2.0], &[1.1, 2.0], 1, 2, 1)[0];
        let want = (0.01f64 / 5.0).sqrt();
        assert!((q.rel_rms - want).abs() < 1e-6);
        assert_eq!(q.top1, 1.0);
        let q = compare_logits(&[1.0, 2.0], &[2.5, 2.0], 1, 2, 1)[0];
        assert_eq!(q.top1, 0.0);
    }

    #[test]
    fn padding_positions_are_left_out() {
        // Two codebooks, one frame: steps 0 and 1. Codebook 0 is produced at step 0,
        // codebook 1 at step 1; the other two slots are padding and may differ freely.
        let (k, v) = (2, 2);
        let reference = vec![
            1.0, 0.0, /* pad */ 9.0, 9.0, /* pad */ 9.0, 9.0, 0.0, 1.0,
        ];
        let mut candidate = reference.clone();
        candidate[2] = -50.0;
        candidate[4] = 50.0;
        for q in compare_logits(&reference, &candidate, k, v, 1) {
            assert_eq!(q.rel_rms, 0.0);
        }
    }
}
