//! Character cards (V2 and V3, JSON and PNG) of our own, written at test time, become
//! personas with every field mapped or kept; malformed ones fail naming the file and field.

use base64::Engine as _;
use bevy_llm_dialogue::card::{CardData, CardError, CardSpec, CharacterCard};
use serde_json::json;

fn v2() -> serde_json::Value {
    json!({
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Wren",
            "description": "{{char}} is the herbalist of the Old Forest. She grew up among the wolves. <BOT> trusts nobody from the city.",
            "personality": "wary, dry humour; loyal to friends",
            "scenario": "{{user}} finds {{char}}'s hut after dark.",
            "first_mes": "Close the door, {{user}}. The wolves listen.",
            "mes_example": "<START>\n{{user}}: What are you brewing?\n{{char}}: Nothing you could pay for.\n<START>\n{{user}}: Hello.\n{{char}}: You're letting the cold in.",
            "creator_notes": "Made for the tests.",
            "system_prompt": "You are {{char}}.",
            "post_history_instructions": "Stay terse.",
            "alternate_greetings": ["Lost again, {{user}}?", "  "],
            "character_book": { "entries": [ { "keys": ["wolves"], "content": "The wolves guard the forest." } ] },
            "tags": ["forest", "herbalist"],
            "creator": "us",
            "character_version": "1.2",
            "extensions": { "depth_prompt": { "depth": 4, "prompt": "Wren is tired." } }
        }
    })
}

fn v3() -> serde_json::Value {
    let mut card = v2();
    card["spec"] = json!("chara_card_v3");
    card["spec_version"] = json!("3.0");
    card["data"]["nickname"] = json!("Wrenna");
    card["data"]["group_only_greetings"] = json!(["Everyone, sit."]);
    card["data"]["assets"] =
        json!([{ "type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png" }]);
    card
}

/// A 2×1 PNG with `chunks` (keyword, text) as tEXt chunks after the image data, where
/// front ends write them.
fn png_with(chunks: &[(&str, String)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 2, 1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[10, 20, 30, 40, 50, 60]).unwrap();
        for (keyword, text) in chunks {
            writer
                .write_text_chunk(&png::text_metadata::TEXtChunk::new(*keyword, text.clone()))
                .unwrap();
        }
        writer.finish().unwrap();
    }
    bytes
}

fn b64(card: &serde_json::Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(card.to_string())
}

#[test]
fn a_v2_card_maps_every_field_and_keeps_the_rest() {
    let card = CharacterCard::from_json(&v2().to_string(), "wren.card.json").unwrap();
    assert_eq!(card.spec, CardSpec::V2);
    let wren = card.to_persona();
    assert_eq!(wren.name, "Wren");
    assert_eq!(wren.description, "the herbalist of the Old Forest");
    assert_eq!(
        wren.knowledge,
        [
            "She grew up among the wolves.",
            "Wren trusts nobody from the city.",
            "{{user}} finds Wren's hut after dark."
        ]
    );
    assert_eq!(wren.personality, ["wary", "dry humour", "loyal to friends"]);
    // Each of the character's lines answers a `{{user}}` line: exchanges, not lone lines.
    let exchanges: Vec<(&str, &str)> = wren
        .example_exchanges
        .iter()
        .map(|e| (e.said.as_str(), e.reply.as_str()))
        .collect();
    assert_eq!(
        exchanges,
        [
            ("What are you brewing?", "Nothing you could pay for."),
            ("Hello.", "You're letting the cold in.")
        ]
    );
    assert!(wren.example_lines.is_empty());
    assert_eq!(
        wren.greeting.as_deref(),
        Some("Close the door, {{user}}. The wolves listen.")
    );
    assert_eq!(wren.alternate_greetings, ["Lost again, {{user}}?"]);
    let kept = CardData::kept_in(&wren).expect("the card's other fields are kept");
    assert_eq!(kept.system_prompt, "You are {{char}}.");
    assert_eq!(kept.post_history_instructions, "Stay terse.");
    assert_eq!(kept.creator_notes, "Made for the tests.");
    assert_eq!(kept.tags, ["forest", "herbalist"]);
    assert_eq!(kept.character_version, "1.2");
    assert_eq!(
        kept.character_book.as_ref().unwrap()["entries"][0]["keys"][0],
        "wolves"
    );
    assert_eq!(kept.extensions["depth_prompt"]["depth"], 4);
    let lore = wren
        .lore
        .as_ref()
        .expect("the card's book is the persona's lore");
    assert_eq!(lore.entries[0].keys, ["wolves"]);
    assert_eq!(lore.entries[0].content, "The wolves guard the forest.");

    // Exported again as a V2 card, then imported: the persona comes back.
    let again = CharacterCard::from_persona(&wren);
    let round = CharacterCard::from_json(&again.to_json(), "again.card.json")
        .unwrap()
        .to_persona();
    assert_eq!(round.name, wren.name);
    assert_eq!(round.description, wren.description);
    assert_eq!(round.personality, wren.personality);
    assert_eq!(round.example_lines, wren.example_lines);
    assert_eq!(round.example_exchanges, wren.example_exchanges);
    assert_eq!(round.greeting, wren.greeting);
    assert_eq!(
        CardData::kept_in(&round).unwrap().extensions,
        kept.extensions
    );
}

#[test]
fn a_v3_card_uses_its_nickname_and_keeps_unknown_fields() {
    let card = CharacterCard::from_json(&v3().to_string(), "wren.card.json").unwrap();
    assert_eq!(card.spec, CardSpec::V3);
    let wren = card.to_persona();
    assert_eq!(wren.name, "Wrenna");
    let kept = CardData::kept_in(&wren).unwrap();
    assert_eq!(kept.nickname.as_deref(), Some("Wrenna"));
    assert_eq!(kept.other["group_only_greetings"][0], "Everyone, sit.");
    assert_eq!(kept.other["assets"][0]["type"], "icon");
    // Written back out, the unknown fields are still there.
    let json: serde_json::Value = serde_json::from_str(&card.to_json()).unwrap();
    assert_eq!(json["data"]["assets"][0]["name"], "main");
}

#[test]
fn png_cards_are_read_from_their_text_chunk_v3_first() {
    let v2_png = png_with(&[("chara", b64(&v2()))]);
    let persona = CharacterCard::persona_from_bytes(&v2_png, "wren.card.png").unwrap();
    assert_eq!(persona.name, "Wren");

    let both = png_with(&[("chara", b64(&v2())), ("ccv3", b64(&v3()))]);
    let card = CharacterCard::from_png(&both, "wren.card.png").unwrap();
    assert_eq!(card.spec, CardSpec::V3, "the V3 chunk wins");
}

#[test]
fn malformed_cards_fail_naming_the_file_and_what_is_wrong() {
    let err = |bytes: &[u8]| {
        CharacterCard::persona_from_bytes(bytes, "bad.card")
            .unwrap_err()
            .to_string()
    };
    // Not JSON: line and column.
    let e = CharacterCard::from_json("{\n  \"spec\": ", "bad.card.json").unwrap_err();
    assert!(matches!(e, CardError::Json { line: 2, .. }), "{e:?}");
    // A V1 card (no spec), another spec, an empty name, a field of the wrong type.
    assert!(err(br#"{"name": "Old"}"#).contains("`spec` is missing"));
    assert!(err(br#"{"spec": "chara_card_v9", "data": {}}"#).contains("chara_card_v9"));
    let mut nameless = v2();
    nameless["data"]["name"] = json!(" ");
    assert!(err(nameless.to_string().as_bytes()).contains("`data.name` must not be empty"));
    let mut wrong = v2();
    wrong["data"]["tags"] = json!("not a list");
    let e = err(wrong.to_string().as_bytes());
    assert!(
        e.starts_with("bad.card: `data`") && e.contains("invalid type"),
        "{e}"
    );
    // PNGs: no card, bad base64, truncated, neither PNG nor text.
    assert!(err(&png_with(&[("Title", "x".into())])).contains("holds no character card"));
    assert!(err(&png_with(&[("chara", "%%%".into())])).contains("not base64"));
    let whole = png_with(&[("chara", b64(&v2()))]);
    assert!(err(&whole[..whole.len() / 2]).contains("not a readable PNG"));
    assert!(err(&[0xff, 0xfe, 0x00]).contains("neither a PNG nor UTF-8 JSON"));
}

#[test]
fn hostile_cards_are_refused_before_they_grow() {
    let err = |bytes: &[u8]| {
        CharacterCard::persona_from_bytes(bytes, "bad.card")
            .unwrap_err()
            .to_string()
    };
    // A name of megabytes, repeated by `{{char}}` a million times, would be terabytes.
    let mut long_name = v2();
    long_name["data"]["name"] = json!("N".repeat(3 << 20));
    long_name["data"]["description"] = json!("{{char}}".repeat(1 << 20));
    let e = err(long_name.to_string().as_bytes());
    assert!(e.contains("`data.name` is 3145728 bytes"), "{e}");
    // A short name and millions of macros: gigabytes once expanded.
    let mut many = v2();
    many["data"]["name"] = json!("N".repeat(200));
    many["data"]["description"] = json!("<BOT>".repeat(3 << 20));
    let e = err(many.to_string().as_bytes());
    // (v2() has a few macros of its own.)
    assert!(e.contains("`<BOT>` appear 31457"), "{e}");
    // A compressed text chunk (zTXt, and iTXt with its flag) of a few hundred kilobytes that
    // inflates to 64 MiB is refused while it inflates.
    let bomb = zlib_of_letters(64 << 20);
    let ztxt = [b"chara\0\0".as_slice(), &bomb].concat();
    let itxt = [b"ccv3\0\x01\0\0\0".as_slice(), &bomb].concat();
    let with = |chunk: png::chunk::ChunkType, data: &[u8]| {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, 2, 1);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[10, 20, 30, 40, 50, 60]).unwrap();
        writer.write_chunk(chunk, data).unwrap();
        writer.finish().unwrap();
        bytes
    };
    for (png, keyword) in [
        (with(png::chunk::zTXt, &ztxt), "chara"),
        (with(png::chunk::iTXt, &itxt), "ccv3"),
    ] {
        assert!(
            png.len() < 1 << 20,
            "the hostile file is small: {} bytes",
            png.len()
        );
        let e = err(&png);
        assert!(
            e.contains(&format!("its `{keyword}` chunk does not inflate"))
                && e.contains("Out of decompression space"),
            "{e}"
        );
    }
}

/// A zlib stream of `n` letters `A` at the highest ratio DEFLATE has: one fixed-Huffman block
/// of a literal and back-references of 258 bytes (13 bits each).
fn zlib_of_letters(n: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        len: u32,
    }
    impl Bits {
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.len;
            self.len += bits;
            while self.len >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.len -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u64, bits: u32) {
            let reversed = (0..bits).fold(0, |r, i| r | (((code >> i) & 1) << (bits - 1 - i)));
            self.put(reversed, bits);
        }
    }
    let mut b = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        len: 0,
    };
    b.put(1, 1); // the last block
    b.put(1, 2); // fixed Huffman codes
    b.code(0x30 + u64::from(b'A'), 8);
    let mut left = n - 1;
    while left >= 258 {
        b.code(0xc5, 8); // length 258
        b.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        b.code(0x30 + u64::from(b'A'), 8);
    }
    b.code(0, 7); // end of block
    if b.len > 0 {
        b.out.push(b.acc as u8);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for _ in 0..n {
        a = (a + u32::from(b'A')) % 65521;
        s = (s + a) % 65521;
    }
    b.out.extend(((s << 16) | a).to_be_bytes());
    b.out
}

/// The persona without what only a card keeps.
fn without_card(
    mut persona: bevy_llm_dialogue::persona::Persona,
) -> bevy_llm_dialogue::persona::Persona {
    persona.card = None;
    persona
}

/// Every persona the crate ships comes back equal from a card written of it (the fields
/// cards have no place for travel in the crate's extension), and the example game's Wren,
/// shipped as a card, is her persona file.
#[test]
fn shipped_personas_survive_a_trip_through_a_card() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/personas");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".persona.ron") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let persona = bevy_llm_dialogue::persona::Persona::from_ron(&text, &name).unwrap();
        let card = CharacterCard::from_persona(&persona).to_json();
        let back = CharacterCard::persona_from_bytes(card.as_bytes(), &name).unwrap();
        assert_eq!(without_card(back), persona, "{name}");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} personas");

    let wren_card = std::fs::read(dir.join("wren.card.json")).unwrap();
    let wren_ron = std::fs::read_to_string(dir.join("wren.persona.ron")).unwrap();
    assert_eq!(
        without_card(CharacterCard::persona_from_bytes(&wren_card, "wren.card.json").unwrap()),
        bevy_llm_dialogue::persona::Persona::from_ron(&wren_ron, "wren.persona.ron").unwrap()
    );
    // A malformed extension is an error naming it, not silently ignored.
    let mut bad: serde_json::Value = serde_json::from_slice(&wren_card).unwrap();
    bad["data"]["extensions"]["bevy_llm_dialogue"]["max_tokens"] = json!("many");
    let e = CharacterCard::persona_from_bytes(bad.to_string().as_bytes(), "bad.card.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.extensions.bevy_llm_dialogue"), "{e}");
}
