//! Many NPCs at once: aggregate generated tokens per second with 1, 4, 8 and 16 lines
//! generated together ([`Engine::begin`] / [`Engine::step`]), against the same lines one after
//! another; and the time to first token of a new line while 8 others generate, against an
//! idle engine. Bevy-free.
//!
//! ```text
//! cargo run --release --no-default-features --example bench_many -- --threads 1
//! cargo run --release --no-default-features --example bench_many -- --threads 2 --json
//! ```
//!
//! Every line has its own NPC prompt (a persona and a question, about 90 tokens) and generates
//! exactly `--tokens` tokens (end-of-turn ignored), so every run does the same work.
//! Figures are the best of `--repeat` runs (default 2).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Decoding, Engine, EngineConfig, GenerateParams, SamplingParams,
    TokenId,
};

const NPCS: [(&str, &str); 16] = [
    ("Mira, the blacksmith", "Can you fix my sword?"),
    ("Tom, an old fisherman", "How was the catch today?"),
    ("Ada, the innkeeper", "Is there a room for the night?"),
    ("Brother Cole, a monk", "What do you pray for?"),
    ("Sela, a guard at the gate", "Why is the gate shut?"),
    (
        "Pip, a street urchin",
        "Have you seen a man in a red cloak?",
    ),
    ("Lady Wren, the mayor", "What troubles the town?"),
    ("Hob, a farmer", "Will the harvest be good?"),
    ("Nell, the herbalist", "What cures a fever?"),
    ("Gus, a travelling merchant", "What are you selling?"),
    ("Ivy, a bard", "Sing me something."),
    ("Rook, a hunter", "Where are the wolves?"),
    ("Dara, the miller", "Why does the mill stand still?"),
    ("Old Mag, a witch", "Can you read my fortune?"),
    ("Finn, the ferryman", "How much to cross?"),
    ("Captain Vale", "Who attacked the caravan?"),
];

struct Args {
    model: String,
    threads: Option<usize>,
    tokens: usize,
    repeat: usize,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        threads: None,
        tokens: 64,
        repeat: 2,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--model" => a.model = value("--model")?,
            "--threads" => {
                a.threads = Some(value("--threads")?.parse().map_err(|e| format!("{e}"))?)
            }
            "--tokens" => a.tokens = value("--tokens")?.parse().map_err(|e| format!("{e}"))?,
            "--repeat" => a.repeat = value("--repeat")?.parse().map_err(|e| format!("{e}"))?,
            "--json" => a.json = true,
            "--bench" => {} // cargo bench passes this
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn prompt(engine: &Engine, i: usize) -> Result<Vec<TokenId>, Box<dyn std::error::Error>> {
    let (who, question) = NPCS[i % NPCS.len()];
    let system = format!(
        "You are {who} in the village of Elmsbrook. Stay in character. Wolves have been seen \
         in the Old Forest and the ruined tower to the north is said to hold a silver key. \
         Answer with one to three short sentences of spoken dialogue, nothing else."
    );
    Ok(engine.chat_tokens(&[ChatMessage::system(system), ChatMessage::user(question)])?)
}

fn params(tokens: usize, seed: u64) -> GenerateParams {
    GenerateParams {
        max_tokens: tokens,
        ignore_eos: true,
        sampling: SamplingParams::default().with_seed(seed),
        ..GenerateParams::default()
    }
}

/// Generates `n` lines together; returns the wall time and the decode-only aggregate rate
/// (tokens after each line's first, over the time from the last first token to the end).
fn together(
    engine: &mut Engine,
    n: usize,
    tokens: usize,
) -> Result<(Duration, f64), Box<dyn std::error::Error>> {
    let prompts = (0..n)
        .map(|i| prompt(engine, i))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut batch: Vec<Decoding> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let session = engine.new_session();
            engine.begin(
                session,
                p,
                &params(tokens, i as u64),
                None,
                CancelToken::new(),
            )
        })
        .collect();
    let mut all_started = None;
    while batch.iter().any(|d| !d.is_finished()) {
        engine.step(&mut batch, |_, _| {})?;
        if all_started.is_none() && batch.iter().all(|d| !d.is_prefilling()) {
            all_started = Some(Instant::now());
        }
    }
    let wall = started.elapsed();
    let decode = all_started.map_or(wall, |t| t.elapsed());
    for d in batch {
        let g = d.finish().1?;
        assert_eq!(
            g.stats.generated_tokens, tokens,
            "ignore_eos generates them all"
        );
    }
    Ok((wall, (n * (tokens - 1)) as f64 / decode.as_secs_f64()))
}

/// Time to the first token of a new line: on an idle engine, and joining `busy` lines that
/// are generating.
fn first_token(
    engine: &mut Engine,
    busy: usize,
    tokens: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let player = prompt(engine, NPCS.len() - 1)?;
    let mut batch: Vec<Decoding> = Vec::new();
    for i in 0..busy {
        let p = prompt(engine, i)?;
        let session = engine.new_session();
        batch.push(engine.begin(
            session,
            &p,
            &params(tokens * 4, i as u64),
            None,
            CancelToken::new(),
        ));
    }
    // The others are past their prompts and generating when the new line arrives.
    while batch.iter().any(Decoding::is_prefilling) {
        engine.step(&mut batch, |_, _| {})?;
    }
    let session = engine.new_session();
    let started = Instant::now();
    batch.insert(
        0,
        engine.begin(
            session,
            &player,
            &params(tokens, 99),
            None,
            CancelToken::new(),
        ),
    );
    while batch[0].generated_tokens() == 0 {
        engine.step(&mut batch, |_, _| {})?;
    }
    Ok(started.elapsed())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let config = EngineConfig {
        threads: args.threads,
        ..EngineConfig::default()
    };
    let mut engine = Engine::load(&args.model, config)?;
    // Warm-up: page the weights in.
    together(&mut engine, 1, 8)?;

    let mut rows = Vec::new();
    let best = |a: f64, b: f64| a.max(b);
    for n in [1, 4, 8, 16] {
        let (mut aggregate, mut decode) = (0f64, 0f64);
        for _ in 0..args.repeat {
            let (wall, d) = together(&mut engine, n, args.tokens)?;
            aggregate = best(aggregate, (n * args.tokens) as f64 / wall.as_secs_f64());
            decode = best(decode, d);
        }
        rows.push((n, aggregate, decode));
    }
    let one = rows[0].1;
    let mut idle = Duration::MAX;
    let mut loaded = Duration::MAX;
    for _ in 0..args.repeat {
        idle = idle.min(first_token(&mut engine, 0, args.tokens)?);
        loaded = loaded.min(first_token(&mut engine, 8, args.tokens)?);
    }

    if args.json {
        let lines: Vec<_> = rows
            .iter()
            .map(|(n, a, d)| {
                serde_json::json!({"lines": n, "tokens_per_second": a, "decode_tokens_per_second": d})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "threads": args.threads,
                "tokens_per_line": args.tokens,
                "lines": lines,
                "first_token_idle_ms": idle.as_secs_f64() * 1e3,
                "first_token_with_8_ms": loaded.as_secs_f64() * 1e3,
                // For the anchor (scripts/bench-many-vs-llamacpp): the same prompts.
                "prompts": (0..NPCS.len()).map(|i| prompt(&engine, i)).collect::<Result<Vec<_>, _>>()?,
            })
        );
    } else {
        println!(
            "model {}  threads {:?}  {} tokens a line",
            args.model, args.threads, args.tokens
        );
        println!("lines  tokens/s (all, prompts included)  vs 1 line  decode tokens/s");
        for (n, a, d) in &rows {
            println!("{n:>5}  {a:>34.1}  {:>8.2}x  {d:>15.1}", a / one);
        }
        println!(
            "first token of a new line: idle {:.1} ms, with 8 lines generating {:.1} ms ({:.2}x)",
            idle.as_secs_f64() * 1e3,
            loaded.as_secs_f64() * 1e3,
            loaded.as_secs_f64() / idle.as_secs_f64()
        );
    }
    Ok(())
}
