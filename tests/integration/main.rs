//! postsift's integration tests: one binary, every peer real (clamd, spamd, Postfix) except the
//! faults a real peer cannot produce on demand. Run inside a loopback-only network namespace by
//! `scripts/test.sh`.

mod capture; // a capturing / misbehaving reinjection server
mod client; // a small async SMTP/LMTP client
mod hostile; // hostile message shapes of issue 16 (nesting, archive bombs, big dictionaries), shared with examples/hostile.rs
mod peers; // the real peers, a file each: clamd, spamd, rspamd, Postfix, unbound, postgrey, redis
mod silent; // a fake peer that accepts and never answers
mod test_config; // TestConfig: a config changed key by key
mod util; // postsift in-process on port 0, shared peers, the CLI runner

mod auth; // SPF, DKIM, DMARC, ARC against a real DNS server; Authentication-Results; enforcement
mod banks; // policy banks: originating listener, client network, recipient domain, mixed groups over LMTP and SMTP
mod cache; // issue 22: the verdict cache (retry, new signatures, failures never kept, parts) and the spam check skipped for a discarded virus
mod clamd_cost; // clamd per-part scanning: one IDSESSION against a connection per part (--ignored)
mod clamd_once; // issue 22: clamd sent the message without the bodies it is sent decoded; detection per content kind
mod cli; // check-config and scan, with their exit codes
mod corpus; // the real-world corpus passes unharmed
mod dkim_sign; // DKIM signing of outgoing mail, verified by mail-auth and by dkimpy against a real DNS server
mod faults; // scanners down or hanging, 10025 refusing / 421 / hanging, client gone, SIGTERM
mod flow; // clean, EICAR, GTUBE, 8-bit, SMTPUTF8, DSN, LMTP, pipelining, 50 MB
mod greylist; // the policy service: against postgrey, behind Postfix, two nodes on Redis, kill -9, bad input
mod hop; // issue 22's hop: pipelined reinjection through smtp-sink, one refused recipient, a next hop closing mid-group
mod input; // bad input: long lines, NUL, order, smuggling, errors, size, ACL
mod inspection; // EICAR hidden every way (base64, QP, uuencode, zip, nesting); the walk's limits
mod local_surfaces; // issue 17: store modes, listener limits, config traps, bounded caches and headers
mod metrics; // /metrics after real traffic, /healthz, /readyz
mod milter; // before-queue mode: Postfix's smtpd_milters calling postsift (EICAR refused at SMTP time, tags, forged headers, faults)
mod names; // hostile names: banned-rule bypasses (trailing dots, second names), escaping in logs, CLI, replies
mod outage; // peers down or hung: marked down after a few failures, skipped at once, back after a restart
mod postfix; // end to end through a real Postfix; mail queued while postsift is down; quarantine and release
mod prometheus; // every dashboard and alert expression against a real Prometheus
mod quarantine; // quarantine of each category, release (CLI, amavisd-release), store failures, kill -9, purge
mod regression; // one test per defect found by probing (issue 12), named after what broke
mod reload; // SIGHUP reload: new config for new sessions, sessions in flight finish, postsift reload
mod rspamd; // rspamd as the spam engine
mod sql; // amavis's SQL schema: log, quarantine across two nodes, lookups, database down (PostgreSQL, MariaDB)
mod sql_daemon; // [sql] through the daemon and the CLI: sql init, the message log, per-user lookups
mod sql_quarantine; // [quarantine] store = "sql" through two real daemons: release once across nodes (Modoboa, amavisd-release, CLI), purge, database down → 451
mod unprivileged; // postsift run as nobody: creates its stores, quarantine and sockets, takes mail, each file its own 0600/0700
