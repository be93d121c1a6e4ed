//! RON data files written by designers (personas, stories): one parser, one error type that
//! names the file, the line and the field.

use serde::de::DeserializeOwned;

/// A data file that cannot be used. Messages name the file, the line and the field, so a
/// designer can go straight to the mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RonFileError {
    /// Not valid RON, a missing field, a field of the wrong type, an unknown field.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// Parsed, but a value is out of range.
    #[error("{file}:{line}: `{field}` {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the field (0 if not found).
        line: usize,
        /// The field, such as `sampling.temperature`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A value out of range, found after parsing: the field (dotted for nested ones, such as
/// `sampling.temperature`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl Invalid {
    /// `field` is wrong because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a parser cannot make: empty names, absurd numbers, dangling references.
pub trait Validate {
    /// The first value out of range, if any.
    fn validate(&self) -> Result<(), Invalid>;
}

/// Parses `text` as RON and validates it; `file` names it in errors.
pub fn from_ron<T: DeserializeOwned + Validate>(text: &str, file: &str) -> Result<T, RonFileError> {
    let value: T = ron::Options::default()
        .from_str(text)
        .map_err(|e| RonFileError::Syntax {
            file: file.to_owned(),
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
        })?;
    value.validate().map_err(|Invalid { field, reason }| {
        // A nested field (`sampling.temperature`) is written under its last part.
        let leaf = field.rsplit('.').next().unwrap_or(&field);
        RonFileError::Invalid {
            file: file.to_owned(),
            line: line_of_field(text, leaf),
            field,
            reason,
        }
    })?;
    Ok(value)
}

/// The 1-based line where `field:` first appears, or 0.
fn line_of_field(text: &str, field: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Knob {
        #[expect(dead_code, reason = "only parsed")]
        name: String,
        inner: Inner,
    }

    #[derive(serde::Deserialize)]
    struct Inner {
        level: i32,
    }

    impl Validate for Knob {
        fn validate(&self) -> Result<(), Invalid> {
            if self.inner.level > 3 {
                return Err(Invalid::new("inner.level", "is above 3"));
            }
            Ok(())
        }
    }

    #[test]
    fn nested_fields_are_found_by_their_last_part() {
        let text = "(\n  name: \"k\",\n  inner: (\n    level: 9,\n  ),\n)";
        let err = from_ron::<Knob>(text, "k.ron").err().expect("invalid");
        assert_eq!(
            err,
            RonFileError::Invalid {
                file: "k.ron".into(),
                line: 4,
                field: "inner.level".into(),
                reason: "is above 3".into(),
            }
        );
        assert_eq!(err.to_string(), "k.ron:4: `inner.level` is above 3");
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let err = from_ron::<Knob>("(\n name: 3,\n)", "k.ron")
            .err()
            .expect("bad");
        assert!(
            matches!(&err, RonFileError::Syntax { line: 2, .. }),
            "{err:?}"
        );
    }
}
