//! Conversations between several characters: each speaker sees the others' lines as the
//! user's turns, labelled with their names, and its own as its turns; and the question that
//! lets the model choose who speaks next.

use crate::engine::{ChatMessage, Role};

use super::npc::{MAX_TURN_BYTES, cut};

/// One line of a conversation between characters (and the player, if they joined).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[cfg_attr(feature = "bevy", reflect(Clone, Debug, PartialEq))]
pub struct SpokenLine {
    /// Who said it: a persona's name, or the player's.
    pub speaker: String,
    /// What they said.
    pub text: String,
}

/// A conversation as `me` sees it: its own lines are its (assistant) turns, everyone
/// else's are user turns of `Name: text` lines (consecutive ones joined, as strict chat
/// templates want turns to alternate). The last user turn, the lines since `me` last
/// spoke, is returned apart: it is what `me` answers. `None` when `me` spoke last or
/// nobody has spoken.
pub fn group_turns(lines: &[SpokenLine], me: &str) -> (Vec<ChatMessage>, Option<String>) {
    let mut turns: Vec<ChatMessage> = Vec::new();
    for line in lines {
        let text = cut(line.text.trim(), MAX_TURN_BYTES);
        if line.speaker == me {
            if turns.is_empty() {
                turns.push(ChatMessage::user(format!(
                    "(The conversation begins. {me}, speak first.)"
                )));
            }
            if turns.last().is_some_and(|t| t.role == Role::Assistant) {
                // Two lines of mine in a row: one turn.
                let last = turns.last_mut().expect("checked");
                last.content.push(' ');
                last.content.push_str(text);
            } else {
                turns.push(ChatMessage::assistant(text));
            }
        } else {
            let said = format!("{}: {text}", line.speaker);
            match turns.last_mut() {
                Some(last) if last.role == Role::User => {
                    last.content.push('\n');
                    last.content.push_str(&said);
                }
                _ => turns.push(ChatMessage::user(said)),
            }
        }
    }
    match turns.last() {
        Some(last) if last.role == Role::User => {
            let newest = turns.pop().map(|t| t.content);
            (turns, newest)
        }
        _ => (turns, None),
    }
}

/// The cue after the others' newest lines in `me`'s turn to answer them: `(Your turn,
/// Mira: answer Aldous and Wren about the wolves.)`. Inside the turn, as a direction is
/// followed best (QUALITY.md, "Directions"); a system note ("Direction for Mira's next
/// line: …") was copied into the lines (QUALITY.md, "Conversations").
pub fn group_cue(me: &str, others: &[&str], topic: Option<&str>) -> String {
    let with = names_list(others, "and");
    let about = topic.map(|t| format!(" about {t}")).unwrap_or_default();
    format!("(Your turn, {me}: answer {with}{about}.)")
}

/// The first line of a conversation: what `me` is asked when nobody has spoken yet.
pub fn group_opening(me: &str, others: &[&str], topic: Option<&str>) -> String {
    let with = names_list(others, "and");
    let about = topic.map(|t| format!(" about {t}")).unwrap_or_default();
    format!("({with} are here with you, {me}. Start a conversation with them{about}.)")
}

/// `a`, `a and b`, `a, b and c`.
fn names_list(names: &[&str], and: &str) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} {and} {last}", rest.join(", ")),
    }
}

/// The messages that ask the model who speaks next among `candidates` (names; the answer
/// is constrained to them by [`next_speaker_schema`]): the participants with their
/// descriptions, the topic, and the newest lines.
pub fn next_speaker_messages(
    participants: &[(&str, &str)],
    topic: Option<&str>,
    lines: &[SpokenLine],
    candidates: &[&str],
) -> Vec<ChatMessage> {
    let cast: Vec<String> = participants
        .iter()
        .map(|(name, description)| format!("{name}, {description}"))
        .collect();
    let about = topic.map(|t| format!(" about {t}")).unwrap_or_default();
    let newest = &lines[lines.len().saturating_sub(8)..];
    let transcript: String = newest
        .iter()
        .map(|l| format!("{}: {}\n", l.speaker, cut(l.text.trim(), 512)))
        .collect();
    vec![
        ChatMessage::system(format!(
            "You direct a conversation{about} between {}.",
            names_list(&cast.iter().map(String::as_str).collect::<Vec<_>>(), "and")
        )),
        ChatMessage::user(format!(
            "{transcript}\nWho speaks next: {}? Answer with the name.",
            names_list(candidates, "or")
        )),
    ]
}

/// The JSON schema of the next speaker's name: one of `candidates`.
pub fn next_speaker_schema(candidates: &[&str]) -> serde_json::Value {
    serde_json::json!({ "enum": candidates })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(speaker: &str, text: &str) -> SpokenLine {
        SpokenLine {
            speaker: speaker.into(),
            text: text.into(),
        }
    }

    #[test]
    fn each_speaker_sees_its_own_lines_as_its_turns_and_the_others_labelled() {
        let lines = [
            line("Mira", "Wolves again."),
            line("Brannoc", "I saw tracks."),
            line("Ann", "Where?"),
            line("Mira", "By the mill."),
            line("Brannoc", "Near the bridge too."),
        ];
        let (turns, newest) = group_turns(&lines, "Mira");
        assert_eq!(
            turns,
            [
                ChatMessage::user("(The conversation begins. Mira, speak first.)"),
                ChatMessage::assistant("Wolves again."),
                ChatMessage::user("Brannoc: I saw tracks.\nAnn: Where?"),
                ChatMessage::assistant("By the mill."),
            ]
        );
        assert_eq!(newest.as_deref(), Some("Brannoc: Near the bridge too."));
        let (turns, newest) = group_turns(&lines, "Brannoc");
        assert_eq!(turns[0], ChatMessage::user("Mira: Wolves again."));
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[3], ChatMessage::assistant("Near the bridge too."));
        assert_eq!(newest, None, "Brannoc spoke last");
        let (turns, newest) = group_turns(&[], "Mira");
        assert!(turns.is_empty() && newest.is_none());
    }

    #[test]
    fn the_next_speaker_question_lists_the_candidates() {
        let msgs = next_speaker_messages(
            &[("Mira", "the blacksmith"), ("Brannoc", "the ferryman")],
            Some("the wolves"),
            &[line("Mira", "Wolves again.")],
            &["Brannoc"],
        );
        assert!(
            msgs[0].content.contains(
                "about the wolves between Mira, the blacksmith and Brannoc, the ferryman"
            ),
            "{}",
            msgs[0].content
        );
        assert!(
            msgs[1]
                .content
                .ends_with("Who speaks next: Brannoc? Answer with the name.")
        );
        assert_eq!(
            next_speaker_schema(&["Mira", "Old Hester"]),
            serde_json::json!({"enum": ["Mira", "Old Hester"]})
        );
        assert_eq!(
            group_cue("Mira", &["Brannoc", "Ann", "Hester"], None),
            "(Your turn, Mira: answer Brannoc, Ann and Hester.)"
        );
    }
}
