//! The job recipes, written once whatever generates the tokens: a line (or the best of
//! several draws), structured outputs where only the first streams, and a scene (prose
//! first, then its choices as a constrained list, asked for as the next turn).
//!
//! A [`Generate`] implementation supplies the two things that differ between the local
//! engine and an inference server: how a prompt is prepared (fitted to the context and
//! rendered, or sent as messages) and how `n` continuations of it are drawn.

use super::protocol::{Job, Output, Report, RequestId, WorkerError};
use crate::engine::{CancelToken, ChatMessage, GenerateParams, Generation, Grammar, StopReason};
use crate::{score, story};

/// What an output must match.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Constraint<'a> {
    /// A grammar (the local engine) or its JSON schema (a server).
    Grammar(&'a Grammar),
    /// `n` short choices, one per line ([`story::choice_list_grammar`]).
    ChoiceList(usize),
}

/// Draws text for the recipes: the local engine with a conversation's session, or an
/// inference server.
pub(crate) trait Generate {
    /// A prompt ready to generate from.
    type Prompt;

    /// Fits `messages` to the context, leaving room for `max_tokens`.
    fn prepare(
        &mut self,
        messages: Vec<ChatMessage>,
        max_tokens: usize,
    ) -> Result<Self::Prompt, WorkerError>;

    /// The prompt as the model sees it, for [`Report::Started`].
    fn shown(&self, prompt: &Self::Prompt) -> String;

    /// The messages the prompt kept.
    fn messages<'p>(&self, prompt: &'p Self::Prompt) -> &'p [ChatMessage];

    /// `n` continuations of `prompt`, alternative `i` drawn with seed `seed + i`; `on_delta`
    /// gets each piece of text with its alternative's index.
    fn alternatives(
        &mut self,
        prompt: &Self::Prompt,
        params: &GenerateParams,
        constraint: Option<Constraint<'_>>,
        n: usize,
        cancel: &CancelToken,
        on_delta: &mut (dyn FnMut(usize, &str) + Send),
    ) -> Result<Vec<Generation>, WorkerError>;
}

#[cfg_attr(
    all(not(feature = "remote"), not(test)),
    expect(dead_code, reason = "the remote backend draws alternatives one by one")
)]
/// The seed of alternative `i`: the request's for the first, then one more for each (a
/// fresh random base when the request has none), as the engine draws them.
pub(crate) fn alternative_params(params: &GenerateParams, i: usize) -> GenerateParams {
    let mut p = params.clone();
    if i > 0 {
        p.sampling.seed = Some(
            p.sampling
                .seed
                .unwrap_or_else(rand::random)
                .wrapping_add(i as u64),
        );
    }
    p
}

/// Deltas of a job before the fault-injection hook panics (few enough that every line gets
/// there).
pub(crate) const INJECTED_PANIC_AFTER: usize = 3;

/// Where a job's reports go.
#[derive(Clone)]
pub(crate) struct Outbox(pub(crate) crossbeam_channel::Sender<Report>);

impl Outbox {
    /// Sends a report; false when nobody listens any more (the caller is gone).
    pub(crate) fn send(&self, report: Report) -> bool {
        self.0.send(report).is_ok()
    }

    /// Streams `text` of job `id`; a caller that is gone cancels the job.
    pub(crate) fn delta(&self, id: RequestId, text: &str, cancel: &CancelToken) {
        if !text.is_empty()
            && !self.send(Report::Delta {
                id,
                text: text.to_owned(),
            })
        {
            // The app is gone (it quit mid-line): stop within a token.
            cancel.cancel();
        }
    }

    /// Reports how a job ended; a cancelled job reports nothing.
    pub(crate) fn finished(&self, job: &Job, result: Result<Vec<Generation>, WorkerError>) {
        let cancelled = job.cancel.is_cancelled()
            || result.as_ref().is_ok_and(|generations| {
                generations
                    .iter()
                    .any(|g| g.stop_reason == StopReason::Cancelled)
            });
        match result {
            Ok(_) if cancelled => {}
            Ok(generations) => {
                self.send(Report::Finished {
                    id: job.id,
                    generations,
                });
            }
            Err(error) => {
                self.send(Report::Failed { id: job.id, error });
            }
        }
    }
}

/// Serves `job` with `generator`: reports it started, streams its first output and returns
/// every output (scene, list, scene, list, ... for a scene). With `inject`, panics a few
/// deltas in (the fault-injection hook).
pub(crate) fn serve<G: Generate>(
    generator: &mut G,
    job: &Job,
    out: &Outbox,
    inject: bool,
) -> Result<Vec<Generation>, WorkerError> {
    let params = &job.params;
    let prompt = generator.prepare(job.messages.clone(), params.max_tokens)?;
    out.send(Report::Started {
        id: job.id,
        prompt: generator.shown(&prompt).into(),
    });
    let mut deltas = 0;
    let mut send = |text: &str| {
        deltas += 1;
        if inject && deltas >= INJECTED_PANIC_AFTER {
            panic!("injected fault");
        }
        out.delta(job.id, text, &job.cancel);
    };
    let cancel = &job.cancel;
    match &job.output {
        Output::Text { best_of, speaker } if *best_of > 1 => {
            let mut draws =
                generator.alternatives(&prompt, params, None, *best_of, cancel, &mut |_, _| {})?;
            let scores: Vec<f64> = draws
                .iter()
                .map(|g| score::line_score(g, speaker))
                .collect();
            let best = draws.swap_remove(score::ranked(&scores)[0]);
            // Sent whole once chosen: the draws cannot stream.
            send(&best.text);
            Ok(vec![best])
        }
        Output::Text { .. } => {
            generator.alternatives(&prompt, params, None, 1, cancel, &mut |_, t| send(t))
        }
        Output::Structured {
            grammar,
            alternatives,
        } => generator.alternatives(
            &prompt,
            params,
            Some(Constraint::Grammar(grammar)),
            *alternatives,
            cancel,
            &mut |i, t| {
                if i == 0 {
                    send(t);
                }
            },
        ),
        Output::Scene {
            choices,
            alternatives,
        } => {
            let scenes = generator.alternatives(
                &prompt,
                &story::prose_params(params),
                None,
                *alternatives,
                cancel,
                &mut |i, t| {
                    if i == 0 {
                        send(t);
                    }
                },
            )?;
            let list = story::list_params(*choices, params);
            let mut outputs = Vec::with_capacity(scenes.len() * 2);
            for scene in scenes {
                if scene.stop_reason == StopReason::Cancelled {
                    return Ok(vec![scene]);
                }
                let mut turns = generator.messages(&prompt).to_vec();
                turns.push(ChatMessage::assistant(scene.text.clone()));
                turns.push(ChatMessage::user(story::choices_ask(*choices)));
                let asked = generator.prepare(turns, list.max_tokens)?;
                let mut lists = generator.alternatives(
                    &asked,
                    &list,
                    Some(Constraint::ChoiceList(*choices)),
                    1,
                    cancel,
                    &mut |_, _| {},
                )?;
                outputs.push(scene);
                outputs.append(&mut lists);
            }
            Ok(outputs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::GenerationStats;

    /// Writes "Draw N." for alternative N, and lists of "- Go J" under a choice list; keeps
    /// the calls it got.
    #[derive(Default)]
    struct Scripted {
        calls: Vec<(usize, Option<String>, usize)>,
    }

    impl Generate for Scripted {
        type Prompt = Vec<ChatMessage>;

        fn prepare(
            &mut self,
            messages: Vec<ChatMessage>,
            _: usize,
        ) -> Result<Self::Prompt, WorkerError> {
            Ok(messages)
        }

        fn shown(&self, prompt: &Self::Prompt) -> String {
            format!("{} messages", prompt.len())
        }

        fn messages<'p>(&self, prompt: &'p Self::Prompt) -> &'p [ChatMessage] {
            prompt
        }

        fn alternatives(
            &mut self,
            prompt: &Self::Prompt,
            _: &GenerateParams,
            constraint: Option<Constraint<'_>>,
            n: usize,
            _: &CancelToken,
            on_delta: &mut (dyn FnMut(usize, &str) + Send),
        ) -> Result<Vec<Generation>, WorkerError> {
            let shape = constraint.map(|c| format!("{c:?}"));
            self.calls.push((n, shape, prompt.len()));
            Ok((0..n)
                .map(|i| {
                    let text = match constraint {
                        Some(Constraint::ChoiceList(k)) => (0..k)
                            .map(|j| format!("- Go {j}"))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        _ => format!("Draw {i}."),
                    };
                    on_delta(i, &text);
                    Generation {
                        text,
                        tokens: vec![1],
                        stop_reason: StopReason::Eos,
                        stats: GenerationStats::default(),
                        filtered: Vec::new(),
                    }
                })
                .collect())
        }
    }

    fn job(output: Output) -> Job {
        Job {
            recall: None,
            id: RequestId(7),
            slot: 1,
            messages: vec![ChatMessage::system("Narrate."), ChatMessage::user("Begin.")],
            params: GenerateParams::default(),
            priority: Default::default(),
            cancel: CancelToken::new(),
            output,
        }
    }

    fn texts(reports: &crossbeam_channel::Receiver<Report>) -> Vec<String> {
        reports
            .try_iter()
            .filter_map(|r| match r {
                Report::Delta { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_scene_is_prose_then_a_list_asked_as_the_next_turn_and_only_the_first_streams() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut generator = Scripted::default();
        let outputs = serve(
            &mut generator,
            &job(Output::Scene {
                choices: 3,
                alternatives: 2,
            }),
            &Outbox(tx),
            false,
        )
        .unwrap();
        let shown: Vec<&str> = outputs.iter().map(|g| g.text.as_str()).collect();
        assert_eq!(
            shown,
            [
                "Draw 0.",
                "- Go 0\n- Go 1\n- Go 2",
                "Draw 1.",
                "- Go 0\n- Go 1\n- Go 2"
            ]
        );
        // Two prose draws in one call, then one list per scene after two more turns.
        assert_eq!(generator.calls[0], (2, None, 2));
        assert_eq!(generator.calls[1], (1, Some("ChoiceList(3)".into()), 4));
        assert_eq!(generator.calls.len(), 3);
        assert!(matches!(rx.try_recv(), Ok(Report::Started { .. })));
        assert_eq!(texts(&rx), ["Draw 0."], "only the first scene streams");
    }

    #[test]
    fn best_of_draws_together_and_sends_the_chosen_line_whole() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut generator = Scripted::default();
        let outputs = serve(
            &mut generator,
            &job(Output::Text {
                best_of: 3,
                speaker: "Mira".into(),
            }),
            &Outbox(tx),
            false,
        )
        .unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(generator.calls, [(3, None, 2)]);
        assert_eq!(texts(&rx), [outputs[0].text.clone()]);
    }

    #[test]
    fn a_cancelled_job_reports_nothing_and_a_failed_one_its_error() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let out = Outbox(tx);
        let cancelled = job(Output::Text {
            best_of: 1,
            speaker: String::new(),
        });
        cancelled.cancel.cancel();
        out.finished(&cancelled, Ok(Vec::new()));
        assert!(rx.try_recv().is_err());
        out.finished(
            &job(cancelled.output.clone()),
            Err(WorkerError::Crashed("x".into())),
        );
        assert!(matches!(
            rx.try_recv(),
            Ok(Report::Failed {
                error: WorkerError::Crashed(_),
                ..
            })
        ));
    }

    #[test]
    fn alternatives_after_the_first_get_consecutive_seeds() {
        let mut params = GenerateParams::default();
        params.sampling.seed = Some(10);
        let seeds: Vec<_> = (0..3)
            .map(|i| alternative_params(&params, i).sampling.seed)
            .collect();
        assert_eq!(seeds, [Some(10), Some(11), Some(12)]);
        params.sampling.seed = None;
        assert_eq!(alternative_params(&params, 0).sampling.seed, None);
    }
}
