//! Reading the paths a source file imports, without a parser: enough for the layering
//! checks, which need the module each `crate::`, `super::` and `self::` path names.
//!
//! In: a file's text and its module path. Out: the absolute module paths it names, `use`
//! groups expanded, comments left out.

/// The code of `text` without comments (line comments only: the code base has no block ones).
pub(super) fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path starting with `crate::`, `super::` or `self::` in `code`, with `use` groups
/// (`a::{b, c::d}`) expanded, as segments.
pub(super) fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .any(|p| rest.starts_with(p));
        let boundary = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts && boundary {
            let (found, used) = expand(rest);
            out.extend(found);
            at += used.max(1);
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

/// The paths written at the start of `text` (one, or a group's), and the bytes they took.
fn expand(text: &str) -> (Vec<Vec<String>>, usize) {
    let mut prefix: Vec<String> = Vec::new();
    let mut at = 0;
    loop {
        let word: String = text[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        at += word.len();
        if !word.is_empty() {
            prefix.push(word);
        }
        let rest = &text[at..];
        if let Some(after) = rest.strip_prefix("::{") {
            at += 3;
            // A group: its parts, split at the top-level commas.
            let mut depth = 0;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let inner = &after[..end];
            let mut out = Vec::new();
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner
                .char_indices()
                .chain(std::iter::once((inner.len(), ',')))
            {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let part = inner[start..i].trim();
                        start = i + 1;
                        if part.is_empty() {
                            continue;
                        }
                        for tail in expand(part).0 {
                            let mut path = prefix.clone();
                            path.extend(tail.into_iter().filter(|s| s != "self"));
                            out.push(path);
                        }
                    }
                    _ => {}
                }
            }
            return (out, at + end + 1);
        }
        if let Some(_after) = rest.strip_prefix("::") {
            at += 2;
            continue;
        }
        return (vec![prefix], at);
    }
}

/// The absolute module path `path` names, written in the module `module` (`None`: outside the
/// crate, or more `super`s than there are parents).
pub(super) fn absolute(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut segments = path.iter();
    let mut base: Vec<String> = match segments.next()?.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => {
            let mut base = module.to_vec();
            base.pop()?;
            base
        }
        _ => return None,
    };
    for segment in segments {
        if segment == "super" {
            base.pop()?;
        } else {
            base.push(segment.clone());
        }
    }
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_reader_expands_groups_and_resolves_super() {
        let found = paths("use super::{a, b::{c, d}};\nlet x = crate::web::AppState::idle();");
        assert_eq!(
            found,
            vec![
                vec!["super", "a"],
                vec!["super", "b", "c"],
                vec!["super", "b", "d"],
                vec!["crate", "web", "AppState", "idle"],
            ]
        );
        let module = vec!["web".to_owned(), "pages".to_owned(), "board".to_owned()];
        assert_eq!(
            absolute(&module, &["super".into(), "super".into(), "json".into()]),
            Some(vec!["web".to_owned(), "json".to_owned()])
        );
    }
}
