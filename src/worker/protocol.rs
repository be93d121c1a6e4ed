//! What the worker and its callers say to each other: the jobs it serves, the commands it
//! takes and the reports it sends back. Plain data, so that any front end (the Bevy plugin,
//! a tool, a web worker) can carry it.

use std::path::PathBuf;
use std::sync::Arc;

#[cfg(feature = "bevy")]
use bevy::prelude::ReflectDefault;

use crate::engine::{CancelToken, ChatMessage, GenerateParams, Generation, Grammar, ModelInfo};
use crate::memory::RecallQuery;

/// Identifies one request (a line, a scene, a decision) from request to result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[cfg_attr(feature = "bevy", reflect(Clone, Debug, PartialEq, Hash))]
pub struct RequestId(pub u64);

/// Which request the worker serves first when several wait. The NPC the player talks to
/// should not wait behind background chatter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub enum Priority {
    /// Ambient barks and chatter nobody waits for.
    Background,
    /// The default.
    #[default]
    Normal,
    /// The conversation the player is in.
    Player,
}

/// A line (or a scene, or a decision) to generate.
#[derive(Clone, Debug)]
pub struct Job {
    /// The caller's id for it; every report about the job carries it.
    pub id: RequestId,
    /// Which conversation cache to use (one per NPC; the plugin uses the entity's bits).
    /// Jobs of one conversation run one at a time, in order.
    pub slot: u64,
    /// System prompt first, then history, then the newest user turn.
    pub messages: Vec<ChatMessage>,
    /// Length, sampling, stop strings and sentence rules.
    pub params: GenerateParams,
    /// Served before jobs of lower priority.
    pub priority: Priority,
    /// Cancelling it drops the job from the queue or stops it within a token; a cancelled
    /// job reports nothing more.
    pub cancel: CancelToken,
    /// Free text, a structured output or a scene.
    pub output: Output,
    /// Earlier moments to search for what the newest turn is about: those recalled go into
    /// the prompt before it ([`RecallQuery::messages`], [`crate::memory::insert_recalled`]).
    /// Searched on the worker's thread when the job arrives.
    pub recall: Option<Box<RecallQuery>>,
}

impl Job {
    /// Answers the job's [`recall`](Self::recall): what it recalls goes before the newest
    /// turn. A [`Recall`](crate::memory::Recall) that panics costs the line its note, not the
    /// worker.
    pub(crate) fn answer_recall(&mut self) {
        let Some(query) = self.recall.take() else {
            return;
        };
        let recalled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| query.messages()));
        match recalled {
            Ok(recalled) => crate::memory::insert_recalled(&mut self.messages, recalled),
            Err(_) => tracing::error!(
                "recalling {}'s earlier moments panicked; the line goes without them",
                query.speaker
            ),
        }
    }
}

/// What kind of text a job produces.
#[derive(Clone, Debug)]
pub enum Output {
    /// A free-text line; with `best_of` above 1, the best of that many draws by
    /// [`crate::score::line_score`] for `speaker`, sent whole once chosen.
    Text {
        /// Draws to choose from (1: the only draw streams).
        best_of: usize,
        /// The speaker's name, which the score checks the line keeps.
        speaker: String,
    },
    /// `alternatives` outputs that follow the grammar; only the first streams.
    Structured {
        /// What the output must match.
        grammar: Grammar,
        /// How many different outputs (1..=16).
        alternatives: usize,
    },
    /// `alternatives` scenes as prose, each followed by `choices` choices as a list
    /// ([`crate::story::choices_ask`]); reported as scene, list, scene, list, ...
    Scene {
        /// Choices per scene.
        choices: usize,
        /// How many scenes (1..=16); only the first streams.
        alternatives: usize,
    },
}

/// What the worker is told to do.
#[derive(Debug)]
pub enum Command {
    /// Load this model file (local) or connect to the server (remote): a fresh crash budget.
    Load(PathBuf),
    /// Queue a job.
    Generate(Box<Job>),
    /// The conversation is over (its NPC is gone): free its cache.
    ForgetSlot(u64),
    /// Wait this long between decoding steps, so the game's threads get the cores (the
    /// frame pacer); zero stops waiting. Local models only.
    Pace(std::time::Duration),
    /// Test hook: the next job panics inside the worker three tokens in.
    #[cfg(feature = "fault-injection")]
    PanicNextJob,
}

/// What the worker reports back.
#[derive(Debug)]
pub enum Report {
    /// Loading the model: the fraction read so far.
    Loading(f32),
    /// The model is loaded (or the server answered).
    Loaded(ModelInfo),
    /// The model failed to load, or crashed the worker too often: jobs fail until another
    /// loads.
    LoadFailed(String),
    /// A job started: its prompt as rendered (for debugging).
    Started {
        /// The job.
        id: RequestId,
        /// The prompt as the model sees it.
        prompt: Arc<str>,
    },
    /// More text of a job's first output.
    Delta {
        /// The job.
        id: RequestId,
        /// The new text.
        text: String,
    },
    /// Every output, the first first (one for a line; scene, list, scene, list, ... for a
    /// scene).
    Finished {
        /// The job.
        id: RequestId,
        /// The outputs.
        generations: Vec<Generation>,
    },
    /// The job failed.
    Failed {
        /// The job.
        id: RequestId,
        /// Why.
        error: WorkerError,
    },
    /// The queue and caches changed.
    Status(WorkerStatus),
}

/// Queue and cache figures, for debug displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[cfg_attr(feature = "bevy", reflect(Clone, Debug, Default, PartialEq))]
pub struct WorkerStatus {
    /// Requests waiting.
    pub queued: usize,
    /// Conversations with a cache.
    pub slots_used: usize,
    /// Most conversations cached at once.
    pub slots_capacity: usize,
    /// Bytes held by all conversation caches.
    pub cache_bytes: usize,
    /// Lines being generated together right now.
    pub generating: usize,
}

/// Why a job failed. Every message can be shown to a player or a modder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// No model is loaded (missing or broken file, unreachable server); the message says why.
    #[error("no model is loaded: {0}")]
    ModelUnavailable(String),
    /// The prompt template failed to render.
    #[error("{0}")]
    Template(String),
    /// The system prompt and the newest turn alone are longer than the context.
    #[error("prompt is {tokens} tokens but the context holds {n_ctx}, even without history")]
    ContextOverflow {
        /// Prompt length.
        tokens: usize,
        /// Context size.
        n_ctx: usize,
    },
    /// A parameter of the job is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Inference failed (the engine's error message).
    #[error("inference failed: {0}")]
    Inference(String),
    /// Structured output could not be produced: output cut off by the length limit, a
    /// server that cannot constrain it.
    #[error("{0}")]
    Structure(String),
    /// The output kept breaking the content guard past its rollback budget.
    #[error("{0}")]
    Filtered(String),
    /// The worker crashed on this job. It reloads the model and serves the next job,
    /// unless the model crashed it three times in a row ([`Report::LoadFailed`] says so).
    #[error("the inference worker crashed on this line ({0})")]
    Crashed(String),
    /// The inference server failed this request (unreachable, a refused key, busy after
    /// every retry, a timeout, a stream cut mid-line); the message names its URL.
    #[error("{0}")]
    Server(String),
}

impl From<crate::engine::EngineError> for WorkerError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError;
        match e {
            EngineError::ContextOverflow { tokens, n_ctx } => {
                Self::ContextOverflow { tokens, n_ctx }
            }
            EngineError::InvalidParameter { .. } => Self::InvalidRequest(e.to_string()),
            EngineError::Template(_) => Self::Template(e.to_string()),
            EngineError::Grammar(_) => Self::Structure(e.to_string()),
            EngineError::Filtered { .. } => Self::Filtered(e.to_string()),
            other => Self::Inference(other.to_string()),
        }
    }
}

#[cfg(feature = "remote")]
impl From<crate::remote::RemoteError> for WorkerError {
    fn from(e: crate::remote::RemoteError) -> Self {
        use crate::remote::RemoteError;
        match e {
            RemoteError::Unconstrained { .. } | RemoteError::NotJsonSchema => {
                Self::Structure(e.to_string())
            }
            other => Self::Server(other.to_string()),
        }
    }
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
