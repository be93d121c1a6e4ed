//! The request body of a chat completion, in the dialect of each [`ServerKind`].

use serde_json::{Map, Value, json};

use super::{ChatRequest, RemoteConfig, RemoteError, Result, ServerKind};

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
        ServerKind::OpenAi | ServerKind::TextOnly => {}
    }
    // Stop strings are not sent: the client ends the text at one and closes the stream (the
    // server stops), so a line that ends at one is reported as such, as locally, rather
    // than as a finished turn that the sentence rules would then cut.
    if request.logprobs && config.kind != ServerKind::TextOnly {
        body.insert("logprobs".into(), json!(true));
        // llama-cpp-python sends none unless at least one alternative is asked for.
        body.insert("top_logprobs".into(), json!(1));
    }
    if let Some(schema) = request.schema {
        let format = match config.kind {
            ServerKind::LlamaCpp => json!({ "type": "json_object", "schema": schema }),
            ServerKind::Vllm => json!({
                "type": "json_schema",
                "json_schema": { "name": "output", "schema": schema, "strict": true },
            }),
            ServerKind::OpenAi => json!({
                "type": "json_schema",
                "json_schema": { "name": "output", "schema": wrap(schema), "strict": true },
            }),
            ServerKind::TextOnly => return Err(RemoteError::Unconstrained { kind: config.kind }),
        };
        body.insert("response_format".into(), format);
    }
    Ok(Value::Object(body))
}

/// Whether the answer to a request of `kind` with `schema` comes wrapped (see [`wrap`]).
pub(super) fn wraps_schema(kind: ServerKind, schema: Option<&Value>) -> bool {
    kind == ServerKind::OpenAi && schema.is_some()
}

/// `schema` as the one property of an object: OpenAI's strict mode takes only objects at
/// the top.
fn wrap(schema: &Value) -> Value {
    json!({
        "type": "object",
        "properties": { "value": schema },
        "required": ["value"],
        "additionalProperties": false,
    })
}

/// The `value` of a wrapped answer, as compact JSON.
pub(super) fn unwrap_schema_answer(text: &str) -> Option<String> {
    let answer: Value = serde_json::from_str(text).ok()?;
    answer.get("value").map(Value::to_string)
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
        assert!(
            llama.get("stop").is_none(),
            "stop strings end the text on our side"
        );

        let vllm = body(ServerKind::Vllm, None).unwrap();
        assert!(vllm.get("repetition_penalty").is_some() && vllm.get("repeat_penalty").is_none());

        let openai = body(ServerKind::OpenAi, None).unwrap();
        assert!(openai.get("min_p").is_none() && openai.get("top_k").is_none());
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
        let openai = body(ServerKind::OpenAi, Some(&schema)).unwrap();
        let sent = &openai["response_format"]["json_schema"]["schema"];
        assert_eq!(sent["type"], "object", "strict mode wants an object on top");
        assert_eq!(sent["properties"]["value"], schema);
        assert!(wraps_schema(ServerKind::OpenAi, Some(&schema)));
        assert_eq!(
            unwrap_schema_answer(r#"{"value": ["a", "b"]}"#).as_deref(),
            Some(r#"["a","b"]"#)
        );
        assert!(matches!(
            body(ServerKind::TextOnly, Some(&schema)),
            Err(RemoteError::Unconstrained { .. })
        ));
    }
}
