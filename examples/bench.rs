//! Inference benchmark: load time, prefill and decode speed, time to first token with and
//! without a cached persona, and memory with 1 and 16 conversations. Bevy-free.
//!
//! ```text
//! cargo run --release --no-default-features --example bench -- --threads 1
//! cargo run --release --no-default-features --example bench -- --threads 1 --candle-matmul
//! cargo run --release --no-default-features --example bench -- --threads 1 --kv-f32
//! cargo run --release --no-default-features --example bench -- --threads 1 --kv-f16
//! ```
//!
//! Prints a table and, with `--json`, one JSON object (used by `scripts/bench-vs-llamacpp`).
//! Figures are the best of `--repeat` runs (default 3), as llama-bench reports averages of
//! warm runs; the machine's noise moves them by several percent.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, CpuKernels, Engine, EngineConfig, GenerateParams, Grammar,
    KvCacheType, SamplingParams,
};
use bevy_llm_dialogue::prompt::{Facts, PromptTemplate};
use bevy_llm_dialogue::story::{Story, StoryAsset};

const PERSONA: &str = "You are Mira, the blacksmith of the village of Elmsbrook. Personality: \
gruff, honest, secretly kind, proud of her craft. How you speak: short, blunt sentences; you call \
everyone 'friend' and talk about steel and fire. What you know: wolves have been seen in the Old \
Forest; the ruined tower to the north is said to hold a silver key; the miller owes you money. \
What you want: find someone brave enough to fetch iron ore from the ruin. Stay in character. \
Answer with one to three short sentences of spoken dialogue, nothing else.";

const STORY: &str = include_str!("../assets/stories/silver_key.story.ron");

struct Args {
    model: String,
    threads: Option<usize>,
    candle_matmul: bool,
    kv_f32: bool,
    kv_f16: bool,
    json: bool,
    repeat: usize,
}

/// A narrator reply as one JSON object (a scene and its choices): the structured output
/// this measures (the plugin writes scenes as prose and a constrained list instead).
fn scene_schema(choices: usize, max_chars: usize) -> serde_json::Value {
    let min_chars = (max_chars / 4).max(20);
    serde_json::json!({
        "type": "object",
        "properties": {
            "scene": { "type": "string", "minLength": min_chars, "maxLength": max_chars },
            "choices": {
                "type": "array",
                "minItems": choices,
                "maxItems": choices,
                "items": { "type": "string", "pattern": "^[A-Z][A-Za-z ,'.!?-]{2,59}$" },
            },
        },
        "required": ["scene", "choices"],
        "additionalProperties": false,
    })
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        threads: None,
        candle_matmul: false,
        kv_f32: false,
        kv_f16: false,
        json: false,
        repeat: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--model" => a.model = value("--model")?,
            "--threads" => {
                a.threads = Some(value("--threads")?.parse().map_err(|e| format!("{e}"))?)
            }
            "--repeat" => a.repeat = value("--repeat")?.parse().map_err(|e| format!("{e}"))?,
            "--candle-matmul" => a.candle_matmul = true,
            "--kv-f32" => a.kv_f32 = true,
            "--kv-f16" => a.kv_f16 = true,
            "--json" => a.json = true,
            "--bench" => {} // cargo bench passes this
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Resident and peak resident memory of this process, in bytes (Linux).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let config = EngineConfig {
        threads: args.threads,
        cpu_kernels: if args.candle_matmul {
            CpuKernels::Candle
        } else {
            CpuKernels::Packed
        },
        kv_cache: match (args.kv_f32, args.kv_f16) {
            (true, _) => KvCacheType::F32,
            (_, true) => KvCacheType::F16,
            _ => KvCacheType::default(),
        },
        ..EngineConfig::default()
    };
    let cancel = CancelToken::new();

    let started = Instant::now();
    let mut engine = Engine::load(&args.model, config)?;
    let load = started.elapsed();
    let (rss_loaded, _) = rss();

    // Prefill: a 256-token prompt on an empty cache, one token out.
    let text = PERSONA.repeat(8);
    let prompt: Vec<u32> = engine
        .tokenizer()
        .encode(&text)?
        .into_iter()
        .take(256)
        .collect();
    assert_eq!(prompt.len(), 256, "the prompt text is long enough");
    let mut prefill = 0f64;
    for _ in 0..args.repeat {
        let mut session = engine.new_session();
        let g = engine.generate(&mut session, &prompt, &greedy(1), &cancel, |_| {})?;
        prefill = prefill.max(g.stats.prefill_tokens_per_second());
    }

    // Decode: 128 tokens after a short prompt.
    let short = engine.chat_tokens(&[ChatMessage::user("Tell me a story.")])?;
    let mut decode = 0f64;
    for _ in 0..args.repeat {
        let mut session = engine.new_session();
        let g = engine.generate(&mut session, &short, &greedy(128), &cancel, |_| {})?;
        decode = decode.max(g.stats.decode_tokens_per_second());
    }

    // Time to first token for an NPC line: cold, then with the persona and the first
    // exchange cached (the plugin's second line to the same NPC).
    let mut cold = Duration::MAX;
    let mut cached = Duration::MAX;
    let mut persona_tokens = 0;
    for _ in 0..args.repeat {
        let mut session = engine.new_session();
        let mut messages = vec![
            ChatMessage::system(PERSONA),
            ChatMessage::user("Good morning!"),
        ];
        // A short reply that ends at the end of its turn, as an NPC line does.
        let line = GenerateParams {
            ignore_eos: false,
            ..greedy(16)
        };
        let first = engine.chat(&mut session, &messages, &line, &cancel, |_| {})?;
        cold = cold.min(first.stats.time_to_first_token);
        persona_tokens = first.stats.prompt_tokens;
        messages.push(ChatMessage::assistant(first.text));
        messages.push(ChatMessage::user("What do you sell?"));
        let second = engine.chat(&mut session, &messages, &line, &cancel, |_| {})?;
        cached = cached.min(second.stats.time_to_first_token);
    }

    // Memory: one conversation, then sixteen, each holding the persona in its cache.
    let npc = engine.chat_tokens(&[ChatMessage::system(PERSONA), ChatMessage::user("Hello.")])?;
    let mut sessions = Vec::new();
    let mut rss_at = Vec::new();
    for n in 1..=16 {
        let mut session = engine.new_session();
        engine.generate(&mut session, &npc, &greedy(1), &cancel, |_| {})?;
        sessions.push(session);
        if n == 1 || n == 16 {
            rss_at.push((
                rss().0,
                sessions.iter().map(|s| s.cache_bytes()).sum::<usize>(),
            ));
        }
    }
    drop(sessions);

    // Constrained decoding: a narrator scene under its JSON schema against free text from
    // the same prompt, and three alternatives in one call against three separate calls.
    let story = StoryAsset::from_ron(STORY, "bench.story.ron")?;
    let messages = PromptTemplate::default_narrator().narrator_messages(
        &story,
        &Story::default(),
        &Facts::new(),
        &[],
    )?;
    let narrator = engine.chat_tokens(&messages)?;
    let grammar = Grammar::json_schema(scene_schema(story.choices, story.max_scene_chars));
    let sampled = |seed| GenerateParams {
        max_tokens: 200,
        sampling: SamplingParams::default().with_seed(seed),
        ..GenerateParams::default()
    };
    // A base model (no chat template, no instruction tuning) may never close the structure:
    // then these figures are zero and the report says n/a.
    let mut constrained = || -> Result<_, Box<dyn std::error::Error>> {
        let (mut free_tps, mut constrained_tps, mut mask_ms) = (0f64, 0f64, 0f64);
        for seed in 0..args.repeat as u64 {
            let mut session = engine.new_session();
            let free = engine.generate(&mut session, &narrator, &greedy(96), &cancel, |_| {})?;
            free_tps = free_tps.max(free.stats.decode_tokens_per_second());
            let mut session = engine.new_session();
            let c = engine.generate_constrained(
                &mut session,
                &narrator,
                &sampled(seed),
                &grammar,
                &cancel,
                |_| {},
            )?;
            constrained_tps = constrained_tps.max(c.stats.decode_tokens_per_second());
            mask_ms = c.stats.constraint_time.as_secs_f64() * 1e3 / c.stats.generated_tokens as f64;
        }
        let started = Instant::now();
        let mut session = engine.new_session();
        engine.generate_alternatives(
            &mut session,
            &narrator,
            &sampled(1),
            Some(&grammar),
            3,
            &cancel,
            |_, _| {},
        )?;
        let together = started.elapsed();
        let started = Instant::now();
        for seed in 0..3 {
            let mut session = engine.new_session();
            engine.generate_constrained(
                &mut session,
                &narrator,
                &sampled(seed + 1),
                &grammar,
                &cancel,
                |_| {},
            )?;
        }
        let separate = started.elapsed();

        Ok((free_tps, constrained_tps, mask_ms, together, separate))
    };
    let (free_tps, constrained_tps, mask_ms, together, separate) =
        constrained().unwrap_or_else(|e| {
            eprintln!("constrained decoding skipped: {e}");
            (0.0, 0.0, 0.0, Duration::ZERO, Duration::ZERO)
        });

    let (rss_1, kv_1) = rss_at[0];
    let (rss_16, kv_16) = rss_at[1];
    let (_, peak) = rss();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "threads": args.threads,
                "kernels": if args.candle_matmul { "candle" } else { "packed" },
                "load_s": load.as_secs_f64(),
                "prefill_tok_s": prefill,
                "decode_tok_s": decode,
                "ttft_cold_s": cold.as_secs_f64(),
                "ttft_cached_s": cached.as_secs_f64(),
                "persona_prompt_tokens": persona_tokens,
                "rss_loaded_mib": mib(rss_loaded),
                "rss_1_npc_mib": mib(rss_1),
                "rss_16_npc_mib": mib(rss_16),
                "kv_1_npc_mib": mib(kv_1 as u64),
                "kv_16_npc_mib": mib(kv_16 as u64),
                "peak_rss_mib": mib(peak),
                "narrator_prompt_tokens": narrator.len(),
                "free_decode_tok_s": free_tps,
                "constrained_decode_tok_s": constrained_tps,
                "mask_ms_per_token": mask_ms,
                "alternatives_3_together_s": together.as_secs_f64(),
                "alternatives_3_separate_s": separate.as_secs_f64(),
            })
        );
    } else {
        println!("model            {}", args.model);
        println!(
            "threads          {:?}, kernels {}",
            args.threads,
            if args.candle_matmul {
                "candle"
            } else {
                "packed"
            }
        );
        println!("load             {:.2} s", load.as_secs_f64());
        println!("prefill (pp256)  {prefill:.1} tok/s");
        println!("decode (tg128)   {decode:.1} tok/s");
        println!(
            "TTFT cold        {:.0} ms ({persona_tokens}-token persona prompt)",
            cold.as_secs_f64() * 1e3
        );
        println!(
            "TTFT cached      {:.0} ms ({:.3}x cold)",
            cached.as_secs_f64() * 1e3,
            cached.as_secs_f64() / cold.as_secs_f64()
        );
        println!(
            "RSS              loaded {:.0} MiB, 1 NPC {:.0} MiB, 16 NPCs {:.0} MiB (KV {:.1} / {:.1} MiB), peak {:.0} MiB",
            mib(rss_loaded),
            mib(rss_1),
            mib(rss_16),
            mib(kv_1 as u64),
            mib(kv_16 as u64),
            mib(peak)
        );
        println!(
            "constrained      {constrained_tps:.1} tok/s vs free {free_tps:.1} tok/s ({:.2}x), masks {mask_ms:.3} ms/token",
            constrained_tps / free_tps
        );
        println!(
            "3 alternatives   {:.2} s in one call vs {:.2} s as 3 calls ({:.2}x)",
            together.as_secs_f64(),
            separate.as_secs_f64(),
            together.as_secs_f64() / separate.as_secs_f64()
        );
        println!(
            "RSS(16)/RSS(1)   {:.3}; without the KV growth {:.3}",
            rss_16 as f64 / rss_1 as f64,
            (rss_16 as f64 - (kv_16 - kv_1) as f64) / rss_1 as f64
        );
    }
    Ok(())
}
