//! A character card is an NPC's persona: a `*.card.png` loads like a persona file, `{{user}}`
//! becomes the player's name in the prompt, and a broken card fails the line naming the file.

use base64::Engine as _;

use crate::harness::*;

/// A 1×1 PNG carrying `card` in a `chara` text chunk after the image data.
fn card_png(card: &serde_json::Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 1, 1);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[128]).unwrap();
        let text = base64::engine::general_purpose::STANDARD.encode(card.to_string());
        writer
            .write_text_chunk(&png::text_metadata::TEXtChunk::new("chara", text))
            .unwrap();
        writer.finish().unwrap();
    }
    bytes
}

#[test]
fn an_npc_speaks_from_a_card_and_the_player_is_named() {
    let assets = scratch_assets("cards");
    let card = serde_json::json!({
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Wren",
            "description": "{{char}} is the herbalist of the Old Forest. She brews remedies from moss.",
            "personality": "wary, dry humour",
            "scenario": "{{user}} knocks on {{char}}'s door at night.",
            "first_mes": "Who's there?",
            "mes_example": "<START>\n{{user}}: Hello.\n{{char}}: You're letting the cold in.",
        }
    });
    std::fs::write(assets.join("personas/wren.card.png"), card_png(&card)).unwrap();
    std::fs::write(
        assets.join("personas/broken.card.png"),
        b"\x89PNG not really",
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    app.world_mut()
        .resource_mut::<DialogueContext>()
        .set("player_name", "Ann");
    let wren = spawn_npc(&mut app, "personas/wren.card.png");
    let broken = spawn_npc(&mut app, "personas/broken.card.png");
    request(&mut app, RequestLine::new(wren).saying("Can you help me?"));
    request(&mut app, RequestLine::new(broken).saying("Hello?"));
    update_until(&mut app, LONG, "both results", |log| {
        log.results_for(wren) + log.results_for(broken) == 2
    });

    let log = app.world().resource::<Log>();
    let line = log.finished_for(wren)[0];
    assert!(!line.text.is_empty());
    let prompt = &log.started[0].prompt;
    assert!(
        prompt.contains("Wren") && prompt.contains("herbalist"),
        "{prompt}"
    );
    assert!(
        prompt.contains("You're letting the cold in."),
        "the card's example line"
    );
    assert!(
        prompt.contains("Ann knocks on Wren's door") && !prompt.contains("{{user}}"),
        "{prompt}"
    );
    let [failed] = log.failed.as_slice() else {
        panic!("one failure expected: {:?}", log.failed);
    };
    assert_eq!(failed.npc, broken);
    let error = failed.error.to_string();
    assert!(
        error.contains("broken.card.png") && error.contains("not a readable PNG"),
        "{error}"
    );
}
