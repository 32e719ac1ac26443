//! With a certificate configured, signaling is wss:// and HTTP is https://.

mod common;

use std::sync::Arc;

use futures::StreamExt;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_signaling_with_a_dev_certificate() {
    let dir = std::env::temp_dir().join(format!("commhub-tls-{}", rand::random::<u32>()));
    let (cert, key) = commhub::cli::write_dev_cert(&dir, &[]).expect("dev cert");
    let srv = common::server(|c| {
        c.server.tls_cert = Some(cert.clone());
        c.server.tls_key = Some(key.clone());
    })
    .await;
    assert!(srv.ws_url().starts_with("wss://"));

    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(&cert).expect("read cert");
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.expect("tcp");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the dev certificate");
    let url = format!("wss://localhost:{}/ws", srv.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket over TLS");
    let first = ws.next().await.expect("a message").expect("ok");
    let v: serde_json::Value = serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["protocol"], 1);
    srv.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(dir);
}
