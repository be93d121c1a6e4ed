//! The suite's figures: one row per run, kept in `QUALITY.md` beside the rows of earlier runs.

use std::path::Path;

use crate::metrics::{self, DEFINITIONS};
use crate::{Failures, IdentitySample, LineSample, SceneSample};

/// The figures of one run.
pub(crate) struct Row {
    label: String,
    lines: usize,
    mid_sentence: usize,
    trailed_off: usize,
    leakage: usize,
    wrong_name: usize,
    probes: usize,
    knowledge: usize,
    rule_broken: usize,
    line_failures: usize,
    seconds_per_line: f64,
    scenes: usize,
    not_prose: usize,
    title_like: usize,
    openings: usize,
    premise: usize,
    choices: usize,
    actions: usize,
    well_formed: usize,
    scene_failures: usize,
    seconds_per_scene: f64,
    identity: usize,
    names_itself: usize,
    other_name: usize,
    speaker_labels: usize,
    labelled_of: usize,
    profane: usize,
    distinct_2: f64,
    first_delta: f64,
    echoes: usize,
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        "–".into()
    } else {
        format!("{:.0} % ({n}/{of})", 100.0 * n as f64 / of as f64)
    }
}

impl Row {
    pub(crate) fn new(
        label: &str,
        lines: &[LineSample],
        identity: &[IdentitySample],
        scenes: &[SceneSample],
        f: &Failures,
    ) -> Self {
        let names_itself = identity
            .iter()
            .filter(|i| {
                let lower = i.text.to_lowercase();
                i.names.iter().any(|n| lower.contains(&n.to_lowercase()))
            })
            .count();
        let other_name = identity
            .iter()
            .filter(|i| {
                i.names
                    .first()
                    .is_some_and(|n| metrics::wrong_name(&i.text, n).is_some())
            })
            .count();
        let all_texts: Vec<&str> = lines
            .iter()
            .map(|l| l.text.as_str())
            .chain(identity.iter().map(|i| i.text.as_str()))
            .collect();
        let mut personas: Vec<&str> = lines.iter().map(|l| l.persona.as_str()).collect();
        personas.dedup();
        let distinct: Vec<f64> = personas
            .iter()
            .filter_map(|p| {
                metrics::distinct_2(
                    lines
                        .iter()
                        .filter(|l| l.persona == *p)
                        .map(|l| l.text.as_str()),
                )
            })
            .collect();
        let count = |p: &dyn Fn(&LineSample) -> bool| lines.iter().filter(|l| p(l)).count();
        let probes: Vec<&LineSample> = lines.iter().filter(|l| l.expect.is_some()).collect();
        let openings: Vec<&SceneSample> = scenes.iter().filter(|s| s.opening).collect();
        let choices: usize = scenes.iter().map(|s| s.choices.len()).sum();
        let actions: usize = scenes
            .iter()
            .map(|s| {
                s.choices
                    .iter()
                    .filter(|c| metrics::is_action(c, &s.text, &s.choices))
                    .count()
            })
            .sum();
        let mean = |xs: Vec<f64>| {
            if xs.is_empty() {
                0.0
            } else {
                xs.iter().sum::<f64>() / xs.len() as f64
            }
        };
        Self {
            label: label.to_owned(),
            lines: lines.len(),
            mid_sentence: count(&|l| metrics::mid_sentence(&l.text)),
            trailed_off: count(&|l| {
                l.text.ends_with('…') && l.stop == bevy_llm_dialogue::prelude::StopReason::MaxTokens
            }),
            leakage: count(&|l| metrics::leaks(&l.text)),
            wrong_name: count(&|l| metrics::wrong_name(&l.text, &l.persona).is_some()),
            probes: probes.len(),
            knowledge: probes
                .iter()
                .filter(|l| metrics::uses_knowledge(&l.text, l.expect.as_deref().unwrap_or(&[])))
                .count(),
            rule_broken: count(&|l| metrics::breaks_rule(&l.text, &l.never_says)),
            line_failures: f.lines.len(),
            seconds_per_line: mean(lines.iter().map(|l| l.seconds).collect()),
            scenes: scenes.len(),
            not_prose: scenes
                .iter()
                .filter(|s| metrics::not_prose(&s.text))
                .count(),
            title_like: scenes
                .iter()
                .filter(|s| metrics::title_like(&s.text))
                .count(),
            openings: openings.len(),
            premise: openings
                .iter()
                .filter(|s| metrics::mentions(&s.text, &s.keywords))
                .count(),
            choices,
            actions,
            well_formed: scenes
                .iter()
                .filter(|s| metrics::well_formed(&s.choices, s.n_choices))
                .count(),
            scene_failures: f.scenes.len(),
            seconds_per_scene: mean(scenes.iter().map(|s| s.seconds).collect()),
            identity: identity.len(),
            names_itself,
            other_name,
            speaker_labels: all_texts
                .iter()
                .filter(|t| metrics::speaker_label(t))
                .count(),
            labelled_of: all_texts.len(),
            profane: all_texts.iter().filter(|t| metrics::profane(t)).count(),
            distinct_2: mean(distinct),
            first_delta: mean(lines.iter().filter_map(|l| l.first_delta).collect()),
            echoes: scenes
                .iter()
                .filter(|s| {
                    std::iter::once(&s.text)
                        .chain(&s.choices)
                        .any(|t| metrics::echoes(t, &s.echoes))
                })
                .count(),
        }
    }

    fn persona_cells(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            self.label,
            self.identity,
            pct(self.names_itself, self.identity),
            pct(self.other_name, self.identity),
            pct(self.speaker_labels, self.labelled_of),
            pct(self.profane, self.labelled_of),
            self.distinct_2,
            self.first_delta,
            pct(self.echoes, self.scenes),
        )
    }

    fn line_cells(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            self.label,
            self.lines,
            pct(self.mid_sentence, self.lines),
            pct(self.trailed_off, self.lines),
            pct(self.leakage, self.lines),
            pct(self.wrong_name, self.lines),
            pct(self.knowledge, self.probes),
            pct(self.rule_broken, self.lines),
            self.line_failures,
            self.seconds_per_line,
        )
    }

    fn scene_cells(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            self.label,
            self.scenes,
            pct(self.not_prose, self.scenes),
            pct(self.title_like, self.scenes),
            pct(self.premise, self.openings),
            pct(self.actions, self.choices),
            pct(self.well_formed, self.scenes),
            self.scene_failures,
            self.seconds_per_scene,
        )
    }

    #[expect(
        clippy::print_stdout,
        reason = "the suite's report goes to the terminal"
    )]
    pub(crate) fn print(&self) {
        println!("{LINE_HEADER}\n{}", self.line_cells());
        println!("{SCENE_HEADER}\n{}", self.scene_cells());
        println!("{PERSONA_HEADER}\n{}", self.persona_cells());
    }
}

const LINE_HEADER: &str = "| run | lines | mid-sentence | trailed off | leakage | wrong name | knowledge used | rule broken | failed | s/line |\n|---|---|---|---|---|---|---|---|---|---|";
const SCENE_HEADER: &str = "| run | scenes | not prose | title-like | premise in opening | action choices | well-formed sets | failed | s/scene |\n|---|---|---|---|---|---|---|---|---|";

const PERSONA_HEADER: &str = "| run | identity probes | names itself | other name | speaker label (all lines) | profane (all lines) | distinct-2 | first delta (s) | example echoes (scenes) |\n|---|---|---|---|---|---|---|---|---|";

/// The rows already in `QUALITY.md` under `marker`, but the one labelled `label`.
fn rows(existing: &str, marker: &str, label: &str) -> Vec<String> {
    let Some(at) = existing.find(marker) else {
        return Vec::new();
    };
    existing[at + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter(|l| l.split('|').nth(1).map(str::trim) != Some(label))
        .map(str::to_owned)
        .collect()
}

/// Rewrites `QUALITY.md`: the definitions, every earlier row plus this one, and samples of
/// this run.
pub(crate) fn write(path: &Path, row: &Row, lines: &[LineSample], scenes: &[SceneSample]) {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut line_rows = rows(&existing, "<!-- lines -->", &row.label);
    line_rows.push(row.line_cells());
    let mut scene_rows = rows(&existing, "<!-- scenes -->", &row.label);
    scene_rows.push(row.scene_cells());
    let mut persona_rows = rows(&existing, "<!-- persona -->", &row.label);
    persona_rows.push(row.persona_cells());
    let notes = existing
        .find("<!-- notes -->")
        .map(|at| {
            let rest = &existing[at + "<!-- notes -->".len()..];
            let end = rest.find("<!-- samples -->").unwrap_or(rest.len());
            rest[..end].trim().to_owned()
        })
        .unwrap_or_default();

    let mut out = String::from(
        "# Narrative quality\n\nWhat the player reads, measured by `cargo run --release --example quality -- LABEL` \
         (six personas and six story premises of the suite's own, in `tests/data/quality/`, \
         three seeds each, through the plugin as a game uses it, with the default model). \
         Each run adds its row; a change to prompts, sampling or generation is kept only if its \
         row shows it. A benchmark, not a test.\n\n## Metrics\n\n",
    );
    for (name, definition) in DEFINITIONS {
        out.push_str(&format!("- **{name}**: {definition}.\n"));
    }
    out.push_str("\n## NPC lines\n\n<!-- lines -->\n");
    out.push_str(LINE_HEADER);
    out.push('\n');
    for r in &line_rows {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str("\n## Narrator scenes\n\n<!-- scenes -->\n");
    out.push_str(SCENE_HEADER);
    out.push('\n');
    for r in &scene_rows {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str(
        "\n## Persona adherence\n\nThe lines above and the identity probes: who the character \
         says it is, speaker labels, profanity, repetition and the wait for the first words.\n\n\
         <!-- persona -->\n",
    );
    out.push_str(PERSONA_HEADER);
    out.push('\n');
    for r in &persona_rows {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str("\n## Notes\n\n<!-- notes -->\n");
    out.push_str(&notes);
    out.push_str(&format!(
        "\n\n<!-- samples -->\n## Samples of the last run ({})\n\n",
        row.label
    ));
    for l in lines
        .iter()
        .filter(|l| l.expect.is_some())
        .step_by(6)
        .take(6)
    {
        out.push_str(&format!(
            "- {} asked \"{}\": \"{}\"\n",
            l.persona, l.asked, l.text
        ));
    }
    out.push('\n');
    for s in scenes.iter().step_by(6).take(6) {
        out.push_str(&format!(
            "- `{}`: \"{}\" → {}\n",
            s.story,
            s.text.replace('\n', " "),
            s.choices
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    std::fs::write(path, out).expect("QUALITY.md is writable");

    // Every line and scene of the run, for reading (not committed).
    let mut all = String::new();
    for l in lines {
        let name = metrics::wrong_name(&l.text, &l.persona).unwrap_or_default();
        all.push_str(&format!(
            "LINE {} [{:?}{}] {} => {}\n",
            l.persona,
            l.stop,
            if name.is_empty() {
                String::new()
            } else {
                format!(", calls itself {name}")
            },
            l.asked,
            l.text
        ));
    }
    for sc in scenes {
        all.push_str(&format!(
            "SCENE {} opening={} => {} || {}\n",
            sc.story,
            sc.opening,
            sc.text,
            sc.choices.join(" | ")
        ));
    }
    let dump = path.with_file_name("target").join("quality-last-run.txt");
    let _ = std::fs::write(&dump, all);
}
