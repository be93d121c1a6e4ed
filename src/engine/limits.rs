//! What a model file may ask for. A GGUF file is data from the internet: its hyper-parameters
//! size tables and caches before any weight is read, and an allocation that fails aborts the
//! process (no `catch_unwind` can catch it). Every hyper-parameter is checked against these
//! caps, and every tensor's shape against the hyper-parameters, before anything is allocated.
//! The caps are far above any model a game ships (Llama 3 70B has 80 layers, 8192
//! dimensions, 64 heads of 128, a vocabulary of 128,256). The checks against them live with
//! the header they read (`gguf::caps`, `gguf::scan`).

/// Most transformer blocks (`{arch}.block_count`).
pub const MAX_LAYERS: usize = 512;
/// Widest embedding (`{arch}.embedding_length`).
pub const MAX_EMBEDDING: usize = 65_536;
/// Most attention heads (`{arch}.attention.head_count`).
pub const MAX_HEADS: usize = 1024;
/// Most query heads per key/value head (grouped-query attention); bounds the attention mask.
pub const MAX_HEADS_PER_KV_HEAD: usize = 64;
/// Widest attention head (`{arch}.attention.key_length`).
pub const MAX_HEAD_DIM: usize = 1024;
/// Widest feed-forward layer (`{arch}.feed_forward_length`).
pub const MAX_FEED_FORWARD: usize = 1 << 20;
/// Most tokens in the vocabulary (Gemma 3 has 262,144).
pub const MAX_VOCAB: usize = 1 << 20;
/// Longest token text, in bytes.
pub const MAX_TOKEN_BYTES: usize = 512;
/// Most bytes of token text in all.
pub const MAX_VOCAB_BYTES: usize = 32 << 20;
/// Most BPE merges, read from the file or rebuilt from SentencePiece scores.
pub const MAX_MERGES: usize = 4_000_000;

/// Most metadata entries in a GGUF file (real models have under a hundred).
pub const MAX_METADATA_KEYS: u64 = 65_536;
/// Most elements in all of a GGUF file's metadata arrays, inner arrays' elements included.
/// candle parses each element into a 32-byte value, so an array of one-byte values takes 32
/// times its size in memory: this bounds the parsed metadata to about 230 MB plus the text
/// of its strings. It holds the three per-token arrays of the largest vocabulary allowed and
/// the most merges ([`MAX_VOCAB`] and [`MAX_MERGES`]); real models hold under 1.2 million
/// (Gemma 3: 3 x 262,144; Llama 3: 3 x 128,256 and 280,147 merges).
pub const MAX_METADATA_ELEMENTS: u64 = 3 * MAX_VOCAB as u64 + MAX_MERGES as u64;
/// Deepest nesting of metadata arrays: an array of arrays of values, no deeper (llama.cpp
/// reads no array of arrays at all).
pub const MAX_METADATA_ARRAY_DEPTH: usize = 2;
/// Most tensors in a GGUF file (Llama 3 70B has 723).
pub const MAX_TENSORS: u64 = 65_536;

/// The work and memory one render of a model's chat template may use: minijinja charges a
/// fuel per instruction and per 64 bytes a template creates, so this bounds a render to
/// about 128 MB and a fraction of a second (a chat template that builds strings by
/// repetition or doubling runs out of fuel instead of memory).
pub const CHAT_TEMPLATE_FUEL: u64 = 2_000_000;
