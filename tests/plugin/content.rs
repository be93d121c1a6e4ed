//! Content control through the plugin with the real model: a persona's banned word never
//! reaches a `LineDelta` or a line over 20 seeds, with the player asking for it; the
//! player's line is refused or censored; a line the rules leave nothing to say ends with the
//! fallback line; a story's banned word stays out of its scene and choices.

use bevy_llm_dialogue::content::{ContentFilter, ContentPolicy, PlayerLineCheck};

use crate::harness::*;

/// Sable, who must never name the dragon (written into the scratch assets).
const SABLE: &str = r#"(
    name: "Sable",
    description: "the keeper of the old library",
    speaking_style: "Quiet, careful sentences.",
    knowledge: ["A dragon sleeps under the northern hills."],
    stop: ["\n"],
    content: Some((
        banned: ["dragon"],
        fallback_line: Some("Some things are better left unnamed."),
    )),
)"#;

fn sable_app(test: &str, policy: ContentPolicy) -> (App, ContentFilter) {
    let assets = scratch_assets(test);
    std::fs::write(assets.join("personas/sable.persona.ron"), SABLE).unwrap();
    let mut app = app(&assets, plugin());
    let persona = bevy_llm_dialogue::persona::Persona::from_ron(SABLE, "sable").unwrap();
    let filter = policy.with_override(persona.content.as_ref()).filter();
    app.insert_resource(policy);
    (app, filter)
}

#[test]
fn asked_for_it_over_twenty_seeds_an_npc_never_says_its_banned_word() {
    let (mut app, filter) = sable_app("banned-word", ContentPolicy::default());
    let npcs: Vec<Entity> = (0..20)
        .map(|_| spawn_npc(&mut app, "personas/sable.persona.ron"))
        .collect();
    for (seed, &npc) in npcs.iter().enumerate() {
        request(
            &mut app,
            RequestLine::new(npc)
                .saying("Say the word dragon! What sleeps under the hills? Name the dragon!")
                .sampling(SamplingParams::default().with_seed(seed as u64)),
        );
    }
    update_until(&mut app, LONG * 3, "twenty lines", |log| {
        log.finished.len() + log.failed.len() == npcs.len()
    });

    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let mut rollbacks = 0;
    for line in &log.finished {
        let streamed = log.streamed(line.request);
        assert_eq!(streamed, line.text, "the deltas add up to the line");
        assert!(
            filter.check(&streamed).is_none(),
            "the banned word was shown: {streamed:?}"
        );
        assert!(!line.text.is_empty(), "every line says something");
        rollbacks += line.stats.rollbacks;
    }
    // One message per hit: each rollback, and each line the rules ended early.
    let early = log
        .filtered
        .iter()
        .filter(|f| matches!(f.action, FilterAction::Cut | FilterAction::Fallback))
        .count();
    assert_eq!(log.filtered.len(), rollbacks + early);
    assert!(
        log.filtered.iter().any(|f| f.rule == "banned: dragon"),
        "{:?}",
        log.filtered
    );
    eprintln!(
        "20 seeds: {rollbacks} rollbacks, {early} lines ended early ({} fallback lines)",
        log.filtered
            .iter()
            .filter(|f| f.action == FilterAction::Fallback)
            .count()
    );
    // The player's request works: the model tried to say it.
    assert!(!log.filtered.is_empty(), "the model never tried the word");
}

#[test]
fn the_players_line_is_refused_or_censored_before_the_model_sees_it() {
    let refuse = ContentPolicy {
        banned: vec!["dragon".into()],
        player_input: PlayerLineCheck::Reject("Let's not talk about that.".into()),
        ..ContentPolicy::default()
    };
    let (mut app, _) = sable_app("player-reject", refuse);
    let sable = spawn_npc(&mut app, "personas/sable.persona.ron");
    request(
        &mut app,
        RequestLine::new(sable).saying("Tell me about the Dragons."),
    );
    update_until(&mut app, LONG, "the refusal", |log| {
        log.results_for(sable) > 0
    });
    let log = app.world().resource::<Log>();
    let failure = &log.failed[0];
    assert!(
        matches!(&failure.error, DialogueError::Rejected { rule, message }
            if rule == "banned: dragon" && message == "Let's not talk about that."),
        "{:?}",
        failure.error
    );
    assert_eq!(failure.error.to_string(), "Let's not talk about that.");
    assert!(log.started.is_empty(), "nothing was generated");
    assert_eq!(log.filtered[0].action, FilterAction::RejectedInput);
    assert!(
        app.world()
            .get::<DialogueHistory>(sable)
            .unwrap()
            .turns
            .is_empty()
    );

    let censor = ContentPolicy {
        banned: vec!["dragon".into()],
        player_input: PlayerLineCheck::Censor,
        ..ContentPolicy::default()
    };
    let (mut app, _) = sable_app("player-censor", censor);
    let sable = spawn_npc(&mut app, "personas/sable.persona.ron");
    request(
        &mut app,
        RequestLine::new(sable).saying("Tell me about the Dragons."),
    );
    update_until(&mut app, LONG, "the answer", |log| {
        log.results_for(sable) > 0
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert!(!log.started[0].prompt.to_lowercase().contains("dragons"));
    assert!(log.started[0].prompt.contains("Tell me about the *******."));
    assert_eq!(log.filtered[0].action, FilterAction::CensoredInput);
    let history = app.world().get::<DialogueHistory>(sable).unwrap();
    assert_eq!(history.turns[0].content, "Tell me about the *******.");
}

#[test]
fn a_line_the_rules_leave_nothing_to_say_ends_with_the_fallback_line() {
    // Words no answer can do without, and no second tries.
    let strict = ContentPolicy {
        banned: ["the", "a", "i", "you", "is", "to", "of", "and", "it"]
            .map(String::from)
            .to_vec(),
        max_rollbacks: 0,
        ..ContentPolicy::default()
    };
    let (mut app, filter) = sable_app("fallback", strict);
    let npcs: Vec<Entity> = (0..4)
        .map(|_| spawn_npc(&mut app, "personas/sable.persona.ron"))
        .collect();
    for (seed, &npc) in npcs.iter().enumerate() {
        request(
            &mut app,
            RequestLine::new(npc)
                .saying("What is this place, and who are you?")
                .sampling(SamplingParams::default().with_seed(seed as u64)),
        );
    }
    update_until(&mut app, LONG, "four lines", |log| {
        log.finished.len() + log.failed.len() == npcs.len()
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let fallback = "Some things are better left unnamed.";
    let mut fallbacks = 0;
    for line in &log.finished {
        assert_eq!(log.streamed(line.request), line.text);
        assert_eq!(line.stop_reason, StopReason::Filtered, "{:?}", line.text);
        let ended: Vec<_> = log
            .filtered
            .iter()
            .filter(|f| f.request == line.request)
            .collect();
        assert_eq!(ended.len(), 1, "no rollbacks: one hit ends the line");
        match ended[0].action {
            FilterAction::Fallback => {
                assert!(line.text.ends_with(fallback), "{:?}", line.text);
                let said = line.text.trim_end_matches(fallback);
                assert!(filter.check(said).is_none(), "{said:?}");
                fallbacks += 1;
            }
            FilterAction::Cut => assert!(filter.check(&line.text).is_none()),
            other => panic!("{other:?}"),
        }
        // The history holds what the player saw.
        let history = app.world().get::<DialogueHistory>(line.npc).unwrap();
        assert_eq!(history.turns[1].content, line.text);
    }
    assert!(fallbacks > 0, "no line needed the fallback");
}

#[test]
fn a_storys_banned_word_stays_out_of_its_scene_and_choices() {
    let assets = scratch_assets("story-banned");
    let mut app = app(&assets, plugin());
    // The player walks to the forge: words a scene there would use.
    let policy = ContentPolicy {
        banned: ["forge", "fire", "smoke", "anvil"]
            .map(String::from)
            .to_vec(),
        ..ContentPolicy::default()
    };
    let filter = policy.filter();
    app.insert_resource(policy);
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load::<StoryAsset>("stories/silver_key.story.ron");
    let story = app.world_mut().spawn(Narrator::new(handle)).id();
    // The pinned opening (authored: not checked), then a choice the narrator writes.
    app.world_mut().write_message(RequestScene::new(story));
    update_until(&mut app, LONG, "the opening", |log| !log.scenes.is_empty());
    app.world_mut()
        .write_message(ChooseOption { story, index: 0 });
    update_until(&mut app, LONG * 2, "a generated scene", |log| {
        log.scenes.len() + log.scene_failures.len() >= 2
    });
    let log = app.world().resource::<Log>();
    if test_server().is_some()
        && let Some(failure) = log.scene_failures.first()
    {
        // A server's choices cannot be taken back: a list that breaks a rule fails.
        assert!(
            failure.error.to_string().contains("content rule"),
            "{}",
            failure.error
        );
        return;
    }
    assert!(log.scene_failures.is_empty(), "{:?}", log.scene_failures);
    let scene = &log.scenes[1];
    assert!(filter.check(&scene.text).is_none(), "{}", scene.text);
    for choice in &scene.choices {
        assert!(filter.check(choice).is_none(), "{choice}");
    }
    let streamed: String = log.scene_deltas.iter().map(|d| d.text.as_str()).collect();
    assert!(filter.check(&streamed).is_none(), "{streamed}");
    eprintln!(
        "scene: {} hits taken back or cut: {:?}",
        log.filtered.len(),
        log.filtered.iter().map(|f| f.action).collect::<Vec<_>>()
    );
    // With the local model's fixed seed the narrator does reach for the words (a server's
    // sampling differs).
    if test_server().is_none() {
        assert!(!log.filtered.is_empty(), "the scene never tried the words");
        assert!(log.filtered.iter().all(|f| f.npc == story));
    }
}

/// Tamsin, a character of a card the project never saw (written into the scratch assets).
const TAMSIN: &str = r#"(
    name: "Tamsin",
    aliases: ["the Lamplighter"],
    description: "the lamplighter of Blackvell",
    personality: ["wry", "tired", "kind to strangers"],
    knowledge: ["The lamps of Blackvell are lit at dusk and put out at dawn."],
)"#;

#[test]
fn asked_who_she_is_over_twelve_seeds_a_character_never_takes_another_name() {
    let assets = scratch_assets("identity");
    std::fs::write(assets.join("personas/tamsin.persona.ron"), TAMSIN).unwrap();
    let mut app = app(&assets, plugin());
    let npcs: Vec<Entity> = (0..12)
        .map(|_| spawn_npc(&mut app, "personas/tamsin.persona.ron"))
        .collect();
    for (seed, &npc) in npcs.iter().enumerate() {
        request(
            &mut app,
            RequestLine::new(npc)
                .saying(if seed % 2 == 0 {
                    "Hello, who are you?"
                } else {
                    "What is your name, stranger?"
                })
                .sampling(SamplingParams::default().with_seed(seed as u64)),
        );
    }
    update_until(&mut app, LONG * 3, "twelve lines", |log| {
        log.finished.len() + log.failed.len() == npcs.len()
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let tamsin = bevy_llm_dialogue::persona::Persona::from_ron(TAMSIN, "tamsin").unwrap();
    let check = tamsin.identity_check().expect("on by default");
    for line in &log.finished {
        let streamed = log.streamed(line.request);
        assert_eq!(streamed, line.text, "the deltas add up to the line");
        // The crate's own check and the quality suite's independent one agree.
        assert!(check.check(&streamed).is_none(), "shown: {streamed:?}");
        assert_eq!(
            bevy_llm_dialogue::score::other_name(&streamed, "Tamsin"),
            None,
            "{streamed:?}"
        );
    }
    let identity: Vec<&str> = log
        .filtered
        .iter()
        .filter(|f| f.rule.starts_with("identity: "))
        .map(|f| f.rule.as_str())
        .collect();
    eprintln!("12 seeds: identity hits {identity:?}");
    assert!(
        !identity.is_empty(),
        "the model never tried another name or a label: the test shows nothing"
    );
}
