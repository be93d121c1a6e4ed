//! The feed-forward gate: `act(gate) * up`, with `SiLU` (most families) or GELU's tanh form
//! (Gemma).
//!
//! On the CPU the activation is computed here, on plain `f32` slices, with an exponential
//! that the compiler vectorizes: candle's `silu` and `gelu` call `libm`'s `expf` and `tanhf`
//! once per element, which took 8 % of Gemma 3's run time in a profile. Both activations are
//! written with one exponential (`gelu(x) = x · σ(2u)`, the tanh form's identity), accurate to
//! a few ulp: closer to the exact functions than llama.cpp, whose GELU reads an f16 table.

use candle_core::Tensor;
use rayon::prelude::*;

use super::super::error::Result;

/// The feed-forward gate's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    Silu,
    /// GELU with the tanh approximation (Gemma).
    GeluTanh,
}

impl Activation {
    /// `act(gate) * up`, element by element.
    pub(crate) fn gate(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if !gate.device().is_cpu() {
            let gate = match self {
                Activation::Silu => candle_nn::ops::silu(gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            return Ok((gate * up)?);
        }
        let mut g = gate.flatten_all()?.to_vec1::<f32>()?;
        let u = up.flatten_all()?.to_vec1::<f32>()?;
        match self {
            Activation::Silu => gate_with(&mut g, &u, silu),
            Activation::GeluTanh => gate_with(&mut g, &u, gelu_tanh),
        }
        Ok(Tensor::from_vec(g, gate.shape(), gate.device())?)
    }
}

/// `g[i] = act(g[i]) * u[i]`, a loop the compiler turns into vector code; a prompt's
/// (many rows) in pieces on the pool (on one thread it took 4 % of a 2-thread prefill).
fn gate_with(g: &mut [f32], u: &[f32], act: impl Fn(f32) -> f32 + Sync) {
    const PIECE: usize = 8192;
    let run = |g: &mut [f32], u: &[f32]| {
        for (g, u) in g.iter_mut().zip(u) {
            *g = act(*g) * u;
        }
    };
    if g.len() <= 2 * PIECE {
        return run(g, u);
    }
    g.par_chunks_mut(PIECE)
        .zip(u.par_chunks(PIECE))
        .for_each(|(g, u)| run(g, u));
}

/// `x · σ(x)`.
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `0.5 x (1 + tanh(u))` with `u = √(2/π) (x + 0.044715 x³)`, written as `x · σ(2u)`.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// `eˣ` for `f32`, within 2 ulp where the result is a normal number (Cephes' `expf`: a
/// degree-5 polynomial on `[-ln 2 / 2, ln 2 / 2]` scaled by `2ⁿ`). Inputs are clamped to
/// `[-87.3, 88.3]`, so the result is never infinite or subnormal; `NaN` stays `NaN`. No
/// branch and no call, so loops over it vectorize.
pub(crate) fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer (for |v| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from its exponent bits; n is in -126..=127 after the clamp.
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units in the last place between two floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0 + 0.000_37;
            worst = worst.max(ulps(exp(x), x.exp()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(-1000.0) > 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn activations_match_their_definitions() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let silu_exact = x / (1.0 + (-x).exp());
            assert!(
                (silu(x) - silu_exact).abs() <= 1e-6 * silu_exact.abs().max(1.0),
                "{x}"
            );
            let u = (2.0 / std::f32::consts::PI).sqrt() * (x + 0.044_715 * x * x * x);
            let gelu_exact = 0.5 * x * (1.0 + u.tanh());
            assert!(
                (gelu_tanh(x) - gelu_exact).abs() <= 1e-6 * gelu_exact.abs().max(1.0),
                "{x}: {} vs {gelu_exact}",
                gelu_tanh(x)
            );
        }
    }

    #[test]
    fn the_gate_agrees_with_candles_ops() {
        let device = candle_core::Device::Cpu;
        let g: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 5.0).collect();
        let u: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 / 64.0).collect();
        let gate = Tensor::from_vec(g, (2, 32), &device).unwrap();
        let up = Tensor::from_vec(u, (2, 32), &device).unwrap();
        for (act, theirs) in [
            (Activation::Silu, candle_nn::ops::silu(&gate).unwrap()),
            (Activation::GeluTanh, gate.gelu().unwrap()),
        ] {
            let ours = act.gate(&gate, &up).unwrap();
            assert_eq!(ours.dims(), [2, 32]);
            let want = (theirs * &up).unwrap().flatten_all().unwrap();
            let diff = (ours.flatten_all().unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{act:?}: {diff}");
        }
    }
}
