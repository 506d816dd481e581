//! The configuration's tests: what each variable accepts and defaults to ([`values`]), and
//! that no secret shows in output or errors ([`secrets`]).

use std::collections::HashMap;

use super::*;

mod secrets;
mod values;

fn config_with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned())
}
