//! `postsift check-config`: the configuration loaded and validated (64 naming the bad key
//! happens before this), its warnings, and each policy bank with the settings in effect.

use std::process::ExitCode;

use postsift::config::Config;

pub fn check_config(config: &Config) -> ExitCode {
    // Warnings name what the file configures but postsift will not use; the configuration
    // still works, so the exit code stays 0.
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    for w in postsift::fsmode::warnings(config) {
        eprintln!("warning: {w}");
    }
    // Each bank with the settings in effect where it applies, so a typo in a level or an
    // action shows before mail does.
    for i in 0..config.policy.len() {
        println!("{}", postsift::banks::describe(config, i));
    }
    println!("configuration ok");
    ExitCode::SUCCESS
}
