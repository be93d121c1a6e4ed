//! NPC disposition: the model moves an NPC's mood and affinity through a constrained
//! decision, never outside what the persona declares, and prompts see the result.

use crate::harness::*;

#[test]
fn updates_stay_inside_the_declared_moods_and_range_and_prompts_see_them() {
    let assets = scratch_assets("disposition");
    std::fs::write(
        assets.join("personas/tobin.persona.ron"),
        r#"(
    name: "Tobin",
    description: "the guard at the ruin's door",
    disposition: Some((moods: ["calm", "wary", "angry"], affinity: (-5, 5), start_affinity: 4, max_step: 2)),
)"#,
    )
    .unwrap();
    let mut app = app(&assets, plugin());
    let tobin = spawn_npc(&mut app, "personas/tobin.persona.ron");
    let mira = spawn_npc(&mut app, "personas/mira.persona.ron");
    let moods = ["calm", "wary", "angry"];
    let mut seen: Vec<DispositionChanged> = Vec::new();
    app.add_observer(|ev: On<DispositionChanged>, mut commands: Commands| {
        commands.entity(ev.npc).insert(Name::new("observed"));
    });
    for (i, said) in [
        "You are a fool and a coward.",
        "I brought you bread and warm tea.",
        "Get out of my way or I will hurt you.",
        "Thank you for guarding us all these years.",
        "I stole your purse.",
        "Can I pass, please?",
    ]
    .into_iter()
    .enumerate()
    {
        app.world_mut().write_message(
            UpdateDisposition::new(tobin).situation(format!("The player says: {said}")),
        );
        let start = Instant::now();
        loop {
            app.update();
            let changed: Vec<DispositionChanged> = app
                .world_mut()
                .resource_mut::<Messages<DispositionChanged>>()
                .drain()
                .collect();
            let failed = app.world().resource::<Log>().action_failures.clone();
            assert!(failed.is_empty(), "{failed:?}");
            if let Some(ev) = changed.into_iter().next() {
                seen.push(ev);
                break;
            }
            assert!(start.elapsed() < LONG, "update {i} never came");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (i, ev) in seen.iter().enumerate() {
        assert_eq!(ev.npc, tobin);
        assert!(moods.contains(&ev.mood.as_str()), "{ev:?}");
        assert!((-5..=5).contains(&ev.affinity), "{ev:?}");
        assert!((ev.affinity - ev.affinity_before).abs() <= 2, "{ev:?}");
        let before = if i == 0 { 4 } else { seen[i - 1].affinity };
        assert_eq!(
            ev.affinity_before, before,
            "each update starts from the last"
        );
    }
    let now = app.world().get::<NpcDisposition>(tobin).unwrap().clone();
    let last = seen.last().unwrap();
    assert_eq!(
        (now.mood.as_str(), now.affinity),
        (last.mood.as_str(), last.affinity)
    );
    assert_eq!(
        app.world().get::<Name>(tobin).map(Name::as_str),
        Some("observed"),
        "also an entity event"
    );

    // A line's prompt sees the disposition; a persona without one refuses an update.
    request(&mut app, RequestLine::new(tobin).saying("Hello."));
    app.world_mut().write_message(UpdateDisposition::new(mira));
    update_until(&mut app, LONG, "the line and the refusal", |log| {
        log.results_for(tobin) == 1 && !log.action_failures.is_empty()
    });
    let log = app.world().resource::<Log>();
    let prompt = &log.started[0].prompt;
    assert!(prompt.contains(&format!("mood: {}", now.mood)), "{prompt}");
    assert!(
        prompt.contains(&format!("affinity: {}", now.affinity)),
        "{prompt}"
    );
    let refusal = log.action_failures[0].error.to_string();
    assert!(refusal.contains("declares no disposition"), "{refusal}");
}
