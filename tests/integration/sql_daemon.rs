//! `[sql]` through the command and the daemon, against real PostgreSQL and MariaDB
//! (tests/integration/peers/sql.rs): `check-config` names the `[sql]` keys, `postsift sql init`
//! creates amavis's schema.

use crate::peers::sql::{shared, Kind};
use crate::util::postsift_out;

const KINDS: [Kind; 2] = [Kind::Postgres, Kind::MariaDb];

/// `cmd --config FILE` with `toml` written to FILE: (exit code, stdout, stderr).
fn with_config(cmd: &[&str], toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postsift.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args: Vec<&str> = cmd.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    postsift_out(&args)
}

#[test]
fn check_config_names_sql_keys_and_never_prints_the_password() {
    for (toml, key) in [
        ("[sql]\nurl = \"sqlite:///secretpw\"\n", "sql.url"),
        ("[sql]\nlog = true\n", "sql.url"),
        (
            "[sql]\nurl = \"postgresql://u:secretpw@h/db\"\ntimeout = 0\n",
            "sql.timeout",
        ),
        (
            "[sql]\nurl = \"postgresql://u:secretpw@h:99999/db\"\n",
            "sql.url",
        ),
    ] {
        let (code, out, err) = with_config(&["check-config"], toml);
        assert_eq!(code, 64, "{toml}: {out}{err}");
        assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        assert!(!err.contains("secretpw"), "{toml}: {err}");
    }
    let (code, out, err) = with_config(
        &["check-config"],
        "[sql]\nurl = \"mysql://u:pw@127.0.0.1:3306/amavis\"\nlog = true\n",
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Every table of amavis's schema in `db`, as the database's own client lists them.
fn tables(kind: Kind, db: &str) -> String {
    let s = shared(kind);
    let sql = match kind {
        Kind::Postgres => {
            "SELECT table_name FROM information_schema.tables WHERE table_schema='public' \
             ORDER BY table_name"
                .to_string()
        }
        Kind::MariaDb => format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='{db}' \
             ORDER BY table_name"
        ),
    };
    s.client(db, &sql)
}

#[test]
fn sql_init_command_creates_amavis_schema_and_keeps_it() {
    for kind in KINDS {
        let s = shared(kind);
        let db = s.create_db("cliinit");
        let toml = format!("[sql]\nurl = \"{}\"\n", s.url(&db));
        let (code, out, err) = with_config(&["sql", "init"], &toml);
        assert_eq!(code, 0, "{kind:?}: {out}{err}");
        assert!(out.contains("amavis schema ready"), "{out}");
        let listed = tables(kind, &db);
        for t in postsift::sql::schema::TABLES {
            assert!(
                listed.lines().any(|l| l.trim() == t),
                "{kind:?}: no {t} in {listed}"
            );
        }
        // A second run over the tables it made: nothing fails.
        let (code, out, err) = with_config(&["sql", "init"], &toml);
        assert_eq!(code, 0, "{kind:?}: {out}{err}");
        assert_eq!(tables(kind, &db), listed);
    }
    // No url: nothing to do, 64. A database that is not there: 69, without the password.
    let (code, _, err) = with_config(&["sql", "init"], "");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("sql.url"), "{err}");
    let toml = format!(
        "[sql]\nurl = \"postgresql://u:secretpw@127.0.0.1:{}/none\"\nconnect_timeout = 1\n\
         timeout = 1\n",
        crate::peers::free_port()
    );
    let (code, out, err) = with_config(&["sql", "init"], &toml);
    assert_eq!(code, 69, "{out}{err}");
    assert!(!err.contains("secretpw"), "{err}");
}
