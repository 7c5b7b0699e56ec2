//! `meter ca init | path`: creates meter's local CA for forward-proxy mode, and prints where
//! its certificate is (what clients must trust). The key is never printed.

use super::{Cli, Failure};
use crate::ca::{self, CaError};

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create the local CA in `proxy.forward.ca_dir` (default: meter-ca/ beside the ledger):
    /// its key (mode 0600) and its certificate (PEM), which clients must trust
    Init {
        /// Replace an existing CA (clients that trust the old one must then trust the new one)
        #[arg(long)]
        force: bool,
    },
    /// Print the path of the CA certificate (for SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, curl --cacert)
    Path,
}

pub fn run(cli: &Cli, command: &CaCommand) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let dir = config.ca_dir();
    match command {
        CaCommand::Init { force } => {
            let paths = ca::init(&dir, *force).map_err(|err| match err {
                CaError::Exists { .. } => Failure::Usage(err.into()),
                other => Failure::Runtime(other.into()),
            })?;
            let cert = absolute(&paths.cert);
            super::print(&format!(
                "wrote the CA certificate {cert} and its key {} (mode 0600; it never leaves this machine)\n\
                 trust it in the agents that use meter as their HTTPS proxy, e.g.\n  \
                 export HTTPS_PROXY=http://{listen}\n  \
                 export NODE_EXTRA_CA_CERTS={cert}\n  \
                 curl --proxy http://{listen} --cacert {cert} https://api.openai.com/v1/models\n\
                 and set [proxy.forward] enabled = true in meter.toml (README.md, \"Forward-proxy mode\")\n",
                absolute(&paths.key),
                listen = config.server.listen,
            ))
        }
        CaCommand::Path => {
            let paths = ca::CaPaths::in_dir(&dir);
            if !paths.cert.is_file() {
                return Err(Failure::Runtime(
                    CaError::Missing {
                        dir: dir.display().to_string(),
                        file: ca::CERT_FILE,
                    }
                    .into(),
                ));
            }
            super::print(&format!("{}\n", absolute(&paths.cert)))
        }
    }
}

/// `path` made absolute against the working directory, for pasting into another shell.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
