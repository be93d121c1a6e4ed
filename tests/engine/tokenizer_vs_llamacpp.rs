//! Our tokenizer, built from the GGUF metadata, against llama.cpp's tokenization of the same
//! file. The reference ids come from `scripts/llamacpp-tokens`.

use crate::common;

use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Reference {
    plain: Vec<Case>,
    markup: Vec<Case>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/smollm2_llamacpp_tokens.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn plain_text_matches_llamacpp_token_for_token() {
    let engine = common::engine();
    let reference = reference();
    assert!(reference.plain.len() >= 30);
    let mismatches: Vec<String> = reference
        .plain
        .iter()
        .filter_map(|case| {
            let ours = engine.tokenizer().encode(&case.text).unwrap();
            (ours != case.ids)
                .then(|| format!("{:?}: ours {ours:?}, llama.cpp {:?}", case.text, case.ids))
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn markup_matches_llamacpp_with_special_tokens_parsed() {
    let engine = common::engine();
    for case in reference().markup {
        let ours = engine.tokenizer().encode_markup(&case.text).unwrap();
        assert_eq!(ours, case.ids, "{:?}", case.text);
    }
}
