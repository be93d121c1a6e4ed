//! Soak test: 16 NPCs, many requests with random cancels and despawns. Checks that every
//! request that was not cancelled gets exactly one result (finished or failed), that nothing
//! is duplicated or arrives late, and reports memory after warm-up and at the end.
//!
//! ```text
//! scripts/fetch-model
//! cargo run --release --example soak -- 1000 --kv-budget-mib 128
//! ```
//!
//! Exits with an error if an invariant is broken. Lines are at most 60 tokens (the persona's
//! limit) and each NPC keeps its last 8 turns, so a thousand requests take about 20 minutes
//! on one inference thread. Memory is reported with the KV caches apart: the caches grow
//! until every conversation has reached its steady length, the rest should stay flat.

#![allow(clippy::print_stdout, reason = "a soak run reports on stdout")]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;
use rand::{Rng, SeedableRng};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn cache_mib(app: &App) -> f64 {
    app.world().resource::<DialogueModel>().status.cache_bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<(), String> {
    let (mut total, mut kv_budget) = (1000usize, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let number = |value: Option<String>| {
            value
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(format!("{arg} takes a number"))
        };
        match arg.as_str() {
            "--kv-budget-mib" => kv_budget = Some(number(args.next())? << 20),
            _ => total = number(Some(arg.clone()))?,
        }
    }
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        LlmDialoguePlugin {
            kv_budget,
            ..default()
        },
    ));
    app.finish();
    app.cleanup();
    let persona: Handle<Persona> = app
        .world()
        .resource::<AssetServer>()
        .load("personas/mira.persona.ron");
    let mut npcs: Vec<Entity> = (0..16)
        .map(|_| app.world_mut().spawn(Npc::new(persona.clone())).id())
        .collect();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Per NPC: requests sent in order; results are matched to the NPC's oldest open request.
    let mut open: HashMap<Entity, Vec<usize>> = HashMap::new();
    let mut cancelled: HashSet<usize> = HashSet::new();
    let mut results: HashMap<usize, u32> = HashMap::new();
    let mut seen_ids: HashSet<RequestId> = HashSet::new();
    let (mut sent, mut cancels, mut despawns) = (0usize, 0usize, 0usize);
    let mut rss_warm = None;
    let mut failures: Vec<String> = Vec::new();
    let started = Instant::now();

    while sent < total || open.values().any(|v| !v.is_empty()) {
        // Now and then, cancel an NPC's lines or despawn it (and spawn a replacement).
        // About one event per 10 requests sent: 7 % cancels, 3 % despawns.
        let in_flight: usize = open.values().map(Vec::len).sum();
        let sending = sent < total && in_flight < 24;
        let roll = if sending {
            rng.random_range(0..100)
        } else {
            100
        };
        if roll < 10 {
            let i = rng.random_range(0..npcs.len());
            let npc = npcs[i];
            for r in open.remove(&npc).unwrap_or_default() {
                cancelled.insert(r);
            }
            if roll < 3 {
                app.world_mut().despawn(npc);
                npcs[i] = app.world_mut().spawn(Npc::new(persona.clone())).id();
                despawns += 1;
            } else {
                app.world_mut().write_message(CancelLine { npc });
                cancels += 1;
            }
        }
        // Cancels are handled before new requests in the same frame, so a request sent now
        // is not cancelled by the line above.
        // Keep about 24 requests in flight.
        if sending {
            let npc = npcs[rng.random_range(0..npcs.len())];
            app.world_mut()
                .write_message(RequestLine::new(npc).saying(format!("Request {sent}?")));
            open.entry(npc).or_default().push(sent);
            sent += 1;
        }
        app.update();
        let world = app.world_mut();
        let finished: Vec<(Entity, RequestId)> = world
            .resource_mut::<Messages<LineFinished>>()
            .drain()
            .map(|l| (l.npc, l.request))
            .collect();
        let failed: Vec<(Entity, RequestId, String)> = world
            .resource_mut::<Messages<LineFailed>>()
            .drain()
            .map(|l| (l.npc, l.request, l.error.to_string()))
            .collect();
        for (npc, id, error) in finished
            .into_iter()
            .map(|(n, i)| (n, i, None))
            .chain(failed.into_iter().map(|(n, i, e)| (n, i, Some(e))))
        {
            if !seen_ids.insert(id) {
                return Err(format!("request {id:?} got a second result"));
            }
            let Some(queue) = open.get_mut(&npc).filter(|q| !q.is_empty()) else {
                return Err(format!(
                    "a result for {npc} arrived with no open request (cancelled?)"
                ));
            };
            let request = queue.remove(0);
            *results.entry(request).or_default() += 1;
            if results.len().is_multiple_of(100) {
                println!(
                    "{} answered, {} cancelled, {:.0} s, RSS {:.0} MiB (KV caches {:.0} MiB in {} slots)",
                    results.len(),
                    cancelled.len(),
                    started.elapsed().as_secs_f64(),
                    rss_mib(),
                    cache_mib(&app),
                    app.world().resource::<DialogueModel>().status.slots_used,
                );
            }
            if let Some(e) = error {
                failures.push(format!("request {request}: {e}"));
            }
        }
        // Like a game that keeps the last few exchanges per NPC, so memory reaches a steady
        // state (without this, every conversation's cache grows to the context size).
        for mut history in app
            .world_mut()
            .query::<&mut DialogueHistory>()
            .iter_mut(app.world_mut())
        {
            let excess = history.turns.len().saturating_sub(8);
            if excess > 0 {
                history.turns.drain(..excess);
            }
        }
        if rss_warm.is_none() && results.len() >= 200 {
            rss_warm = Some((rss_mib(), cache_mib(&app)));
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err("the soak run took over an hour".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Late results for cancelled requests would show up now.
    for _ in 0..200 {
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    let late = app
        .world_mut()
        .resource_mut::<Messages<LineFinished>>()
        .drain()
        .count();
    if late > 0 {
        return Err(format!(
            "{late} results arrived after everything was answered or cancelled"
        ));
    }
    let answered = results.len();
    let expected = total - cancelled.len();
    if answered != expected || results.values().any(|&n| n != 1) {
        return Err(format!(
            "{answered} requests answered, expected {expected} exactly once each"
        ));
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} requests failed; the first: {first}",
            failures.len()
        ));
    }
    let (rss_end, cache_end) = (rss_mib(), cache_mib(&app));
    let (warm, cache_warm) = rss_warm.unwrap_or((rss_end, cache_end));
    println!(
        "{total} requests to 16 NPCs in {:.0} s (kv_budget {}): {answered} answered exactly once, {} cancelled \
         ({cancels} CancelLine, {despawns} despawns), 0 duplicates, 0 late",
        started.elapsed().as_secs_f64(),
        kv_budget.map_or("none".to_string(), |b| format!("{} MiB", b >> 20)),
        cancelled.len()
    );
    println!(
        "RSS after warm-up {warm:.0} MiB, at the end {rss_end:.0} MiB ({:.3}x); \
         KV caches {cache_warm:.0} MiB -> {cache_end:.0} MiB",
        rss_end / warm
    );
    Ok(())
}
