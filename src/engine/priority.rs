//! How eagerly the operating system runs the inference threads beside the game's own
//! ([`InferencePriority`]).
//!
//! A forward pass keeps a core busy for milliseconds at a time. When a game thread wakes up
//! for its frame and finds that core taken, the frame waits for the scheduler's next tick:
//! that is the stutter players notice. Inference threads at the lowest priority the platform
//! offers give the core back as soon as a game thread wants it, and use it whenever the game
//! does not.

/// The scheduling priority of the inference threads ([`EngineConfig::priority`](super::EngineConfig::priority)).
///
/// It applies to the engine's own thread pool (when [`EngineConfig::threads`](super::EngineConfig::threads)
/// is set) and to the worker's thread; an engine without its own pool runs where it is
/// called, at that thread's priority. The engine alone defaults to [`Normal`](Self::Normal)
/// (a tool or a server); the worker and the plugin, which run beside a game, to
/// [`Idle`](Self::Idle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[non_exhaustive]
pub enum InferencePriority {
    /// Run only on cores that no other thread wants: Linux's `SCHED_IDLE`; the lowest thread
    /// priority elsewhere. A game thread that wakes takes the core at once, and the model
    /// uses all the time the game leaves. A game that keeps every core busy (no frame limit,
    /// a busy-waiting loop) starves it: lines then take much longer.
    Idle,
    /// The lowest ordinary priority (nice 19 on Linux and macOS, `THREAD_PRIORITY_LOWEST` on
    /// Windows): game threads are preferred, but a game that keeps every core busy still
    /// leaves the model a few percent of one.
    Low,
    /// The priority of the thread that started the engine: for a tool or a server where
    /// nothing else needs the cores.
    Normal,
}

impl InferencePriority {
    /// Sets the calling thread's priority. A platform that refuses it (a sandbox, an OS
    /// without thread priorities) leaves the thread as it was, with a warning in the log.
    pub fn apply_to_current_thread(self) {
        if let Err(reason) = self.try_apply() {
            tracing::warn!("cannot set the inference thread's priority to {self:?}: {reason}");
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn try_apply(self) -> Result<(), String> {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        let policy = match self {
            Self::Idle => NormalThreadSchedulePolicy::Idle,
            Self::Low => NormalThreadSchedulePolicy::Other,
            Self::Normal => return Ok(()),
        };
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(policy),
        )
        .map_err(|e| format!("{e:?}"))
    }

    #[cfg(all(
        any(unix, windows),
        not(any(target_os = "linux", target_os = "android"))
    ))]
    fn try_apply(self) -> Result<(), String> {
        match self {
            Self::Idle | Self::Low => {
                thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
                    .map_err(|e| format!("{e:?}"))
            }
            Self::Normal => Ok(()),
        }
    }

    #[cfg(not(any(unix, windows)))]
    fn try_apply(self) -> Result<(), String> {
        match self {
            Self::Normal => Ok(()),
            _ => Err("this platform has no thread priorities".into()),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The policy each setting gives a thread, read back from the kernel.
    fn policy_after(priority: InferencePriority) -> (i32, i32) {
        std::thread::spawn(move || {
            priority.apply_to_current_thread();
            let (policy, _) =
                thread_priority::thread_schedule_policy_param(thread_priority::thread_native_id())
                    .expect("read the policy back");
            let policy = match policy {
                thread_priority::ThreadSchedulePolicy::Normal(
                    thread_priority::NormalThreadSchedulePolicy::Idle,
                ) => 5,
                thread_priority::ThreadSchedulePolicy::Normal(_) => 0,
                thread_priority::ThreadSchedulePolicy::Realtime(_) => 1,
            };
            (
                policy,
                std::fs::read_to_string("/proc/thread-self/stat").map_or(-100, nice),
            )
        })
        .join()
        .unwrap()
    }

    /// The nice value, the 19th field of `/proc/.../stat` (after the command in parentheses).
    fn nice(stat: String) -> i32 {
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn idle_is_sched_idle_low_is_nice_19_normal_is_untouched() {
        assert_eq!(policy_after(InferencePriority::Idle).0, 5, "SCHED_IDLE");
        assert_eq!(policy_after(InferencePriority::Low), (0, 19));
        let before = policy_after(InferencePriority::Normal);
        assert_eq!(before.0, 0);
        assert_ne!(before.1, 19, "Normal lowered the thread");
    }
}
