//! `postsift dkim genkey`: a new DKIM key and the DNS record to publish for it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::{EX_CANTCREAT, EX_USAGE};

#[derive(Subcommand)]
pub enum Action {
    /// Writes a new private key (PEM, mode 0600) and prints the DNS TXT record to publish at
    /// `<selector>._domainkey.<domain>`; then add a `[[dkim_sign.keys]]` entry for it.
    Genkey {
        /// The domain it signs for (the From domain, the signature's d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=), e.g. the year and month: "202612".
        #[arg(long)]
        selector: String,
        /// "rsa-sha256" or "ed25519-sha256" (not every verifier knows Ed25519 yet: publish an
        /// RSA key beside it).
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// The private key file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `postsift dkim genkey`: no configuration needed. Exit 64 for a bad argument or an existing
/// file, 73 (EX_CANTCREAT) when the file cannot be written.
pub fn dkim(action: Action) -> ExitCode {
    use postsift::config::SignAlgorithm;
    use postsift::sign;
    let Action::Genkey {
        domain,
        selector,
        algorithm,
        bits,
        out,
        force,
    } = action;
    let algorithm = match algorithm.as_str() {
        "rsa-sha256" => SignAlgorithm::RsaSha256,
        "ed25519-sha256" => SignAlgorithm::Ed25519Sha256,
        other => {
            eprintln!("postsift: --algorithm {other:?}: expected rsa-sha256 or ed25519-sha256");
            return ExitCode::from(EX_USAGE);
        }
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !name_ok(&domain) || !name_ok(&selector) {
        eprintln!("postsift: --domain and --selector take letters, digits, '-', '.' and '_'");
        return ExitCode::from(EX_USAGE);
    }
    let generated = match sign::generate(algorithm, bits) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("postsift: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = sign::write_key(&out, &generated.pem, force) {
        eprintln!("postsift: {e}");
        return ExitCode::from(match e {
            sign::Error::Exists(_) => EX_USAGE,
            _ => EX_CANTCREAT,
        });
    }
    eprintln!(
        "postsift: private key written to {} (mode 0600); publish this record, then add to \
         postsift.toml:\n\n[[dkim_sign.keys]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\n\
         key = \"{}\"\nalgorithm = \"{}\"\n",
        out.display(),
        out.display(),
        algorithm.name()
    );
    println!(
        "{}",
        sign::txt_record(&domain, &selector, &generated.record)
    );
    ExitCode::SUCCESS
}
