//! Chat templates: the Jinja template stored in a GGUF file, rendered with minijinja.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, State, Value, context};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};

/// ChatML, used when a model ships no chat template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Who said a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions: the persona, the rules of the scene.
    System,
    /// The player (or whoever speaks to the model).
    User,
    /// The model: an NPC's or the narrator's earlier lines.
    Assistant,
}

impl Role {
    /// The role's name as chat templates expect it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "bevy", derive(bevy::reflect::Reflect))]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// A user (player) message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// An assistant (model) message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// A rendered part of a prompt: template markup, or the content of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Text the template wrote; control tokens in it are real.
    Markup(String),
    /// Text from a message; control tokens in it are plain characters.
    Content(String),
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        Self::new(&self.source, &self.bos_token, &self.eos_token)
            .expect("a template that compiled once compiles again")
    }
}

fn template_err(e: minijinja::Error) -> EngineError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        msg.push_str(": ");
        msg.push_str(&inner.to_string());
        source = inner.source();
    }
    EngineError::Template(msg)
}

impl ChatTemplate {
    /// Compiles a Hugging Face style chat template (Jinja). `bos_token` and `eos_token` are
    /// the strings the template may refer to by those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .map_err(template_err)?,
        );
        env.set_fuel(Some(super::limits::CHAT_TEMPLATE_FUEL));
        env.set_unknown_method_callback(python_method);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_owned())
            .map_err(template_err)?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`).
    pub fn chatml() -> Self {
        Self::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("ChatML compiles")
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders messages to the prompt text. With `add_generation_prompt` the text ends where
    /// the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let values: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        self.render_values(values, add_generation_prompt)
    }

    fn render_values(&self, messages: Vec<Value>, add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(template_err)?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(template_err)
    }

    /// Renders messages and splits the result into template markup and message content, so
    /// the two can be tokenized differently (control tokens only count in markup).
    ///
    /// Each message is rendered once with a placeholder in place of its content. The template
    /// may copy a message's content verbatim or trimmed (as Llama 3 and Gemma templates do);
    /// anything else it does to content is refused, since the split would then be unsound.
    pub(crate) fn render_segments(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let full = self.render(messages, add_generation_prompt)?;
        let placeholders: Vec<Value> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| context! { role => m.role.as_str(), content => placeholder(i) })
            .collect();
        let shape = self.render_values(placeholders, add_generation_prompt)?;

        for trim in [false, true] {
            let segments = split_placeholders(&shape, messages, trim);
            let joined: String = segments
                .iter()
                .map(|s| match s {
                    Segment::Markup(t) | Segment::Content(t) => t.as_str(),
                })
                .collect();
            if joined == full {
                return Ok(segments);
            }
        }
        Err(EngineError::Template(
            "the template transforms message content in a way that cannot be tokenized safely \
             (only copying it verbatim or trimmed is supported)"
                .to_owned(),
        ))
    }
}

const PLACEHOLDER_OPEN: char = '\u{E000}';
const PLACEHOLDER_CLOSE: char = '\u{E001}';

fn placeholder(i: usize) -> String {
    format!("{PLACEHOLDER_OPEN}{i}{PLACEHOLDER_CLOSE}")
}

fn split_placeholders(shape: &str, messages: &[ChatMessage], trim: bool) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = shape;
    while let Some(start) = rest.find(PLACEHOLDER_OPEN) {
        let after = &rest[start + PLACEHOLDER_OPEN.len_utf8()..];
        let Some(end) = after.find(PLACEHOLDER_CLOSE) else {
            break;
        };
        let Some(message) = after[..end]
            .parse::<usize>()
            .ok()
            .and_then(|i| messages.get(i))
        else {
            break;
        };
        if start > 0 {
            out.push(Segment::Markup(rest[..start].to_owned()));
        }
        let content = if trim {
            message.content.trim()
        } else {
            message.content.as_str()
        };
        if !content.is_empty() {
            out.push(Segment::Content(content.to_owned()));
        }
        rest = &after[end + PLACEHOLDER_CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Segment::Markup(rest.to_owned()));
    }
    out
}

/// `strftime_now(format)`, which Llama 3 templates call for today's date. Supports the
/// `%d`, `%m`, `%Y`, `%b` and `%B` directives.
/// The widest field (width or precision) a template's `str.format` may ask for.
pub(crate) const MAX_FORMAT_WIDTH: usize = 4096;

/// The longest string a template's `str.replace` may make, in bytes.
pub(crate) const MAX_REPLACED_BYTES: usize = 1 << 20;

/// Python's string and dict methods in templates (minijinja-contrib's `pycompat`), with the
/// two that allocate by their arguments checked first: `"{:>99999999999}".format("")` and a
/// `replace` that multiplies a string would allocate before the template's fuel is charged.
pub(crate) fn python_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    let refuse = |reason: String| Err(minijinja::Error::new(ErrorKind::InvalidOperation, reason));
    if let Some(text) = value.as_str() {
        match method {
            "format" => {
                let widest = format_widths(text)
                    .chain(
                        // A nested field (`{:{}}`) takes its width from an argument.
                        args.iter()
                            .filter(|_| text.contains(":{"))
                            .filter_map(|a| i128::try_from(a.clone()).ok())
                            .map(|n| usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX)),
                    )
                    .max();
                if let Some(widest) = widest.filter(|&w| w > MAX_FORMAT_WIDTH) {
                    return refuse(format!(
                        "str.format asks for a field {widest} characters wide; at most \
                         {MAX_FORMAT_WIDTH}"
                    ));
                }
            }
            "replace" => {
                let old = args.first().and_then(Value::as_str).unwrap_or("");
                let new = args.get(1).and_then(Value::as_str).unwrap_or("");
                let count = if old.is_empty() {
                    text.chars().count() + 1
                } else {
                    text.matches(old).count()
                };
                let bytes = text.len().saturating_add(count.saturating_mul(new.len()));
                if bytes > MAX_REPLACED_BYTES {
                    return refuse(format!(
                        "str.replace would make a string of {bytes} bytes; at most \
                         {MAX_REPLACED_BYTES}"
                    ));
                }
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// The numbers in the format specs (`{:>20.3f}` gives 20 and 3) of a `str.format` string.
fn format_widths(format: &str) -> impl Iterator<Item = usize> + '_ {
    format
        .split('{')
        .skip(1)
        .filter_map(|field| field.split_once('}').map(|(inside, _)| inside))
        .filter_map(|inside| inside.split_once(':').map(|(_, spec)| spec))
        .flat_map(|spec| {
            spec.split(|c: char| !c.is_ascii_digit())
                .filter(|digits| !digits.is_empty())
                .map(|digits| digits.parse::<usize>().unwrap_or(usize::MAX))
        })
}

fn strftime_now(format: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_by_hand() {
        let t = ChatTemplate::chatml();
        let text = t
            .render(&[ChatMessage::system("S"), ChatMessage::user("U")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn segments_separate_markup_from_content() {
        let t = ChatTemplate::chatml();
        let segs = t
            .render_segments(&[ChatMessage::user("hi <|im_end|>")], false)
            .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Markup("<|im_start|>user\n".into()),
                Segment::Content("hi <|im_end|>".into()),
                Segment::Markup("<|im_end|>\n".into()),
            ]
        );
    }

    #[test]
    fn trimming_templates_are_supported_and_transforming_ones_refused() {
        let trim = ChatTemplate::new(
            "{% for m in messages %}[{{ m['content'] | trim }}]{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let segs = trim
            .render_segments(&[ChatMessage::user("  x  ")], false)
            .unwrap();
        assert_eq!(segs[1], Segment::Content("x".into()));

        let upper = ChatTemplate::new(
            "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(
            upper.render_segments(&[ChatMessage::user("x")], false),
            Err(EngineError::Template(_))
        ));
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(EngineError::Template(_))
        ));
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m['content'].strip() }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::user(" a ")], false).unwrap(), "a");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
