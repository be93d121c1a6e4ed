//! The request for a note of a conversation's oldest turns (the plugin's history summaries).

use crate::engine::{ChatMessage, Role};

/// The messages that ask the model for a note of `turns` between the player and the NPC
/// `name`, following the `earlier` note they continue, if any: one `Speaker: text` line per
/// turn (system turns left out), and an ask for what the player told the NPC, with every
/// name, place and thing (it kept one of the player's facts in 94 % of the notes of
/// `examples/quality_summaries`, against 61 % for "what was said"). The plugin's
/// `DialogueSettings::summarize_after` sends these.
pub fn summary_messages(
    name: &str,
    earlier: Option<&str>,
    turns: &[ChatMessage],
) -> Vec<ChatMessage> {
    let transcript: String = turns
        .iter()
        .filter(|t| t.role != Role::System)
        .map(|t| {
            let who = if t.role == Role::User { "Player" } else { name };
            format!("{who}: {}\n", t.content)
        })
        .collect();
    let earlier = earlier
        .map(|s| format!("Earlier: {s}\n"))
        .unwrap_or_default();
    vec![
        ChatMessage::system(
            "You write short notes about conversations. Keep every name, place, object and \
             promise.",
        ),
        ChatMessage::user(format!(
            "{earlier}Conversation between the player and {name}:\n{transcript}\nIn one or two \
             sentences, write what the player told {name}, with every name, place and thing \
             they mentioned."
        )),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transcript_names_each_speaker_and_leaves_system_turns_out() {
        let turns = [
            ChatMessage::system("(stage direction)"),
            ChatMessage::user("I lost my ring."),
            ChatMessage::assistant("I will look for it."),
        ];
        let messages = summary_messages("Mira", Some("The player is Bart."), &turns);
        assert_eq!(messages.len(), 2);
        let ask = &messages[1].content;
        assert!(ask.starts_with("Earlier: The player is Bart.\n"), "{ask}");
        assert!(
            ask.contains("Player: I lost my ring.\nMira: I will look for it.\n"),
            "{ask}"
        );
        assert!(!ask.contains("stage direction"), "{ask}");
        assert!(
            ask.ends_with(
                "what the player told Mira, with every name, place and thing they mentioned."
            ),
            "{ask}"
        );
    }
}
