//! The documentation names every environment variable the service reads.

use std::path::Path;

use serde::Deserialize;

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

/// Every YAML file the project ships, parsed (all documents of each).
#[test]
fn every_yaml_file_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("docker-compose.yml"),
        root.join("cloudbuild.yaml"),
        root.join("Taskfile.yaml"),
    ];
    for dir in ["deploy", "deploy/prometheus"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("the directory") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    for path in files {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut documents = 0;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            assert!(
                !value.is_null(),
                "{} holds an empty document",
                path.display()
            );
            documents += 1;
        }
        assert!(documents > 0, "{} is empty", path.display());
    }
}

fn yaml(path: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Cloud Run services: the ingest shards are single always-on instances with their shard
/// set; the web role autoscales with Cloud Run's maximum concurrency; all use the maximum
/// request timeout, take the database URL from Secret Manager and name NATS.
#[test]
fn cloud_run_services_match_their_roles() {
    let env_of = |service: &serde_yaml_ng::Value| -> Vec<serde_yaml_ng::Value> {
        service["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
    };
    let var = |env: &[serde_yaml_ng::Value], name: &str| -> Option<serde_yaml_ng::Value> {
        env.iter().find(|v| v["name"] == name).cloned()
    };
    let annotation = |service: &serde_yaml_ng::Value, key: &str| -> Option<String> {
        service["spec"]["template"]["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_owned)
    };
    let mut shards = Vec::new();
    for file in [
        "deploy/ingest-0.yaml",
        "deploy/ingest-1.yaml",
        "deploy/web.yaml",
    ] {
        let service = yaml(file);
        assert_eq!(service["kind"], "Service", "{file}");
        let spec = &service["spec"]["template"]["spec"];
        assert_eq!(spec["timeoutSeconds"].as_u64(), Some(3600), "{file}");
        let env = env_of(&service);
        let database = var(&env, "DATABASE_URL").expect("DATABASE_URL");
        assert!(
            database["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{file}: DATABASE_URL from Secret Manager"
        );
        assert!(var(&env, "NATS_URL").is_some(), "{file}: NATS_URL");
        assert!(var(&env, "PORT").is_none(), "{file}: Cloud Run sets PORT");
        let role = var(&env, "ROLE").expect("ROLE")["value"].clone();
        if file.contains("ingest") {
            assert_eq!(role, "ingest", "{file}");
            assert_eq!(
                annotation(&service, "autoscaling.knative.dev/minScale").as_deref(),
                Some("1")
            );
            assert_eq!(
                annotation(&service, "autoscaling.knative.dev/maxScale").as_deref(),
                Some("1")
            );
            assert_eq!(
                annotation(&service, "run.googleapis.com/cpu-throttling").as_deref(),
                Some("false")
            );
            let key = var(&env, "COINBASE_PRIVATE_KEY").expect("the Coinbase key");
            assert!(
                key["valueFrom"]["secretKeyRef"]["name"].is_string(),
                "{file}"
            );
            let shard = var(&env, "SHARD_INDEX").expect("SHARD_INDEX")["value"].clone();
            let count = var(&env, "SHARD_COUNT").expect("SHARD_COUNT")["value"].clone();
            assert_eq!(count, "2", "{file}");
            shards.push(shard.as_str().expect("a string").to_owned());
        } else {
            assert_eq!(role, "web", "{file}");
            assert_eq!(spec["containerConcurrency"].as_u64(), Some(1000), "{file}");
            assert!(
                var(&env, "COINBASE_PRIVATE_KEY").is_none(),
                "the web role needs no key"
            );
        }
    }
    shards.sort();
    assert_eq!(shards, vec!["0", "1"], "one service per shard");
}

/// The container: built with the same commands as `task build`, run as a non-root user,
/// checked on `/health/live`.
#[test]
fn the_dockerfile_builds_like_task_build_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    for command in [
        "npm ci",
        "scripts/fetch-datastar.sh",
        "npm run build",
        "cargo build --release --locked",
    ] {
        assert!(
            dockerfile.contains(command),
            "the Dockerfile does not run {command}"
        );
    }
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(
        dockerfile.contains("/health/live"),
        "HEALTHCHECK on /health/live"
    );
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("nats-server"));
}

/// Every metric the alerting rules use is one the service exports (in the telemetry catalog).
#[test]
fn alerting_rules_use_exported_metrics() {
    let rules = read("deploy/prometheus/alerts.yml");
    let sources = read("src/telemetry/catalog.rs");
    let mut names: Vec<String> = Vec::new();
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("spot_canvas_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if name == "spot_canvas_" {
            continue; // the prefix, in a comment
        }
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        names.push(base);
    }
    assert!(names.len() > 10, "{names:?}");
    names.sort();
    names.dedup();
    for name in names {
        let described = sources.contains(&format!("\"{name}\""));
        assert!(
            described,
            "{name} is not exported (or not described) by src/ops"
        );
    }
}
