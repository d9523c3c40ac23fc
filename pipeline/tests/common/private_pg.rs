//! A PostgreSQL server of one test's own, from the same Debian binaries as the shared one:
//! a test may restart it, or read its raw files, without touching any other test.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PrivatePostgres {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    /// More server settings (`-c name=value ...`), e.g. `wal_level=logical`.
    settings: String,
}

fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("running a PostgreSQL tool as the postgres user");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePostgres {
    /// Creates and starts a throwaway server on a free port of 127.0.0.1.
    pub fn start() -> PrivatePostgres {
        Self::start_with(&[])
    }

    /// [`PrivatePostgres::start`] with more server settings (`name=value`).
    pub fn start_with(settings: &[&str]) -> PrivatePostgres {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's PostgreSQL (ops/postgres/db.sh installs it)")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .expect("a PostgreSQL version");
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        let dir = std::env::temp_dir().join(super::unique("orderflow-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(chown.success());
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                dir.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let port = super::free_port();
        let settings = settings.iter().map(|s| format!(" -c {s}")).collect();
        let pg = PrivatePostgres {
            dir,
            port,
            bin,
            settings,
        };
        pg.up();
        pg
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                self.dir.join("server.log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    pub fn stop(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", self.dir.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    pub fn start_again(&self) {
        self.up();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `psql -c sql` against `database`, returning its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-d", &self.url(database), "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the SQL file `file` with `psql -f` against `database`, with psql variables
    /// `vars` (`-v name=value`), returning its output.
    pub fn psql_file(&self, database: &str, file: &Path, vars: &[(&str, &str)]) -> String {
        let mut command = Command::new(self.bin.join("psql"));
        command.args(["-X", "-A", "-t", "-d", &self.url(database)]);
        for (name, value) in vars {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        let out = command.arg("-f").arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "psql -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of `database`, as text.
    pub fn dump(&self, database: &str) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-d", &self.url(database)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
