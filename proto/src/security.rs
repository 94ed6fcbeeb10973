//! Who may talk to a coordinator: TLS (the coordinator's certificate, and optionally client
//! certificates for mutual TLS) and the bearer token workers present with every call.
//!
//! The token is compared in constant time and never printed: [`Token`]'s `Debug` hides it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// A shared secret workers present to their coordinator.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(hidden)")
    }
}

/// A TLS or token setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyToken(String),
    #[error("the token in {0} must be printable ASCII without spaces")]
    BadToken(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Token {
    /// The token in `file` (surrounding whitespace trimmed).
    pub fn from_file(file: &Path) -> Result<Token, SecurityError> {
        let bytes = read("the token file", file)?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if text.is_empty() {
            return Err(SecurityError::EmptyToken(file.display().to_string()));
        }
        Token::checked(&text).ok_or_else(|| SecurityError::BadToken(file.display().to_string()))
    }

    /// A token given as a value (an environment variable); `Ok(None)` when empty.
    pub fn from_value(value: &str) -> Result<Option<Token>, SecurityError> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        Token::checked(value)
            .map(Some)
            .ok_or_else(|| SecurityError::BadToken("APSCORE_TOKEN".into()))
    }

    /// The token, if it can travel in an HTTP header as is.
    fn checked(value: &str) -> Option<Token> {
        value
            .bytes()
            .all(|b| b.is_ascii_graphic())
            .then(|| Token(value.into()))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // Constant time in the presented value's content.
        expected.len() == presented.len()
            && expected
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The coordinator's side: its certificate and key, the CA of client certificates (mutual
/// TLS), the token workers must present.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub token: Option<Token>,
}

impl ServerSecurity {
    pub fn uses_tls(&self) -> bool {
        self.cert.is_some()
    }

    /// The TLS configuration, when the coordinator serves TLS.
    pub fn tls(&self) -> Result<Option<ServerTlsConfig>, SecurityError> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read("the TLS certificate", cert)?,
            read("the TLS key", key)?,
        ));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read("the client CA", ca)?));
        }
        Ok(Some(config))
    }

    /// The check every request passes through.
    pub fn interceptor(&self) -> RequireToken {
        RequireToken(self.token.clone())
    }
}

/// Refuses requests without the coordinator's token (lets all through when it has none).
#[derive(Debug, Clone)]
pub struct RequireToken(Option<Token>);

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(p) if token.matches(p) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "the worker token is not this coordinator's (check --token-file / APSCORE_TOKEN)",
            )),
            None => Err(Status::unauthenticated(
                "this coordinator requires a worker token: give the worker --token-file FILE or \
                 APSCORE_TOKEN",
            )),
        }
    }
}

/// A worker's (or `apscore status`'s) side: the CA that signed the coordinator's certificate,
/// its own certificate and key for mutual TLS, its token.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token: Option<Token>,
}

impl ClientSecurity {
    /// The TLS configuration for an `https://` coordinator URL.
    pub fn tls(&self) -> Result<ClientTlsConfig, SecurityError> {
        let mut config = ClientTlsConfig::new();
        match &self.ca {
            Some(ca) => config = config.ca_certificate(Certificate::from_pem(read("the CA", ca)?)),
            None => config = config.with_enabled_roots(),
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read("the client certificate", cert)?,
                read("the client key", key)?,
            ));
        }
        Ok(config)
    }

    /// Adds the token to every request.
    pub fn interceptor(&self) -> SendToken {
        SendToken(
            self.token
                .as_ref()
                .and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.0)).ok())
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                }),
        )
    }
}

/// Puts the worker's token on each request.
#[derive(Clone)]
pub struct SendToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for SendToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendToken(hidden)")
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What a failed call says about TLS, when the failure was a TLS one (a certificate not
/// trusted, a handshake refused): not worth retrying, unlike a coordinator that is down.
pub fn tls_failure(status: &Status) -> Option<String> {
    // Only errors raised on this side of the connection carry a source; a status the
    // coordinator sent (whatever its message says) is not a TLS failure.
    std::error::Error::source(status)?;
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(status);
    while let Some(e) = cause {
        text.push_str(&e.to_string());
        text.push_str(": ");
        cause = e.source();
    }
    let lower = text.to_lowercase();
    ["certificate", "handshake", "unknownissuer", "tls"]
        .iter()
        .any(|w| lower.contains(w))
        .then(|| text.trim_end_matches(": ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_check_lets_the_right_token_through_only() {
        let token = Token::from_value("s3cret").unwrap().unwrap();
        let mut check = ServerSecurity {
            token: Some(token.clone()),
            ..Default::default()
        }
        .interceptor();
        let mut send = ClientSecurity {
            token: Some(token),
            ..Default::default()
        }
        .interceptor();
        assert!(check.call(send.call(Request::new(())).unwrap()).is_ok());
        let none = check.call(Request::new(())).unwrap_err();
        assert!(none.message().contains("requires a worker token"));
        let mut other = ClientSecurity {
            token: Token::from_value("guess").unwrap(),
            ..Default::default()
        }
        .interceptor();
        let wrong = check
            .call(other.call(Request::new(())).unwrap())
            .unwrap_err();
        assert!(wrong.message().contains("not this coordinator's"));
        assert!(!format!("{:?} {:?}", Token::from_value("s3cret"), send).contains("s3cret"));
        assert!(Token::from_value("two words").is_err());
        assert!(Token::from_value("  ").unwrap().is_none());
    }
}
