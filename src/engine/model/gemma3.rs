//! Gemma 3: five sliding-window layers (their own rotary base) to every global one, RMS norms
//! on each query and key head and on both sub-layers' outputs, embeddings scaled by
//! `sqrt(n_embd)`, GELU, and halves rotated. Norm weights need no `+ 1`: the GGUF converter
//! added it. Choices follow llama.cpp's `gemma3` where the file is silent.

use super::super::error::Result;
use super::super::gguf::GgufHeader;
use super::activation::Activation;
use super::hparams::{DecoderConfig, Rope, SlidingWindow};

/// `gemma3.*` hyper-parameters for `n_ctx` positions.
pub(crate) fn config(h: &GgufHeader, arch: &str, n_ctx: usize) -> Result<DecoderConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let mut c = DecoderConfig::from_header(h, arch, n_ctx)?;
    let n_embd = h.usize(&key("embedding_length"))?;
    c.rope = Rope::Halves;
    c.rms_eps = h
        .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-6);
    c.rope_base = h.opt_f32(&key("rope.freq_base"))?.unwrap_or(1_000_000.0);
    if h.opt_string(&key("rope.scaling.type")) == Some("linear")
        && let Some(factor) = h.opt_f32(&key("rope.scaling.factor"))?
        && factor.is_finite()
        && factor > 0.0
    {
        c.rope_scale = factor;
    }
    c.sliding = Some(SlidingWindow {
        window: h
            .opt_usize(&key("attention.sliding_window"))?
            .unwrap_or(512)
            .max(1),
        pattern: 6,
        rope_base: h.opt_f32(&key("rope.local_freq_base"))?.unwrap_or(10_000.0),
    });
    c.embedding_scale = Some((n_embd as f32).sqrt());
    c.activation = Activation::GeluTanh;
    // Gemma scales queries by `query_pre_attn_scalar`, which GGUF does not carry: it is the
    // head size except in the 27B model (62 layers), where it is `n_embd / n_head`.
    if c.n_layer == 62 {
        c.attention_scale = 1.0 / ((n_embd / c.n_head) as f32).sqrt();
    }
    c.final_softcap = h
        .opt_f32(&key("final_logit_softcapping"))?
        .filter(|cap| cap.is_finite() && *cap > 0.0);
    c.qk_norm = true;
    c.post_norms = true;
    Ok(c)
}
