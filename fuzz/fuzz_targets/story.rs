//! Story files: any text must parse or give an error; parsed stories must walk safely.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(asset) = bevy_llm_dialogue::story::StoryAsset::from_ron(text, "fuzz.story.ron") {
        let _ = bevy_llm_dialogue::story::Scene::parse(text, asset.choices);
    }
});
