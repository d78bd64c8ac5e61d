//! How client commands reach the broker: its address, TLS (the CA to trust
//! it by, a client certificate for mTLS) and the bearer token sent with
//! every call.
//!
//! The flags are global, so they go before or after the command. They are
//! named apart from `serve`'s own `--tls-cert`/`--tls-key` (the broker's
//! identity) because clap shares a global flag's value with every
//! subcommand: one name for two meanings would hand the client's
//! certificate to the server or the other way round.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// The address `--addr` defaults to; a continuation hint names `--addr`
/// only when it differs.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// A connection to the broker that carries the token.
pub type Conn = InterceptedService<Channel, Bearer>;

#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Broker address for client commands; https://… for a broker with TLS.
    #[arg(long, global = true, env = "FAIRWAY_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// PEM CA certificate to verify the broker's TLS certificate with.
    /// Unset with an https:// address: the system's CAs.
    #[arg(long, global = true, env = "FAIRWAY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a broker that requires mTLS
    /// (--tls-client-ca). Needs --client-key.
    #[arg(long, global = true, env = "FAIRWAY_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "FAIRWAY_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Name to check the broker's certificate against, when it is not the
    /// host in --addr (e.g. connecting by IP to a certificate for a name).
    #[arg(long, global = true, env = "FAIRWAY_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Bearer token, for a broker with --auth-file. Prefer the variable:
    /// a flag is visible to other users in the process list.
    #[arg(long, global = true, env = "FAIRWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Error = Box<dyn std::error::Error>;

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()).into())
}

/// An error with its causes: TLS failures say why only in the innermost.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl Remote {
    /// A plain local broker with no token: what tests and defaults use.
    pub fn plain(addr: impl Into<String>) -> Remote {
        Remote { addr: addr.into(), tls_ca: None, client_cert: None, client_key: None, tls_domain: None, token: None }
    }

    fn wants_tls(&self) -> bool {
        self.addr.starts_with("https://") || self.tls_ca.is_some() || self.client_cert.is_some()
    }

    fn tls(&self) -> Result<ClientTlsConfig, Error> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(read("--client-cert", cert)?, read("--client-key", key)?));
        }
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }

    fn bearer(&self) -> Result<Bearer, Error> {
        let Some(token) = &self.token else { return Ok(Bearer(None)) };
        let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| "--token / FAIRWAY_TOKEN holds characters a header cannot carry")?;
        // Keeps it out of Debug output.
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }

    pub async fn connect(&self) -> Result<Conn, Error> {
        let addr = &self.addr;
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(addr.clone())?.connect_timeout(Duration::from_secs(5));
        if self.wants_tls() {
            if !addr.starts_with("https://") {
                return Err(format!("TLS settings were given but --addr is {addr}: use https://").into());
            }
            endpoint = endpoint.tls_config(self.tls()?)?;
        }
        let bearer = self.bearer()?;
        let channel = endpoint.connect().await.map_err(|e| -> Error {
            let why = chain(&e);
            let hint = if why.contains("certificate") {
                "check --tls-ca, --tls-domain and the broker's certificate"
            } else {
                "is `fairway serve` running?"
            };
            format!("cannot reach the broker at {addr}: {why} ({hint})").into()
        })?;
        Ok(InterceptedService::new(channel, bearer))
    }

    /// The flags that reach this broker again, for a command line printed
    /// for the user to run next. Never the token: it stays in the
    /// environment or wherever it came from.
    pub fn flags(&self) -> Vec<String> {
        let mut words = Vec::new();
        if self.addr != DEFAULT_ADDR {
            words.extend(["--addr".into(), self.addr.clone()]);
        }
        let paths =
            [("--tls-ca", &self.tls_ca), ("--client-cert", &self.client_cert), ("--client-key", &self.client_key)];
        for (flag, path) in paths {
            if let Some(p) = path {
                words.extend([flag.to_string(), p.display().to_string()]);
            }
        }
        if let Some(d) = &self.tls_domain {
            words.extend(["--tls-domain".into(), d.clone()]);
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_flags_carry_tls_files_but_never_the_token() {
        assert!(Remote::plain(DEFAULT_ADDR).flags().is_empty());
        let r = Remote {
            tls_ca: Some("ca.pem".into()),
            token: Some("secret-token-0123456789".into()),
            ..Remote::plain("https://h:1")
        };
        assert_eq!(r.flags(), ["--addr", "https://h:1", "--tls-ca", "ca.pem"]);
    }

    #[test]
    fn the_token_goes_out_as_a_bearer_header() {
        let mut b = Remote { token: Some("abc".into()), ..Remote::plain(DEFAULT_ADDR) }.bearer().unwrap();
        let req = b.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer abc");
        let mut none = Remote::plain(DEFAULT_ADDR).bearer().unwrap();
        assert!(none.call(Request::new(())).unwrap().metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn tls_flags_need_an_https_address() {
        let r = Remote { tls_ca: Some("ca.pem".into()), ..Remote::plain("http://127.0.0.1:1") };
        let e = r.connect().await.err().unwrap().to_string();
        assert!(e.contains("use https://"), "{e}");
    }
}
