//! The narrator: pinned and generated scenes, choices, saves.

use crate::harness::*;

#[test]
fn a_story_opens_pinned_streams_generated_scenes_refuses_bad_choices_and_resumes_from_a_save() {
    let assets = scratch_assets("story");
    let mut app = app(&assets, plugin());
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load("stories/silver_key.story.ron");
    let story = app.world_mut().spawn(Narrator::new(handle.clone())).id();
    app.world_mut().write_message(RequestScene::new(story));
    update_until(&mut app, LONG, "the opening", |log| log.scenes.len() == 1);
    {
        let log = app.world().resource::<Log>();
        assert!(
            log.scenes[0].request.is_none(),
            "the pinned opening needs no model"
        );
        assert_eq!(log.scenes[0].choices.len(), 3);
    }

    // A choice without a pinned target: the narrator writes the scene, streamed.
    app.world_mut()
        .write_message(ChooseOption { story, index: 0 });
    app.update();
    let narrating = app.world().get::<Narrating>(story).copied();
    assert!(
        narrating.is_some(),
        "Narrating marks the scene in the works"
    );
    update_until(&mut app, LONG, "a generated scene", |log| {
        log.scenes.len() == 2 || !log.scene_failures.is_empty()
    });
    assert!(app.world().get::<Narrating>(story).is_none());
    {
        let log = app.world().resource::<Log>();
        assert!(log.scene_failures.is_empty(), "{:?}", log.scene_failures);
        let scene = &log.scenes[1];
        assert_eq!(scene.request, narrating.map(|n| n.request));
        assert_eq!(scene.choices.len(), 3);
        assert!(scene.choices.iter().all(|c| !c.is_empty()));
        let streamed: String = log.scene_deltas.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(streamed.trim(), scene.text);
    }

    // An index out of range is refused and changes nothing.
    app.world_mut()
        .write_message(ChooseOption { story, index: 7 });
    update_until(&mut app, LONG, "the refusal", |log| {
        !log.scene_failures.is_empty()
    });
    let refusal = app.world().resource::<Log>().scene_failures[0].clone();
    assert!(
        refusal.request.is_none(),
        "a refused choice never reached the model"
    );
    let error = refusal.error.to_string();
    assert!(error.contains("choice 7 does not exist"), "{error}");

    // An entity that is not a story says so.
    let stranger = app.world_mut().spawn_empty().id();
    app.world_mut().write_message(ChooseOption {
        story: stranger,
        index: 0,
    });
    update_until(&mut app, LONG, "the second refusal", |log| {
        log.scene_failures.len() == 2
    });
    assert_eq!(
        app.world().resource::<Log>().scene_failures[1].error,
        DialogueError::NotANarrator(stranger)
    );

    // Save, and resume in a new app with the same graph.
    let saved = ron::to_string(app.world().get::<Story>(story).unwrap()).unwrap();
    let graph: Story = ron::from_str(&saved).unwrap();
    assert_eq!(graph.nodes.len(), 2);
    assert_eq!(graph.nodes[0].choices[0].next, Some(1));
    drop(app);
    let mut app = self::app(&assets, plugin());
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load("stories/silver_key.story.ron");
    let story = app
        .world_mut()
        .spawn((Narrator::new(handle), graph.clone()))
        .id();
    assert_eq!(app.world().get::<Story>(story).unwrap(), &graph);
    // The resumed story goes on from where it was: the generated scene's second choice.
    app.world_mut()
        .write_message(ChooseOption { story, index: 1 });
    update_until(&mut app, LONG, "the next scene", |log| {
        !log.scenes.is_empty() || !log.scene_failures.is_empty()
    });
    let resumed = app.world().get::<Story>(story).unwrap();
    assert!(app.world().resource::<Log>().scene_failures.is_empty());
    assert_eq!(resumed.nodes.len(), 3);
    // The saved scenes are unchanged except for the link to the new one.
    let mut expected = graph.nodes.clone();
    expected[1].choices[1].next = Some(2);
    assert_eq!(resumed.nodes[..2], expected[..]);
    assert_eq!(resumed.nodes[2].from, Some((1, 1)));
}

#[test]
fn a_hostile_saved_story_is_refused_and_left_as_it_was() {
    let assets = scratch_assets("hostile-save");
    let mut app = app(&assets, plugin());
    let handle = app
        .world()
        .resource::<AssetServer>()
        .load("stories/silver_key.story.ron");
    // A `from` cycle: `Story::path` looped forever on it, on the main thread.
    let save = "(nodes: [
        (text: \"A gate.\", choices: [(text: \"Enter\", goto: None, next: None)], from: Some((1, 0)), fixed: None),
        (text: \"A hall.\", choices: [(text: \"Back\", goto: None, next: None)], from: Some((0, 0)), fixed: None),
    ], current: Some(1), pending: None)";
    let saved: Story = ron::from_str(save).unwrap();
    let story = app
        .world_mut()
        .spawn((Narrator::new(handle), saved.clone()))
        .id();
    app.world_mut()
        .write_message(ChooseOption { story, index: 0 });
    update_until(&mut app, LONG, "the refusal", |log| {
        !log.scene_failures.is_empty()
    });
    app.world_mut().write_message(RequestScene::new(story));
    update_until(&mut app, LONG, "the second refusal", |log| {
        log.scene_failures.len() == 2
    });
    let log = app.world().resource::<Log>();
    for failure in &log.scene_failures {
        assert!(
            failure.error.to_string().contains("saved story is invalid"),
            "{}",
            failure.error
        );
    }
    assert_eq!(
        app.world().get::<Story>(story),
        Some(&saved),
        "nothing lost"
    );
}
