//! Who may talk to a coordinator, and how a worker (or `status`) proves itself to it: TLS,
//! mutual TLS and the worker token.

use apscore_proto::security::{ClientSecurity, ServerSecurity, Token};
use clap::Args;

/// Who may talk to this coordinator.
#[derive(Debug, Args)]
#[command(next_help_heading = "Security")]
pub struct ServerSecurityArgs {
    /// Serve gRPC over TLS with this certificate (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS: workers must present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Workers must present the token in this file (or in APSCORE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Allow plaintext gRPC on an address other hosts can reach (a trusted network only).
    #[arg(long)]
    pub insecure: bool,
}

/// How a worker (or `status`) proves itself to the coordinator and checks it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Security")]
pub struct ClientSecurityArgs {
    /// The CA that signed the coordinator's certificate (PEM), for https:// URLs. Default: the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Mutual TLS: this worker's certificate (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// This worker's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The token to present, from this file (or from APSCORE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// The token from `file`, else from APSCORE_TOKEN (read here, not by clap: its value must not
/// show in `--help`).
fn token(file: Option<&std::path::Path>) -> anyhow::Result<Option<Token>> {
    match file {
        Some(file) => Ok(Some(Token::from_file(file)?)),
        None => match std::env::var("APSCORE_TOKEN") {
            Ok(value) => Ok(Token::from_value(&value)?),
            Err(_) => Ok(None),
        },
    }
}

impl ServerSecurityArgs {
    pub fn security(&self) -> anyhow::Result<ServerSecurity> {
        Ok(ServerSecurity {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
            token: token(self.token_file.as_deref())?,
        })
    }
}

impl ClientSecurityArgs {
    pub fn security(&self) -> anyhow::Result<ClientSecurity> {
        Ok(ClientSecurity {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            token: token(self.token_file.as_deref())?,
        })
    }
}
