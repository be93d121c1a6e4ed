//! The request body of a chat completion, in the dialect of each [`ServerKind`].

use serde_json::{Map, Value, json};

use super::{ChatRequest, RemoteConfig, RemoteError, Result, ServerKind};

/// OpenAI's API takes at most this many stop strings.
const OPENAI_MAX_STOPS: usize = 4;

/// The JSON body of a streamed chat completion for `request`.
pub(super) fn chat_body(config: &RemoteConfig, request: &ChatRequest<'_>) -> Result<Value> {
    let params = request.params;
    let s = &params.sampling;
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({ "role": m.role.as_str(), "content": m.content }))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(config.model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    body.insert("max_tokens".into(), json!(params.max_tokens));
    body.insert("temperature".into(), json!(s.temperature));
    body.insert("top_p".into(), json!(s.top_p));
    if let Some(seed) = s.seed {
        // Servers take a signed 64-bit seed; keep it in range.
        body.insert("seed".into(), json!(seed & (i64::MAX as u64)));
    }
    let mut stop: Vec<&str> = if request.schema.is_some() {
        Vec::new()
    } else {
        params
            .stop
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect()
    };
    match config.kind {
        ServerKind::LlamaCpp | ServerKind::Vllm => {
            if s.top_k > 0 {
                body.insert("top_k".into(), json!(s.top_k));
            }
            body.insert("min_p".into(), json!(s.min_p));
            let penalty = if config.kind == ServerKind::LlamaCpp {
                "repeat_penalty"
            } else {
                "repetition_penalty"
            };
            body.insert(penalty.into(), json!(s.repeat_penalty));
        }
        ServerKind::OpenAi => {
            if stop.len() > OPENAI_MAX_STOPS {
                // The rest still end the text on our side; the server just generates a little
                // past them.
                stop.truncate(OPENAI_MAX_STOPS);
            }
        }
        ServerKind::TextOnly => {}
    }
    if !stop.is_empty() {
        body.insert("stop".into(), json!(stop));
    }
    if request.logprobs && config.kind != ServerKind::TextOnly {
        body.insert("logprobs".into(), json!(true));
        // llama-cpp-python sends none unless at least one alternative is asked for.
        body.insert("top_logprobs".into(), json!(1));
    }
    if let Some(schema) = request.schema {
        let format = match config.kind {
            ServerKind::LlamaCpp => json!({ "type": "json_object", "schema": schema }),
            ServerKind::Vllm | ServerKind::OpenAi => json!({
                "type": "json_schema",
                "json_schema": { "name": "output", "schema": schema, "strict": true },
            }),
            ServerKind::TextOnly => return Err(RemoteError::Unconstrained { kind: config.kind }),
        };
        body.insert("response_format".into(), format);
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChatMessage, GenerateParams, SamplingParams};

    fn body(kind: ServerKind, schema: Option<&Value>) -> Result<Value> {
        let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
        let params = GenerateParams {
            max_tokens: 12,
            stop: vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
            sampling: SamplingParams::default().with_seed(u64::MAX),
            ..GenerateParams::default()
        };
        let config = RemoteConfig::new("http://localhost/v1", "m").with_kind(kind);
        chat_body(
            &config,
            &ChatRequest {
                messages: &messages,
                params: &params,
                schema,
                logprobs: false,
            },
        )
    }

    #[test]
    fn each_server_kind_gets_its_own_fields() {
        let llama = body(ServerKind::LlamaCpp, None).unwrap();
        assert_eq!(llama["messages"][0]["role"], "system");
        assert_eq!(llama["max_tokens"], 12);
        assert_eq!(llama["seed"], i64::MAX);
        assert!(llama.get("repeat_penalty").is_some() && llama.get("min_p").is_some());
        assert_eq!(llama["stop"].as_array().unwrap().len(), 5);

        let vllm = body(ServerKind::Vllm, None).unwrap();
        assert!(vllm.get("repetition_penalty").is_some() && vllm.get("repeat_penalty").is_none());

        let openai = body(ServerKind::OpenAi, None).unwrap();
        assert!(openai.get("min_p").is_none() && openai.get("top_k").is_none());
        assert_eq!(openai["stop"].as_array().unwrap().len(), OPENAI_MAX_STOPS);
    }

    #[test]
    fn structured_output_is_asked_in_each_dialect_or_refused() {
        let schema = json!({ "type": "array", "items": { "type": "string" } });
        let llama = body(ServerKind::LlamaCpp, Some(&schema)).unwrap();
        assert_eq!(llama["response_format"]["type"], "json_object");
        assert_eq!(llama["response_format"]["schema"], schema);
        assert!(llama.get("stop").is_none(), "stop strings do not cut JSON");
        let vllm = body(ServerKind::Vllm, Some(&schema)).unwrap();
        assert_eq!(vllm["response_format"]["json_schema"]["schema"], schema);
        assert!(matches!(
            body(ServerKind::TextOnly, Some(&schema)),
            Err(RemoteError::Unconstrained { .. })
        ));
    }
}
