//! Every architecture on our own forward pass, on tiny random-weight GGUF files written here
//! at test time (no download): our logits against candle-transformers' implementation of the
//! same architecture on the same file, one forward pass against token-by-token decoding, and
//! prefix reuse in a chat.
//!
//! Gemma 3 has no usable reference in candle-transformers 0.11: its quantized model uses `SiLU`
//! where Gemma uses `GELU`, and its full-precision one fails on the CPU (it appends
//! non-contiguous values to its cache). Gemma 3 is checked against llama.cpp on the real 270M
//! weights instead, with a prompt longer than the sliding window (`families.rs`).
//!
//! The files borrow the default model's tokenizer (so the engine can chat with them) and mix
//! the quantization types of a `Q4_K_M` file: `Q8_0` embeddings and attention, `Q5_0` values,
//! `Q4_K` feed-forward, `Q6_K` output (Phi-3's fused projections in `Q5_0` and `Q4_K`). Gemma 3 gets six layers (five sliding, one global) and a
//! window shorter than the prompt.

use std::io::Cursor;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, SamplingParams,
};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};
use rand::{Rng, SeedableRng};

use crate::common;

/// How far our logits may be from the reference's, as a fraction of their size (relative L2).
/// Both round activations to 8 bits before each quantized product, in different blocks (and
/// the Gemma reference multiplies dequantized `f32` weights without rounding at all); a wrong
/// rotation, norm, bias or mask moves logits by tens of percent.
const TOLERANCE: f32 = 0.03;

#[derive(Clone, Copy)]
struct Shape {
    arch: &'static str,
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    n_ff: usize,
    window: usize,
}

const SHAPE: Shape = Shape {
    arch: "llama",
    n_layer: 2,
    n_embd: 256,
    n_head: 4,
    n_kv_head: 2,
    head_dim: 64,
    n_ff: 512,
    window: 5,
};

fn shape(arch: &'static str) -> Shape {
    Shape {
        arch,
        n_layer: if arch == "gemma3" { 6 } else { 2 },
        ..SHAPE
    }
}

/// A tiny model file.
struct Tiny {
    bytes: Vec<u8>,
    vocab: usize,
}

fn tokenizer_metadata() -> Vec<(String, Value)> {
    let mut file = std::fs::File::open(common::model_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    content
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect()
}

fn write_tiny(s: Shape, seed: u64) -> Tiny {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut meta = tokenizer_metadata();
    let vocab = meta
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .map(|(_, v)| v.to_vec().unwrap().len())
        .unwrap();
    let a = s.arch;
    let u = |v: usize| Value::U32(v as u32);
    meta.extend([
        ("general.architecture".to_owned(), Value::String(a.into())),
        (format!("{a}.block_count"), u(s.n_layer)),
        (format!("{a}.embedding_length"), u(s.n_embd)),
        (format!("{a}.feed_forward_length"), u(s.n_ff)),
        (format!("{a}.context_length"), u(512)),
        (format!("{a}.attention.head_count"), u(s.n_head)),
        (format!("{a}.attention.head_count_kv"), u(s.n_kv_head)),
        (format!("{a}.attention.key_length"), u(s.head_dim)),
        (format!("{a}.attention.value_length"), u(s.head_dim)),
        (format!("{a}.attention.sliding_window"), u(s.window)),
        (format!("{a}.rope.dimension_count"), u(s.head_dim)),
        (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
    ]);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, shape: &[usize], dtype: GgmlDType, values: Vec<f32>| {
        let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        tensors.push((name, QTensor::quantize(&t, dtype).unwrap()));
    };
    let mut uniform = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect()
    };
    let (e, q, kv, ff) = (
        s.n_embd,
        s.n_head * s.head_dim,
        s.n_kv_head * s.head_dim,
        s.n_ff,
    );
    let m = |rows: usize, cols: usize| [rows, cols];
    let norm = |values: Vec<f32>| values.into_iter().map(|v| 1.0 + v).collect::<Vec<_>>();
    add(
        "token_embd.weight".into(),
        &m(vocab, e),
        GgmlDType::Q8_0,
        uniform(vocab * e, 1.0),
    );
    if a != "gemma3" {
        add(
            "output.weight".into(),
            &m(vocab, e),
            GgmlDType::Q6K,
            uniform(vocab * e, 1.0 / (e as f32).sqrt()),
        );
    }
    add(
        "output_norm.weight".into(),
        &[e],
        GgmlDType::F32,
        norm(uniform(e, 0.2)),
    );
    for i in 0..s.n_layer {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        let w = |cols: usize| 1.0 / (cols as f32).sqrt();
        add(p("attn_norm"), &[e], GgmlDType::F32, norm(uniform(e, 0.2)));
        // (name, rows, columns, type): the mix of a Q4_K_M file.
        let mut matrices = if a == "phi3" {
            // Query, key and value in one matrix; gate and up in another, the gate's rows first.
            vec![
                ("attn_qkv", q + 2 * kv, e, GgmlDType::Q5_0),
                ("ffn_up", 2 * ff, e, GgmlDType::Q4K),
            ]
        } else {
            vec![
                ("attn_q", q, e, GgmlDType::Q8_0),
                ("attn_k", kv, e, GgmlDType::Q8_0),
                ("attn_v", kv, e, GgmlDType::Q5_0),
                ("ffn_gate", ff, e, GgmlDType::Q4K),
                ("ffn_up", ff, e, GgmlDType::Q4K),
            ]
        };
        matrices.push(("attn_output", e, q, GgmlDType::Q8_0));
        matrices.push(("ffn_down", e, ff, GgmlDType::Q4K));
        for (name, rows, cols, dtype) in matrices {
            add(
                p(name),
                &m(rows, cols),
                dtype,
                uniform(rows * cols, w(cols)),
            );
        }
        add(p("ffn_norm"), &[e], GgmlDType::F32, norm(uniform(e, 0.2)));
        if a == "qwen2" {
            for (n, len) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                let b = format!("blk.{i}.{n}.bias");
                add(b, &[len], GgmlDType::F32, uniform(len, 0.5));
            }
        }
        if a == "qwen3" || a == "gemma3" {
            for n in ["attn_q_norm", "attn_k_norm"] {
                let d = s.head_dim;
                add(p(n), &[d], GgmlDType::F32, norm(uniform(d, 0.2)));
            }
        }
        if a == "gemma3" {
            for n in ["post_attention_norm", "post_ffw_norm"] {
                add(p(n), &[e], GgmlDType::F32, norm(uniform(e, 0.2)));
            }
        }
    }
    let mut bytes = Cursor::new(Vec::new());
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut bytes, &meta_refs, &tensor_refs).unwrap();
    Tiny {
        bytes: bytes.into_inner(),
        vocab,
    }
}

/// candle-transformers' model of the same file: logits of the last of `tokens`, computed from
/// scratch.
enum Reference {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
}

impl Reference {
    fn load(s: Shape, tiny: &Tiny) -> Self {
        let dev = Device::Cpu;
        let mut r = Cursor::new(&tiny.bytes);
        let ct = gguf_file::Content::read(&mut r).unwrap();
        match s.arch {
            "llama" => {
                Self::Llama(quantized_llama::ModelWeights::from_gguf(ct, &mut r, &dev).unwrap())
            }
            "qwen2" => {
                Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(ct, &mut r, &dev).unwrap())
            }
            "qwen3" => {
                Self::Qwen3(quantized_qwen3::ModelWeights::from_gguf(ct, &mut r, &dev).unwrap())
            }
            "phi3" => Self::Phi3(
                quantized_phi3::ModelWeights::from_gguf(false, ct, &mut r, &dev).unwrap(),
            ),
            other => unreachable!("{other}"),
        }
    }

    fn logits(&mut self, tokens: &[u32]) -> Vec<f32> {
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = match self {
            Self::Llama(m) => m.forward(&input, 0),
            Self::Qwen2(m) => m.forward(&input, 0),
            Self::Qwen3(m) => {
                m.clear_kv_cache();
                m.forward(&input, 0)
            }
            Self::Phi3(m) => m.forward(&input, 0),
        };
        out.unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
}

fn relative_error(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let err: f32 = ours.iter().zip(theirs).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f32 = theirs.iter().map(|b| b * b).sum();
    (err / norm).sqrt()
}

fn engine(arch: &str, tiny: &Tiny) -> Engine {
    Engine::from_reader(
        Cursor::new(tiny.bytes.clone()),
        &format!("tiny-{arch}.gguf"),
        EngineConfig {
            threads: Some(1),
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

fn random_tokens(tiny: &Tiny, n: usize) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..n)
        .map(|_| rng.random_range(100..tiny.vocab as u32))
        .collect()
}

/// Logits after 8 tokens in one forward pass, then after each of 4 more fed one at a time.
fn stepwise(engine: &mut Engine, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut session = engine.new_session();
    let mut out = vec![engine.logits(&mut session, &tokens[..8]).unwrap()];
    for t in &tokens[8..] {
        out.push(engine.logits(&mut session, &[*t]).unwrap());
    }
    out
}

/// [`stepwise`] against the reference computing each length from scratch: the KV cache and
/// positions of later steps are checked too.
fn matches_reference(arch: &'static str) {
    let s = shape(arch);
    let tiny = write_tiny(s, 7);
    let mut ours = engine(arch, &tiny);
    let mut reference = Reference::load(s, &tiny);
    let tokens = random_tokens(&tiny, 12);
    for (step, logits) in stepwise(&mut ours, &tokens).iter().enumerate() {
        let len = 8 + step;
        let err = relative_error(logits, &reference.logits(&tokens[..len]));
        eprintln!("{arch}: {len} tokens, relative error {err}");
        assert!(
            err < TOLERANCE,
            "{arch}: after {len} tokens our logits are {err} (relative) from candle-transformers'"
        );
    }
}

#[test]
fn llama_matches_candle_transformers() {
    matches_reference("llama");
}

#[test]
fn qwen2_matches_candle_transformers() {
    matches_reference("qwen2");
}

#[test]
fn qwen3_matches_candle_transformers() {
    matches_reference("qwen3");
}

#[test]
fn phi3_matches_candle_transformers() {
    matches_reference("phi3");
}

/// Decoding token by token gives the logits one forward pass over the same tokens gives, for
/// every family: the cache, the positions and (for Gemma 3, 12 tokens against a window of 5)
/// the sliding-window masks and key ranges of later steps agree with the batched pass.
#[test]
fn token_by_token_matches_one_pass_in_every_family() {
    for arch in ["llama", "qwen2", "qwen3", "gemma3", "phi3"] {
        let tiny = write_tiny(shape(arch), 5);
        let mut engine = engine(arch, &tiny);
        let tokens = random_tokens(&tiny, 12);
        for (step, logits) in stepwise(&mut engine, &tokens).iter().enumerate() {
            let len = 8 + step;
            let mut session = engine.new_session();
            let whole = engine.logits(&mut session, &tokens[..len]).unwrap();
            let err = relative_error(logits, &whole);
            assert!(
                err < 1e-4,
                "{arch}: after {len} tokens, stepwise and one-pass logits differ by {err}"
            );
        }
    }
}

/// The second line of a conversation reuses the first's cache, for every family.
#[test]
fn every_family_reuses_the_prefix_on_the_second_line() {
    for arch in ["llama", "qwen2", "qwen3", "gemma3", "phi3"] {
        let tiny = write_tiny(shape(arch), 3);
        let mut engine = engine(arch, &tiny);
        let params = GenerateParams {
            max_tokens: 8,
            sampling: SamplingParams::greedy(),
            ..GenerateParams::default()
        };
        let mut history = vec![
            ChatMessage::system("You are Mira, the blacksmith of Elmsbrook."),
            ChatMessage::user("Hello, who are you?"),
        ];
        let mut session = engine.new_session();
        let first = engine
            .chat(&mut session, &history, &params, &CancelToken::new(), |_| {})
            .unwrap();
        assert_eq!(first.stats.cached_tokens, 0, "{arch}");
        history.push(ChatMessage::assistant(first.text));
        history.push(ChatMessage::user("Can you fix my sword?"));
        let second = engine
            .chat(&mut session, &history, &params, &CancelToken::new(), |_| {})
            .unwrap();
        assert!(
            second.stats.cached_tokens > 0,
            "{arch}: the second line recomputed its whole prompt ({:?})",
            second.stats
        );
        assert!(engine.info().prefix_reuse, "{arch}");
    }
}
