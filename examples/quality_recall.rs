//! Episodic memory on the quality suite's personas: a fact the player told an NPC more than
//! a hundred turns earlier, asked about again. Each conversation opens with the player's
//! name, a lost thing and a place, then 110 exchanges of small talk; the question comes
//! last. The prompt is the plugin's (persona, the newest 48 turns as
//! `prompt::conversation` keeps them); the conditions differ only in the note by the
//! question:
//!
//! - `no recall`: none (the plugin before episodic memory; the fact is 200+ turns back);
//! - `BM25 recall`: the plugin's default, `Bm25Recall` over the unseen episodes, 3 moments
//!   within 160 tokens (`DialogueSettings::recall_moments`, `recall_tokens`), either as a
//!   system note by the question (`RecallQuery::note`) or as the earlier turns they were
//!   (`RecallQuery::messages`, what the worker does);
//! - `fact in recent turns`: the ceiling, the fact told two exchanges before the question.
//!
//! A reply recalls the fact when it names the asked-for word (the place's or thing's last
//! word, the name) as a whole word; the small talk uses none of them. Sampling as the plugin's lines, seeded.
//!
//! `scripts/fetch-model`, then `cargo run --release --no-default-features --example
//! quality_recall [none] [note] [turns] [ceiling]` (all four by default); the table goes to
//! stdout for QUALITY.md.

use std::path::PathBuf;
use std::sync::Arc;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, SamplingParams,
};
use bevy_llm_dialogue::memory::{Bm25Recall, Episode, RecallQuery, insert_recalled, unseen};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{DEFAULT_PLAYER_NAME, Facts, PromptTemplate, conversation};

/// The player's name, what was lost and where: the facts asked about.
const FACTS: [(&str, &str, &str); 6] = [
    ("Bartholomew", "silver ring", "old mill"),
    ("Anwen", "brass compass", "chapel"),
    ("Tobias", "grey horse", "north bridge"),
    ("Maud", "green cloak", "tannery"),
    ("Edric", "letter", "harbour"),
    ("Rosalind", "copper locket", "orchard"),
];

/// Small talk, varied so that recall has more than one kind of moment to pass over.
const SMALL_TALK: [(&str, &str); 8] = [
    ("Is it cold today?", "Cold enough for two coats."),
    (
        "Any news from the road?",
        "Carts came in at dawn, nothing more.",
    ),
    ("How is business?", "Slow, but it pays the rent."),
    ("Did you sleep well?", "Not a wink, with the wind howling."),
    ("What's for supper?", "Bread and a thin soup."),
    (
        "Seen any strangers?",
        "Only you, and you're not so strange now.",
    ),
    ("Will it rain tonight?", "The clouds say yes."),
    (
        "Heard any songs lately?",
        "The baker's boy sings every morning, badly.",
    ),
];

/// Exchanges of small talk between the fact and the question.
const FILLER: usize = 110;

/// A question about the fact and the word that answers it.
fn questions(player: &str, thing: &str, place: &str) -> [(String, String); 3] {
    let last = |s: &str| s.split(' ').next_back().unwrap_or(s).to_lowercase();
    [
        (format!("Where did I lose my {thing}?"), last(place)),
        (format!("What did I lose at the {place}?"), last(thing)),
        ("Do you remember my name?".into(), player.to_lowercase()),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Condition {
    NoRecall,
    Bm25Note,
    Bm25Turns,
    FactInRecentTurns,
}

impl Condition {
    fn label(self) -> &'static str {
        match self {
            Self::NoRecall => "no recall (before)",
            Self::Bm25Note => "BM25 recall, as a note by the question",
            Self::Bm25Turns => "BM25 recall, as earlier turns (the default)",
            Self::FactInRecentTurns => "fact in recent turns (ceiling)",
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut engine = Engine::load(
        &model,
        EngineConfig {
            threads: Some(2),
            ..EngineConfig::default()
        },
    )?;
    let mut personas = Vec::new();
    for name in ["mira", "aldous", "wren"] {
        let path = root.join(format!("assets/personas/{name}.persona.ron"));
        personas.push(Persona::from_ron(&std::fs::read_to_string(&path)?, name)?);
    }
    let template = PromptTemplate::default_npc();

    let mut rows = Vec::new();
    // `quality_recall turns note` runs only those conditions (all by default).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let all = [
        (Condition::NoRecall, "none"),
        (Condition::Bm25Note, "note"),
        (Condition::Bm25Turns, "turns"),
        (Condition::FactInRecentTurns, "ceiling"),
    ];
    for (condition, _) in all
        .into_iter()
        .filter(|(_, arg)| only.is_empty() || only.iter().any(|o| o == arg))
    {
        let (mut n, mut recalled, mut in_prompt) = (0, 0, 0);
        let mut sample = String::new();
        for (f, (player, thing, place)) in FACTS.into_iter().enumerate() {
            for persona in &personas {
                let told = (
                    format!("My name is {player}. I lost my {thing} at the {place}."),
                    format!("Your {thing}? I will keep an eye out, {player}."),
                );
                let mut exchanges: Vec<(String, String)> = Vec::new();
                if condition != Condition::FactInRecentTurns {
                    exchanges.push(told.clone());
                }
                for i in 0..FILLER {
                    let (q, a) = SMALL_TALK[(i + f) % SMALL_TALK.len()];
                    exchanges.push((q.into(), a.into()));
                }
                if condition == Condition::FactInRecentTurns {
                    let at = exchanges.len() - 2;
                    exchanges.insert(at, told.clone());
                }
                let turns: Vec<ChatMessage> = exchanges
                    .iter()
                    .flat_map(|(q, a)| [ChatMessage::user(q), ChatMessage::assistant(a)])
                    .collect();
                let episodes: Vec<Episode> = exchanges
                    .iter()
                    .map(|(q, a)| Episode::Exchange {
                        said: Some(q.clone()),
                        reply: a.clone(),
                    })
                    .collect();
                let mut session = engine.new_session();
                for (q, (question, answer)) in questions(player, thing, place).iter().enumerate() {
                    let mut messages = template.npc_messages(
                        persona,
                        &Facts::new(),
                        &Facts::new(),
                        &turns,
                        Some(question),
                        &[],
                    )?;
                    if matches!(condition, Condition::Bm25Note | Condition::Bm25Turns) {
                        let query = RecallQuery {
                            query: question.clone(),
                            episodes: unseen(&episodes, &conversation(&turns)),
                            speaker: persona.name.clone(),
                            player: DEFAULT_PLAYER_NAME.into(),
                            limit: 3,
                            token_budget: 160,
                            recall: Arc::new(Bm25Recall::default()),
                        };
                        if condition == Condition::Bm25Turns {
                            // As the worker does.
                            insert_recalled(&mut messages, query.messages());
                        } else if let Some(note) = query.note() {
                            let at = messages.len() - 1;
                            messages.insert(at, ChatMessage::system(note));
                        }
                    }
                    // As the worker does: the oldest turns go if the context needs room.
                    let messages = engine.fit_chat(messages, 96)?.messages;
                    let shown = messages
                        .iter()
                        .any(|m| m.content.contains(&format!("I lost my {thing}")));
                    let mut params = GenerateParams {
                        max_tokens: 96,
                        max_sentences: Some(3),
                        whole_sentences: true,
                        ..GenerateParams::default()
                    };
                    params.stop.extend(persona.stop.iter().cloned());
                    params.sampling = SamplingParams {
                        seed: Some(1000 + (f * 10 + q) as u64),
                        ..persona.sampling.clone().unwrap_or_default()
                    };
                    let reply = engine.chat(
                        &mut session,
                        &messages,
                        &params,
                        &CancelToken::new(),
                        |_| {},
                    )?;
                    let text = reply.text.trim();
                    n += 1;
                    in_prompt += usize::from(shown);
                    let hit = text
                        .to_lowercase()
                        .split(|c: char| !c.is_alphanumeric())
                        .any(|word| word == answer);
                    recalled += usize::from(hit);
                    if sample.len() < 1200 && q < 2 {
                        sample.push_str(&format!(
                            "  - {} to \"{question}\" ({answer}: {hit}): \"{text}\"\n",
                            persona.name
                        ));
                    }
                }
            }
        }
        let pct = |k: usize| 100.0 * k as f64 / n as f64;
        rows.push(format!(
            "| {} | {n} | {:.0} % ({in_prompt}/{n}) | {:.0} % ({recalled}/{n}) |",
            condition.label(),
            pct(in_prompt),
            pct(recalled),
        ));
        eprintln!("{}:\n{sample}", condition.label());
    }
    let mut out = String::from(
        "| condition | questions | fact in the prompt | reply names it |\n|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    #[expect(clippy::print_stdout, reason = "the table is the output")]
    {
        print!("{out}");
    }
    Ok(())
}
