//! How client commands reach the broker: its address, TLS (the CA to trust
//! it by, a client certificate for mTLS) and the bearer token sent with
//! every call, as the flags of every client command. The connection itself
//! is [`fairway::client`].
//!
//! The flags are global, so they go before or after the command. They are
//! named apart from `serve`'s own `--tls-cert`/`--tls-key` (the broker's
//! identity) because clap shares a global flag's value with every
//! subcommand: one name for two meanings would hand the client's
//! certificate to the server or the other way round.

use fairway::client::{Client, ClientConfig, ClientError, DEFAULT_ADDR};
use std::path::PathBuf;

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

impl Remote {
    /// A plain local broker with no token.
    #[cfg(test)]
    pub fn plain(addr: impl Into<String>) -> Remote {
        Remote { addr: addr.into(), tls_ca: None, client_cert: None, client_key: None, tls_domain: None, token: None }
    }

    /// The client settings these flags say.
    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            addr: self.addr.clone(),
            tls_ca: self.tls_ca.clone(),
            client_identity: self.client_cert.clone().zip(self.client_key.clone()),
            tls_domain: self.tls_domain.clone(),
            token: self.token.clone(),
            // One attempt: a command fails fast when no broker is there.
            retry_connect_for: None,
        }
    }

    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.config()).await
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
    fn the_flags_become_client_settings() {
        let r = Remote {
            client_cert: Some("c.pem".into()),
            client_key: Some("c.key".into()),
            token: Some("t".into()),
            ..Remote::plain("https://h:1")
        };
        let c = r.config();
        assert_eq!(c.client_identity, Some(("c.pem".into(), "c.key".into())));
        assert_eq!((c.addr.as_str(), c.token.as_deref(), c.retry_connect_for), ("https://h:1", Some("t"), None));
    }

    #[tokio::test]
    async fn tls_flags_need_an_https_address() {
        let r = Remote { tls_ca: Some("ca.pem".into()), ..Remote::plain("http://127.0.0.1:1") };
        let e = r.connect().await.err().unwrap().to_string();
        assert!(e.contains("use https://"), "{e}");
    }
}
