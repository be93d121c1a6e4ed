//! Adaptive pacing: the plugin times each frame's work and, when frames run over the game's
//! budget while lines generate, asks the worker to pause between steps (one token of the
//! batch each), longer while frames stay over, shorter once they do not.

use std::time::{Duration, Instant};

use bevy::prelude::*;

use crate::plugin::model::DialogueModel;
use crate::plugin::request::DialogueSettings;
use crate::plugin::worker_link::WorkerLink;
use crate::worker::Command;

/// The longest pause between two steps of the worker.
pub const MAX_PAUSE: Duration = Duration::from_millis(50);

/// When this frame's work started.
#[derive(Resource, Default)]
pub(crate) struct FrameClock(Option<Instant>);

/// `First`: the frame starts.
pub(crate) fn start_frame(mut clock: ResMut<FrameClock>) {
    clock.0 = Some(Instant::now());
}

/// `Last`: the frame's work is done; the pause between the worker's steps follows it. Over
/// the budget it doubles (from 2 ms, up to [`MAX_PAUSE`]); under 90 % of the budget it
/// shrinks by a quarter, to nothing below 1 ms.
pub(crate) fn pace_worker(
    clock: Res<FrameClock>,
    settings: Res<DialogueSettings>,
    mut model: ResMut<DialogueModel>,
    mut link: ResMut<WorkerLink>,
) {
    let Some(started) = clock.0 else { return };
    let work = started.elapsed();
    let pause = next_pause(model.pause, work, settings.frame_budget);
    if pause != model.pause {
        model.pause = pause;
        link.send(Command::Pace(pause));
    }
}

fn next_pause(pause: Duration, work: Duration, budget: Option<Duration>) -> Duration {
    let Some(budget) = budget else {
        return Duration::ZERO;
    };
    if work > budget {
        (pause * 2).max(Duration::from_millis(2)).min(MAX_PAUSE)
    } else if work * 10 < budget * 9 {
        let shorter = pause * 3 / 4;
        if shorter < Duration::from_millis(1) {
            Duration::ZERO
        } else {
            shorter
        }
    } else {
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_while_frames_run_over_and_goes_when_they_do_not() {
        let ms = Duration::from_millis;
        let budget = Some(ms(10));
        let mut pause = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..7 {
            pause = next_pause(pause, ms(12), budget);
            seen.push(pause.as_millis());
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 50, 50], "doubles up to the cap");
        // Within the budget but near it: held.
        assert_eq!(next_pause(pause, ms(9) + ms(1) / 2, budget), pause);
        let mut frames = 0;
        while pause > Duration::ZERO {
            pause = next_pause(pause, ms(5), budget);
            frames += 1;
        }
        assert!(frames < 20, "recovers within {frames} frames");
        assert_eq!(
            next_pause(ms(8), ms(100), None),
            Duration::ZERO,
            "no budget, no pause"
        );
    }
}
