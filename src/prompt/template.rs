//! A compiled prompt template and its errors.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, Value};

/// The NPC prompt used when an NPC names no template of its own (`assets/prompts/npc.jinja`).
pub const DEFAULT_NPC_TEMPLATE: &str = include_str!("../../assets/prompts/npc.jinja");

/// The narrator's prompt unless a story names its own (`assets/prompts/narrator.jinja`).
pub const DEFAULT_NARRATOR_TEMPLATE: &str = include_str!("../../assets/prompts/narrator.jinja");

/// The prompt for an NPC's choice of action (`assets/prompts/action.jinja`).
pub const DEFAULT_ACTION_TEMPLATE: &str = include_str!("../../assets/prompts/action.jinja");

/// A template error: syntax, an undefined variable, a failing filter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("prompt template {template}: {message}")]
pub struct PromptError {
    /// The template's name (its asset path).
    pub template: String,
    /// What went wrong, with the line where minijinja knows it.
    pub message: String,
}

/// A compiled prompt template. Undefined variables are errors, not empty strings, so a typo
/// in a template fails loudly instead of silently dropping a fact.
#[derive(Debug)]
#[cfg_attr(feature = "bevy", derive(bevy::asset::Asset, bevy::reflect::TypePath))]
pub struct PromptTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
}

/// The work and memory one render of a prompt template (a mod's file) may use: a fuel per
/// instruction and per 64 bytes created, so at most about 6 MB and a few milliseconds, since
/// prompts render on the main thread. The built-in templates use a few thousand.
pub const PROMPT_TEMPLATE_FUEL: u64 = 100_000;

impl PromptTemplate {
    /// Compiles a template; `name` is used in error messages.
    pub fn new(name: &str, source: &str) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| error(name, source, &e))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(PROMPT_TEMPLATE_FUEL));
        env.set_unknown_method_callback(crate::engine::template::python_method);
        env.add_template_owned("prompt", source.to_owned())
            .map_err(|e| error(name, source, &e))?;
        Ok(Self {
            name: name.to_owned(),
            source: source.to_owned(),
            env,
        })
    }

    /// The built-in narrator template.
    pub fn default_narrator() -> Self {
        Self::new("narrator.jinja (built in)", DEFAULT_NARRATOR_TEMPLATE)
            .expect("the built-in template compiles")
    }

    /// The built-in NPC action template.
    pub fn default_action() -> Self {
        Self::new("action.jinja (built in)", DEFAULT_ACTION_TEMPLATE)
            .expect("the built-in template compiles")
    }

    /// The built-in NPC template.
    pub fn default_npc() -> Self {
        Self::new("npc.jinja (built in)", DEFAULT_NPC_TEMPLATE)
            .expect("the built-in template compiles")
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template with arbitrary variables.
    pub fn render(&self, vars: Value) -> Result<String, PromptError> {
        let tmpl = self
            .env
            .get_template("prompt")
            .map_err(|e| error(&self.name, &self.source, &e))?;
        tmpl.render(vars)
            .map(|s| s.trim().to_owned())
            .map_err(|e| error(&self.name, &self.source, &e))
    }
}

/// "undefined value `npc.mood` at line 1": the kind, the detail, the offending source text
/// and the line, without minijinja's internal template name.
fn error(name: &str, source: &str, e: &minijinja::Error) -> PromptError {
    let mut message = e.kind().to_string();
    if let Some(detail) = e.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(snippet) = e.range().and_then(|r| source.get(r)) {
        message.push_str(&format!(" `{}`", snippet.trim()));
    }
    if let Some(line) = e.line() {
        message.push_str(&format!(" at line {line}"));
    }
    PromptError {
        template: name.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Facts;
    use crate::persona::Persona;
    use crate::prompt::PLAYER_NAME_FACT;

    #[test]
    fn a_decision_names_the_player_where_a_card_wrote_user() {
        let template = PromptTemplate::new(
            "knows.jinja",
            "{% for fact in persona.knowledge %}{{ fact }} {% endfor %}",
        )
        .unwrap();
        let wren = Persona::from_ron(
            r#"(name: "Wren", description: "the herbalist",
                knowledge: ["{{user}} owes Wren a favour.", "<USER> came at night."])"#,
            "wren",
        )
        .unwrap();
        let messages = |world: &Facts| {
            template
                .action_messages(&wren, world, &Facts::new(), &[], "{{user}} knocks.")
                .unwrap()
        };
        let unnamed = messages(&Facts::new());
        assert_eq!(
            unnamed[0].content,
            "the traveler owes Wren a favour. the traveler came at night."
        );
        assert_eq!(unnamed[1].content, "the traveler knocks.");
        let world: Facts = [(PLAYER_NAME_FACT, "Ann")].into_iter().collect();
        assert_eq!(
            messages(&world)[0].content,
            "Ann owes Wren a favour. Ann came at night."
        );
    }
}
