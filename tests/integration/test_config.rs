//! [`TestConfig`]: a test's postsift configuration changed key by key (`set("clamd.timeout", 2)`)
//! rather than by editing TOML text, so that a change reaches the key it names and no other.

use std::fmt;

use postsift::config::Config;

/// A postsift configuration as a TOML table, built and changed by dotted key names.
#[derive(Clone, Debug, Default)]
pub struct TestConfig(toml::Table);

impl TestConfig {
    /// An empty configuration: every key at its default.
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    /// `toml` as a starting point (panics, showing it, if it is not TOML).
    pub fn parse(toml: &str) -> TestConfig {
        TestConfig(toml.parse().unwrap_or_else(|e| panic!("{e}\n{toml}")))
    }

    /// Sets `key` (`section.key`, `section.sub.key`) to `value`, making the tables on the way.
    /// Panics if a part of the way is a value other than a table.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> TestConfig {
        let (table, last) = self.table_of(key);
        table.insert(last.to_string(), value.into());
        self
    }

    /// Removes `key` (nothing if it is not there): the key takes its default.
    pub fn remove(mut self, key: &str) -> TestConfig {
        let (table, last) = self.table_of(key);
        table.remove(last);
        self
    }

    /// Sets every `key = value` of the TOML `lines` in `section` (e.g. a caller's extra
    /// `[server]` settings).
    pub fn set_toml(mut self, section: &str, lines: &str) -> TestConfig {
        let entries: toml::Table = lines
            .parse()
            .unwrap_or_else(|e| panic!("[{section}]: {e}\n{lines}"));
        for (k, v) in entries {
            self = self.set(&format!("{section}.{k}"), v);
        }
        self
    }

    /// Appends a `[[name]]` table (a policy bank, a DKIM key …) given as TOML `key = value` lines.
    pub fn push(mut self, name: &str, entries: &str) -> TestConfig {
        let entry: toml::Table = entries
            .parse()
            .unwrap_or_else(|e| panic!("[[{name}]]: {e}\n{entries}"));
        let (table, last) = self.table_of(name);
        let list = table
            .entry(last)
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        match list {
            toml::Value::Array(a) => a.push(toml::Value::Table(entry)),
            other => panic!("{name} is not an array of tables: {other}"),
        }
        self
    }

    /// The table that holds `key`'s last part, and that part.
    fn table_of<'k>(&mut self, key: &'k str) -> (&mut toml::Table, &'k str) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut table = &mut self.0;
        for p in parts {
            let next = table
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match next {
                toml::Value::Table(t) => t,
                other => panic!("{key}: {p} is {other}, not a table"),
            };
        }
        (table, last)
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        toml::to_string(&self.0).expect("a TOML table serializes")
    }

    /// The configuration as postsift reads it from a file (panics with the error).
    pub fn config(&self) -> Config {
        let text = self.toml();
        Config::parse(&text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

impl fmt::Display for TestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.toml())
    }
}

impl From<TestConfig> for String {
    fn from(c: TestConfig) -> String {
        c.toml()
    }
}

#[cfg(test)]
mod tests {
    use super::TestConfig;

    #[test]
    fn set_reaches_the_named_key_and_no_other() {
        let c =
            TestConfig::parse("[clamd]\ntimeout = 20\n[spamd]\ntimeout = 20\nio_timeout = 20\n")
                .set("clamd.timeout", 2)
                .set("server.max_memory", "1M")
                .set("health.down_after", 2)
                .remove("spamd.io_timeout");
        let t: toml::Table = c.toml().parse().unwrap();
        assert_eq!(t["clamd"]["timeout"].as_integer(), Some(2));
        assert_eq!(t["spamd"]["timeout"].as_integer(), Some(20));
        assert!(t["spamd"].get("io_timeout").is_none());
        assert_eq!(t["server"]["max_memory"].as_str(), Some("1M"));
        assert_eq!(t["health"]["down_after"].as_integer(), Some(2));
    }

    #[test]
    fn push_appends_array_tables_that_postsift_reads() {
        let c = TestConfig::new()
            .set("metrics.listen", "")
            .push(
                "policy",
                "name = \"a\"\nmatch.recipient_domain = [\"a.test\"]",
            )
            .push(
                "policy",
                "name = \"b\"\nmatch.recipient_domain = [\"b.test\"]",
            );
        let t: toml::Table = c.toml().parse().unwrap();
        assert_eq!(t["policy"].as_array().unwrap().len(), 2);
        assert_eq!(t["policy"][1]["name"].as_str(), Some("b"));
        c.config();
    }
}
