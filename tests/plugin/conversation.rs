//! Conversations between NPCs: three personas in one scene, each in its own voice and
//! hearing the others; the player joining (and the line being computed giving way), turn
//! policies, and a save and load.

use crate::harness::*;

/// What the conversations sent, in order.
#[derive(Resource, Default)]
struct Talk {
    lines: Vec<ConversationLine>,
    ended: usize,
    interrupted: Vec<RequestId>,
}

fn record_talk(
    mut talk: ResMut<Talk>,
    mut lines: MessageReader<ConversationLine>,
    mut ended: MessageReader<ConversationEnded>,
    mut interrupted: MessageReader<LineInterrupted>,
) {
    talk.lines.extend(lines.read().cloned());
    talk.ended += ended.read().count();
    talk.interrupted
        .extend(interrupted.read().map(|l| l.request));
}

fn talk_app(test: &str) -> App {
    let mut app = app_with(&scratch_assets(test), plugin(), |app| {
        app.init_resource::<Talk>().add_systems(Last, record_talk);
    });
    app.world_mut()
        .resource_mut::<DialogueContext>()
        .set("player_name", "Ann");
    app
}

fn talk(app: &App) -> &Talk {
    app.world().resource::<Talk>()
}

fn run_until(app: &mut App, what: &str, done: impl Fn(&Talk) -> bool) {
    let start = std::time::Instant::now();
    while !done(talk(app)) {
        assert!(
            start.elapsed() < LONG,
            "timed out waiting for {what}; {}",
            app.world().resource::<Log>().problems()
        );
        app.update();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The prompt of the line `request`.
fn prompt_of(app: &App, request: RequestId) -> String {
    let log = app.world().resource::<Log>();
    log.started
        .iter()
        .find(|s| s.request == request)
        .map(|s| s.prompt.to_string())
        .expect("the line started")
}

#[test]
fn three_npcs_talk_in_turn_in_their_own_personas_and_the_player_joins_and_it_survives_a_save() {
    let mut app = talk_app("conversation");
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let aldous = spawn_npc(&mut app, "personas/aldous.persona.ron");
    let wren = spawn_npc(&mut app, "personas/wren.persona.ron");
    let conversation = app
        .world_mut()
        .spawn(
            Conversation::new([mira, aldous, wren])
                .about("the wolves by the tower")
                .max_lines(3),
        )
        .id();
    run_until(&mut app, "three lines and the end", |t| t.ended == 1);
    {
        let t = talk(&app);
        let speakers: Vec<Entity> = t.lines.iter().map(|l| l.speaker).collect();
        assert_eq!(speakers, [mira, aldous, wren], "in order");
        let log = app.world().get::<ConversationLog>(conversation).unwrap();
        let names: Vec<&str> = log.lines.iter().map(|l| l.speaker.as_str()).collect();
        assert_eq!(names, ["Mira", "Aldous", "Wren"]);
        for (line, spoken) in t.lines.iter().zip(&log.lines) {
            assert_eq!(line.text, spoken.text);
            assert!(!spoken.text.is_empty());
        }
        // Each speaks as itself and hears the others, labelled.
        let aldous_prompt = prompt_of(&app, t.lines[1].request);
        assert!(aldous_prompt.contains("You are Aldous"), "{aldous_prompt}");
        assert!(!aldous_prompt.contains("You are Mira"), "{aldous_prompt}");
        assert!(
            aldous_prompt.contains(&format!("Mira: {}", log.lines[0].text)),
            "{aldous_prompt}"
        );
        assert!(aldous_prompt.contains("the wolves by the tower"));
        let wren_prompt = prompt_of(&app, t.lines[2].request);
        assert!(wren_prompt.contains(&format!("Aldous: {}", log.lines[1].text)));
        // Wren's own knowledge is his alone.
        assert!(!aldous_prompt.contains("circle the ruined tower at night"));
        // Ambient lines run at Background priority and stay out of the NPCs' histories.
        for npc in [mira, aldous, wren] {
            assert!(
                app.world()
                    .get::<DialogueHistory>(npc)
                    .unwrap()
                    .turns
                    .is_empty()
            );
        }
    }

    // The player joins: the next speaker answers them.
    app.world_mut().write_message(SayInConversation {
        conversation,
        line: "Are the wolves near the tower tonight?".into(),
    });
    run_until(&mut app, "an answer to the player", |t| t.lines.len() == 4);
    let saved = {
        let t = talk(&app);
        let answer = &t.lines[3];
        assert_eq!(answer.speaker, mira, "the next in order");
        let prompt = prompt_of(&app, answer.request);
        assert!(
            prompt.contains("Ann: Are the wolves near the tower tonight?"),
            "{prompt}"
        );
        let log = app.world().get::<ConversationLog>(conversation).unwrap();
        assert!(log.player_joined);
        assert_eq!(log.lines[3].speaker, "Ann");
        assert_eq!(log.lines.len(), 5);
        ron::to_string(log).unwrap()
    };

    // A new app: the game spawns its NPCs again and the conversation with its saved log.
    let log: ConversationLog = ron::from_str(&saved).unwrap();
    let mut app = talk_app("conversation-loaded");
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let aldous = spawn_npc(&mut app, "personas/aldous.persona.ron");
    let wren = spawn_npc(&mut app, "personas/wren.persona.ron");
    app.world_mut().spawn((
        Conversation::new([mira, aldous, wren])
            .about("the wolves by the tower")
            .max_lines(3),
        log.clone(),
    ));
    run_until(&mut app, "the next line after the load", |t| {
        !t.lines.is_empty()
    });
    let t = talk(&app);
    assert_eq!(t.lines[0].speaker, aldous, "after Mira, in order");
    let prompt = prompt_of(&app, t.lines[0].request);
    assert!(
        prompt.contains("Ann: Are the wolves near the tower tonight?")
            && prompt.contains(&format!("Mira: {}", log.lines[4].text)),
        "the loaded conversation goes on: {prompt}"
    );
}

#[test]
fn the_game_or_the_model_chooses_who_speaks_and_the_player_interrupts() {
    let mut app = talk_app("conversation-turns");
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let aldous = spawn_npc(&mut app, "personas/aldous.persona.ron");
    let wren = spawn_npc(&mut app, "personas/wren.persona.ron");
    // The game's turns: nobody speaks until it says who.
    let by_game = app
        .world_mut()
        .spawn(Conversation::new([mira, aldous, wren]).turns(TurnPolicy::Game))
        .id();
    update_for(&mut app, std::time::Duration::from_millis(300));
    assert!(talk(&app).lines.is_empty());
    assert!(app.world().resource::<Log>().started.is_empty());
    app.world_mut().write_message(GiveTurn {
        conversation: by_game,
        speaker: wren,
    });
    run_until(&mut app, "the line the game asked for", |t| {
        t.lines.len() == 1
    });
    assert_eq!(talk(&app).lines[0].speaker, wren);
    app.world_mut().entity_mut(by_game).despawn();

    // The model's turns: every speaker a participant, never twice in a row.
    let by_model = app
        .world_mut()
        .spawn(
            Conversation::new([mira, aldous, wren])
                .turns(TurnPolicy::Model)
                .max_lines(4),
        )
        .id();
    run_until(&mut app, "four lines chosen by the model", |t| t.ended == 1);
    let chosen: Vec<Entity> = talk(&app).lines[1..]
        .iter()
        .filter(|l| l.conversation == by_model)
        .map(|l| l.speaker)
        .collect();
    assert_eq!(chosen.len(), 4);
    assert!(chosen.windows(2).all(|w| w[0] != w[1]), "{chosen:?}");
    assert!(chosen.iter().all(|s| [mira, aldous, wren].contains(s)));

    // The player speaks while a background line is being computed: that line is dropped
    // and the next one answers the player.
    let interrupted = app
        .world_mut()
        .spawn(Conversation::new([mira, aldous]).max_lines(2))
        .id();
    let started = app.world().resource::<Log>().started.len();
    update_until(&mut app, LONG, "a background line starts", |log| {
        log.started.len() > started
    });
    let dropped = app.world().resource::<Log>().started[started].request;
    app.world_mut().write_message(SayInConversation {
        conversation: interrupted,
        line: "Quiet, both of you. Who owns the grey horse?".into(),
    });
    let before = talk(&app).lines.len();
    run_until(&mut app, "the answer to the player", |t| {
        t.lines.len() > before
    });
    let t = talk(&app);
    let answer = &t.lines[before];
    assert_ne!(answer.request, dropped, "the line in progress gave way");
    assert!(t.lines.iter().all(|l| l.request != dropped));
    assert_eq!(
        t.interrupted,
        [dropped],
        "the game learns the line was cut off"
    );
    let log = app.world().get::<ConversationLog>(interrupted).unwrap();
    assert_eq!(log.lines[0].speaker, "Ann", "the player's line comes first");
    assert!(prompt_of(&app, answer.request).contains("Ann: Quiet, both of you."));
}
