//! The inference engine: loads a GGUF model, tokenizes, renders chat templates, samples and
//! streams text. It knows nothing of Bevy and can be used (and tested) on its own.
//!
//! ```no_run
//! use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams};
//!
//! let mut engine = Engine::load("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf", EngineConfig::default())?;
//! let mut session = engine.new_session();
//! let messages = [
//!     ChatMessage::system("You are Mira, a blacksmith. Answer in one sentence."),
//!     ChatMessage::user("Can you fix my sword?"),
//! ];
//! let mut shown = String::new(); // a game would append each delta to its dialogue box
//! let line = engine.chat(&mut session, &messages, &GenerateParams::default(), &CancelToken::new(), |d| {
//!     shown.push_str(d.text);
//! })?;
//! assert_eq!(shown, line.text);
//! # Ok::<(), bevy_llm_dialogue::engine::EngineError>(())
//! ```

mod batch;
mod config;
mod decode;
mod error;
mod fit;
mod gguf;
mod grammar;
mod guard;
mod kernels;
pub mod limits;
mod load;
mod model;
mod params;
mod priority;
mod progress;
mod sampling;
mod sentences;
mod slots;
pub(crate) mod stream;
pub(crate) mod template;
mod tokenizer;

pub use batch::Decoding;
pub use config::{Backend, CpuKernels, EngineConfig, KvCacheType, ModelInfo};
pub use error::{EngineError, Result};
pub use fit::FittedPrompt;
pub use grammar::Grammar;
pub use guard::{Guard, GuardHit, MAX_ROLLBACKS, TextGuard};
pub use load::{Engine, open_model_file};
pub use params::{
    CancelToken, Delta, GenerateParams, Generation, GenerationStats, Session, StopReason,
};
pub use priority::InferencePriority;
pub use progress::ProgressReader;
pub use sampling::{Sampler, SamplingParams};
pub use sentences::ends_sentence;
pub use slots::{MIN_SHARED_PREFIX, SessionSlots};
pub use template::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, Role};
pub use tokenizer::{TokenId, Tokenizer, VocabKind};
