use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for t in [50usize, 250, 500] {
        let mut kv = candle_nn::kv_cache::KvCache::new(2, 512);
        let k = Tensor::randn(0f32, 1.0, (2, 16, t, 64), &Device::Cpu)?;
        kv.append(&k, &k)?;
        let q = Tensor::randn(0f32, 1.0, (2, 16, 1, 64), &Device::Cpu)?;
        pool.install(|| -> candle_core::Result<()> {
            let kk = kv.k()?.unwrap();
            let vv = kv.v()?.unwrap();
            for _ in 0..5 {
                let s = q.matmul(&kk.t()?)?;
                let p = candle_nn::ops::softmax_last_dim(&s)?;
                p.matmul(&vv)?;
            }
            let n = 48;
            let t0 = Instant::now();
            for _ in 0..n {
                let s = q.matmul(&kk.t()?)?;
                let p = candle_nn::ops::softmax_last_dim(&s)?;
                p.matmul(&vv)?;
            }
            println!(
                "T={t}: attention {:.3} ms per layer-call, x24 layers = {:.1} ms",
                t0.elapsed().as_secs_f64() * 1e3 / n as f64,
                t0.elapsed().as_secs_f64() * 1e3 / n as f64 * 24.0
            );
            let kc = kk.contiguous()?;
            let vc = vv.contiguous()?;
            let t0 = Instant::now();
            for _ in 0..n {
                let s = q.matmul(&kc.t()?)?;
                let p = candle_nn::ops::softmax_last_dim(&s)?;
                p.matmul(&vc)?;
            }
            println!(
                "T={t}: contiguous attention {:.3} ms per layer-call",
                t0.elapsed().as_secs_f64() * 1e3 / n as f64
            );
            let x = Tensor::randn(0f32, 1.0, (2, 1, 1024), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 1.0, (1024,), &Device::Cpu)?;
            let ln = candle_nn::LayerNorm::new(w.clone(), w.clone(), 1e-5);
            let t0 = Instant::now();
            for _ in 0..n {
                use candle_core::Module;
                let y = ln.forward(&x)?;
                let _ = (&y + &x)?;
                let _ = y.gelu_erf()?;
            }
            println!(
                "small ops (ln+add+gelu) {:.3} ms per call",
                t0.elapsed().as_secs_f64() * 1e3 / n as f64
            );
            Ok(())
        })?;
    }
    Ok(())
}
