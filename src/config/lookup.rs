//! Reading one variable: its set value or its default from the table, and the number and
//! boolean checks most variables share.
//!
//! In: a variable lookup (the environment, or a map in tests) and a variable's name. Out: its
//! text, or its typed value, or a [`ConfigError`] naming it. Kept apart from the parser so the
//! stream limits and the rest of the configuration read variables the same way without
//! importing each other.

use super::ConfigError;
use super::variables::VARIABLES;

/// A variable name → its value, if set (empty values already count as unset).
pub(super) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn default_of(var: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|v| v.name == var)
        .map(|v| v.default)
        .unwrap_or("")
}

/// The value of `var`, or its default from [`VARIABLES`] when unset: the one place a
/// default is written.
pub(super) fn value_or_default(lookup: Lookup<'_>, var: &str) -> String {
    lookup(var).unwrap_or_else(|| default_of(var).to_owned())
}

/// An integer in `min..=max`. The default (from [`VARIABLES`]) is checked like a set value.
pub(super) fn number<T>(
    lookup: Lookup<'_>,
    var: &'static str,
    min: T,
    max: T,
    accepted: &'static str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let raw = value_or_default(lookup, var);
    let value: T = raw.trim().parse().map_err(|_| ConfigError {
        var,
        problem: format!("{raw:?} is not an integer in range"),
        accepted,
    })?;
    if value < min || value > max {
        return Err(ConfigError {
            var,
            problem: format!("{value} is out of range"),
            accepted,
        });
    }
    Ok(value)
}

pub(super) fn boolean(lookup: Lookup<'_>, var: &'static str) -> Result<bool, ConfigError> {
    match value_or_default(lookup, var)
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(ConfigError {
            var,
            problem: format!("{other:?} is not a boolean"),
            accepted: "true or false (also 1/0, yes/no, on/off)",
        }),
    }
}
