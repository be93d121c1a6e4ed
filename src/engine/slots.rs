//! Many conversations on one model: each conversation's [`Session`] kept under a key, the
//! least recently used dropped when more are kept than fit, in number or in bytes
//! (llama.cpp's slots).

use std::collections::HashMap;

use super::generate::Session;
use super::load::Engine;
use super::tokenizer::TokenId;

/// The fewest tokens a new conversation must share with a kept one for
/// [`SessionSlots::take_for`] to start from a copy of its cache (shorter prefixes are
/// cheaper to compute than to copy and bookkeep).
pub const MIN_SHARED_PREFIX: usize = 32;

/// Conversation caches by key (an NPC, a chat window), at most `capacity` of them.
///
/// Take a conversation's session before generating in it and put it back afterwards: its
/// cached tokens are then reused by the next prompt that starts with them. Taking a key that
/// has no session makes a fresh one, first dropping the least recently used sessions so
/// that, once it is put back, at most `capacity` remain. The most recently put back session
/// is the most recently used one. A capacity of 0 behaves as 1.
///
/// ```no_run
/// use bevy_llm_dialogue::engine::{CancelToken, ChatMessage, Engine, EngineConfig, GenerateParams, SessionSlots};
///
/// let mut engine = Engine::load("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf", EngineConfig::default())?;
/// let mut slots = SessionSlots::new(4);
/// let npc = 7;
/// let mut session = slots.take(npc, &engine);
/// let messages = [ChatMessage::user("Hello!")];
/// let line = engine.chat(&mut session, &messages, &GenerateParams::default(), &CancelToken::new(), |_| {})?;
/// slots.put(npc, session);
/// assert!(!line.text.is_empty() || line.stats.generated_tokens > 0);
/// # Ok::<(), bevy_llm_dialogue::engine::EngineError>(())
/// ```
#[derive(Debug)]
pub struct SessionSlots {
    slots: HashMap<u64, Slot>,
    capacity: usize,
    /// The most bytes the kept sessions' caches may hold together.
    budget: Option<usize>,
    clock: u64,
}

#[derive(Debug)]
struct Slot {
    session: Session,
    last_used: u64,
}

impl SessionSlots {
    /// No sessions; at most `capacity` kept at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            capacity,
            budget: None,
            clock: 0,
        }
    }

    /// Also keeps the caches within `bytes` together: putting a session back drops the least
    /// recently used others until they fit (the session just put back always stays). `None`:
    /// only the number of sessions is bounded.
    pub fn with_budget(mut self, bytes: Option<usize>) -> Self {
        self.budget = bytes;
        self
    }

    /// The byte budget, as given to [`with_budget`](Self::with_budget).
    pub fn budget(&self) -> Option<usize> {
        self.budget
    }

    /// The session kept for `key`, removed from the slots until [`put`](Self::put) back, or
    /// a fresh one from `engine` after dropping the least recently used sessions to make room.
    pub fn take(&mut self, key: u64, engine: &Engine) -> Session {
        self.take_or_else(key, || engine.new_session())
    }

    /// Like [`take`](Self::take), for a conversation about to run `prompt`: one with nothing
    /// kept starts from a copy of the kept conversation whose cache shares the longest
    /// prefix with `prompt` (at least [`MIN_SHARED_PREFIX`] tokens), so a world preamble or a
    /// brief that many NPCs' prompts begin with is computed once, not once per NPC.
    pub fn take_for(&mut self, key: u64, prompt: &[TokenId], engine: &Engine) -> Session {
        if !self.slots.contains_key(&key)
            && let Some((shared, source)) = self
                .slots
                .values()
                .map(|s| (s.session.common_prefix(prompt), &s.session))
                .max_by_key(|(shared, _)| *shared)
            && shared >= MIN_SHARED_PREFIX
            && let Ok(mut copy) = source.fork()
        {
            copy.truncate(shared);
            // Copied before making room, so the source cannot be the one evicted first.
            return self.take_or_else(key, || copy);
        }
        self.take(key, engine)
    }

    fn take_or_else(&mut self, key: u64, fresh: impl FnOnce() -> Session) -> Session {
        match self.slots.remove(&key) {
            Some(slot) => slot.session,
            None => {
                self.evict_lru(self.capacity.saturating_sub(1));
                fresh()
            }
        }
    }

    /// Keeps `session` for `key` as the most recently used, replacing any session kept for it.
    pub fn put(&mut self, key: u64, session: Session) {
        if !self.slots.contains_key(&key) {
            self.evict_lru(self.capacity.saturating_sub(1));
        }
        self.clock += 1;
        let last_used = self.clock;
        self.slots.insert(key, Slot { session, last_used });
        if let Some(budget) = self.budget {
            self.shrink_to_bytes(budget);
        }
    }

    /// Drops least recently used sessions until the kept caches hold at most `bytes`, or
    /// only the most recently used is left. A caller whose sessions are partly out (being
    /// generated in) passes the budget less what those hold.
    pub fn shrink_to_bytes(&mut self, bytes: usize) {
        while self.slots.len() > 1 && self.cache_bytes() > bytes {
            self.evict_lru(self.slots.len() - 1);
        }
    }

    /// Drops the session kept for `key` (the conversation is over); whether there was one.
    pub fn forget(&mut self, key: u64) -> bool {
        self.slots.remove(&key).is_some()
    }

    /// Drops every session (they belong to a model that is being replaced).
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The most sessions kept at once, as given to [`new`](Self::new).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the key/value caches of the sessions kept.
    pub fn cache_bytes(&self) -> usize {
        self.slots.values().map(|s| s.session.cache_bytes()).sum()
    }

    /// Drops least recently used sessions until at most `keep` remain.
    fn evict_lru(&mut self, keep: usize) {
        while self.slots.len() > keep {
            let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            else {
                return;
            };
            self.slots.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::KvCache;
    use super::*;

    fn fresh() -> Session {
        Session::new(KvCache::new())
    }

    fn keys(slots: &SessionSlots) -> Vec<u64> {
        let mut keys: Vec<u64> = slots.slots.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_taken_session_comes_back_with_its_tokens() {
        let mut slots = SessionSlots::new(2);
        let mut session = slots.take_or_else(1, fresh);
        session.tokens = vec![5, 6];
        slots.put(1, session);
        assert_eq!(slots.take_or_else(1, fresh).cached_tokens(), [5, 6]);
        assert!(slots.is_empty(), "a taken session is out until put back");
    }

    #[test]
    fn a_new_conversation_evicts_the_least_recently_used() {
        let mut slots = SessionSlots::new(3);
        for key in [1, 2, 3] {
            let session = slots.take_or_else(key, fresh);
            slots.put(key, session);
        }
        // 1 is used again, so 2 is now the oldest.
        let session = slots.take_or_else(1, fresh);
        slots.put(1, session);
        let session = slots.take_or_else(4, fresh);
        assert_eq!(
            keys(&slots),
            [1, 3],
            "room is made before the new one is put back"
        );
        slots.put(4, session);
        assert_eq!(keys(&slots), [1, 3, 4]);
        assert_eq!((slots.len(), slots.capacity()), (3, 3));

        // Taking a kept key evicts nothing.
        let session = slots.take_or_else(3, fresh);
        assert_eq!(keys(&slots), [1, 4]);
        slots.put(3, session);
        assert!(slots.forget(1));
        assert!(!slots.forget(1));
        assert_eq!(keys(&slots), [3, 4]);
        slots.clear();
        assert!(slots.is_empty());
    }

    #[test]
    fn put_alone_keeps_within_capacity_and_zero_keeps_one() {
        let mut slots = SessionSlots::new(2);
        for key in 1..=5 {
            slots.put(key, fresh());
        }
        assert_eq!(keys(&slots), [4, 5]);

        let mut none = SessionSlots::new(0);
        for key in 1..=3 {
            let session = none.take_or_else(key, fresh);
            none.put(key, session);
        }
        assert_eq!(keys(&none), [3]);
        assert_eq!(none.cache_bytes(), 0);
    }
}
