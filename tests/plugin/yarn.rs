//! The Yarn Spinner bridge (feature `yarn`): authored lines, generated lines and options,
//! variables both ways, fallbacks and saves, with the real model and a real runner.

use bevy_llm_dialogue::yarn::{YarnBridge, YarnError, YarnSave, YarnTranscript};
use bevy_yarnspinner::prelude::{DialogueRunner, YarnValue};

use crate::harness::*;

const GATE: &str = r#"title: Gate
---
<<declare $llm_line = "">>
<<declare $llm_choice = 0>>
<<declare $llm_choice_text = "">>
<<declare $llm_option_1 = "">>
<<declare $llm_option_2 = "">>
Narrator: The gate of Elmsbrook is shut for the night.
<<generate_line Guard "greet the traveller and mention the wolves" "Evening. Mind the wolves.">>
Guard: {$llm_line}
<<generate_options 3 "what the traveller could do at the gate" "Pay the toll|Turn back">>
<<if $llm_choice == 2>>
    Narrator: SECOND BRANCH {$llm_choice_text}
<<else>>
    Narrator: OTHER BRANCH
<<endif>>
<<generate_options 2 "what the traveller could ask the guard" "Ask about the road|Ask about the inn" beside>>
-> {$llm_option_1}
    Narrator: FIRST {$llm_option_1}
-> {$llm_option_2}
    Narrator: SECOND
-> Show the silver key.
    Narrator: KEY
===
"#;

/// A story without a pinned opening, so that the narrator writes the options; its pinned
/// scene is the narrator's example.
const STORY: &str = r#"(
    title: "The Gate",
    premise: "A traveller reaches the shut gate of Elmsbrook at night; a guard stands watch.",
    tone: "warm, a little eerie",
    choices: 3,
    max_scene_chars: 240,
    nodes: [(
        id: "example",
        text: "Lantern light falls on the shut gate. The guard leans on his spear and watches the dark road.",
        choices: [(text: "Ask the guard to open the gate"), (text: "Ask about the wolves"), (text: "Wait by the wall")],
    )],
)"#;

#[test]
fn an_authored_scene_hands_over_to_generated_lines_and_options_and_back() {
    let assets = scratch_assets("yarn-gate");
    guard_persona(&assets);
    std::fs::write(assets.join("stories/gate.story.ron"), STORY).unwrap();
    let mut app = yarn_app(&assets, plugin(), GATE);
    app.insert_resource(TakeOption(1));
    let guard = spawn_npc(&mut app, "personas/guard.persona.ron");
    app.world_mut().entity_mut(guard).insert(Name::new("Guard"));
    let story = app
        .world()
        .resource::<AssetServer>()
        .load("stories/gate.story.ron");
    let narrator = app.world_mut().spawn(Narrator::new(story)).id();
    let bridge = YarnBridge {
        narrator: Some(narrator),
        ..default()
    };
    let runner = start_yarn(&mut app, bridge, "Gate");

    // The authored line first; the runner then waits for the generated one.
    update_until(&mut app, LONG, "the generated options", |log| {
        !log.yarn.options.is_empty()
    });
    let save = {
        let mut q = app
            .world_mut()
            .query::<(&DialogueRunner, &YarnTranscript)>();
        let (r, t) = q.get(app.world(), runner).unwrap();
        YarnSave::capture(r, t)
    };
    update_until(&mut app, LONG, "the end of the dialogue", |log| {
        log.yarn.completed
    });

    let view = &app.world().resource::<Log>().yarn;
    assert!(view.failures.is_empty(), "{:?}", view.failures);
    assert_eq!(view.lines.len(), 4, "{:?}", view.lines);
    assert_eq!(
        view.lines[0].1,
        "The gate of Elmsbrook is shut for the night."
    );
    // The generated line: streamed, then presented by the authored `Guard: {$llm_line}`.
    let line = &view.finished[0];
    assert!(!line.fallback && !line.replayed);
    assert_eq!(line.npc, Some(guard));
    assert!(!line.text.trim().is_empty());
    assert_eq!(view.deltas, line.text, "the deltas add up to the line");
    assert_eq!(view.lines[1], (Some("Guard".into()), line.text.clone()));
    assert!(line.id.0.starts_with("llm:Gate:1:"), "{}", line.id.0);
    // The narrator's options: as many as asked, distinct, not the fallback.
    let options = &view.options[0];
    assert!(!options.fallback);
    assert_eq!(options.options.len(), 3, "{:?}", options.options);
    for (i, a) in options.options.iter().enumerate() {
        assert!(!a.trim().is_empty());
        assert!(
            options.options[..i].iter().all(|b| b != a),
            "{:?}",
            options.options
        );
    }
    assert_ne!(options.id, line.id);
    // Option 2 (index 1) was taken: the branch for `$llm_choice == 2`, with its text.
    assert_eq!(
        view.lines[2].1,
        format!("SECOND BRANCH {}", options.options[1])
    );
    // Generated options beside authored ones: the script shows them in its own list.
    let beside = &view.options[1];
    assert!(beside.beside && !beside.fallback);
    assert_eq!(beside.options.len(), 2, "{:?}", beside.options);
    assert_ne!(beside.options[0], beside.options[1]);
    let mut listed = beside.options.clone();
    listed.push("Show the silver key.".into());
    assert_eq!(view.authored_options, [listed]);
    assert_eq!(view.lines[3].1, format!("FIRST {}", beside.options[0]));
    // The NPC remembers what it said.
    let history = app.world().get::<DialogueHistory>(guard).unwrap();
    assert!(history.turns.iter().any(|t| t.content == line.text));
    let (generated_text, generated_options) = (line.text.clone(), options.options.clone());
    drop(app);

    // The save, restored in a game with no model: the same line and options come back.
    let save: YarnSave = ron::from_str(&ron::to_string(&save).unwrap()).unwrap();
    assert_eq!(save.node.as_deref(), Some("Gate"));
    assert_eq!(save.transcript.entries.len(), 2, "{:?}", save.transcript);
    let missing = LlmDialoguePlugin {
        model: Some(assets.join("models/nope.gguf")),
        ..plugin()
    };
    let mut app = yarn_app(&assets, missing, GATE);
    app.insert_resource(TakeOption(0));
    let runner = start_yarn(&mut app, YarnBridge::default(), "Gate");
    {
        let mut q = app
            .world_mut()
            .query::<(&mut DialogueRunner, &mut YarnTranscript)>();
        let (mut r, mut t) = q.get_mut(app.world_mut(), runner).unwrap();
        save.restore(&mut r, &mut t).unwrap();
    }
    update_until(&mut app, LONG, "the end of the replay", |log| {
        log.yarn.completed && log.yarn.lines.len() >= 4
    });
    let view = &app.world().resource::<Log>().yarn;
    let replayed = view.finished.last().unwrap();
    assert!(
        replayed.replayed && !replayed.fallback,
        "{replayed:?}, saved {:?}, failures {:?}",
        save.transcript,
        view.failures
    );
    assert_eq!(replayed.text, generated_text);
    assert_eq!(view.options[0].options, generated_options);
    assert!(
        view.lines.iter().any(|l| l.1 == "OTHER BRANCH"),
        "{:?}",
        view.lines
    );
    // What the save did not hold needs the model: the writer's fallback options instead.
    assert!(view.options[1].fallback && view.options[1].beside);
    assert_eq!(view.lines[3].1, "FIRST Ask about the road");
}

const DOOR: &str = r#"title: Door
---
<<declare $tobin_action = "">>
Narrator: You show Tobin the silver key and ask him to open the gate.
<<generate_action Tobin "The traveller shows the silver key and asks to enter.">>
<<if $tobin_action == "open_gate">>
    Narrator: OPEN
<<else>>
    Narrator: SHUT
<<endif>>
===
"#;

#[test]
fn a_variable_set_by_an_npc_action_selects_the_authored_branch() {
    let assets = scratch_assets("yarn-door");
    guard_persona(&assets);
    let mut app = yarn_app(&assets, plugin(), DOOR);
    // Named by its persona (no Name component).
    let guard = spawn_npc(&mut app, "personas/guard.persona.ron");
    let runner = start_yarn(&mut app, YarnBridge::default(), "Door");
    update_until(&mut app, LONG, "the end of the dialogue", |log| {
        log.yarn.completed
    });

    let log = app.world().resource::<Log>();
    assert_eq!(
        log.actions.len(),
        1,
        "one decision: {:?}",
        log.action_failures
    );
    let decided = log.actions[0].name.clone();
    let view = &log.yarn;
    assert!(view.failures.is_empty(), "{:?}", view.failures);
    let expected = if decided == "open_gate" {
        "OPEN"
    } else {
        "SHUT"
    };
    assert_eq!(view.lines.len(), 2, "{:?}", view.lines);
    assert_eq!(view.lines[1].1, expected, "decided {decided}");
    let facts = &app.world().resource::<DialogueContext>().facts;
    assert_eq!(
        facts.0.get("tobin_action").and_then(|v| v.as_str()),
        Some(decided.as_str()),
        "Yarn variables are world facts"
    );

    // A changed disposition reaches Yarn too.
    app.world_mut().write_message(
        UpdateDisposition::new(guard).situation("The traveller insults the guard's mother."),
    );
    let begin = Instant::now();
    loop {
        app.update();
        let answered = app.world().get::<NpcDisposition>(guard).cloned();
        let runner = app.world().get::<DialogueRunner>(runner).unwrap();
        if let (Some(d), Ok(YarnValue::String(mood))) =
            (answered, runner.variable_storage().get("$tobin_mood"))
        {
            assert_eq!(mood, d.mood);
            let affinity = runner.variable_storage().get("$tobin_affinity").unwrap();
            assert_eq!(affinity, YarnValue::Number(d.affinity as f32));
            break;
        }
        assert!(begin.elapsed() < LONG, "no disposition variables");
        std::thread::sleep(Duration::from_millis(2));
    }
}

const FALLBACKS: &str = r#"title: Start
---
<<declare $llm_line = "">>
<<declare $llm_choice = 0>>
<<generate_line Guard "greet the traveller" "Evening. Mind the wolves.">>
Guard: {$llm_line}
<<generate_line Nobody "say anything" "Nobody answers.">>
Narrator: {$llm_line}
<<generate_options many>>
<<generate_options 2 "what now" "Wait|Knock">>
<<if $llm_choice == 2>>
    Narrator: KNOCKED
<<endif>>
<<generate_options 2 "what now" "" somewhere>>
<<generate_options 2 "what now" "" beside>>
-> {$llm_option_1} <<if $llm_option_1 != "">>
    Narrator: EMPTY
-> Leave.
    Narrator: LEFT
===
"#;

#[test]
fn without_a_model_the_runner_goes_on_with_the_writers_fallbacks_and_clear_errors() {
    let assets = scratch_assets("yarn-fallback");
    guard_persona(&assets);
    let missing = LlmDialoguePlugin {
        model: Some(assets.join("models/nope.gguf")),
        ..plugin()
    };
    let mut app = yarn_app(&assets, missing, FALLBACKS);
    app.insert_resource(TakeOption(1));
    let guard = spawn_npc(&mut app, "personas/guard.persona.ron");
    app.world_mut().entity_mut(guard).insert(Name::new("Guard"));
    update_until(&mut app, LONG, "ModelFailed", |log| {
        !log.model_failed.is_empty()
    });
    start_yarn(&mut app, YarnBridge::default(), "Start");
    update_until(&mut app, LONG, "the end of the dialogue", |log| {
        log.yarn.completed
    });

    let view = &app.world().resource::<Log>().yarn;
    let lines: Vec<&str> = view.lines.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(
        lines,
        [
            "Evening. Mind the wolves.",
            "Nobody answers.",
            "KNOCKED",
            "LEFT"
        ]
    );
    assert!(view.finished.iter().all(|f| f.fallback));
    let errors: Vec<&YarnError> = view.failures.iter().map(|f| &f.error).collect();
    assert!(
        matches!(errors[0], YarnError::NoModel(r) if r.contains("nope.gguf")),
        "{errors:?}"
    );
    match errors[1] {
        YarnError::UnknownNpc { name, known } => {
            assert_eq!(name, "Nobody");
            assert!(known.contains("Guard"), "{known}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(errors[2], YarnError::BadArguments(m) if m.contains("2..=6")),
        "{errors:?}"
    );
    // No narrator for the second `generate_options`: the fallback options were offered.
    assert!(matches!(errors[3], YarnError::NoNarrator), "{errors:?}");
    assert_eq!(view.options[0].options, ["Wait", "Knock"]);
    assert!(view.options[0].fallback);
    assert!(
        matches!(errors[4], YarnError::BadArguments(m) if m.contains("somewhere")),
        "{errors:?}"
    );
    // Beside authored options, with nothing to fall back on: the generated one is empty and
    // the script's condition hides it.
    assert!(matches!(errors[5], YarnError::NoNarrator), "{errors:?}");
    assert_eq!(errors.len(), 6, "{errors:?}");
    assert_eq!(view.authored_options.len(), 1);
    assert_eq!(view.authored_options[0], ["", "Leave."]);
    assert!(view.failures.iter().all(|f| f.node == "Start"));
}
