//! How the plugin's history summaries (`DialogueSettings::summarize_after`) are best asked
//! for: whether the note keeps the facts of the turns it replaces. Each conversation opens
//! with the player giving a name, a lost thing and a place, then small talk; every prompt
//! below summarises the same conversations, greedily, with the plugin's summary settings.
//! Engine only (no Bevy).
//!
//! `scripts/fetch-model`, then `cargo run --release --no-default-features --example
//! quality_summaries`; the table goes to stdout for QUALITY.md.

use std::path::PathBuf;

use bevy_llm_dialogue::engine::{
    CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, Role, SamplingParams,
};
use bevy_llm_dialogue::prompt::summary_messages;

/// The player's name, what was lost and where: the facts a note must keep.
const FACTS: [(&str, &str, &str); 6] = [
    ("Bartholomew", "silver ring", "old mill"),
    ("Anwen", "brass key", "chapel"),
    ("Tobias", "grey horse", "north bridge"),
    ("Maud", "green cloak", "tannery"),
    ("Edric", "letter", "harbour"),
    ("Rosalind", "copper locket", "orchard"),
];

/// The NPCs (the quality suite's persona names) and their small talk.
const NPCS: [(&str, &str, &str); 3] = [
    (
        "Mira",
        "Is the forge hot today?",
        "Hot enough to bend iron, friend.",
    ),
    (
        "Brannoc",
        "Any ships in today?",
        "Two fishing boats, nothing more.",
    ),
    (
        "Old Hester",
        "Will it rain tonight?",
        "My knees say it will, dear.",
    ),
];

/// How the summary is asked for.
#[derive(Clone, Copy, Debug)]
enum Prompt {
    /// The plugin's prompt until this measurement: a system note on what to keep, and "what
    /// was said".
    WhatWasSaid,
    /// The plugin's prompt now (`prompt::summary_messages`): the same system note; the ask
    /// names what the player told the NPC.
    WhatThePlayerTold,
    /// No system note; the ask names the kinds of facts to keep, in the player's words.
    FactsInTheAsk,
}

impl Prompt {
    fn messages(self, name: &str, turns: &[ChatMessage]) -> Vec<ChatMessage> {
        if let Prompt::WhatThePlayerTold = self {
            return summary_messages(name, None, turns);
        }
        // The earlier prompts, on the transcript as the plugin writes it.
        let transcript: String = turns
            .iter()
            .map(|t| {
                let who = if t.role == Role::User { "Player" } else { name };
                format!("{who}: {}\n", t.content)
            })
            .collect();
        let conversation = format!("Conversation between the player and {name}:\n{transcript}");
        if let Prompt::WhatWasSaid = self {
            return vec![
                ChatMessage::system(
                    "You write short notes about conversations. Keep every name, place, \
                     object and promise.",
                ),
                ChatMessage::user(format!(
                    "{conversation}\nWrite one or two sentences about what was said."
                )),
            ];
        }
        vec![ChatMessage::user(format!(
            "{conversation}\nIn one or two sentences, note what the player told {name}: \
             their name, what they lost and where."
        ))]
    }
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
    // As the plugin's summary job: greedy, at most 96 tokens and 3 whole sentences.
    let params = GenerateParams {
        max_tokens: 96,
        max_sentences: Some(3),
        whole_sentences: true,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        ..GenerateParams::default()
    };

    let mut rows = Vec::new();
    for prompt in [
        Prompt::WhatWasSaid,
        Prompt::WhatThePlayerTold,
        Prompt::FactsInTheAsk,
    ] {
        let (mut n, mut any, mut all, mut unfinished) = (0, 0, 0, 0);
        let mut sample = String::new();
        for (player, thing, place) in FACTS {
            for (npc, small_talk, reply) in NPCS {
                let mut turns = vec![
                    ChatMessage::user(format!(
                        "My name is {player}. I lost my {thing} at the {place}."
                    )),
                    ChatMessage::assistant(format!(
                        "Your {thing}? I will keep an eye out, {player}."
                    )),
                ];
                for _ in 0..5 {
                    turns.push(ChatMessage::user(small_talk));
                    turns.push(ChatMessage::assistant(reply));
                }
                let mut session = engine.new_session();
                let note = engine.chat(
                    &mut session,
                    &prompt.messages(npc, &turns),
                    &params,
                    &CancelToken::new(),
                    |_| {},
                )?;
                let text = note.text.trim();
                let lower = text.to_lowercase();
                let kept: Vec<bool> = [player, thing, place]
                    .iter()
                    .map(|fact| {
                        // The thing's or place's last word is enough ("ring", "mill").
                        let key = fact.split(' ').next_back().unwrap_or(fact);
                        lower.contains(&key.to_lowercase())
                    })
                    .collect();
                n += 1;
                any += usize::from(kept.iter().any(|k| *k));
                all += usize::from(kept.iter().all(|k| *k));
                unfinished += usize::from(!text.ends_with(['.', '!', '?', '"', '…', ')']));
                if npc == "Mira" && sample.len() < 900 {
                    sample.push_str(&format!("  - {player}: \"{text}\"\n"));
                }
            }
        }
        let pct = |k: usize| 100.0 * k as f64 / n as f64;
        rows.push(format!(
            "| {prompt:?} | {n} | {:.0} % ({any}/{n}) | {:.0} % ({all}/{n}) | {:.0} % |",
            pct(any),
            pct(all),
            pct(unfinished)
        ));
        eprintln!("{prompt:?}:\n{sample}");
    }
    let mut out = String::from(
        "| prompt | notes | keeps a fact | keeps all three | mid-sentence |\n|---|---|---|---|---|\n",
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
