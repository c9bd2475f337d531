//! `postsift import-amavis`: an amavisd-new configuration translated to postsift.toml on
//! stdout, what could not be carried over on stderr.

use std::path::Path;
use std::process::ExitCode;

use crate::EX_UNAVAILABLE;

pub fn import_amavis(path: &Path) -> ExitCode {
    match postsift::import_amavis::import(path) {
        Ok(import) => {
            for s in &import.skipped {
                eprintln!(
                    "not carried over: {}",
                    postsift::import_amavis::printable(s)
                );
            }
            print!("{}", import.toml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postsift: {}: {e}", path.display());
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}
