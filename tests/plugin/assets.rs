//! Persona and template assets: hot reload, malformed files, template errors.

use crate::harness::*;

#[test]
fn a_hot_reloaded_persona_changes_the_next_prompt() {
    let assets = scratch_assets("hot-reload");
    let mut app = app(&assets, plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira).saying("What is your name?"),
    );
    update_until(&mut app, LONG, "the first line", |log| {
        log.results_for(mira) == 1
    });
    assert!(
        !app.world().resource::<Log>().started[0]
            .prompt
            .contains("Brannoc")
    );

    let file = assets.join("personas/mira.persona.ron");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"Mira\"", "\"Brannoc\"")).unwrap();
    app.world()
        .resource::<AssetServer>()
        .reload("personas/mira.persona.ron");
    // Wait until the asset holds the new name.
    let start = Instant::now();
    loop {
        app.update();
        let handle = app.world().get::<Npc>(mira).unwrap().persona.clone();
        let personas = app.world().resource::<Assets<Persona>>();
        if personas.get(&handle).is_some_and(|p| p.name == "Brannoc") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the persona did not reload"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    request(
        &mut app,
        RequestLine::new(mira).saying("What is your name again?"),
    );
    update_until(&mut app, LONG, "the second line", |log| {
        log.results_for(mira) == 2
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert!(
        log.started[1].prompt.contains("You are Brannoc"),
        "{}",
        log.started[1].prompt
    );
}

#[test]
fn a_malformed_persona_fails_its_line_with_the_file_and_the_game_keeps_going() {
    let assets = scratch_assets("malformed");
    std::fs::write(
        assets.join("personas/broken.persona.ron"),
        "(\n    name: \"Broken\",\n    description: \"a typo\",\n    personality: [\"odd\"\n)\n",
    )
    .unwrap();
    std::fs::write(
        assets.join("personas/hot.persona.ron"),
        "(\n    name: \"Hot\",\n    description: \"too hot\",\n    sampling: Some((temperature: -3.0)),\n)\n",
    )
    .unwrap();
    let more = [
        ("nameless", "(\n    description: \"no name\",\n)\n", "name"),
        (
            "typed",
            "(\n    name: \"T\",\n    description: 42,\n)\n",
            "typed.persona.ron:3",
        ),
        (
            "long",
            "(\n    name: \"L\",\n    description: \"d\",\n    max_tokens: Some(1000000000),\n)\n",
            "max_tokens",
        ),
    ];
    for (name, text, _) in &more {
        std::fs::write(assets.join(format!("personas/{name}.persona.ron")), text).unwrap();
    }
    let mut app = app(&assets, plugin());
    let extra: Vec<(Entity, &str)> = more
        .iter()
        .map(|(name, _, needle)| {
            (
                spawn_npc(&mut app, &format!("personas/{name}.persona.ron")),
                *needle,
            )
        })
        .collect();
    for (npc, _) in &extra {
        request(&mut app, RequestLine::new(*npc).saying("Hello?"));
    }
    let broken = spawn_npc(&mut app, "personas/broken.persona.ron");
    let hot = spawn_npc(&mut app, "personas/hot.persona.ron");
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(&mut app, RequestLine::new(broken).saying("Hello?"));
    request(&mut app, RequestLine::new(hot).saying("Hello?"));
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "all three results", |log| {
        log.results_for(broken) + log.results_for(hot) + log.results_for(mira) == 3
    });

    let log = app.world().resource::<Log>();
    let error_of = |npc| {
        let failed = log
            .failed
            .iter()
            .find(|f| f.npc == npc)
            .expect("a LineFailed");
        failed.error.to_string()
    };
    let broken_error = error_of(broken);
    assert!(
        broken_error.contains("broken.persona.ron:5"),
        "{broken_error}"
    );
    let hot_error = error_of(hot);
    assert!(hot_error.contains("hot.persona.ron"), "{hot_error}");
    assert!(hot_error.contains("temperature"), "{hot_error}");
    assert_eq!(log.finished_for(mira).len(), 1, "other NPCs are unaffected");
    for (npc, needle) in extra {
        let error = error_of(npc);
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}

#[test]
fn a_template_error_fails_the_line_and_names_the_variable() {
    let assets = scratch_assets("template-error");
    std::fs::write(
        assets.join("prompts/bad.jinja"),
        "You are {{ persona.name }} and you feel {{ npc.mood }}.",
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    let (persona, prompt) = {
        let server = app.world().resource::<AssetServer>();
        (
            server.load("personas/mira.persona.ron"),
            server.load("prompts/bad.jinja"),
        )
    };
    let mira = app
        .world_mut()
        .spawn(Npc::new(persona).with_prompt(prompt))
        .id();
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the failed line", |log| {
        log.results_for(mira) == 1
    });
    let error = app.world().resource::<Log>().failed[0].error.to_string();
    assert!(error.contains("bad.jinja"), "{error}");
    assert!(error.contains("mood"), "{error}");

    // With the fact set, the same template works and the prompt carries it.
    app.world_mut()
        .get_mut::<NpcContext>(mira)
        .unwrap()
        .set("mood", "grumpy");
    request(&mut app, RequestLine::new(mira).saying("Hello?"));
    update_until(&mut app, LONG, "the line", |log| log.results_for(mira) == 2);
    let log = app.world().resource::<Log>();
    assert_eq!(log.finished.len(), 1, "{:?}", log.failed);
    assert!(log.started[0].prompt.contains("you feel grumpy"));
}

#[test]
fn a_persona_reloaded_mid_line_lets_that_line_finish_and_changes_the_next() {
    let assets = scratch_assets("reload-mid-line");
    let mut app = app(&assets, plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Tell me about your forge.")
            .max_tokens(60),
    );
    update_until(&mut app, LONG, "the first delta", |log| {
        !log.deltas.is_empty()
    });
    let file = assets.join("personas/mira.persona.ron");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"Mira\"", "\"Brannoc\"")).unwrap();
    app.world()
        .resource::<AssetServer>()
        .reload("personas/mira.persona.ron");
    update_until(&mut app, LONG, "the first line", |log| {
        log.results_for(mira) == 1
    });
    assert_eq!(
        app.world().resource::<Log>().finished.len(),
        1,
        "the line in flight finishes"
    );
    let start = Instant::now();
    loop {
        app.update();
        let handle = app.world().get::<Npc>(mira).unwrap().persona.clone();
        if app
            .world()
            .resource::<Assets<Persona>>()
            .get(&handle)
            .is_some_and(|p| p.name == "Brannoc")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the persona did not reload"
        );
    }
    request(&mut app, RequestLine::new(mira).saying("Who are you?"));
    update_until(&mut app, LONG, "the second line", |log| {
        log.results_for(mira) == 2
    });
    let log = app.world().resource::<Log>();
    assert!(log.started[0].prompt.contains("You are Mira"));
    assert!(log.started[1].prompt.contains("You are Brannoc"));
}
