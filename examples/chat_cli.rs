//! Chat with a character in the terminal, streaming tokens as they are generated. Bevy-free:
//! this uses only the inference engine.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release --example chat_cli
//! cargo run --release --example chat_cli -- --model path/to/other.gguf --seed 7
//! ```
//!
//! Type a line and press Enter; `/reset` forgets the conversation, `/quit` (or Ctrl-D) exits.

use std::io::{BufRead, Write};

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, SamplingParams,
};

const DEFAULT_MODEL: &str = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const PERSONA: &str = "You are Brannoc, the gruff but kind innkeeper of the Sleeping Fox in the \
village of Elmsbrook. You speak plainly, in one to three short sentences, and you never \
mention being an AI. You know the roads are dangerous since wolves were seen in the Old \
Forest, and that the ruined tower to the north is said to hold a silver key.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = DEFAULT_MODEL.to_owned();
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().ok_or("--model needs a path")?,
            "--seed" => seed = Some(args.next().ok_or("--seed needs a number")?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let mut engine = match Engine::load(&model, EngineConfig::default()) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let info = engine.info();
    eprintln!(
        "loaded {} ({}, context {} tokens). Talk to Brannoc; /reset, /quit.",
        info.name.as_deref().unwrap_or(&info.file),
        info.architecture,
        info.n_ctx
    );

    let params = GenerateParams {
        max_tokens: 160,
        sampling: SamplingParams {
            seed,
            ..SamplingParams::default()
        },
        ..GenerateParams::default()
    };
    let mut session = engine.new_session();
    let mut history = vec![ChatMessage::system(PERSONA)];
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "\nyou> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" => break,
            "/reset" => {
                history.truncate(1);
                session.clear();
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::user(line));
        write!(out, "brannoc> ")?;
        out.flush()?;
        let reply = engine.chat(&mut session, &history, &params, &CancelToken::new(), |d| {
            let mut out = std::io::stdout();
            let _ = write!(out, "{}", d.text);
            let _ = out.flush();
        });
        match reply {
            Ok(reply) => {
                let s = &reply.stats;
                eprintln!(
                    "\n  [{:?}; prompt {} ({} cached), {} tokens, {:.0} tok/s prefill, {:.1} tok/s decode]",
                    reply.stop_reason,
                    s.prompt_tokens,
                    s.cached_tokens,
                    s.generated_tokens,
                    s.prefill_tokens_per_second(),
                    s.decode_tokens_per_second()
                );
                history.push(ChatMessage::assistant(reply.text));
            }
            Err(e) => {
                eprintln!("\nerror: {e}");
                history.pop();
            }
        }
    }
    Ok(())
}
