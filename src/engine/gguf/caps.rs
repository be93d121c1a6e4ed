//! A GGUF header's hyper-parameters, vocabulary and tensor shapes checked against the caps in
//! [`limits`](crate::engine::limits) before anything is allocated from them.

use super::GgufHeader;
use crate::engine::error::{EngineError, Result};
use crate::engine::limits::*;

/// The hyper-parameters a model's tables and caches are sized by, checked.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    value_dim: usize,
    n_ff: Option<usize>,
}

/// Checks `arch`'s hyper-parameters, its vocabulary and the shape of every tensor the
/// loaders read, before anything is allocated from them.
pub(crate) fn check(header: &GgufHeader, arch: &str) -> Result<()> {
    let dims = hyper_parameters(header, arch)?;
    vocabulary(header)?;
    shapes(header, arch, &dims)?;
    Ok(())
}

fn bad(header: &GgufHeader, key: &str, problem: String) -> EngineError {
    EngineError::Metadata {
        file: header.file.clone(),
        key: key.to_owned(),
        problem,
    }
}

fn hyper_parameters(header: &GgufHeader, arch: &str) -> Result<Dims> {
    let key = |k: &str| format!("{arch}.{k}");
    let capped = |k: &str, value: usize, max: usize| {
        if (1..=max).contains(&value) {
            Ok(value)
        } else {
            Err(bad(
                header,
                &key(k),
                format!("{value} is outside 1..={max}"),
            ))
        }
    };
    let required = |k: &str, max: usize| capped(k, header.usize(&key(k))?, max);
    let n_layer = required("block_count", MAX_LAYERS)?;
    let n_embd = required("embedding_length", MAX_EMBEDDING)?;
    let n_head = required("attention.head_count", MAX_HEADS)?;
    let n_kv_head = capped(
        "attention.head_count_kv",
        header
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head),
        n_head,
    )?;
    if n_head % n_kv_head != 0 || n_head / n_kv_head > MAX_HEADS_PER_KV_HEAD {
        return Err(bad(
            header,
            &key("attention.head_count_kv"),
            format!(
                "{n_kv_head} key/value heads for {n_head} heads: they must divide them, with at most {MAX_HEADS_PER_KV_HEAD} heads each"
            ),
        ));
    }
    let head = |k: &str, default: Option<usize>| -> Result<usize> {
        let value = match header.opt_usize(&key(k))? {
            Some(v) => v,
            None => default.ok_or_else(|| {
                bad(
                    header,
                    &key("attention.head_count"),
                    format!("{n_head} heads do not divide {n_embd} dimensions"),
                )
            })?,
        };
        if value % 2 != 0 || !(2..=MAX_HEAD_DIM).contains(&value) {
            return Err(bad(
                header,
                &key(k),
                format!("a head of {value} must be even and in 2..={MAX_HEAD_DIM}"),
            ));
        }
        Ok(value)
    };
    let per_head = (n_embd % n_head == 0).then_some(n_embd / n_head);
    let head_dim = head("attention.key_length", per_head)?;
    let value_dim = head("attention.value_length", Some(head_dim))?;
    let n_ff = header.opt_usize(&key("feed_forward_length"))?;
    if let Some(n) = n_ff {
        capped("feed_forward_length", n, MAX_FEED_FORWARD)?;
    }
    if let Some(rope) = header.opt_usize(&key("rope.dimension_count"))?
        && rope > head_dim
    {
        return Err(bad(
            header,
            &key("rope.dimension_count"),
            format!("{rope} is wider than a head ({head_dim})"),
        ));
    }
    if header.opt_usize(&key("context_length"))? == Some(0) {
        return Err(bad(header, &key("context_length"), "0 tokens".into()));
    }
    Ok(Dims {
        n_layer,
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        value_dim,
        n_ff,
    })
}

/// The vocabulary's size and text, and the merge list, before the tokenizer is built from
/// them (building it is super-linear in the length of a token).
fn vocabulary(header: &GgufHeader) -> Result<()> {
    use candle_core::quantized::gguf_file::Value;
    let key = "tokenizer.ggml.tokens";
    let Some(Value::Array(tokens)) = header.get(key) else {
        // Missing or mistyped: the tokenizer says so.
        return Ok(());
    };
    if !(1..=MAX_VOCAB).contains(&tokens.len()) {
        return Err(bad(
            header,
            key,
            format!("{} tokens is outside 1..={MAX_VOCAB}", tokens.len()),
        ));
    }
    let mut total = 0usize;
    for (id, token) in tokens.iter().enumerate() {
        let len = match token {
            Value::String(s) => s.len(),
            _ => 0,
        };
        if len > MAX_TOKEN_BYTES {
            return Err(bad(
                header,
                key,
                format!("token {id} is {len} bytes (the limit is {MAX_TOKEN_BYTES})"),
            ));
        }
        total += len;
    }
    if total > MAX_VOCAB_BYTES {
        return Err(bad(
            header,
            key,
            format!("{total} bytes of token text (the limit is {MAX_VOCAB_BYTES})"),
        ));
    }
    if let Some(Value::Array(merges)) = header.get("tokenizer.ggml.merges")
        && merges.len() > MAX_MERGES
    {
        return Err(bad(
            header,
            "tokenizer.ggml.merges",
            format!("{} merges (the limit is {MAX_MERGES})", merges.len()),
        ));
    }
    Ok(())
}

/// Every tensor the loaders read has the shape its hyper-parameters say (rows, columns), so
/// that no kernel ever sees a shape it was not sized for.
fn shapes(header: &GgufHeader, arch: &str, dims: &Dims) -> Result<()> {
    let infos = &header.content.tensor_infos;
    let n_vocab = header
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map_or(0, Vec::len);
    let wrong = |name: &str, found: &[usize], expected: String| EngineError::InvalidGguf {
        file: header.file.clone(),
        reason: format!("tensor `{name}` has shape {found:?}, expected {expected}"),
    };
    let expect = |name: &str, rows: Option<usize>, cols: usize| -> Result<bool> {
        let Some(info) = infos.get(name) else {
            return Ok(false);
        };
        let d = info.shape.dims();
        let ok = match (d, rows) {
            ([c], None) => *c == cols,
            ([r, c], Some(rows)) => *r == rows && *c == cols,
            _ => false,
        };
        if ok {
            Ok(true)
        } else {
            Err(wrong(
                name,
                d,
                match rows {
                    Some(r) => format!("[{r}, {cols}]"),
                    None => format!("[{cols}]"),
                },
            ))
        }
    };
    let Dims {
        n_layer,
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        value_dim,
        n_ff,
        ..
    } = *dims;
    expect("output_norm.weight", None, n_embd)?;
    expect("rope_freqs.weight", None, head_dim / 2)?;
    if n_vocab > 0 {
        expect("token_embd.weight", Some(n_vocab), n_embd)?;
        expect("output.weight", Some(n_vocab), n_embd)?;
    }
    for i in 0..n_layer {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        // Every layer the header claims must be in the file: a billion layers fails here,
        // on the first missing one, not in an allocation.
        if !infos.contains_key(&p("attn_norm")) {
            return Err(EngineError::InvalidGguf {
                file: header.file.clone(),
                reason: format!(
                    "{n_layer} layers are declared but tensor `{}` is missing",
                    p("attn_norm")
                ),
            });
        }
        expect(&p("attn_norm"), None, n_embd)?;
        expect(
            &p("attn_qkv"),
            Some(n_head * head_dim + n_kv_head * (head_dim + value_dim)),
            n_embd,
        )?;
        expect(&p("attn_q"), Some(n_head * head_dim), n_embd)?;
        expect(&p("attn_k"), Some(n_kv_head * head_dim), n_embd)?;
        expect(&p("attn_v"), Some(n_kv_head * value_dim), n_embd)?;
        expect(&p("attn_output"), Some(n_embd), n_head * value_dim)?;
        // The parts only some families have: checked where present.
        let b = |n: &str| format!("blk.{i}.{n}.bias");
        expect(&b("attn_q"), None, n_head * head_dim)?;
        expect(&b("attn_k"), None, n_kv_head * head_dim)?;
        expect(&b("attn_v"), None, n_kv_head * value_dim)?;
        expect(&p("attn_q_norm"), None, head_dim)?;
        expect(&p("attn_k_norm"), None, head_dim)?;
        expect(&p("ffn_norm"), None, n_embd)?;
        expect(&p("post_attention_norm"), None, n_embd)?;
        expect(&p("post_ffw_norm"), None, n_embd)?;
        if let Some(n_ff) = n_ff {
            // Phi-3 stores gate and up as one tensor of twice the rows.
            let up_rows = if arch == "phi3" { 2 * n_ff } else { n_ff };
            expect(&p("ffn_gate"), Some(n_ff), n_embd)?;
            expect(&p("ffn_up"), Some(up_rows), n_embd)?;
            expect(&p("ffn_down"), Some(n_embd), n_ff)?;
        }
    }
    Ok(())
}
