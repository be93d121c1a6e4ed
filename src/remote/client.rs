//! [`RemoteClient`]: a connection to one server, shared between threads, its key read once,
//! and the check that the server is up and serves the model (`GET /models`).

use std::io::Read;
use std::sync::Arc;

use super::error::shorten;
use super::{RemoteConfig, RemoteError, Result, ServerKind};
use crate::engine::ModelInfo;

/// A connection to one inference server; share it between threads (`&self` everywhere).
pub struct RemoteClient {
    pub(super) shared: Arc<Shared>,
}

/// What a request's HTTP thread needs of the client.
pub(super) struct Shared {
    pub(super) config: RemoteConfig,
    /// The HTTP settings; each exchange gets an agent of its own from them, so that ending
    /// one (a cancel) shuts down that exchange's connection alone.
    pub(super) http: ureq::config::Config,
    pub(super) key: Option<String>,
    pub(super) chat_url: String,
    pub(super) models_url: String,
}

impl std::fmt::Debug for RemoteClient {
    /// Everything but the key, which must not reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("config", &self.shared.config)
            .field("key", &self.shared.key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl RemoteClient {
    /// A client for `config`; reads the API key from its variable now.
    pub fn new(config: RemoteConfig) -> Result<Self> {
        let base = config.base_url.trim().trim_end_matches('/').to_owned();
        if base.is_empty() {
            return Err(RemoteError::InvalidConfig(
                "RemoteConfig::base_url is empty (it should look like http://127.0.0.1:8080/v1)"
                    .into(),
            ));
        }
        let key = match &config.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| RemoteError::MissingKey { var: var.clone() })?,
            ),
            None => None,
        };
        // The response and stall timeouts are enforced by the waiting caller (which knows
        // whether text has started), the line's by both; these only end an HTTP thread
        // whose caller has not shut its exchange down yet.
        let backstop = config.response_timeout.max(config.stall_timeout);
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(backstop))
            .timeout_per_read(Some(backstop))
            .timeout_global(Some(config.line_timeout))
            .build();
        Ok(Self {
            shared: Arc::new(Shared {
                chat_url: format!("{base}/chat/completions"),
                models_url: format!("{base}/models"),
                config,
                http,
                key,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RemoteConfig {
        &self.shared.config
    }

    /// Asks the server which models it serves (`GET /models`): checks that it is up, that
    /// the key works and (for [`ServerKind::Vllm`] and [`ServerKind::OpenAi`], which route by
    /// name) that it serves [`RemoteConfig::model`], and describes that model. It takes at
    /// most [`RemoteConfig::connect_timeout`] plus [`RemoteConfig::response_timeout`].
    pub fn connect(&self) -> Result<ModelInfo> {
        let s = &self.shared;
        let url = &s.models_url;
        let agent = ureq::Agent::new_with_config(s.http.clone());
        let mut request = agent
            .get(url)
            .config()
            .timeout_global(Some(
                s.config
                    .connect_timeout
                    .saturating_add(s.config.response_timeout),
            ))
            .build();
        if let Some(key) = &s.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.call().map_err(|e| s.transport(url, e, false))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(s.status_error(url, status, &mut response));
        }
        let mut text = String::new();
        response
            .body_mut()
            .as_reader()
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| s.io(url, e, false))?;
        let listed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RemoteError::Malformed {
                url: url.clone(),
                reason: format!("the model list is not JSON: {e}"),
            })?;
        let served: Vec<&str> = listed["data"]
            .as_array()
            .map(|models| models.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        let model = &s.config.model;
        let routes_by_name = matches!(s.config.kind, ServerKind::Vllm | ServerKind::OpenAi);
        if routes_by_name
            && !model.is_empty()
            && !served.is_empty()
            && !served.contains(&model.as_str())
        {
            return Err(RemoteError::Status {
                url: url.clone(),
                status,
                message: shorten(&format!(
                    "it does not serve `{model}` (it serves: {})",
                    served.join(", ")
                )),
            });
        }
        let name = if model.is_empty() {
            served.first().map(|s| (*s).to_owned())
        } else {
            Some(model.clone())
        };
        Ok(ModelInfo {
            file: s.config.base_url.clone(),
            architecture: "remote".into(),
            name,
            train_context: 0,
            n_ctx: 0,
            vocab_size: 0,
            prefix_reuse: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug_output() {
        // Cargo sets this variable for every test process: it stands in for a key.
        let client = RemoteClient::new(
            RemoteConfig::new("http://127.0.0.1:9/v1", "m").with_api_key_env("CARGO_PKG_NAME"),
        )
        .unwrap();
        let shown = format!("{client:?}");
        assert!(
            shown.contains("<set>") && !shown.contains(env!("CARGO_PKG_NAME")),
            "{shown}"
        );
    }

    #[test]
    fn an_empty_url_or_an_unset_key_is_refused_up_front() {
        assert!(matches!(
            RemoteClient::new(RemoteConfig::new(" ", "m")),
            Err(RemoteError::InvalidConfig(_))
        ));
        let missing = RemoteConfig::new("http://127.0.0.1:9/v1", "m")
            .with_api_key_env("LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET");
        assert!(matches!(
            RemoteClient::new(missing),
            Err(RemoteError::MissingKey { var }) if var == "LLM_DIALOGUE_TEST_KEY_THAT_IS_NOT_SET"
        ));
    }
}
