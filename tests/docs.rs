//! The documentation names every environment variable the service reads.

use std::path::Path;

use spot_canvas::config::VARIABLES;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn readme_configuration_table_lists_every_variable() {
    let readme = read("README.md");
    for var in VARIABLES {
        let row = format!("| `{}` |", var.name);
        assert!(
            readme.contains(&row),
            "README lacks a table row for {}",
            var.name
        );
    }
}

#[test]
fn readme_and_env_example_show_the_defaults_the_service_uses() {
    // VARIABLES is where the parser reads its defaults: the documentation must agree.
    let readme = read("README.md");
    let example = read(".env.example");
    for var in VARIABLES.iter().filter(|v| !v.default.is_empty()) {
        let row = format!("| `{}` | `{}` |", var.name, var.default);
        assert!(
            readme.contains(&row),
            "README's default for {} is not `{}`",
            var.name,
            var.default
        );
        let line = format!("\n{}={}\n", var.name, var.default);
        assert!(
            example.contains(&line),
            ".env.example's default for {} is not {}",
            var.name,
            var.default
        );
    }
}

#[test]
fn env_example_names_every_variable() {
    let example = read(".env.example");
    for var in VARIABLES {
        let line = format!("\n{}=", var.name);
        assert!(example.contains(&line), ".env.example lacks {}", var.name);
    }
}

#[test]
fn deployment_files_name_every_variable() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: no deployment files to check", dir.display()));
    let mut text = String::new();
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_file() {
            text.push_str(
                &std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            );
            files += 1;
        }
    }
    assert!(files > 0, "{} holds no files", dir.display());
    for var in VARIABLES {
        assert!(
            text.contains(var.name),
            "deploy/ does not mention {}",
            var.name
        );
    }
}
