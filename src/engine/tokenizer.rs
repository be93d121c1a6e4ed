//! Tokenizers built from a GGUF file's own metadata.
//!
//! GGUF files carry their vocabulary (`tokenizer.ggml.tokens`, token types, BPE merges or
//! SentencePiece scores) and the name of the pre-tokenizer (`tokenizer.ggml.pre`). We build a
//! `tokenizers` 0.23 tokenizer from them, matching llama.cpp's tokenization of the same file, and
//! decode through a table of raw bytes per token so streamed text can hold back incomplete UTF-8.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::error::{EngineError, Result};
use super::gguf::GgufHeader;

/// Token ids as the model sees them.
pub type TokenId = u32;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_attr` precursor).
mod token_type {
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const BYTE: i32 = 6;
}

/// GPT-2's regex, which `ByteLevel { use_regex: true }` applies.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` regex.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2` regex (single digits).
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which family of tokenizer the vocabulary belongs to (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// GPT-2 style byte-level BPE with merges (`gpt2`): SmolLM, Llama 3, Qwen, Phi-4.
    ByteLevelBpe,
    /// SentencePiece BPE with scores and byte fallback (`llama`): Llama 2, Mistral, Gemma.
    SentencePiece,
}

/// A tokenizer for one model: text to token ids and token ids back to bytes.
///
/// One encoder, two ways in: [`Tokenizer::encode_markup`] recognises control tokens written
/// in text (for the chat template's own markup), [`Tokenizer::encode`] never does (for
/// anything a player or a persona file wrote: it skips the encoder's added vocabulary), so
/// typed `<|im_start|>` stays plain text. (Two encoders, one with the added tokens turned off,
/// held a second copy of the vocabulary and merges: 42 MiB for Gemma 3's 262,144 tokens.)
#[derive(Clone)]
pub struct Tokenizer {
    markup: tokenizers::Tokenizer,
    pieces: Vec<Vec<u8>>,
    control: Vec<bool>,
    end_of_generation: Vec<TokenId>,
    bos: Option<TokenId>,
    add_bos: bool,
    kind: VocabKind,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.pieces.len())
            .field("bos", &self.bos)
            .field("end_of_generation", &self.end_of_generation)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    pub(crate) fn from_gguf(header: &GgufHeader) -> Result<Self> {
        let model = header.string("tokenizer.ggml.model")?;
        let kind = match model {
            "gpt2" => VocabKind::ByteLevelBpe,
            "llama" => VocabKind::SentencePiece,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "{}: tokenizer model `{other}` is not supported (supported: gpt2, llama)",
                    header.file
                )));
            }
        };
        let tokens = header.string_array("tokenizer.ggml.tokens")?;
        let types = header
            .opt_i32_array("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(EngineError::Tokenizer(format!(
                "{}: {} token types for {} tokens",
                header.file,
                types.len(),
                tokens.len()
            )));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as TokenId))
            .collect();

        let mut markup = match kind {
            VocabKind::ByteLevelBpe => {
                let merges = header
                    .string_array("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_owned(), b.to_owned()))
                            .ok_or_else(|| tok_err(format!("malformed merge `{m}`")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .build()
                    .map_err(tok_err)?;
                let pre = header.opt_string("tokenizer.ggml.pre").unwrap_or("default");
                let mut tk = tokenizers::Tokenizer::new(bpe);
                tk.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
                tk
            }
            VocabKind::SentencePiece => {
                let scores = header
                    .opt_f32_array("tokenizer.ggml.scores")?
                    .ok_or_else(|| tok_err("SentencePiece vocabulary without scores"))?;
                let merges = merges_from_scores(&tokens, &types, &scores, &vocab)?;
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(unk) = header.opt_usize("tokenizer.ggml.unknown_token_id")?
                    && let Some(t) = tokens.get(unk)
                {
                    builder = builder.unk_token(t.clone());
                }
                let bpe = builder.build().map_err(tok_err)?;
                let mut tk = tokenizers::Tokenizer::new(bpe);
                let mut norms = Vec::new();
                if header
                    .opt_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true)
                {
                    norms.push(Prepend::new("▁".to_owned()).into());
                }
                norms.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
                tk.with_normalizer(Some(NormalizerSequence::new(norms)))
                    .map_err(tok_err)?;
                tk
            }
        };

        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| matches!(**t, token_type::CONTROL | token_type::USER_DEFINED))
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        markup.add_special_tokens(specials).map_err(tok_err)?;

        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| piece_bytes(t, *ty, kind))
            .collect();
        let control = types
            .iter()
            .map(|t| matches!(*t, token_type::CONTROL))
            .collect::<Vec<_>>();

        let id = |key: &str| -> Result<Option<TokenId>> {
            Ok(header
                .opt_usize(key)?
                .filter(|&i| i < tokens.len())
                .map(|i| i as TokenId))
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let mut end_of_generation: Vec<TokenId> = [
            id("tokenizer.ggml.eos_token_id")?,
            id("tokenizer.ggml.eot_token_id")?,
            id("tokenizer.ggml.eom_token_id")?,
        ]
        .into_iter()
        .flatten()
        .collect();
        // llama.cpp also ends generation on these well-known end-of-turn control tokens.
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end|>",
            "<|return|>",
            "<|end_of_text|>",
        ] {
            if let Some(i) = markup.token_to_id(name)
                && control.get(i as usize) == Some(&true)
                && !end_of_generation.contains(&i)
            {
                end_of_generation.push(i);
            }
        }
        let add_bos = header
            .opt_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(kind == VocabKind::SentencePiece);

        Ok(Self {
            markup,
            pieces,
            control,
            end_of_generation,
            bos,
            add_bos,
            kind,
        })
    }

    /// Replaces the encoder with a Hugging Face `tokenizer.json`, keeping the GGUF's token
    /// table for decoding and its end-of-generation tokens. Use it when a GGUF's metadata
    /// tokenizes differently from the model's original tokenizer.
    pub fn with_tokenizer_json(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tk = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        let size = tk.get_vocab_size(true);
        if size > self.pieces.len() {
            return Err(tok_err(format!(
                "{}: {size} tokens, but the model has {}",
                path.display(),
                self.pieces.len()
            )));
        }
        self.markup = tk;
        Ok(self)
    }

    /// Encodes text written by a player, an author or any other untrusted source. Control
    /// tokens spelled out in `text` are tokenized as the plain characters they are made of.
    /// Checked after encoding too (a `tokenizer_json` with its own added tokens could differ):
    /// a control token in the result is an error, never a smuggled chat turn.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        let ids = self.encode_without_added_tokens(text).map_err(tok_err)?;
        if let Some(&id) = ids.iter().find(|&&id| self.is_control(id)) {
            return Err(tok_err(format!(
                "plain text encoded to control token {id}; refusing it"
            )));
        }
        Ok(ids)
    }

    /// What the encoder does to text between its added tokens: normalize, pre-tokenize, and
    /// the model's own tokenization (`TokenizerImpl::encode_fast` with the added vocabulary
    /// left out).
    fn encode_without_added_tokens(&self, text: &str) -> tokenizers::Result<Vec<TokenId>> {
        use tokenizers::{Model, Normalizer, PreTokenizer};
        let tk = &self.markup;
        let mut normalized = tokenizers::NormalizedString::from(text);
        if let Some(n) = tk.get_normalizer() {
            n.normalize(&mut normalized)?;
        }
        let mut pieces = tokenizers::PreTokenizedString::from(normalized);
        if let Some(p) = tk.get_pre_tokenizer() {
            p.pre_tokenize(&mut pieces)?;
        }
        let model = tk.get_model();
        pieces.tokenize(|piece| model.tokenize(piece.get()))?;
        Ok(pieces
            .into_encoding(None, 0, tokenizers::OffsetType::Byte)?
            .get_ids()
            .to_vec())
    }

    /// Encodes chat-template markup, where control tokens such as `<|im_start|>` are real.
    pub fn encode_markup(&self, text: &str) -> Result<Vec<TokenId>> {
        Ok(self
            .markup
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// The raw bytes a token stands for (empty for control tokens).
    pub fn token_bytes(&self, id: TokenId) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Decodes token ids to text, replacing invalid UTF-8 with U+FFFD.
    pub fn decode(&self, ids: &[TokenId]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Looks a token up by its exact vocabulary string.
    pub fn token_id(&self, token: &str) -> Option<TokenId> {
        self.markup.token_to_id(token)
    }

    /// Whether a token is a control token (chat markup, end of text, ...).
    pub fn is_control(&self, id: TokenId) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether generating this token ends the assistant's turn.
    pub fn is_end_of_generation(&self, id: TokenId) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The tokens that end generation (EOS, end of turn).
    pub fn end_of_generation(&self) -> &[TokenId] {
        &self.end_of_generation
    }

    /// The beginning-of-sequence token, and whether prompts must start with it.
    pub fn bos(&self) -> (Option<TokenId>, bool) {
        (self.bos, self.add_bos)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The vocabulary's family.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(re.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?
        .into())
    };
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex).into();
    Ok(match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()
        }
        "llama-bpe" | "llama3" | "falcon3" | "falcon-h1" | "pixtral" | "tekken" | "smaug-bpe"
        | "dbrx" | "olmo" | "superbpe" | "trillion" | "granite-docling" => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]).into()
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "kimi-k2" | "megrez" => {
            Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]).into()
        }
        "default" | "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo2" => {
            Sequence::new(vec![split(GPT2_SPLIT)?, byte_level(false)]).into()
        }
        other => {
            tracing::warn!(
                pre = other,
                "unknown pre-tokenizer; using GPT-2's, tokens may differ from llama.cpp"
            );
            Sequence::new(vec![split(GPT2_SPLIT)?, byte_level(false)]).into()
        }
    })
}

/// SentencePiece BPE ranks merges by the score of the merged piece; rebuild the merge list
/// in that order (as `transformers`' SentencePiece converter does). A vocabulary that
/// would give more than [`MAX_MERGES`](super::limits::MAX_MERGES) merges (`a`, `aa`, `aaa`,
/// ... gives one per split) is refused.
fn merges_from_scores(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    vocab: &tokenizers::models::bpe::Vocab,
) -> Result<Vec<(String, String)>> {
    let mut merges: Vec<(f32, TokenId, TokenId, TokenId)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types[id] != 1 {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push((score, id as TokenId, l, r));
            }
        }
        if merges.len() > super::limits::MAX_MERGES {
            return Err(tok_err(format!(
                "the vocabulary gives over {} merges",
                super::limits::MAX_MERGES
            )));
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    Ok(merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect())
}

/// The bytes a vocabulary entry stands for when it is detokenized.
fn piece_bytes(token: &str, ty: i32, kind: VocabKind) -> Vec<u8> {
    match ty {
        token_type::CONTROL => Vec::new(),
        token_type::USER_DEFINED | token_type::UNKNOWN => token.as_bytes().to_vec(),
        token_type::BYTE => parse_byte_token(token)
            .map(|b| vec![b])
            .unwrap_or_else(|| token.as_bytes().to_vec()),
        _ => match kind {
            VocabKind::ByteLevelBpe => {
                let table = byte_decoder();
                token
                    .chars()
                    .map(|c| table.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| token.as_bytes().to_vec())
            }
            VocabKind::SentencePiece => token.replace('▁', " ").into_bytes(),
        },
    }
}

fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// The inverse of GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
fn byte_decoder() -> &'static HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut next = 256u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    let c = char::from_u32(next).expect("GPT-2 byte characters are below U+0200");
                    next += 1;
                    c
                };
                (c, b)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_decoder_covers_every_byte_once() {
        let table = byte_decoder();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(
            piece_bytes("▁Hello", 1, VocabKind::SentencePiece),
            b" Hello"
        );
        assert!(piece_bytes("<|im_end|>", token_type::CONTROL, VocabKind::ByteLevelBpe).is_empty());
    }
}
