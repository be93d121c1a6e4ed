//! The packed CPU kernels compute the same model: SIMD bit for bit like the scalar reference,
//! and close to candle's quantized matmul in perplexity.

use crate::common;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, CpuKernels, Engine, EngineConfig, GenerateParams, SamplingParams,
};

fn engine(kernels: CpuKernels) -> Engine {
    common::engine_with(EngineConfig {
        cpu_kernels: kernels,
        ..EngineConfig::default()
    })
}

#[test]
fn simd_kernels_give_the_scalar_references_logits_bit_for_bit() {
    // Greedy decoding with the scalar reference, then both engines fed the same tokens. The
    // scalar reference sums in the SIMD path's eight lanes with fused multiply-adds and the same
    // reduction tree, so the logits, and with them every greedy choice, are identical.
    let mut fast = engine(CpuKernels::Packed);
    let mut reference = engine(CpuKernels::PackedScalar);
    let mut input = fast
        .chat_tokens(&[
            ChatMessage::system(
                "You are Mira, the blacksmith of Elmsbrook. Speak in short sentences.",
            ),
            ChatMessage::user("Can you fix my sword? It broke when I fought the wolves."),
        ])
        .unwrap();
    let (mut s_fast, mut s_ref) = (fast.new_session(), reference.new_session());
    for step in 0..40 {
        let a = fast.logits(&mut s_fast, &input).unwrap();
        let b = reference.logits(&mut s_ref, &input).unwrap();
        assert!(a == b, "step {step}: logits differ");
        let greedy = b
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        input = vec![greedy];
    }
}

#[test]
fn greedy_generation_is_deterministic_with_the_packed_kernels() {
    let params = GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let mut engine = engine(CpuKernels::Packed);
    let messages = [ChatMessage::user("Name three metals.")];
    let mut run = || {
        let mut session = engine.new_session();
        engine
            .chat(
                &mut session,
                &messages,
                &params,
                &CancelToken::new(),
                |_| {},
            )
            .unwrap()
            .tokens
    };
    let first = run();
    assert_eq!(first.len(), 24);
    assert_eq!(first, run());
}

const TEXT: &str = "The blacksmith of Elmsbrook works from dawn to dusk. Her forge is the hottest in \
    the valley, and travellers come from far away to buy her swords. When the wolves came down \
    from the Old Forest last winter, she made spears for every family in the village, and asked \
    for nothing in return. In spring the river rose over the lower fields, and the miller's \
    children were carried to the chapel on the hill, where the old priest kept them dry and fed \
    for nine days. The village paid him back with a new roof before the summer fair. At the \
    fair there were jugglers from the coast, a man who sold honey in clay pots, and a girl who \
    could name every star in the sky. The blacksmith bought a pot of honey and gave it to the \
    priest, who laughed and said that he had never been so well paid for so little work. By \
    autumn the wolves were back at the edge of the forest, and the hunters went out with the \
    spears she had made, and came home with three pelts and a story they told all winter.";

#[test]
fn perplexity_stays_within_two_percent_of_candles_matmul() {
    // The kernels quantize activations to 8 bits per block of 32, as llama.cpp does; candle's
    // path differs in rounding (ties to even here, away from zero there), so the models agree
    // closely but not bit for bit. One flipped rounding moves later tokens' log-probabilities,
    // so the text is long enough (over 200 tokens) for those moves to average out: on 61
    // tokens, changes of an ulp in the activations moved either perplexity by 1 %.
    let mut ours = engine(CpuKernels::Packed);
    let tokens = ours.tokenizer().encode(TEXT).unwrap();
    assert!(tokens.len() > 200);
    let a = ours.perplexity(&tokens).unwrap();
    let b = engine(CpuKernels::Candle).perplexity(&tokens).unwrap();
    eprintln!(
        "perplexity on {} tokens: packed kernels {a:.3}, candle {b:.3}",
        tokens.len()
    );
    assert!(a > 1.0 && a < 100.0, "a small model on plain English: {a}");
    assert!((a - b).abs() / b < 0.02, "packed {a} vs candle {b}");
}
