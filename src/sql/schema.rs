//! `postsift sql init`: amavis 2.13's schema, from its own README.sql-pg and README.sql-mysql
//! (kept verbatim in `amavis-pg.sql` and `amavis-mysql.sql` beside this file), created if
//! missing. Tables that exist are left as they are: an amavis database is used unchanged.

use std::time::Instant;

use super::metrics::{SqlMetrics, StmtKind};
use super::{on_pool, Backend, Error, Pool};

/// amavis's PostgreSQL DDL, verbatim (without its GRANTs).
pub const AMAVIS_PG: &str = include_str!("amavis-pg.sql");
/// amavis's MySQL/MariaDB DDL, verbatim.
pub const AMAVIS_MYSQL: &str = include_str!("amavis-mysql.sql");

/// The tables of the schema, lookups first.
pub const TABLES: [&str; 8] = [
    "policy",
    "users",
    "mailaddr",
    "wblist",
    "maddr",
    "msgs",
    "msgrcpt",
    "quarantine",
];

/// amavis's DDL text for `backend`.
pub fn amavis_ddl(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => AMAVIS_PG,
        Backend::MySql => AMAVIS_MYSQL,
    }
}

/// The statements of amavis's DDL with comments removed, each `CREATE TABLE` made
/// `CREATE TABLE IF NOT EXISTS` (and on PostgreSQL each `CREATE INDEX` too; MySQL has no
/// `CREATE INDEX IF NOT EXISTS`, so [`init`] passes over "duplicate key name" there).
pub fn statements(backend: Backend) -> Vec<String> {
    let text: String = amavis_ddl(backend)
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.replacen("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1);
            match backend {
                Backend::Postgres => s.replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1),
                Backend::MySql => s,
            }
        })
        .collect()
}

/// Creates what is missing of the schema. Returns the statements run.
pub async fn init(pool: &Pool, metrics: Option<&SqlMetrics>) -> Result<usize, Error> {
    let start = Instant::now();
    let r = run(pool).await;
    if let Some(m) = metrics {
        m.observe(StmtKind::Schema, start, pool, &r);
    }
    r
}

async fn run(pool: &Pool) -> Result<usize, Error> {
    let stmts = statements(pool.backend());
    let n = stmts.len();
    on_pool!(pool, p => {
        let mut conn = p.acquire().await?;
        for s in stmts {
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut *conn).await {
                let dup_index = s.starts_with("CREATE INDEX")
                    && e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42000")
                    && e.to_string().contains("Duplicate key name");
                if !dup_index {
                    return Err(Error::Db(e));
                }
            }
        }
    });
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_amavis_tables_and_indexes() {
        for b in [Backend::Postgres, Backend::MySql] {
            let s = statements(b);
            let tables: Vec<&str> = s
                .iter()
                .filter_map(|s| s.strip_prefix("CREATE TABLE IF NOT EXISTS "))
                .map(|s| s.split_whitespace().next().unwrap())
                .collect();
            let mut sorted = tables.clone();
            sorted.sort();
            let mut want = TABLES.to_vec();
            want.sort();
            assert_eq!(sorted, want, "{b:?}");
            assert!(s.iter().all(|s| !s.contains("--")));
            assert!(s.iter().any(|s| s.contains("msgrcpt_idx_rid")));
        }
    }
}
