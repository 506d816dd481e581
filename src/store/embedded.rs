//! The embedded default database: a local PostgreSQL cluster under `DATA_DIR`.
//!
//! In: the data directory. Out: a running server on a free loopback port and the URL to reach
//! it (with a generated password, kept in `DATA_DIR/postgres.password`, mode 0600). The first
//! run creates the cluster with `initdb`; later runs reuse it, so data persists. The server
//! binaries come from PATH or `/usr/lib/postgresql/*/bin`. As root (which `initdb` refuses) the
//! server runs as the `postgres` user through `runuser`; its directory must then be reachable
//! by that user through every parent. The unix socket lives inside the cluster directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;

/// The database the service uses inside the embedded cluster.
pub const DATABASE: &str = "spot_canvas";
const CREATE_DATABASE: &str = "CREATE DATABASE spot_canvas";
/// The role the service connects as.
pub const USER: &str = "spot";

/// Why the embedded database could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql) or set DATABASE_URL"
    )]
    BinariesNotFound,
    #[error(
        "running as root, the server must run as the `postgres` user, which does not exist; create it or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "the postgres user cannot reach {0} (a parent directory lacks execute permission for it); choose a DATA_DIR it can reach, such as /var/lib/spot-canvas, or set DATABASE_URL"
    )]
    Unreachable(PathBuf),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running embedded cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    cluster: PathBuf,
    port: u16,
    password: SecretString,
    as_postgres: Option<(u32, u32)>,
}

impl EmbeddedPostgres {
    /// Creates the cluster if needed and starts it.
    pub async fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::BinariesNotFound)?;
        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let cluster = data_dir.join("postgres");
        let as_postgres = if is_root() {
            let ids = postgres_user_ids().ok_or(EmbeddedError::NoPostgresUser)?;
            check_reachable(&data_dir)?;
            Some(ids)
        } else {
            None
        };
        let password_file = data_dir.join("postgres.password");
        let initialized = cluster.join("PG_VERSION").exists();
        let password = if initialized {
            let text =
                std::fs::read_to_string(&password_file).map_err(|e| EmbeddedError::Command {
                    what: format!("reading {}", password_file.display()),
                    detail: e.to_string(),
                })?;
            SecretString::from(text.trim().to_owned())
        } else {
            let password: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(32)
                .map(char::from)
                .collect();
            write_private(&password_file, &password)?;
            SecretString::from(password)
        };
        let mut pg = EmbeddedPostgres {
            bin_dir,
            cluster,
            port: 0,
            password,
            as_postgres,
        };
        if !initialized {
            pg.init().await?;
        }
        pg.port = free_port()?;
        pg.start_server().await?;
        pg.ensure_database().await?;
        tracing::info!(
            cluster = %pg.cluster.display(),
            port = pg.port,
            "embedded PostgreSQL running"
        );
        Ok(pg)
    }

    /// The connection URL (holds the password: keep it secret).
    pub fn url(&self) -> SecretString {
        SecretString::from(self.url_for(DATABASE))
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{database}",
            self.password.expose_secret(),
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (for `pg_ctl -D`).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster
    }

    /// A `Command` for a server binary, run as the `postgres` user when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        let mut command = if self.as_postgres.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        command.stdin(Stdio::null()).kill_on_drop(false);
        // The server needs none of the service's variables, secrets among them.
        for var in crate::config::VARIABLES {
            command.env_remove(var.name);
        }
        command
    }

    async fn run(&self, what: &str, mut command: Command) -> Result<(), EmbeddedError> {
        let output = command.output().await?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        Err(EmbeddedError::Command {
            what: what.to_owned(),
            detail: format!("{} {}", stderr.trim(), stdout.trim())
                .trim()
                .to_owned(),
        })
    }

    async fn init(&self) -> Result<(), EmbeddedError> {
        std::fs::create_dir_all(&self.cluster)?;
        self.give_to_postgres(&self.cluster)?;
        set_mode(&self.cluster, 0o700)?;
        // initdb reads the password from a file the server user can read; removed afterwards.
        let pwfile = self.cluster.with_extension("pwfile");
        write_private(&pwfile, self.password.expose_secret())?;
        self.give_to_postgres(&pwfile)?;
        let mut command = self.pg_command("initdb");
        command
            .arg("-D")
            .arg(&self.cluster)
            .args(["-U", USER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = self.run("initdb", command).await;
        let _removed = std::fs::remove_file(&pwfile);
        result
    }

    fn socket_dir(&self) -> String {
        // Unix socket paths are limited to 107 bytes; without room, TCP only.
        let path = self.cluster.display().to_string();
        if path.len() + 20 < 100 {
            path
        } else {
            String::new()
        }
    }

    async fn start_server(&self) -> Result<(), EmbeddedError> {
        let mut command = self.pg_command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.cluster)
            .arg("-l")
            .arg(self.cluster.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}'",
                self.port,
                self.socket_dir()
            ))
            .arg("start");
        self.run("pg_ctl start", command).await
    }

    async fn ensure_database(&self) -> Result<(), EmbeddedError> {
        use sqlx::Connection;
        let url = self.url_for("postgres");
        let mut conn =
            sqlx::PgConnection::connect(&url)
                .await
                .map_err(|e| EmbeddedError::Command {
                    what: "connecting to the embedded server".into(),
                    detail: e.to_string(),
                })?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| EmbeddedError::Command {
                    what: "checking the database".into(),
                    detail: e.to_string(),
                })?;
        if !exists {
            sqlx::query(CREATE_DATABASE)
                .execute(&mut conn)
                .await
                .map_err(|e| EmbeddedError::Command {
                    what: "creating the database".into(),
                    detail: e.to_string(),
                })?;
        }
        let _closed = conn.close().await;
        Ok(())
    }

    /// Whether the server is running (`pg_ctl status`).
    pub async fn is_running(&self) -> bool {
        let mut command = self.pg_command("pg_ctl");
        command.arg("-D").arg(&self.cluster).arg("status");
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command.status().await.is_ok_and(|s| s.success())
    }

    /// Starts the server again on the same port (after it died or was stopped).
    pub async fn restart(&self) -> Result<(), EmbeddedError> {
        self.start_server().await
    }

    /// Stops the server: `fast` lets sessions end and checkpoints; `immediate` does not.
    pub async fn stop_with(&self, mode: &str) -> Result<(), EmbeddedError> {
        let mut command = self.pg_command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.cluster)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        self.run("pg_ctl stop", command).await
    }

    /// Stops the server cleanly.
    pub async fn stop(&self) -> Result<(), EmbeddedError> {
        self.stop_with("fast").await
    }

    /// Stops the server from synchronous code (a `Drop`), ignoring failures.
    pub fn stop_blocking(&self, mode: &str) {
        let binary = self.bin_dir.join("pg_ctl");
        let mut command = if self.as_postgres.is_some() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            std::process::Command::new(binary)
        };
        let _ignored = command
            .arg("-D")
            .arg(&self.cluster)
            .args(["-w", "-t", "30", "-m", mode, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A URL for another database of the same cluster (tests create one per test).
    pub fn url_of(&self, database: &str) -> SecretString {
        SecretString::from(self.url_for(database))
    }

    /// Restarts the server whenever it is found dead, until `cancel`.
    pub async fn supervise(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if self.is_running().await {
                continue;
            }
            tracing::warn!("embedded PostgreSQL is not running, restarting it");
            if let Err(e) = self.restart().await {
                tracing::error!(error = %e, "cannot restart embedded PostgreSQL");
            }
        }
    }

    fn give_to_postgres(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.as_postgres {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    // Debian keeps the server binaries off PATH, one directory per major version: newest wins.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // The owner of a fresh file is the effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn postgres_user_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Every parent of `dir` must let others search it (the `postgres` user is not their owner).
fn check_reachable(dir: &Path) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors() {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(EmbeddedError::Unreachable(dir.to_path_buf()));
        }
    }
    Ok(())
}

fn write_private(path: &Path, content: &str) -> Result<(), EmbeddedError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
