//! TLS set-up for outbound connections (broker REST over `https://`, WS over `wss://`).
//!
//! reqwest brings rustls with the aws-lc-rs provider; tokio-tungstenite builds its client config
//! from the process default provider. Installing aws-lc-rs explicitly at start makes that choice
//! independent of which crate features happen to be unified into the build.

/// Installs rustls' aws-lc-rs provider for the process. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_installs_and_client_config_builds() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        let roots = rustls::RootCertStore::empty();
        let _cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
    }
}
