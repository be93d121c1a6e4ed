//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the inference engine.
///
/// Every variant carries what a player-facing message or a log line needs: the file, the
/// numbers, the field. Nothing here is fatal to the game: a failed load or request leaves the
/// engine (or the caller) free to try again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model file could not be opened.
    #[error(
        "cannot open model file {path}: {source}{hint}",
        hint = if source.kind() == std::io::ErrorKind::NotFound {
            " (run `scripts/fetch-model` to download the default model)"
        } else {
            ""
        }
    )]
    ModelNotFound {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a readable GGUF file: wrong magic, truncated, or inconsistent.
    #[error("{file} is not a valid GGUF model: {reason}")]
    InvalidGguf {
        /// The file (or `<reader>` for an in-memory source).
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF file lacks a metadata key the engine needs, or has it with the wrong type.
    #[error("{file}: metadata key `{key}` is {problem}")]
    Metadata {
        /// The file.
        file: String,
        /// The metadata key.
        key: String,
        /// "missing", or what is wrong with its value.
        problem: String,
    },
    /// The model's architecture has no implementation here.
    #[error(
        "{file}: architecture `{architecture}` is not supported (supported: llama, mistral, qwen2, qwen3, gemma3, phi3)"
    )]
    UnsupportedArchitecture {
        /// The file.
        file: String,
        /// `general.architecture` as found in the file.
        architecture: String,
    },
    /// The tokenizer could not be built from the GGUF metadata or loaded from a tokenizer file.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt does not fit in the context window.
    #[error("prompt is {tokens} tokens but the context holds {n_ctx}")]
    ContextOverflow {
        /// Prompt length in tokens.
        tokens: usize,
        /// Context size in tokens.
        n_ctx: usize,
    },
    /// A generation parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A grammar or JSON schema is invalid, or constrained output could not be completed.
    #[error("constrained output: {0}")]
    Grammar(String),
    /// A structured output kept breaking the content guard's rules past its rollback budget
    /// (a free text ends early instead, [`StopReason::Filtered`](super::StopReason::Filtered)).
    #[error(
        "the structured output kept breaking the content rule `{rule}` ({rollbacks} rollbacks)"
    )]
    Filtered {
        /// The last rule it broke.
        rule: String,
        /// Times it was taken back before giving up.
        rollbacks: usize,
    },
    /// The tensor library failed during loading or inference.
    #[error("inference failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
