//! The local model as the job server's backend: one engine, a cache per conversation, and a
//! batch of lines that advance together, one forward pass per step for all of them (one read
//! of the weights serves every line). Jobs that draw several outputs (best-of, alternatives,
//! scenes) run alone through the [recipes](super::recipe) once the batch is empty.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use super::protocol::{
    Job, Output, Priority, Report, RequestId, WorkerError, WorkerStatus, panic_message,
};
use super::recipe::{self, Constraint, Generate, INJECTED_PANIC_AFTER, Outbox};
use super::server::{Admit, Backend};
use crate::engine::{
    CancelToken, ChatMessage, Decoding, Engine, EngineConfig, EngineError, FittedPrompt,
    GenerateParams, Generation, InferencePriority, ModelInfo, ProgressReader, Session,
    SessionSlots,
};
use crate::speech::SentenceSplitter;

/// How the local model runs.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Context, threads, kernels and cache type.
    pub engine: EngineConfig,
    /// How many conversations keep their cache; the least recently used is evicted.
    pub slots: usize,
    /// The most lines generated together in one batch ([`Priority::Player`] lines join even
    /// a full one).
    pub max_batch: usize,
    /// The most bytes all conversation caches may hold together.
    pub kv_budget: Option<usize>,
    /// A [`Priority::Player`] line takes the engine alone until its first sentence is out:
    /// the lines below it wait those few steps (their caches kept). `true` by default.
    pub player_first: bool,
}

impl Default for LocalConfig {
    /// The engine's defaults, its threads at [`InferencePriority::Idle`]: the worker runs
    /// beside a game.
    fn default() -> Self {
        Self {
            engine: EngineConfig {
                priority: InferencePriority::Idle,
                ..EngineConfig::default()
            },
            slots: 16,
            max_batch: 8,
            kv_budget: None,
            player_first: true,
        }
    }
}

/// The engine, its caches and the batch.
pub(crate) struct Local {
    config: LocalConfig,
    engine: Option<Engine>,
    slots: SessionSlots,
    /// Lines being generated together, highest priority first.
    active: Vec<Active>,
}

/// A line in the batch.
struct Active {
    id: RequestId,
    slot: u64,
    priority: Priority,
    cancel: CancelToken,
    decoding: Decoding,
    /// The conversation is over: drop its session when the line ends.
    forget: bool,
    /// Test hook: this line panics a few tokens in.
    inject: bool,
    /// A [`Priority::Player`] line until its first sentence is out: its text so far. While
    /// any line has one, the lines below [`Priority::Player`] wait.
    first_sentence: Option<SentenceSplitter>,
}

impl Active {
    /// Whether this step leaves it waiting: a player's line is finding its first words.
    fn held(&self, player_waiting: bool) -> bool {
        player_waiting && self.priority != Priority::Player && !self.cancel.is_cancelled()
    }
}

/// Whether a job is one generation that can share steps with others (a line, or one
/// structured output); the rest run alone.
fn batches(job: &Job) -> bool {
    matches!(
        job.output,
        Output::Text { best_of: 1, .. }
            | Output::Structured {
                alternatives: 1,
                ..
            }
    )
}

impl Local {
    pub(crate) fn new(config: LocalConfig) -> Self {
        Self {
            slots: SessionSlots::new(config.slots.max(1)).with_budget(config.kv_budget),
            config,
            engine: None,
            active: Vec::new(),
        }
    }

    /// Runs a job that cannot batch through its recipe, with its conversation's session.
    fn run_alone(&mut self, job: Job, inject: bool, out: &Outbox) -> Result<(), String> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        let mut session = self.slots.take(job.slot, engine);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut generator = LocalGenerator {
                engine: &mut *engine,
                session: Some(&mut session),
            };
            recipe::serve(&mut generator, &job, out, inject)
        }));
        match result {
            Ok(result) => {
                if result.is_err() {
                    session.clear();
                }
                self.slots.put(job.slot, session);
                out.finished(&job, result);
                Ok(())
            }
            Err(panic) => Err(crashed(out, [job.id], panic_message(panic.as_ref()))),
        }
    }

    /// Starts `job` in the batch: fits its prompt, reports it started and begins decoding
    /// in its conversation's session.
    fn start_batched(&mut self, job: Job, inject: bool, out: &Outbox) -> Result<(), String> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        // Fitting and rendering run under the guard: a hostile chat template must not take
        // the worker down.
        let fitted = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut generator = LocalGenerator::prompt_only(engine);
            let prompt = generator.prepare(job.messages.clone(), job.params.max_tokens)?;
            let shown = generator.shown(&prompt);
            Ok::<_, WorkerError>((prompt, shown))
        }));
        let (prompt, shown) = match fitted {
            Ok(Ok(fitted)) => fitted,
            Ok(Err(error)) => {
                out.send(Report::Failed { id: job.id, error });
                return Ok(());
            }
            Err(panic) => return Err(crashed(out, [job.id], panic_message(panic.as_ref()))),
        };
        // A new conversation may start from another's cached preamble.
        let session = self.slots.take_for(job.slot, &prompt.tokens, engine);
        out.send(Report::Started {
            id: job.id,
            prompt: shown.into(),
        });
        let grammar = match &job.output {
            Output::Structured { grammar, .. } => Some(grammar),
            _ => None,
        };
        let decoding = engine.begin(
            session,
            &prompt.tokens,
            &job.params,
            grammar,
            job.cancel.clone(),
        );
        // Higher priorities first: their prompts get a step's token budget first.
        let at = self.active.partition_point(|a| a.priority >= job.priority);
        self.active.insert(
            at,
            Active {
                id: job.id,
                slot: job.slot,
                priority: job.priority,
                cancel: job.cancel,
                decoding,
                forget: false,
                inject,
                first_sentence: (job.priority == Priority::Player).then(SentenceSplitter::default),
            },
        );
        Ok(())
    }

    /// Reports the lines that ended and puts their sessions back. Whether any ended.
    fn finish_ended(&mut self, out: &Outbox) -> bool {
        // A failed pass has ended each of its lines with the error, reported here.
        let ended: Vec<Active> = self
            .active
            .extract_if(.., |a| a.decoding.is_finished())
            .collect();
        let changed = !ended.is_empty();
        for a in ended {
            let (mut session, result) = a.decoding.finish();
            if result.is_err() {
                session.clear();
            }
            if !a.forget {
                self.slots.put(a.slot, session);
            }
            let report = match result {
                Ok(_) if a.cancel.is_cancelled() => continue,
                Ok(generation) => Report::Finished {
                    id: a.id,
                    generations: vec![generation],
                },
                Err(e) => Report::Failed {
                    id: a.id,
                    error: e.into(),
                },
            };
            out.send(report);
        }
        if changed && let Some(budget) = self.config.kv_budget {
            // The lines still generating count against the budget too.
            let generating: usize = self.active.iter().map(|a| a.decoding.cache_bytes()).sum();
            self.slots
                .shrink_to_bytes(budget.saturating_sub(generating));
        }
        changed
    }
}

/// Fails the jobs `ids` as crashed; what the panic said, for the server's crash budget.
fn crashed(out: &Outbox, ids: impl IntoIterator<Item = RequestId>, what: String) -> String {
    for id in ids {
        out.send(Report::Failed {
            id,
            error: WorkerError::Crashed(what.clone()),
        });
    }
    what
}

impl Backend for Local {
    fn load(&mut self, path: &Path, out: &Outbox) -> Result<Option<ModelInfo>, String> {
        let _span = tracing::info_span!("load_model", path = %path.display()).entered();
        self.engine = None;
        self.slots.clear();
        // Lines of the old model cannot go on in the new one (their caches are the old
        // model's), and half of their text has been shown: they fail.
        for a in std::mem::take(&mut self.active) {
            out.send(Report::Failed {
                id: a.id,
                error: WorkerError::ModelUnavailable(
                    "another model was loaded while this line was being generated".into(),
                ),
            });
        }
        let result = crate::engine::open_model_file(path).and_then(|file| {
            let progress = out.clone();
            let reader = ProgressReader::new(std::io::BufReader::new(file), move |f| {
                progress.send(Report::Loading(f));
            })?;
            let name = path.display().to_string();
            let config = self.config.engine.clone();
            // A hostile file that makes a dependency panic fails the load; it must not
            // kill the thread (which would restart and load the same file forever).
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                Engine::from_reader(reader, &name, config)
            }))
            .unwrap_or_else(|panic| {
                Err(EngineError::InvalidGguf {
                    file: name.clone(),
                    reason: format!("it crashed the loader: {}", panic_message(panic.as_ref())),
                })
            })
        });
        match result {
            Ok(engine) => {
                let info = engine.info().clone();
                self.engine = Some(engine);
                Ok(Some(info))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn unload(&mut self) {
        self.engine = None;
        self.slots.clear();
    }

    fn is_loaded(&self) -> bool {
        self.engine.is_some()
    }

    fn admits(&self, job: &Job) -> Admit {
        if !batches(job) {
            Admit::Alone
        } else if self.active.len() >= self.config.max_batch.max(1)
            && job.priority != Priority::Player
        {
            Admit::Full
        } else {
            Admit::Now
        }
    }

    fn busy(&self, slot: u64) -> bool {
        self.active.iter().any(|a| a.slot == slot)
    }

    fn running(&self) -> usize {
        self.active.len()
    }

    fn start(&mut self, job: Job, inject: bool, out: &Outbox) -> Result<(), String> {
        if batches(&job) {
            self.start_batched(job, inject, out)
        } else {
            self.run_alone(job, inject, out)
        }
    }

    fn stepping(&self) -> bool {
        !self.active.is_empty()
    }

    fn step(&mut self, out: &Outbox) -> Result<bool, String> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(false);
        };
        // A player's line takes the engine alone until its first sentence is out: the lines
        // below it wait a few steps, their caches kept, so the player's first words come as
        // fast as from an idle worker (BENCHMARKS.md, "The player's line first").
        let player_waiting =
            self.config.player_first && self.active.iter().any(|a| a.first_sentence.is_some());
        // Decided once: a cancel from the game's thread may land meanwhile.
        let stepping: Vec<bool> = self
            .active
            .iter()
            .map(|a| !a.held(player_waiting))
            .collect();
        let lines: Vec<(RequestId, CancelToken, bool, usize)> = self
            .active
            .iter()
            .enumerate()
            .filter(|&(i, _)| stepping[i])
            .map(|(i, a)| (a.id, a.cancel.clone(), a.inject, i))
            .collect();
        let active = &mut self.active;
        let mut player_text: Vec<(usize, String)> = Vec::new();
        let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let batch = active
                .iter_mut()
                .zip(&stepping)
                .filter(|&(_, &step)| step)
                .map(|(a, _)| (a.first_sentence.is_some(), &mut a.decoding));
            let (watched, batch): (Vec<bool>, Vec<&mut Decoding>) = batch.unzip();
            engine.step(batch, |i, d| {
                let (id, cancel, inject, at) = &lines[i];
                if *inject && d.generated >= INJECTED_PANIC_AFTER {
                    panic!("injected fault");
                }
                if watched[i] {
                    player_text.push((*at, d.text.to_owned()));
                }
                out.delta(*id, d.text, cancel);
            })
        }));
        if let Err(panic) = stepped {
            let ids = std::mem::take(&mut self.active).into_iter().map(|a| a.id);
            return Err(crashed(out, ids, panic_message(panic.as_ref())));
        }
        for (at, text) in player_text {
            let line = &mut self.active[at];
            if line
                .first_sentence
                .as_mut()
                .is_some_and(|split| !split.push(&text).is_empty())
            {
                line.first_sentence = None;
            }
        }
        Ok(self.finish_ended(out))
    }

    fn forget(&mut self, slot: u64) -> bool {
        for a in self.active.iter_mut().filter(|a| a.slot == slot) {
            a.forget = true;
        }
        self.slots.forget(slot)
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            queued: 0,
            slots_used: self.slots.len() + self.active.len(),
            slots_capacity: self.slots.capacity(),
            cache_bytes: self.slots.cache_bytes()
                + self
                    .active
                    .iter()
                    .map(|a| a.decoding.cache_bytes())
                    .sum::<usize>(),
            generating: self.active.len(),
        }
    }
}

/// The engine with one conversation's session, as the recipes see it.
struct LocalGenerator<'a> {
    engine: &'a mut Engine,
    session: Option<&'a mut Session>,
}

impl<'a> LocalGenerator<'a> {
    /// For fitting and rendering only (no session to generate in).
    fn prompt_only(engine: &'a mut Engine) -> Self {
        Self {
            engine,
            session: None,
        }
    }
}

impl Generate for LocalGenerator<'_> {
    type Prompt = FittedPrompt;

    fn prepare(
        &mut self,
        messages: Vec<ChatMessage>,
        max_tokens: usize,
    ) -> Result<FittedPrompt, WorkerError> {
        Ok(self.engine.fit_chat(messages, max_tokens)?)
    }

    fn shown(&self, prompt: &FittedPrompt) -> String {
        self.engine
            .template()
            .render(&prompt.messages, true)
            .unwrap_or_default()
    }

    fn messages<'p>(&self, prompt: &'p FittedPrompt) -> &'p [ChatMessage] {
        &prompt.messages
    }

    fn alternatives(
        &mut self,
        prompt: &FittedPrompt,
        params: &GenerateParams,
        constraint: Option<Constraint<'_>>,
        n: usize,
        cancel: &CancelToken,
        on_delta: &mut (dyn FnMut(usize, &str) + Send),
    ) -> Result<Vec<Generation>, WorkerError> {
        let Some(session) = self.session.as_deref_mut() else {
            return Err(WorkerError::Inference("no session to generate in".into()));
        };
        let list;
        let grammar = match constraint {
            None => None,
            Some(Constraint::Grammar(grammar)) => Some(grammar),
            Some(Constraint::ChoiceList(choices)) => {
                list = crate::story::choice_list_grammar(choices);
                Some(&list)
            }
        };
        let generations = match grammar {
            // One constrained output continues the session (a scene's list after its prose).
            Some(grammar) if n == 1 => self
                .engine
                .generate_constrained(session, &prompt.tokens, params, grammar, cancel, |d| {
                    on_delta(0, d.text)
                })
                .map(|g| vec![g]),
            // Several draws share the prompt's prefill.
            grammar => self.engine.generate_alternatives(
                session,
                &prompt.tokens,
                params,
                grammar,
                n,
                cancel,
                |i, d| on_delta(i, d.text),
            ),
        };
        Ok(generations?)
    }
}
