//! A TLS-terminating TCP proxy in front of the broker, so `amqps://` can be tested end to end
//! through lapin's rustls without a second, TLS-enabled RabbitMQ node. The certificates are
//! made per test with the `openssl` command line tool: a throwaway CA, and a server
//! certificate for `localhost` and `127.0.0.1` signed by it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// A throwaway CA and a server certificate, in a temporary directory (removed on drop).
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    /// Makes the CA (`ca.pem`) and the server's certificate and key (`server.pem`,
    /// `server.key`) with `openssl`.
    ///
    /// # Panics
    /// When `openssl` is missing or fails.
    pub fn generate() -> TestPki {
        let dir = std::env::temp_dir().join(super::unique("rpc-tls"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=rpc reliability test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("openssl cannot run ({e}); the TLS test needs it to make certificates"));
            assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        TestPki { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(self.dir.join("server.pem"))
            .expect("server.pem")
            .collect::<Result<_, _>>()
            .expect("server.pem parses");
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server.key")).expect("server.key parses");
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        Arc::new(config)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the proxy saw.
#[derive(Default)]
pub struct ProxyStats {
    /// TLS handshakes completed.
    pub handshakes: AtomicU64,
    /// Plaintext bytes forwarded from TLS clients to the broker.
    pub bytes_to_broker: AtomicU64,
    /// The protocol version of the last completed handshake (`TLSv1_3`...).
    pub last_version: Mutex<Option<String>>,
}

/// Listens on `127.0.0.1:<port>`, terminates TLS with the certificate of `pki`, and forwards
/// the plaintext to `upstream` (the broker's AMQP port). Threads, blocking I/O: it lives as
/// long as the test process.
pub fn start_proxy(pki: &TestPki, upstream: SocketAddr) -> (u16, Arc<ProxyStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let config = pki.server_config();
    let stats = Arc::new(ProxyStats::default());
    let accept_stats = Arc::clone(&stats);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (config, stats) = (Arc::clone(&config), Arc::clone(&accept_stats));
            std::thread::spawn(move || {
                let _ = relay(client, config, upstream, &stats);
            });
        }
    });
    (port, stats)
}

/// One client: one thread reads TLS records from the client and writes plaintext to the
/// broker; another reads the broker and writes TLS records to the client. The rustls
/// session is shared under a lock that is never held across a blocking read.
fn relay(client: TcpStream, config: Arc<ServerConfig>, upstream: SocketAddr, stats: &ProxyStats) -> io::Result<()> {
    let tls = Arc::new(Mutex::new(ServerConnection::new(config).map_err(io::Error::other)?));
    let broker = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    broker.set_nodelay(true)?;
    let (mut client_r, client_w) = (client.try_clone()?, client);
    let (mut broker_r, mut broker_w) = (broker.try_clone()?, broker);

    let back_tls = Arc::clone(&tls);
    let mut back_client = client_w.try_clone()?;
    let back = std::thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = broker_r.read(&mut buf)?;
            let mut tls = back_tls.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                tls.send_close_notify();
            } else {
                tls.writer().write_all(&buf[..n])?;
            }
            while tls.wants_write() {
                tls.write_tls(&mut back_client)?;
            }
            if n == 0 {
                let _ = back_client.shutdown(Shutdown::Write);
                return Ok(());
            }
        }
    });

    let mut client_w = client_w;
    let mut counted = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut plain = vec![0u8; 64 * 1024];
    let outcome = (|| -> io::Result<()> {
        loop {
            let n = client_r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let mut tls = tls.lock().unwrap_or_else(|e| e.into_inner());
            let mut input = &buf[..n];
            while !input.is_empty() {
                tls.read_tls(&mut input)?;
                if let Err(e) = tls.process_new_packets() {
                    // Send the alert, then give up on this client.
                    while tls.wants_write() {
                        let _ = tls.write_tls(&mut client_w);
                    }
                    return Err(io::Error::other(e));
                }
            }
            if !counted && !tls.is_handshaking() {
                counted = true;
                stats.handshakes.fetch_add(1, Ordering::SeqCst);
                *stats.last_version.lock().unwrap_or_else(|e| e.into_inner()) =
                    tls.protocol_version().map(|v| format!("{v:?}"));
            }
            loop {
                match tls.reader().read(&mut plain) {
                    Ok(0) => break,
                    Ok(m) => {
                        broker_w.write_all(&plain[..m])?;
                        stats.bytes_to_broker.fetch_add(m as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            while tls.wants_write() {
                tls.write_tls(&mut client_w)?;
            }
        }
    })();
    let _ = broker_w.shutdown(Shutdown::Both);
    let _ = back.join();
    outcome
}
