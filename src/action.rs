//! NPC actions: what an NPC may do, declared in its persona (or in a request), the JSON schema
//! its decision is constrained to, and the check of a decision against the declaration.
//!
//! ```
//! # use bevy_llm_dialogue::action::{ActionSpec, ArgSpec, parse_action};
//! let give = ActionSpec::new("give_item").arg("item", ArgSpec::OneOf(vec!["lantern".into()]));
//! let decision = parse_action(r#"{"action":"give_item","args":{"item":"lantern"}}"#, &[give])?;
//! assert_eq!(decision.name, "give_item");
//! assert_eq!(decision.args["item"], "lantern");
//! # Ok::<(), bevy_llm_dialogue::action::ActionError>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An action an NPC may take, declared in its persona or in a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// The action's name, as game systems match it: `give_item`. Letters, digits and `_`.
    pub name: String,
    /// When to take it, for the model.
    #[serde(default)]
    pub description: String,
    /// Arguments by name.
    #[serde(default)]
    pub args: BTreeMap<String, ArgSpec>,
}

/// What an action argument may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub enum ArgSpec {
    /// One of these strings.
    OneOf(Vec<String>),
    /// An integer in the range.
    Integer {
        /// Smallest.
        min: i64,
        /// Largest.
        max: i64,
    },
    /// Free text of at most this many characters.
    Text(usize),
    /// True or false.
    Bool,
}

/// A decision that does not fit the declared actions. Under the schema the model cannot
/// produce one; decisions from other sources (a save, a server) are checked too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// Not a JSON object of the form `{"action": name, "args": {...}}`.
    #[error("the decision is malformed: {0}")]
    Malformed(String),
    /// The action is not among those offered.
    #[error("undeclared action `{0}`")]
    Undeclared(String),
    /// An argument is missing or outside what its [`ArgSpec`] allows.
    #[error("argument `{arg}` of `{action}` is missing or not allowed")]
    BadArgument {
        /// The action.
        action: String,
        /// The argument.
        arg: String,
    },
    /// Arguments the declaration does not have.
    #[error("extra arguments for `{0}`")]
    ExtraArguments(String),
    /// An action's name is not letters, digits and `_`.
    #[error("`{0}` is not an action name (letters, digits, _)")]
    BadName(String),
}

/// What an NPC decided: a declared action with arguments that fit it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The action's name.
    pub name: String,
    /// Its arguments, by name.
    pub args: serde_json::Map<String, serde_json::Value>,
}

impl ActionSpec {
    /// An action without arguments or description.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            args: BTreeMap::new(),
        }
    }

    /// When to take it, for the model.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Adds an argument.
    pub fn arg(mut self, name: impl Into<String>, spec: ArgSpec) -> Self {
        self.args.insert(name.into(), spec);
        self
    }

    /// Checks the name: game systems match it, so it is letters, digits and `_`.
    pub fn validate(&self) -> Result<(), ActionError> {
        let ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(ActionError::BadName(self.name.clone()))
        }
    }
}

impl ArgSpec {
    fn schema(&self) -> serde_json::Value {
        match self {
            ArgSpec::OneOf(values) => serde_json::json!({ "enum": values }),
            ArgSpec::Integer { min, max } => {
                serde_json::json!({ "type": "integer", "minimum": min, "maximum": max })
            }
            ArgSpec::Text(max) => {
                serde_json::json!({ "type": "string", "minLength": 1, "maxLength": max })
            }
            ArgSpec::Bool => serde_json::json!({ "type": "boolean" }),
        }
    }

    /// Whether `value` is allowed.
    pub fn accepts(&self, value: &serde_json::Value) -> bool {
        match self {
            ArgSpec::OneOf(values) => value
                .as_str()
                .is_some_and(|v| values.iter().any(|x| x == v)),
            ArgSpec::Integer { min, max } => {
                value.as_i64().is_some_and(|v| (*min..=*max).contains(&v))
            }
            ArgSpec::Text(max) => value
                .as_str()
                .is_some_and(|v| !v.is_empty() && v.chars().count() <= *max),
            ArgSpec::Bool => value.is_boolean(),
        }
    }
}

/// The JSON schema of a decision among `actions`: `{"action": name, "args": {...}}`.
pub fn action_schema(actions: &[ActionSpec]) -> serde_json::Value {
    let options: Vec<serde_json::Value> = actions
        .iter()
        .map(|a| {
            let props: serde_json::Map<String, serde_json::Value> = a
                .args
                .iter()
                .map(|(k, v)| (k.clone(), v.schema()))
                .collect();
            let required: Vec<&String> = a.args.keys().collect();
            serde_json::json!({
                "type": "object",
                "properties": {
                    "action": { "const": a.name },
                    "args": {
                        "type": "object",
                        "properties": props,
                        "required": required,
                        "additionalProperties": false,
                    },
                },
                "required": ["action", "args"],
                "additionalProperties": false,
            })
        })
        .collect();
    serde_json::json!({ "anyOf": options })
}

/// A decision parsed from the model's JSON and checked against the declared actions.
pub fn parse_action(json: &str, actions: &[ActionSpec]) -> Result<Decision, ActionError> {
    #[derive(Deserialize)]
    struct Raw {
        action: String,
        args: serde_json::Map<String, serde_json::Value>,
    }
    let d: Raw = serde_json::from_str(json).map_err(|e| ActionError::Malformed(e.to_string()))?;
    let spec = actions
        .iter()
        .find(|a| a.name == d.action)
        .ok_or_else(|| ActionError::Undeclared(d.action.clone()))?;
    for (name, arg) in &spec.args {
        if !d.args.get(name).is_some_and(|v| arg.accepts(v)) {
            return Err(ActionError::BadArgument {
                action: d.action,
                arg: name.clone(),
            });
        }
    }
    if d.args.len() != spec.args.len() {
        return Err(ActionError::ExtraArguments(d.action));
    }
    Ok(Decision {
        name: d.action,
        args: d.args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_must_be_declared_with_valid_arguments() {
        let actions =
            vec![ActionSpec::new("give_item").arg("item", ArgSpec::OneOf(vec!["sword".into()]))];
        let ok = parse_action(
            r#"{"action":"give_item","args":{"item":"sword"}}"#,
            &actions,
        );
        assert_eq!(ok.unwrap().args["item"], "sword");
        assert_eq!(
            parse_action(r#"{"action":"give_item","args":{"item":"axe"}}"#, &actions),
            Err(ActionError::BadArgument {
                action: "give_item".into(),
                arg: "item".into()
            })
        );
        assert_eq!(
            parse_action(r#"{"action":"attack","args":{}}"#, &actions),
            Err(ActionError::Undeclared("attack".into()))
        );
        assert_eq!(
            parse_action(
                r#"{"action":"give_item","args":{"item":"sword","n":1}}"#,
                &actions
            ),
            Err(ActionError::ExtraArguments("give_item".into()))
        );
    }

    #[test]
    fn names_are_identifiers() {
        assert!(ActionSpec::new("open_door2").validate().is_ok());
        assert!(ActionSpec::new("open door").validate().is_err());
        assert!(ActionSpec::new("").validate().is_err());
    }
}
