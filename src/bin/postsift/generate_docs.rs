//! `postsift generate-docs OUT` (hidden, for packaging): the manual pages and shell
//! completions, from the command line's own definition.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::{Cli, EX_CANTCREAT};

pub fn generate_docs(out: &Path) -> ExitCode {
    match postsift::docs::generate(Cli::command(), out) {
        Ok(files) => {
            files.iter().for_each(|f| println!("{}", f.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postsift: {}: {e}", out.display());
            ExitCode::from(EX_CANTCREAT)
        }
    }
}
