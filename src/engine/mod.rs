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

mod error;
mod generate;
mod gguf;
mod grammar;
mod kernels;
mod model;
mod sampling;
mod stream;
mod template;
mod tokenizer;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;

pub use error::{EngineError, Result};
pub use generate::{
    CancelToken, Delta, GenerateParams, Generation, GenerationStats, Session, StopReason,
};
pub use grammar::Grammar;
pub use sampling::{Sampler, SamplingParams};
pub use template::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, Role};
pub use tokenizer::{TokenId, Tokenizer, VocabKind};

use gguf::GgufHeader;
use model::Model;
use stream::TextStream;
use template::Segment;

/// Prompt tokens computed per forward pass; bounds memory and lets a cancel land mid-prompt.
const PREFILL_CHUNK: usize = 256;

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The first GPU compiled in (`cuda`, `metal` features) that is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU by ordinal (`cuda` feature).
    Cuda(usize),
    /// An Apple GPU by ordinal (`metal` feature).
    Metal(usize),
}

impl Backend {
    fn device(self) -> Result<Device> {
        Ok(match self {
            Backend::Cpu => Device::Cpu,
            Backend::Cuda(i) => Device::new_cuda(i)?,
            Backend::Metal(i) => Device::new_metal(i)?,
            Backend::Auto => {
                if candle_core::utils::cuda_is_available() {
                    Device::new_cuda(0)?
                } else if candle_core::utils::metal_is_available() {
                    Device::new_metal(0)?
                } else {
                    Device::Cpu
                }
            }
        })
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context window in tokens; `None` takes the smaller of 4096 and the model's own.
    pub n_ctx: Option<usize>,
    /// Threads for inference; `None` uses every core. A game should leave it at least one.
    pub threads: Option<usize>,
    /// Where to run.
    pub backend: Backend,
    /// A Hugging Face `tokenizer.json` to encode with instead of the GGUF's own vocabulary.
    pub tokenizer_json: Option<PathBuf>,
    /// A chat template (Jinja) to use instead of the GGUF's `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Matrix kernels for llama-family models on the CPU; leave at the default.
    pub cpu_kernels: CpuKernels,
}

/// Which code multiplies the weight matrices of llama-family models on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuKernels {
    /// This crate's packed kernels, with SIMD where the CPU has it (AVX2 on x86-64).
    #[default]
    Packed,
    /// The same kernels without SIMD: the reference the SIMD path is tested against.
    PackedScalar,
    /// candle's quantized matmul. Slower on Q4_1 files, and it runs on candle's own pool of
    /// every core, ignoring [`EngineConfig::threads`]; for comparisons.
    Candle,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            n_ctx: None,
            threads: None,
            backend: Backend::Auto,
            tokenizer_json: None,
            chat_template: None,
            cpu_kernels: CpuKernels::Packed,
        }
    }
}

/// Facts about the loaded model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Where it was loaded from.
    pub file: String,
    /// `general.architecture`, such as `llama`.
    pub architecture: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// The context the model was trained for.
    pub train_context: usize,
    /// The context window in use.
    pub n_ctx: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Whether sessions keep their caches and reuse common prefixes.
    pub prefix_reuse: bool,
}

/// A loaded model with its tokenizer and chat template.
#[derive(Debug)]
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    info: ModelInfo,
    device: Device,
    pool: Option<rayon::ThreadPool>,
    /// Built on the first constrained generation.
    constraints: Option<grammar::Constraints>,
}

impl Engine {
    /// Loads a GGUF model file.
    pub fn load(path: impl AsRef<Path>, config: EngineConfig) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| EngineError::ModelNotFound {
            path: path.to_owned(),
            source,
        })?;
        Self::from_reader(BufReader::new(file), &path.display().to_string(), config)
    }

    /// Loads a GGUF model from any seekable reader; `name` is used in error messages.
    pub fn from_reader<R: Read + Seek>(
        mut reader: R,
        name: &str,
        config: EngineConfig,
    ) -> Result<Self> {
        let _span = tracing::info_span!("load_model", file = name).entered();
        let started = Instant::now();
        let header = GgufHeader::read(&mut reader, name)?;
        let architecture = header.string("general.architecture")?.to_owned();
        if !matches!(
            architecture.as_str(),
            "llama" | "mistral" | "gemma3" | "qwen2" | "qwen3" | "phi3"
        ) {
            return Err(EngineError::UnsupportedArchitecture {
                file: name.to_owned(),
                architecture,
            });
        }
        let model_name = header.opt_string("general.name").map(str::to_owned);
        let mut tokenizer = Tokenizer::from_gguf(&header)?;
        if let Some(json) = &config.tokenizer_json {
            tokenizer = tokenizer.with_tokenizer_json(json)?;
        }
        let token_text = |id: Option<TokenId>| {
            id.and_then(|i| {
                header
                    .string_array("tokenizer.ggml.tokens")
                    .ok()?
                    .into_iter()
                    .nth(i as usize)
            })
            .unwrap_or_default()
        };
        let bos_text = token_text(tokenizer.bos().0);
        let eos_text = token_text(tokenizer.end_of_generation().first().copied());
        let template = match config
            .chat_template
            .as_deref()
            .or_else(|| header.opt_string("tokenizer.chat_template"))
        {
            Some(source) => ChatTemplate::new(source, &bos_text, &eos_text)?,
            None => ChatTemplate::chatml(),
        };
        let device = config.backend.device()?;
        let (model, train_context) = Model::load(header, &mut reader, &device, config.cpu_kernels)?;
        let n_ctx = config.n_ctx.unwrap_or(4096).min(train_context).max(1);
        let pool = match config.threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("llm-inference-{i}"))
                    .build()
                    .map_err(|e| EngineError::InvalidParameter {
                        name: "threads",
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        let info = ModelInfo {
            file: name.to_owned(),
            architecture,
            name: model_name,
            train_context,
            n_ctx,
            vocab_size: tokenizer.vocab_size(),
            prefix_reuse: model.reuses_prefixes(),
        };
        tracing::info!(elapsed = ?started.elapsed(), ?info, "model loaded");
        Ok(Self {
            model,
            tokenizer,
            template,
            info,
            device,
            pool,
            constraints: None,
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template in use.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// A new, empty conversation.
    pub fn new_session(&self) -> Session {
        Session::new(self.model.new_cache())
    }

    /// Renders messages with the chat template and tokenizes them, ending where the
    /// assistant's reply begins. Message content is tokenized as plain text: control tokens
    /// typed by a player never become real control tokens.
    pub fn chat_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<TokenId>> {
        let segments = self.template.render_segments(messages, true)?;
        let mut tokens = Vec::new();
        if let (Some(bos), true) = self.tokenizer.bos() {
            tokens.push(bos);
        }
        for segment in segments {
            match segment {
                Segment::Markup(text) => tokens.extend(self.tokenizer.encode_markup(&text)?),
                Segment::Content(text) => tokens.extend(self.tokenizer.encode(&text)?),
            }
        }
        // A template that writes the BOS token itself must not get a second one.
        if let (Some(bos), true) = self.tokenizer.bos()
            && tokens.len() > 1
            && tokens[1] == bos
        {
            tokens.remove(0);
        }
        Ok(tokens)
    }

    /// Chat: renders `messages`, then generates the assistant's reply. See [`Engine::generate`].
    pub fn chat(
        &mut self,
        session: &mut Session,
        messages: &[ChatMessage],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        let prompt = self.chat_tokens(messages)?;
        self.generate(session, &prompt, params, cancel, on_delta)
    }

    /// Generates a continuation of `prompt` in `session`, calling `on_delta` after every
    /// token with the text that became safe to show.
    ///
    /// The longest prefix of `prompt` already cached in `session` is reused. A prompt that
    /// does not leave room for one generated token fails with
    /// [`EngineError::ContextOverflow`] before any compute.
    pub fn generate(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        cancel: &CancelToken,
        on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        self.run(session, prompt, params, None, cancel, on_delta)
    }

    /// Like [`generate`](Self::generate), but every token is masked so that the output
    /// follows `grammar`: it ends when the structure is complete (stop reason
    /// [`StopReason::Eos`]) and always parses. Output that `max_tokens` cuts off before the
    /// structure is complete is an [`EngineError::Grammar`] error, never a partial result.
    /// Stop strings are ignored.
    pub fn generate_constrained(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: &Grammar,
        cancel: &CancelToken,
        on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        self.run(session, prompt, params, Some(grammar), cancel, on_delta)
    }

    /// `n` different continuations of one prompt, computing the prompt once: each
    /// alternative starts from a copy of the prompt's cache, with seed `seed + i` (seed 0
    /// when the params have none). Alternatives whose text repeats an earlier one are drawn
    /// again with a new seed, a few times at most, so the results are distinct unless the
    /// model keeps producing the same text. `on_delta` gets the alternative's index.
    /// `session` ends holding the prompt.
    #[expect(
        clippy::too_many_arguments,
        reason = "generate's arguments plus n and a grammar"
    )]
    pub fn generate_alternatives(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: Option<&Grammar>,
        n: usize,
        cancel: &CancelToken,
        mut on_delta: impl FnMut(usize, &Delta<'_>) + Send,
    ) -> Result<Vec<Generation>> {
        if !(1..=16).contains(&n) {
            return Err(EngineError::InvalidParameter {
                name: "n",
                reason: format!("{n} alternatives is outside 1..=16"),
            });
        }
        if prompt.len() > 1 && self.model.reuses_prefixes() {
            // The shared prefill: all but the last prompt token, which each alternative
            // computes itself to get its own first logits.
            let reuse = session.common_prefix(prompt).min(prompt.len() - 1);
            session.tokens.truncate(reuse);
            if reuse < prompt.len() - 1 {
                self.logits(session, &prompt[reuse..prompt.len() - 1])?;
            }
        }
        let base = params.sampling.seed.unwrap_or(0);
        let mut results: Vec<Generation> = Vec::with_capacity(n);
        let mut draws = 0u64;
        while results.len() < n {
            let i = results.len();
            let mut p = params.clone();
            p.sampling.seed = Some(base.wrapping_add(draws));
            draws += 1;
            let mut fork = session.fork()?;
            // The first alternative streams as it goes (it cannot repeat anything); the
            // others are held until they are known to be new.
            let mut deltas = Vec::new();
            let g = self.run(&mut fork, prompt, &p, grammar, cancel, |d| {
                if i == 0 {
                    on_delta(0, d);
                } else {
                    deltas.push((d.text.to_owned(), d.token, d.generated));
                }
            })?;
            let repeated = results.iter().any(|r| r.text == g.text);
            if repeated && draws < (n as u64) * 4 && g.stop_reason != StopReason::Cancelled {
                continue;
            }
            for (text, token, generated) in deltas {
                on_delta(
                    i,
                    &Delta {
                        text: &text,
                        token,
                        generated,
                    },
                );
            }
            results.push(g);
        }
        Ok(results)
    }

    fn run(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        grammar: Option<&Grammar>,
        cancel: &CancelToken,
        mut on_delta: impl FnMut(&Delta<'_>) + Send,
    ) -> Result<Generation> {
        params.validate()?;
        let n_ctx = self.info.n_ctx;
        if prompt.is_empty() {
            return Err(EngineError::InvalidParameter {
                name: "prompt",
                reason: "the prompt is empty".to_owned(),
            });
        }
        if prompt.len() >= n_ctx {
            return Err(EngineError::ContextOverflow {
                tokens: prompt.len(),
                n_ctx,
            });
        }
        if let Some(&bad) = prompt
            .iter()
            .find(|&&t| t as usize >= self.tokenizer.vocab_size())
        {
            return Err(EngineError::InvalidParameter {
                name: "prompt",
                reason: format!("token {bad} is outside the vocabulary"),
            });
        }
        let mut sampler = Sampler::new(params.sampling.clone())?;
        let mut matcher = match grammar {
            Some(g) => {
                if self.constraints.is_none() {
                    self.constraints = Some(grammar::Constraints::new(&self.tokenizer)?);
                }
                let constraints = self.constraints.as_ref().expect("just built");
                Some(constraints.matcher(g)?)
            }
            None => None,
        };
        let pool = self.pool.take();
        let mut go = || {
            self.generate_inner(
                session,
                prompt,
                params,
                cancel,
                &mut sampler,
                matcher.as_mut(),
                &mut on_delta,
            )
        };
        let result = match &pool {
            Some(pool) => pool.install(go),
            None => go(),
        };
        self.pool = pool;
        result
    }

    /// Feeds `tokens` after what `session` already holds and returns the scores (logits) for
    /// the token that would come next, for custom decoding and for testing.
    pub fn logits(&mut self, session: &mut Session, tokens: &[TokenId]) -> Result<Vec<f32>> {
        let total = session.tokens.len() + tokens.len();
        if tokens.is_empty() || total > self.info.n_ctx {
            return Err(EngineError::ContextOverflow {
                tokens: total,
                n_ctx: self.info.n_ctx,
            });
        }
        let pool = self.pool.take();
        let pos = session.tokens.len();
        let mut run = || {
            self.model
                .forward(tokens, pos, &mut session.cache, &self.device)
        };
        let result = match &pool {
            Some(pool) => pool.install(run),
            None => run(),
        };
        self.pool = pool;
        session.tokens.extend_from_slice(tokens);
        result
    }

    /// Perplexity of the model on `tokens` (the first predicts the second, and so on):
    /// `exp` of the mean negative log-likelihood. For checking that a kernel or
    /// quantization change keeps the model the same; it runs one token at a time.
    pub fn perplexity(&mut self, tokens: &[TokenId]) -> Result<f64> {
        if tokens.len() < 2 || tokens.len() > self.info.n_ctx {
            return Err(EngineError::InvalidParameter {
                name: "tokens",
                reason: format!("need 2..={} tokens, got {}", self.info.n_ctx, tokens.len()),
            });
        }
        let mut session = self.new_session();
        let pool = self.pool.take();
        let mut run = || -> Result<f64> {
            let mut nll = 0f64;
            for (i, pair) in tokens.windows(2).enumerate() {
                let logits = self
                    .model
                    .forward(&pair[..1], i, &mut session.cache, &self.device)?;
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let log_sum = logits
                    .iter()
                    .map(|&v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
                let target = logits
                    .get(pair[1] as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY);
                nll += log_sum - f64::from(target - max);
            }
            Ok((nll / (tokens.len() - 1) as f64).exp())
        };
        let result = match &pool {
            Some(pool) => pool.install(run),
            None => run(),
        };
        self.pool = pool;
        result
    }

    #[expect(clippy::too_many_arguments, reason = "run's state, passed down once")]
    fn generate_inner(
        &mut self,
        session: &mut Session,
        prompt: &[TokenId],
        params: &GenerateParams,
        cancel: &CancelToken,
        sampler: &mut Sampler,
        mut matcher: Option<&mut llguidance::Matcher>,
        on_delta: &mut (dyn FnMut(&Delta<'_>) + Send),
    ) -> Result<Generation> {
        let started = Instant::now();
        let n_ctx = self.info.n_ctx;
        let reuse = if self.model.reuses_prefixes() {
            // At least one prompt token is computed, to get logits to sample from.
            session.common_prefix(prompt).min(prompt.len() - 1)
        } else {
            0
        };
        session.tokens.truncate(reuse);
        let mut stats = generate::GenerationStats {
            prompt_tokens: prompt.len(),
            cached_tokens: reuse,
            ..Default::default()
        };
        let no_stops: &[String] = &[];
        let mut stream = TextStream::new(if matcher.is_some() {
            no_stops
        } else {
            &params.stop
        });
        let mut generated = Vec::new();
        let finish = |stream: &mut TextStream,
                      generated: Vec<TokenId>,
                      stop_reason,
                      stats,
                      on_delta: &mut (dyn FnMut(&Delta<'_>) + Send)| {
            let rest = stream.finish();
            let n = generated.len();
            if !rest.is_empty() {
                on_delta(&Delta {
                    text: &rest,
                    token: None,
                    generated: n,
                });
            }
            Generation {
                text: stream.text().to_owned(),
                tokens: generated,
                stop_reason,
                stats,
            }
        };

        let mut logits = Vec::new();
        {
            let _span = tracing::trace_span!("prefill", tokens = prompt.len() - reuse).entered();
            for chunk in prompt[reuse..].chunks(PREFILL_CHUNK) {
                if cancel.is_cancelled() {
                    stats.prefill_time = started.elapsed();
                    return Ok(finish(
                        &mut stream,
                        generated,
                        StopReason::Cancelled,
                        stats,
                        on_delta,
                    ));
                }
                let pos = session.tokens.len();
                logits = self
                    .model
                    .forward(chunk, pos, &mut session.cache, &self.device)?;
                session.tokens.extend_from_slice(chunk);
            }
        }
        stats.prefill_time = started.elapsed();

        let mut first_token_at = None;
        let stop_reason = loop {
            let token = match matcher.as_deref_mut() {
                None => {
                    let _span = tracing::trace_span!("sample").entered();
                    sampler.sample(&mut logits, &session.tokens, None)
                }
                Some(m) => {
                    let _span = tracing::trace_span!("sample_constrained").entered();
                    let masked = Instant::now();
                    let mask = m.compute_mask().map_err(grammar::grammar_error)?;
                    stats.constraint_time += masked.elapsed();
                    if mask.is_zero() {
                        return Err(grammar::grammar_error(
                            m.get_error()
                                .unwrap_or_else(|| "no token can continue the output".into()),
                        ));
                    }
                    let token =
                        sampler.sample(&mut logits, &session.tokens, Some(&|t| mask.is_allowed(t)));
                    let consumed = Instant::now();
                    if !self.tokenizer.is_end_of_generation(token) {
                        m.consume_token(token).map_err(grammar::grammar_error)?;
                    }
                    stats.constraint_time += consumed.elapsed();
                    token
                }
            };
            stats.generated_tokens += 1;
            if stats.generated_tokens == 1 {
                stats.time_to_first_token = started.elapsed();
                first_token_at = Some(Instant::now());
            }
            if !params.ignore_eos && self.tokenizer.is_end_of_generation(token) {
                break StopReason::Eos;
            }
            let structure_done = matcher.as_deref().is_some_and(|m| m.is_stopped());
            generated.push(token);
            let push = stream.push(self.tokenizer.token_bytes(token));
            on_delta(&Delta {
                text: &push.delta,
                token: Some(token),
                generated: stats.generated_tokens,
            });
            if push.stopped {
                break StopReason::StopString;
            }
            if structure_done {
                break StopReason::Eos;
            }
            if stats.generated_tokens >= params.max_tokens {
                if matcher.is_some() {
                    return Err(grammar::grammar_error(format!(
                        "max_tokens ({}) ran out before the structured output was complete",
                        params.max_tokens
                    )));
                }
                break StopReason::MaxTokens;
            }
            if session.tokens.len() + 1 >= n_ctx {
                if matcher.is_some() {
                    return Err(grammar::grammar_error(
                        "the context filled up before the structured output was complete",
                    ));
                }
                break StopReason::ContextFull;
            }
            if cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            let _span = tracing::trace_span!("decode").entered();
            let pos = session.tokens.len();
            logits = self
                .model
                .forward(&[token], pos, &mut session.cache, &self.device)?;
            session.tokens.push(token);
        };
        stats.decode_time = first_token_at.map_or(Duration::ZERO, |t| t.elapsed());
        Ok(finish(&mut stream, generated, stop_reason, stats, on_delta))
    }
}
