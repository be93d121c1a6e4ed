//! Conversations between NPCs on the quality suite's rules, per speaker: three personas
//! (Mira, Aldous, Wren, each given a secret only it knows) talk about a topic through the
//! plugin (`Conversation`, in order and chosen by the model), then the player joins. Counted
//! for every line:
//!
//! - **speaker label**: the quality suite's rule (a `Name:` where a turn could start);
//! - **another's persona**: the speaker introduces itself by another participant's name;
//! - **wrong name**: by any name but its own (the suite's rule);
//! - **rule broken**: a word its `speaking_style` says it never says;
//! - **leakage** and **mid-sentence**: the suite's rules;
//! - **secret leaked**: a line holds another participant's secret word before that
//!   participant (or the player) said it aloud in the conversation;
//! - **narrates**: the line tells the scene instead of speaking in it (its speaker's own
//!   name followed by a lowercase word, or another participant's at its start: "Mira shakes
//!   her head");
//! - **direction echoed**: the line repeats the words of the plugin's conversation prompts
//!   ("Direction for", "is talking with", ...).
//!
//! Fixed seeds. `scripts/fetch-model`, then `cargo run --example quality_conversations`
//! (the crate is optimised in the dev profile); the table goes to stdout for QUALITY.md.

#[path = "quality/metrics.rs"]
#[allow(
    dead_code,
    reason = "the conversation rows use a few of the suite's metrics"
)]
mod metrics;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;

/// A persona with a secret: its file, its name, the secret and the secret's word.
struct Speaker {
    file: &'static str,
    name: &'static str,
    secret: &'static str,
    word: &'static str,
    never_says: &'static [&'static str],
}

const CAST: [Speaker; 3] = [
    Speaker {
        file: "mira",
        name: "Mira",
        secret: "A stranger paid Mira for a sword in Vantish gold coins last night.",
        word: "vantish",
        never_says: &[],
    },
    Speaker {
        file: "aldous",
        name: "Aldous",
        secret: "Aldous saw a lantern moving in the Marrowfen marsh at midnight.",
        word: "marrowfen",
        never_says: &[],
    },
    Speaker {
        file: "wren",
        name: "Wren",
        secret: "Wren found a broken cart by the Kettle Stones, its horse gone.",
        word: "kettle",
        never_says: &["friend"],
    },
];

/// Topics, each talked about with each turn policy.
const TOPICS: [&str; 4] = [
    "strange things seen around the village lately",
    "the wolves that circle the ruined tower",
    "whether the traveller can be trusted",
    "the coming winter",
];

/// NPC lines per conversation before the player speaks, and after.
const LINES: usize = 5;

/// What the player says once the NPCs have talked.
const PLAYER_LINE: &str = "Has anyone seen anything odd at night?";

/// Words of the plugin's conversation prompts (the direction, the opening): a line holding
/// one repeats its prompt.
const DIRECTION_WORDS: &[&str] = &[
    "direction for",
    "is talking with",
    "answer them",
    "start a conversation",
    "are here with you",
    "are listening",
    "your turn",
];

/// A line that narrates instead of speaking: it names its own speaker followed by a
/// lowercase word ("Aldous is still trying", "Mira chuckles"), or opens with another
/// participant's name followed by one ("Mira shakes her head"). An address ("Mira, what do
/// you think?") is not narration.
fn narrates(text: &str, me: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    let named_then_lower = |i: usize, name: &str| {
        words[i].trim_matches(|c: char| !c.is_alphanumeric()) == name
            && !words[i].ends_with([',', ':', '!', '?', '.'])
            && words
                .get(i + 1)
                .is_some_and(|w| w.starts_with(|c: char| c.is_lowercase()))
    };
    (0..words.len()).any(|i| named_then_lower(i, me))
        || CAST
            .iter()
            .any(|s| !words.is_empty() && named_then_lower(0, s.name))
}

/// Copies the personas into `dir`, each with its secret added to its knowledge.
fn write_personas(root: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("personas"))?;
    for speaker in &CAST {
        let source = root.join(format!("assets/personas/{}.persona.ron", speaker.file));
        let text = std::fs::read_to_string(source)?;
        let with_secret = text.replacen(
            "knowledge: [",
            &format!("knowledge: [\n        {:?},", speaker.secret),
            1,
        );
        assert_ne!(with_secret, text, "{} has a knowledge list", speaker.file);
        std::fs::write(
            dir.join(format!("personas/{}.persona.ron", speaker.file)),
            with_secret,
        )?;
    }
    let model = root.join("assets/models");
    let link = dir.join("models");
    if !link.exists() {
        #[cfg(unix)]
        std::os::unix::fs::symlink(model, link)?;
    }
    Ok(())
}

#[derive(Resource, Default)]
struct Heard {
    ended: usize,
}

fn hear(mut heard: ResMut<Heard>, mut ended: MessageReader<ConversationEnded>) {
    heard.ended += ended.read().count();
}

#[derive(Default)]
struct Counts {
    lines: usize,
    label: usize,
    another: usize,
    wrong_name: usize,
    rule: usize,
    leakage: usize,
    mid: usize,
    secret: usize,
    empty: usize,
    direction: usize,
    narrates: usize,
}

impl Counts {
    fn add(&mut self, speaker: &Speaker, text: &str, said_before: &str) {
        let others: Vec<&str> = CAST
            .iter()
            .filter(|s| s.name != speaker.name)
            .map(|s| s.name)
            .collect();
        self.lines += 1;
        if text.trim().is_empty() {
            self.empty += 1;
            return;
        }
        self.label += usize::from(metrics::speaker_label(text));
        let wrong = metrics::wrong_name(text, speaker.name);
        self.wrong_name += usize::from(wrong.is_some());
        self.another += usize::from(wrong.is_some_and(|w| others.contains(&w.as_str())));
        let never: Vec<String> = speaker.never_says.iter().map(|s| s.to_string()).collect();
        self.rule += usize::from(metrics::breaks_rule(text, &never));
        self.leakage += usize::from(metrics::leaks(text));
        self.mid += usize::from(metrics::mid_sentence(text));
        let lower = text.to_lowercase();
        self.direction += usize::from(DIRECTION_WORDS.iter().any(|w| lower.contains(w)));
        self.narrates += usize::from(narrates(text, speaker.name));
        let before = said_before.to_lowercase();
        self.secret +=
            usize::from(CAST.iter().any(|s| {
                s.name != speaker.name && lower.contains(s.word) && !before.contains(s.word)
            }));
    }

    fn row(&self, label: &str) -> String {
        let n = self.lines.max(1);
        let pct = |k: usize| format!("{:.0} % ({k}/{n})", 100.0 * k as f64 / n as f64);
        format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.lines,
            pct(self.narrates),
            pct(self.direction),
            pct(self.label),
            pct(self.another),
            pct(self.wrong_name),
            pct(self.rule),
            pct(self.leakage),
            pct(self.mid),
            pct(self.secret),
        )
    }
}

fn main() -> AppExit {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/quality_conversations");
    if let Err(e) = write_personas(&root, &dir) {
        eprintln!("cannot write the personas: {e}");
        return AppExit::error();
    }
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: dir.to_string_lossy().into_owned(),
            ..default()
        },
        LlmDialoguePlugin::default(),
    ))
    .init_resource::<Heard>()
    .add_systems(Last, hear);
    app.finish();
    app.cleanup();
    app.world_mut()
        .resource_mut::<DialogueContext>()
        .set("player_name", "Ann");
    let npcs: Vec<Entity> = CAST
        .iter()
        .map(|s| {
            let persona = app
                .world()
                .resource::<AssetServer>()
                .load(format!("personas/{}.persona.ron", s.file));
            app.world_mut().spawn(Npc::new(persona)).id()
        })
        .collect();

    let mut rows = Vec::new();
    let mut sample = String::new();
    // `quality_conversations in-order` runs the in-order conversations only.
    let in_order_only = std::env::args().any(|a| a == "in-order");
    let policies: &[TurnPolicy] = if in_order_only {
        &[TurnPolicy::InOrder]
    } else {
        &[TurnPolicy::InOrder, TurnPolicy::Model]
    };
    for &policy in policies {
        let mut counts = Counts::default();
        let mut joined = Counts::default();
        for (t, topic) in TOPICS.iter().enumerate() {
            let settings = LineSettings {
                seed: Some(100 + t as u64),
                ..default()
            };
            for npc in &npcs {
                app.world_mut().entity_mut(*npc).insert(settings.clone());
            }
            let conversation = app
                .world_mut()
                .spawn(
                    Conversation::new(npcs.clone())
                        .about(*topic)
                        .turns(policy)
                        .max_lines(LINES),
                )
                .id();
            let wait = |app: &mut App, ended: usize| {
                let start = Instant::now();
                while app.world().resource::<Heard>().ended < ended {
                    app.update();
                    std::thread::sleep(Duration::from_millis(1));
                    if start.elapsed() > Duration::from_secs(600) {
                        return false;
                    }
                }
                true
            };
            let ended = app.world().resource::<Heard>().ended;
            if !wait(&mut app, ended + 1) {
                eprintln!("a conversation did not end in 10 minutes");
                return AppExit::error();
            }
            app.world_mut().write_message(SayInConversation {
                conversation,
                line: PLAYER_LINE.into(),
            });
            if !wait(&mut app, ended + 2) {
                eprintln!("a conversation did not end after the player spoke");
                return AppExit::error();
            }
            let log = app
                .world()
                .get::<ConversationLog>(conversation)
                .cloned()
                .unwrap_or_default();
            let mut said = String::new();
            let mut after_player = false;
            for line in &log.lines {
                if line.speaker == "Ann" {
                    after_player = true;
                } else if let Some(speaker) = CAST.iter().find(|s| s.name == line.speaker) {
                    let into = if after_player {
                        &mut joined
                    } else {
                        &mut counts
                    };
                    into.add(speaker, &line.text, &said);
                }
                said.push_str(&line.text);
                said.push('\n');
            }
            if t == 0 {
                sample.push_str(&format!("{policy:?}, \"{topic}\":\n"));
                for line in &log.lines {
                    sample.push_str(&format!("  - {}: \"{}\"\n", line.speaker, line.text));
                }
            }
            app.world_mut().entity_mut(conversation).despawn();
            app.update();
        }
        rows.push(counts.row(&format!("{policy:?}, NPCs alone")));
        rows.push(joined.row(&format!("{policy:?}, after the player joined")));
    }
    eprintln!("{sample}");
    let mut out = String::from(
        "| turns | lines | narrates | direction echoed | speaker label | another's persona | wrong name | rule broken | leakage | mid-sentence | secret leaked |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    #[expect(clippy::print_stdout, reason = "the table is the output")]
    {
        print!("{out}");
    }
    AppExit::Success
}
