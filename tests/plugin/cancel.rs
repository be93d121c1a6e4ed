//! Cancelling a line and despawning an NPC: nothing arrives afterwards, nothing leaks.

use crate::harness::*;

#[test]
fn cancel_stops_a_line_and_no_result_arrives_afterwards() {
    let mut app = app(&scratch_assets("cancel"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Tell me everything about your life.")
            .max_tokens(200),
    );
    update_until(&mut app, LONG, "the first delta", |log| {
        !log.deltas.is_empty()
    });
    assert!(app.world().get::<Speaking>(mira).is_some());
    app.world_mut().write_message(CancelLine { npc: mira });
    app.update();
    let deltas_at_cancel = app.world().resource::<Log>().deltas.len();
    update_for(&mut app, Duration::from_secs(3));

    let log = app.world().resource::<Log>();
    assert_eq!(log.results_for(mira), 0, "no result for a cancelled line");
    assert_eq!(
        log.deltas.len(),
        deltas_at_cancel,
        "no delta after the cancel"
    );
    assert!(app.world().get::<Speaking>(mira).is_none());
    assert!(
        app.world()
            .get::<DialogueHistory>(mira)
            .unwrap()
            .turns
            .is_empty()
    );

    // The NPC can talk again.
    request(&mut app, RequestLine::new(mira).saying("Sorry. Hello?"));
    update_until(&mut app, LONG, "the next line", |log| {
        log.results_for(mira) == 1
    });
    assert_eq!(app.world().resource::<Log>().finished.len(), 1);
}

#[test]
fn despawning_an_npc_stops_its_line_and_frees_its_slot() {
    let mut app = app(&scratch_assets("despawn"), plugin());
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let other = spawn_npc(&mut app, "personas/mira.persona.ron");
    request(&mut app, RequestLine::new(other).saying("Hi."));
    update_until(&mut app, LONG, "the other NPC's line", |log| {
        log.results_for(other) == 1
    });
    request(
        &mut app,
        RequestLine::new(mira)
            .saying("Tell me a long story.")
            .max_tokens(200),
    );
    update_until(&mut app, LONG, "Mira's first delta", |log| {
        log.deltas.iter().any(|d| d.npc == mira)
    });
    app.world_mut().despawn(mira);
    app.update();
    let deltas_at_despawn = app.world().resource::<Log>().deltas.len();
    // A request for the despawned NPC fails at once, naming it.
    request(&mut app, RequestLine::new(mira).saying("Are you there?"));
    update_for(&mut app, Duration::from_secs(3));

    let log = app.world().resource::<Log>();
    assert_eq!(log.finished_for(mira).len(), 0);
    assert_eq!(log.deltas.len(), deltas_at_despawn);
    assert_eq!(log.failed.len(), 1, "{:?}", log.failed);
    assert!(log.failed[0].error.to_string().contains("not an NPC"));
    // Only the other NPC's conversation keeps a cache (a server keeps its own).
    let status = app.world().resource::<DialogueModel>().status;
    if test_server().is_none() {
        assert_eq!(status.slots_used, 1, "{status:?}");
    }
}
