//! An NPC that speaks: each `LineSentence` goes to a text-to-speech engine as soon as it is
//! complete, so the voice starts while the model is still writing the rest of the line.
//!
//! ```text
//! scripts/fetch-model
//! sudo apt-get install espeak-ng            # Debian's speech synthesizer
//! cargo run --release --example voice                      # speaks aloud
//! cargo run --release --example voice -- --wav-dir target/voice   # writes one WAV a sentence
//! ```
//!
//! The voice is `espeak-ng`, run as a process on a thread of its own: the game's frame never
//! waits for it, sentences are spoken one at a time in order, and a missing `espeak-ng` is
//! an error in the log, not a crash. A game plugs in its own voice the same way: an observer
//! of `LineSentence` hands the text to whatever speaks it. (Here espeak-ng plays the audio
//! itself; a game that wants the sound in Bevy's mixer writes the WAV, as `--wav-dir` does,
//! and plays it as an `AudioSource`.)

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_llm_dialogue::prelude::*;
use crossbeam_channel::{Receiver, Sender};

const FRAME: Duration = Duration::from_millis(16);

/// The voice thread's side: sentences in, "spoken" (or an error) out.
#[derive(Resource)]
struct Voice {
    say: Sender<(usize, String)>,
    spoken: Receiver<Result<usize, String>>,
    asked: Option<Instant>,
    queued: usize,
    done: usize,
    finished: bool,
}

impl Voice {
    /// Starts the voice thread; with `wav_dir`, each sentence becomes a WAV file there.
    fn start(wav_dir: Option<PathBuf>) -> Self {
        let (say, sentences) = crossbeam_channel::unbounded::<(usize, String)>();
        let (report, spoken) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("voice".into())
            .spawn(move || {
                for (index, text) in sentences {
                    let mut espeak = Command::new("espeak-ng");
                    espeak.args(["-v", "en", "-s", "165"]);
                    if let Some(dir) = &wav_dir {
                        espeak
                            .arg("-w")
                            .arg(dir.join(format!("sentence-{index}.wav")));
                    }
                    let result = match espeak.arg(&text).status() {
                        Ok(status) if status.success() => Ok(index),
                        Ok(status) => Err(format!("espeak-ng exited with {status}")),
                        Err(e) => Err(format!(
                            "cannot run espeak-ng ({e}): apt-get install espeak-ng"
                        )),
                    };
                    if report.send(result).is_err() {
                        return;
                    }
                }
            })
            .expect("start the voice thread");
        Self {
            say,
            spoken,
            asked: None,
            queued: 0,
            done: 0,
            finished: false,
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut wav_dir = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--wav-dir" => wav_dir = args.next().map(PathBuf::from),
            other => panic!("unknown argument {other} (try --wav-dir DIR)"),
        }
    }
    if let Some(dir) = &wav_dir {
        std::fs::create_dir_all(dir).expect("create the WAV folder");
    }
    let mut plugin = LlmDialoguePlugin::default();
    plugin.defaults.max_tokens = 96;
    App::new()
        .add_plugins((
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(FRAME)),
            AssetPlugin::default(),
            bevy::log::LogPlugin::default(),
        ))
        .add_plugins(plugin)
        .insert_resource(Voice::start(wav_dir))
        .add_systems(Startup, spawn_mira)
        .add_systems(Update, (ask_when_ready, follow_the_voice))
        .add_observer(speak)
        .run();
}

fn spawn_mira(mut commands: Commands, assets: Res<AssetServer>) {
    commands.spawn(Npc::new(assets.load("personas/mira.persona.ron")));
}

fn ask_when_ready(
    mut loaded: MessageReader<ModelLoaded>,
    mut requests: MessageWriter<RequestLine>,
    mut voice: ResMut<Voice>,
    mira: Single<Entity, With<Npc>>,
) {
    if loaded.read().next().is_some() {
        requests.write(
            RequestLine::new(*mira)
                .saying("Tell me about your forge, and what you are making today.")
                .priority(Priority::Player),
        );
        voice.asked = Some(Instant::now());
    }
}

/// Each sentence goes to the voice as soon as it is complete.
fn speak(sentence: On<LineSentence>, mut voice: ResMut<Voice>) {
    let since = voice.asked.map_or(Duration::ZERO, |t| t.elapsed());
    info!(
        "sentence {} after {since:.2?}: {}",
        sentence.index, sentence.text
    );
    // The thread lives as long as the app; a send cannot fail before it ends.
    let _ = voice.say.send((sentence.index, sentence.text.clone()));
    voice.queued += 1;
}

/// Logs what the voice has said; exits once the line is finished and spoken.
fn follow_the_voice(
    mut voice: ResMut<Voice>,
    mut finished: MessageReader<LineFinished>,
    mut failed: (MessageReader<LineFailed>, MessageReader<ModelFailed>),
    mut exit: MessageWriter<AppExit>,
) {
    if finished.read().next().is_some() {
        voice.finished = true;
    }
    while let Ok(result) = voice.spoken.try_recv() {
        let since = voice.asked.map_or(Duration::ZERO, |t| t.elapsed());
        match result {
            Ok(index) => info!("spoken: sentence {index}, {since:.2?} after the request"),
            Err(error) => error!("the voice failed: {error}"),
        }
        voice.done += 1;
    }
    if voice.finished && voice.done == voice.queued {
        exit.write(AppExit::Success);
    }
    let errors = failed.0.read().map(|f| f.error.to_string());
    for error in errors.chain(failed.1.read().map(|f| f.error.clone())) {
        error!("{error}");
        exit.write(AppExit::error());
    }
}
