//! How a line's direction (`RequestLine::direction`, the Yarn bridge's `generate_line`) is
//! best told to the model: measured on the quality suite's personas, seeds 1-3, with the
//! plugin's line settings, one row per placement. Engine only (no Bevy).
//!
//! `scripts/fetch-model`, then `cargo run --release --example quality_directions`; the table
//! goes to stdout for QUALITY.md.

use std::path::PathBuf;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, Role,
};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{Facts, PromptTemplate, directed_unprompted_line};

/// Directions with the words that show a line followed them.
const DIRECTIONS: [(&str, &[&str]); 3] = [
    (
        "greet the traveller and mention the wolves",
        &["wolf", "wolves"],
    ),
    (
        "warn the player that a storm is coming",
        &["storm", "rain", "thunder", "wind"],
    ),
    ("ask the player to help find a lost ring", &["ring"]),
];

/// Where the direction goes.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// Not told (the baseline for how often a line mentions the topic anyway).
    None,
    /// A system note before the newest turn (as lore notes are): the first version.
    Note,
    /// Inside the newest turn, after the unprompted ask: what the plugin does.
    InTurn,
}

/// The words of `text`, lower case.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `line` repeats four words of `direction` in a row.
fn echoes(line: &str, direction: &str) -> bool {
    let said = words(line).join(" ");
    words(direction)
        .windows(4)
        .any(|w| said.contains(&w.join(" ")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut engine = Engine::load(
        &model,
        EngineConfig {
            threads: Some(1),
            ..EngineConfig::default()
        },
    )?;
    let template = PromptTemplate::default_npc();
    let dir = root.join("tests/data/quality/personas");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let personas: Vec<Persona> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)?;
            Persona::from_ron(&text, &f.display().to_string())
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
        })
        .collect::<Result<_, _>>()?;

    let mut rows = Vec::new();
    for placement in [Placement::None, Placement::Note, Placement::InTurn] {
        let (mut n, mut echo, mut topic, mut unfinished) = (0, 0, 0, 0);
        let mut sample = String::new();
        for persona in &personas {
            for (direction, keys) in DIRECTIONS {
                for seed in 1..=3u64 {
                    let mut messages = template.npc_messages(
                        persona,
                        &Facts::new(),
                        &Facts::new(),
                        &[],
                        None,
                        &[],
                    )?;
                    let last = messages.len() - 1;
                    debug_assert_eq!(messages[last].role, Role::User);
                    match placement {
                        Placement::None => {}
                        Placement::Note => {
                            let note =
                                format!("Direction for {}'s next line: {direction}", persona.name);
                            messages.insert(last, ChatMessage::system(note));
                        }
                        Placement::InTurn => {
                            messages[last].content = directed_unprompted_line(direction);
                        }
                    }
                    let mut params = GenerateParams {
                        max_tokens: persona.max_tokens.unwrap_or(96),
                        max_sentences: Some(persona.max_sentences.unwrap_or(3)),
                        whole_sentences: true,
                        ..GenerateParams::default()
                    };
                    if let Some(s) = &persona.sampling {
                        params.sampling = s.clone();
                    }
                    params.sampling = params.sampling.with_seed(seed);
                    params.stop.extend(persona.stop.iter().cloned());
                    let mut session = engine.new_session();
                    let line = engine.chat(
                        &mut session,
                        &messages,
                        &params,
                        &CancelToken::new(),
                        |_| {},
                    )?;
                    let text = line.text.trim();
                    n += 1;
                    echo += usize::from(echoes(text, direction));
                    let lower = text.to_lowercase();
                    topic += usize::from(keys.iter().any(|k| lower.contains(k)));
                    let ended = text.ends_with(['.', '!', '?', '"', '…', '\'', ')']);
                    unfinished += usize::from(!ended);
                    if seed == 1 && sample.len() < 600 {
                        sample.push_str(&format!(
                            "  - {} / \"{direction}\": \"{text}\"\n",
                            persona.name
                        ));
                    }
                }
            }
        }
        let pct = |k: usize| 100.0 * k as f64 / n as f64;
        rows.push(format!(
            "| {placement:?} | {n} | {:.0} % | {:.0} % | {:.0} % |",
            pct(topic),
            pct(echo),
            pct(unfinished)
        ));
        eprintln!("{placement:?}:\n{sample}");
    }
    let mut out = String::from(
        "| placement | lines | on topic | repeats the direction (4 words in a row) | mid-sentence |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    // The table is this example's output.
    #[expect(clippy::print_stdout, reason = "the table is the output")]
    {
        print!("{out}");
    }
    Ok(())
}
