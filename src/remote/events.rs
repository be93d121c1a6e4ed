//! Server-sent events of a streamed chat completion, one line at a time.

use serde::Deserialize;

/// What one line of the stream says.
#[derive(Debug, PartialEq)]
pub(super) enum Event {
    /// A blank line, a comment (a keep-alive ping) or a field other than `data`.
    Nothing,
    /// `data: [DONE]`: the stream is over.
    Done,
    /// The server reports an error inside the stream.
    Error(String),
    /// A completion chunk.
    Chunk(Chunk),
}

/// The parts of a chunk the client uses.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Chunk {
    /// New text (empty for role-only and final chunks).
    pub(super) content: String,
    /// `stop`, `length`, ... on the last chunk.
    pub(super) finish_reason: Option<String>,
    pub(super) usage: Option<Usage>,
    /// The summed log-probability of this chunk's tokens, when asked for and sent.
    pub(super) logprob: Option<f64>,
}

/// Token counts, sent with the last chunk when asked for (`stream_options.include_usage`).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Usage {
    pub(super) prompt_tokens: usize,
    pub(super) completion_tokens: usize,
    /// Prompt tokens the server had cached (vLLM, OpenAI: `prompt_tokens_details`).
    pub(super) cached_tokens: usize,
}

#[derive(Deserialize)]
struct RawChunk {
    #[serde(default)]
    choices: Vec<RawChoice>,
    usage: Option<RawUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChoice {
    delta: Option<RawDelta>,
    finish_reason: Option<String>,
    logprobs: Option<RawLogprobs>,
}

#[derive(Deserialize)]
struct RawLogprobs {
    content: Option<Vec<RawTokenLogprob>>,
}

#[derive(Deserialize)]
struct RawTokenLogprob {
    logprob: f64,
}

#[derive(Deserialize)]
struct RawDelta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: usize,
    #[serde(default)]
    completion_tokens: usize,
    prompt_tokens_details: Option<RawDetails>,
}

#[derive(Deserialize)]
struct RawDetails {
    #[serde(default)]
    cached_tokens: Option<usize>,
}

/// Parses one line of the event stream (with or without its line break). An `Err` says why
/// a `data` line is not a chat completion chunk.
pub(super) fn parse_line(line: &str) -> Result<Event, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    // llama.cpp's server sends an error inside a stream as an `error:` field.
    if let Some(error) = line.strip_prefix("error:") {
        let error = error.trim();
        let message = serde_json::from_str::<serde_json::Value>(error)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| error.to_owned());
        return Ok(Event::Error(message));
    }
    let Some(data) = line.strip_prefix("data:") else {
        // Blank lines end events, `:` lines are comments, other fields (event, id, retry)
        // carry nothing a chat completion needs.
        return Ok(Event::Nothing);
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Event::Done);
    }
    let raw: RawChunk = serde_json::from_str(data).map_err(|e| {
        let shown: String = data.chars().take(80).collect();
        format!("{e} in `{shown}`")
    })?;
    if let Some(error) = raw.error {
        let message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| error.to_string());
        return Ok(Event::Error(message));
    }
    let choice = raw.choices.into_iter().next();
    let logprob = choice
        .as_ref()
        .and_then(|c| c.logprobs.as_ref())
        .and_then(|l| l.content.as_ref())
        .map(|tokens| tokens.iter().map(|t| t.logprob).sum());
    Ok(Event::Chunk(Chunk {
        logprob,
        content: choice
            .as_ref()
            .and_then(|c| c.delta.as_ref())
            .and_then(|d| d.content.clone())
            .unwrap_or_default(),
        finish_reason: choice.and_then(|c| c.finish_reason),
        usage: raw.usage.map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_pings_and_the_end() {
        let chunk = r#"data: {"id":"x","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null,"logprobs":{"content":[{"token":"Hel","logprob":-0.5}]}}]}"#;
        assert_eq!(
            parse_line(chunk).unwrap(),
            Event::Chunk(Chunk {
                content: "Hel".into(),
                logprob: Some(-0.5),
                ..Chunk::default()
            })
        );
        let last = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\r\n";
        let Event::Chunk(last) = parse_line(last).unwrap() else {
            panic!("a chunk")
        };
        assert_eq!(last.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            last.usage.map(|u| (u.prompt_tokens, u.cached_tokens)),
            Some((9, 4))
        );
        for nothing in ["", "\r\n", ": ping - 2026-11-30", "event: message", "id: 3"] {
            assert_eq!(parse_line(nothing).unwrap(), Event::Nothing);
        }
        assert_eq!(parse_line("data: [DONE]\n").unwrap(), Event::Done);
    }

    #[test]
    fn errors_and_garbage_are_told_apart() {
        assert_eq!(
            parse_line(r#"data: {"error":{"message":"context too long"}}"#).unwrap(),
            Event::Error("context too long".into())
        );
        assert_eq!(
            parse_line(r#"error: {"code":400,"message":"exceeds the context","type":"x"}"#)
                .unwrap(),
            Event::Error("exceeds the context".into())
        );
        let bad = parse_line("data: {\"choices\": [").unwrap_err();
        assert!(bad.contains("EOF"), "{bad}");
    }
}
