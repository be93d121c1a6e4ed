//! Hostile prompt templates (and chat templates) with hostile persona text: compile and
//! render must end with text or an error, bounded by minijinja's fuel.
#![no_main]
use bevy_llm_dialogue::engine::{ChatMessage, ChatTemplate};
use bevy_llm_dialogue::persona::Persona;
use bevy_llm_dialogue::prompt::{Facts, PromptTemplate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (source, text) = input;
    let Ok(mut persona) = Persona::from_ron("(name: \"x\", description: \"x\")", "fuzz") else {
        return;
    };
    persona.name = text.to_owned();
    persona.description = text.to_owned();
    persona.personality = vec![text.to_owned()];
    if let Ok(t) = PromptTemplate::new("fuzz.jinja", source) {
        let _ = t.npc_messages(&persona, &Facts::new(), &Facts::new(), &[], Some(text), &[]);
    }
    if let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") {
        let _ = t.render(&[ChatMessage::system(text), ChatMessage::user(text)], true);
    }
});
