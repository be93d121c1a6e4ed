//! Quest state both ways: Yarn variables become world facts; NPC actions and dispositions
//! set Yarn variables.

use bevy::prelude::*;
use bevy_yarnspinner::prelude::{DialogueRunner, YarnValue};

use super::YarnBridge;
use crate::persona::Persona;
use crate::plugin::{ActionFinished, DialogueContext, DispositionChanged, Npc};

/// The JSON a Yarn value is as a fact: whole numbers as integers.
pub(super) fn fact_value(value: &YarnValue) -> serde_json::Value {
    match value {
        YarnValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => (*n as i64).into(),
        YarnValue::Number(n) => serde_json::Number::from_f64(f64::from(*n))
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        YarnValue::String(s) => s.clone().into(),
        YarnValue::Boolean(b) => (*b).into(),
    }
}

/// `Update`, after the runners: the variables of every bridged runner are world facts,
/// named without their `$` (`$gate_open` is the fact `gate_open`). The bridge's own
/// `$llm_*` variables stay out. Facts change only when a value did.
pub(super) fn share_variables(
    runners: Query<(&DialogueRunner, &YarnBridge)>,
    mut context: ResMut<DialogueContext>,
) {
    for (runner, bridge) in &runners {
        for (name, value) in runner.variable_storage().variables() {
            let shared = if bridge.facts.is_empty() {
                !name.starts_with("$llm_")
            } else {
                bridge
                    .facts
                    .iter()
                    .any(|f| f.trim_start_matches('$') == name.trim_start_matches('$'))
            };
            if !shared {
                continue;
            }
            let key = name.trim_start_matches('$');
            let value = fact_value(&value);
            if context.bypass_change_detection().facts.0.get(key) != Some(&value) {
                context.facts.0.insert(key.to_owned(), value);
            }
        }
    }
}

/// The variable prefix for an NPC: its `Name`, else its persona's name, in lower case with
/// anything but letters and digits as `_` ("Old Tom" is `$old_tom_...`).
pub fn npc_variable_prefix(name: &str) -> String {
    let key: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("${key}")
}

/// `PreUpdate`, after the plugin's results: an NPC's decided action sets `$NPC_action` (its
/// name) and `$NPC_action_ARG` (each argument); a changed disposition sets `$NPC_mood` and
/// `$NPC_affinity`, on every bridged runner.
pub(super) fn set_npc_variables(
    mut actions: MessageReader<ActionFinished>,
    mut dispositions: MessageReader<DispositionChanged>,
    npcs: Query<(&Npc, Option<&Name>)>,
    personas: Res<Assets<Persona>>,
    mut runners: Query<&mut DialogueRunner, With<YarnBridge>>,
) {
    let prefix = |npc: Entity| {
        let (data, name) = npcs.get(npc).ok()?;
        let name = match name {
            Some(n) => n.as_str().to_owned(),
            None => personas.get(&data.persona)?.name.clone(),
        };
        Some(npc_variable_prefix(&name))
    };
    let mut values: Vec<(String, YarnValue)> = Vec::new();
    for action in actions.read() {
        let Some(p) = prefix(action.npc) else {
            continue;
        };
        values.push((
            format!("{p}_action"),
            YarnValue::String(action.name.clone()),
        ));
        for (arg, value) in &action.args {
            let value = match value {
                serde_json::Value::Bool(b) => YarnValue::Boolean(*b),
                serde_json::Value::Number(n) => YarnValue::Number(n.as_f64().unwrap_or(0.0) as f32),
                serde_json::Value::String(s) => YarnValue::String(s.clone()),
                other => YarnValue::String(other.to_string()),
            };
            values.push((
                format!(
                    "{p}_action_{}",
                    npc_variable_prefix(arg).trim_start_matches('$')
                ),
                value,
            ));
        }
    }
    for changed in dispositions.read() {
        let Some(p) = prefix(changed.npc) else {
            continue;
        };
        values.push((format!("{p}_mood"), YarnValue::String(changed.mood.clone())));
        values.push((
            format!("{p}_affinity"),
            YarnValue::Number(changed.affinity as f32),
        ));
    }
    if values.is_empty() {
        return;
    }
    for mut runner in &mut runners {
        for (name, value) in &values {
            if let Err(e) = runner
                .variable_storage_mut()
                .set(name.clone(), value.clone())
            {
                tracing::warn!("Yarn bridge: could not set {name}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npc_names_become_variable_prefixes() {
        assert_eq!(npc_variable_prefix("Guard"), "$guard");
        assert_eq!(npc_variable_prefix(" Old Tom "), "$old_tom");
        assert_eq!(npc_variable_prefix("Zoë-2"), "$zoë_2");
    }

    #[test]
    fn yarn_values_become_facts_with_whole_numbers_as_integers() {
        assert_eq!(fact_value(&YarnValue::Number(3.0)), serde_json::json!(3));
        assert_eq!(fact_value(&YarnValue::Number(0.5)), serde_json::json!(0.5));
        assert_eq!(
            fact_value(&YarnValue::Boolean(true)),
            serde_json::json!(true)
        );
        assert_eq!(
            fact_value(&YarnValue::String("open".into())),
            serde_json::json!("open")
        );
    }
}
