//! NPC actions: only declared actions with valid arguments.

use crate::harness::*;

#[test]
fn an_npc_acts_only_through_its_declared_actions() {
    let assets = scratch_assets("actions");
    std::fs::write(
        assets.join("personas/guard.persona.ron"),
        r#"(
    name: "Tobin",
    description: "the guard at the ruin's door",
    actions: [
        (name: "open_door", description: "let the player in", args: {"door": OneOf(["north", "cellar"])}),
        (name: "refuse", description: "keep the door shut"),
    ],
)"#,
    )
    .unwrap();
    std::fs::write(
        assets.join("personas/idle.persona.ron"),
        r#"(name: "Pell", description: "a farmer with nothing to do")"#,
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    let guard = spawn_npc(&mut app, "personas/guard.persona.ron");
    let idle = spawn_npc(&mut app, "personas/idle.persona.ron");
    // Failures arrive as ActionFailed, as a message and as an event on the NPC.
    app.world_mut()
        .entity_mut(idle)
        .observe(|failed: On<ActionFailed>, mut commands: Commands| {
            commands.entity(failed.npc).insert(Name::new("observed"));
        });
    app.world_mut().write_message(RequestAction::new(idle));
    for seed in 0..3 {
        app.world_mut().write_message(
            RequestAction::new(guard)
                .situation("The player shows the silver key and asks to enter.")
                .sampling(SamplingParams::default().with_seed(seed)),
        );
    }
    update_until(&mut app, LONG, "four decisions", |log| {
        log.actions.len() + log.action_failures.len() == 4
    });
    let log = app.world().resource::<Log>();
    assert!(log.failed.is_empty(), "no line failed: {:?}", log.failed);
    let [failure] = log.action_failures.as_slice() else {
        panic!("one failure expected: {:?}", log.action_failures);
    };
    assert_eq!(failure.npc, idle);
    assert!(
        matches!(&failure.error, DialogueError::InvalidRequest(m) if m.contains("Pell")),
        "{failure:?}"
    );
    assert_eq!(log.actions.len(), 3, "{:?}", log.action_failures);
    assert!(log.actions.iter().all(|a| a.npc == guard));
    assert_eq!(
        app.world().get::<Name>(idle).map(Name::as_str),
        Some("observed")
    );
    for action in &log.actions {
        match action.name.as_str() {
            "open_door" => {
                let door = action.args["door"].as_str().unwrap();
                assert!(door == "north" || door == "cellar", "{door}");
            }
            "refuse" => assert!(action.args.is_empty()),
            other => panic!("undeclared action {other}"),
        }
    }
}
