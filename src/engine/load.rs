//! The loaded model ([`Engine`]): loading from a GGUF file or reader, its accessors, and
//! turning chat messages into prompt tokens.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::time::Instant;

use super::config::{EngineConfig, ModelInfo};
use super::error::{EngineError, Result};
use super::gguf::GgufHeader;
use super::grammar;
use super::model::Model;
use super::params::Session;
use super::template::{ChatMessage, ChatTemplate, Role, Segment};
use super::tokenizer::{TokenId, Tokenizer};

/// A loaded model with its tokenizer and chat template.
#[derive(Debug)]
pub struct Engine {
    pub(super) model: Model,
    pub(super) tokenizer: Tokenizer,
    pub(super) template: ChatTemplate,
    pub(super) info: ModelInfo,
    pub(super) pool: Option<rayon::ThreadPool>,
    /// Built on the first constrained generation.
    pub(super) constraints: Option<grammar::Constraints>,
}

impl Engine {
    /// Loads a GGUF model file.
    pub fn load(path: impl AsRef<Path>, config: EngineConfig) -> Result<Self> {
        let path = path.as_ref();
        let file = open_model_file(path)?;
        Self::from_reader(BufReader::new(file), &path.display().to_string(), config)
    }

    /// Loads a GGUF model from any seekable reader; `name` is used in error messages.
    pub fn from_reader<R: Read + Seek>(
        mut reader: R,
        name: &str,
        config: EngineConfig,
    ) -> Result<Self> {
        let _span = tracing::info_span!("load_model", file = name).entered();
        let started = Instant::now();
        let header = GgufHeader::read(&mut reader, name)?;
        let architecture = header.string("general.architecture")?.to_owned();
        if !matches!(
            architecture.as_str(),
            "llama" | "mistral" | "gemma3" | "qwen2" | "qwen3" | "phi3"
        ) {
            return Err(EngineError::UnsupportedArchitecture {
                file: name.to_owned(),
                architecture,
            });
        }
        super::gguf::check_limits(&header, &architecture)?;
        let model_name = header.opt_string("general.name").map(str::to_owned);
        let mut tokenizer = Tokenizer::from_gguf(&header)?;
        if let Some(json) = &config.tokenizer_json {
            tokenizer = tokenizer.with_tokenizer_json(json)?;
        }
        let token_text = |id: Option<TokenId>| {
            id.and_then(|i| {
                let tokens = header.get("tokenizer.ggml.tokens")?.to_vec().ok()?;
                tokens.get(i as usize)?.to_string().ok().cloned()
            })
            .unwrap_or_default()
        };
        let bos_text = token_text(tokenizer.bos().0);
        let eos_text = token_text(tokenizer.end_of_generation().first().copied());
        let template = match config
            .chat_template
            .as_deref()
            .or_else(|| header.opt_string("tokenizer.chat_template"))
        {
            Some(source) => ChatTemplate::new(source, &bos_text, &eos_text)?,
            None => ChatTemplate::chatml(),
        };
        let device = config.backend.device()?;
        let train_context = header
            .opt_usize(&format!("{architecture}.context_length"))?
            .unwrap_or(2048);
        let n_ctx = config.n_ctx.unwrap_or(4096).min(train_context).max(1);
        // Tables and caches are sized for the context in use, not the one the file claims.
        let model = Model::load(header, &mut reader, &device, &config, n_ctx)?;
        let priority = config.priority;
        let pool = match config.threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("llm-inference-{i}"))
                    .start_handler(move |_| priority.apply_to_current_thread())
                    .build()
                    .map_err(|e| EngineError::InvalidParameter {
                        name: "threads",
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        let info = ModelInfo {
            file: name.to_owned(),
            architecture,
            name: model_name,
            train_context,
            n_ctx,
            vocab_size: tokenizer.vocab_size(),
            prefix_reuse: true,
        };
        tracing::info!(elapsed = ?started.elapsed(), ?info, "model loaded");
        Ok(Self {
            model,
            tokenizer,
            template,
            info,
            pool,
            constraints: None,
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template in use.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// A new, empty conversation.
    pub fn new_session(&self) -> Session {
        Session::new(self.model.new_cache())
    }

    /// Renders messages with the chat template and tokenizes them, ending where the
    /// assistant's reply begins. Message content is tokenized as plain text: control tokens
    /// typed by a player never become real control tokens.
    ///
    /// A chat template that accepts a system message only first (Gemma's raises "roles must
    /// alternate") gets any later system message folded into the user turn after it.
    pub fn chat_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<TokenId>> {
        let segments = match self.template.render_segments(messages, true) {
            Ok(segments) => segments,
            Err(_) if messages.iter().skip(1).any(|m| m.role == Role::System) => {
                let folded = fold_late_system_messages(messages);
                self.template.render_segments(&folded, true)?
            }
            Err(e) => return Err(e),
        };
        let mut tokens = Vec::new();
        if let (Some(bos), true) = self.tokenizer.bos() {
            tokens.push(bos);
        }
        for segment in segments {
            match segment {
                Segment::Markup(text) => tokens.extend(self.tokenizer.encode_markup(&text)?),
                Segment::Content(text) => tokens.extend(self.tokenizer.encode(&text)?),
            }
        }
        // A template that writes the BOS token itself must not get a second one.
        if let (Some(bos), true) = self.tokenizer.bos()
            && tokens.len() > 1
            && tokens[1] == bos
        {
            tokens.remove(0);
        }
        Ok(tokens)
    }
}

/// Opens a model file, refusing anything that is not a regular file first: opening a FIFO
/// (or a device) named by a mod would block the thread forever.
pub fn open_model_file(path: &Path) -> Result<File> {
    let not_found = |source| EngineError::ModelNotFound {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(not_found)?;
    if !meta.is_file() {
        return Err(not_found(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    File::open(path).map_err(not_found)
}

/// `messages` with every system message after the first folded into the next user turn (or
/// made a user turn when none follows).
fn fold_late_system_messages(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut notes: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 && m.role == Role::System {
            notes.push(&m.content);
        } else if m.role == Role::User && !notes.is_empty() {
            let note = std::mem::take(&mut notes).join("\n");
            out.push(ChatMessage::user(format!("({note})\n{}", m.content)));
        } else {
            out.push(m.clone());
        }
    }
    if !notes.is_empty() {
        out.push(ChatMessage::user(notes.join("\n")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_system_messages_fold_into_the_next_user_turn() {
        let folded = fold_late_system_messages(&[
            ChatMessage::system("You are Mira."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello."),
            ChatMessage::system("Mira knows: wolves."),
            ChatMessage::user("Wolves?"),
        ]);
        assert_eq!(folded.len(), 4);
        assert_eq!(folded[0], ChatMessage::system("You are Mira."));
        assert_eq!(
            folded[3],
            ChatMessage::user("(Mira knows: wolves.)\nWolves?")
        );
    }
}
