//! Constrained decoding: output that must follow a JSON schema or a grammar, so it always
//! parses. Built on llguidance (the structured-output engine llama.cpp and vLLM use), with a
//! token trie made from this model's own vocabulary.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use super::error::{EngineError, Result};
use super::tokenizer::{TokenId, Tokenizer};

/// A constraint on generated text.
///
/// ```
/// use bevy_llm_dialogue::engine::Grammar;
/// let choice = Grammar::json_schema(serde_json::json!({
///     "type": "object",
///     "properties": { "answer": { "enum": ["yes", "no"] } },
///     "required": ["answer"],
///     "additionalProperties": false,
/// }));
/// let greeting = Grammar::lark(r#"start: "Hello, " /[A-Z][a-z]+/ "!""#);
/// # let _ = (choice, greeting);
/// ```
#[derive(Clone, Debug)]
pub struct Grammar {
    pub(crate) top: TopLevelGrammar,
    /// The schema it was made from, for servers that constrain by JSON schema.
    schema: Option<serde_json::Value>,
}

impl Grammar {
    /// Output is JSON matching the schema (llguidance's subset of JSON Schema: types,
    /// `properties`, `required`, `enum`, `const`, `minItems`/`maxItems`, `minLength`/
    /// `maxLength`, `pattern`, `anyOf`, ...). Object properties come in schema order, with
    /// no whitespace between tokens.
    pub fn json_schema(schema: serde_json::Value) -> Self {
        Grammar {
            top: TopLevelGrammar::from_json_schema(schema.clone()),
            schema: Some(schema),
        }
    }

    /// Output matches a grammar in llguidance's Lark dialect.
    pub fn lark(source: &str) -> Self {
        Grammar {
            top: TopLevelGrammar::from_lark(source.to_owned()),
            schema: None,
        }
    }

    /// Output matches a regular expression.
    pub fn regex(pattern: &str) -> Self {
        Grammar {
            top: TopLevelGrammar::from_regex(pattern),
            schema: None,
        }
    }

    /// The JSON schema this grammar was made from ([`Grammar::json_schema`]); `None` for
    /// Lark and regex grammars. Inference servers constrain output by schema.
    pub fn as_json_schema(&self) -> Option<&serde_json::Value> {
        self.schema.as_ref()
    }
}

/// The model's vocabulary as llguidance sees it.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
    /// The token of each single byte, where the vocabulary has one.
    byte_tokens: Vec<Option<TokenId>>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Plain encoding (grammar text never turns into control tokens). llguidance also asks
    /// for byte strings that end inside a character (forced bytes of an emoji); those bytes
    /// become byte tokens, not U+FFFD, which would be a different token.
    fn tokenize_bytes(&self, mut s: &[u8]) -> Vec<TokenId> {
        let mut out = Vec::new();
        while !s.is_empty() {
            let (valid, rest) = match std::str::from_utf8(s) {
                Ok(text) => (text, &s[s.len()..]),
                Err(e) => {
                    let (ok, bad) = s.split_at(e.valid_up_to());
                    (std::str::from_utf8(ok).unwrap_or_default(), bad)
                }
            };
            if !valid.is_empty() {
                out.extend(self.tokenizer.encode(valid).unwrap_or_default());
            }
            if let Some((&byte, tail)) = rest.split_first() {
                out.extend(self.byte_tokens[usize::from(byte)]);
                s = tail;
            } else {
                s = rest;
            }
        }
        out
    }
}

/// Compiles grammars for one model. Built on first use (about a second: the token trie).
pub(crate) struct Constraints {
    factory: ParserFactory,
}

impl std::fmt::Debug for Constraints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraints")
    }
}

impl Constraints {
    pub(crate) fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let n = tokenizer.vocab_size();
        let eos = tokenizer.end_of_generation().first().copied().unwrap_or(0);
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos().0;
        info.tok_end_of_turn = Some(eos);
        // Control tokens are marked so that no grammar can produce them (toktrie's
        // convention: a 0xFF byte, then the token's text).
        let words: Vec<Vec<u8>> = (0..n as TokenId)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_control(id) {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let mut byte_tokens = vec![None; 256];
        for (id, word) in words.iter().enumerate() {
            if let [b] = word.as_slice()
                && byte_tokens[usize::from(*b)].is_none()
            {
                byte_tokens[usize::from(*b)] = Some(id as TokenId);
            }
        }
        let env: TokEnv = Arc::new(Vocabulary {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
            byte_tokens,
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(grammar_error)?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh matcher for one generation. Grammar errors (an unsupported schema feature, a
    /// Lark syntax error) are reported here, before any compute.
    pub(crate) fn matcher(&self, grammar: &Grammar) -> Result<Matcher> {
        let parser = self
            .factory
            .create_parser(grammar.top.clone())
            .map_err(grammar_error)?;
        Ok(Matcher::new(Ok(parser)))
    }
}

pub(crate) fn grammar_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Grammar(e.to_string())
}
