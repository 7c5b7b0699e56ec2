//! A real SMTP server for tests: `tests/support/smtp_server.py` (aiosmtpd) as a child process on
//! a loopback port, writing each message it receives as a JSON file into a temporary maildir.
//! Plain, STARTTLS (required) or implicit TLS with a test CA generated here, with or without
//! AUTH. Needs `python3` on PATH and `pip install aiosmtpd`.
//!
//! Include it with `#[path = "support/smtp.rs"] mod smtp;` (or as `support::smtp`).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the server may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How the server speaks to clients (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    Plain,
    /// STARTTLS offered and required before any mail command (and before AUTH).
    StartTls,
    /// TLS from the first byte.
    Tls,
}

impl SmtpMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            SmtpMode::Plain => "plain",
            SmtpMode::StartTls => "starttls",
            SmtpMode::Tls => "tls",
        }
    }

    /// The matching `meter::config::SmtpTls`.
    pub fn tls(self) -> meter::config::SmtpTls {
        match self {
            SmtpMode::Plain => meter::config::SmtpTls::None,
            SmtpMode::StartTls => meter::config::SmtpTls::StartTls,
            SmtpMode::Tls => meter::config::SmtpTls::Tls,
        }
    }
}

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM files
/// in a temporary directory (kept while any clone lives). Generate one ahead of a server to
/// configure a client before the server is up.
#[derive(Clone)]
pub struct TestCerts {
    dir: Arc<tempfile::TempDir>,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meter test SMTP CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let ca_pem = dir.path().join("ca.pem");
        let cert_pem = dir.path().join("server.pem");
        let key_pem = dir.path().join("server.key");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(&cert_pem, leaf.pem()).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
        TestCerts {
            dir: Arc::new(dir),
            ca_pem,
            cert_pem,
            key_pem,
        }
    }
}

/// What to start.
#[derive(Clone)]
pub struct SmtpOptions {
    pub mode: SmtpMode,
    /// Require AUTH PLAIN/LOGIN with these credentials.
    pub auth: Option<(String, String)>,
    /// A port fixed in advance; `None`: a free ephemeral port.
    pub port: Option<u16>,
    /// For the TLS modes; `None`: generated at start.
    pub certs: Option<TestCerts>,
}

impl SmtpOptions {
    pub fn new(mode: SmtpMode) -> SmtpOptions {
        SmtpOptions {
            mode,
            auth: None,
            port: None,
            certs: None,
        }
    }

    pub fn auth(mut self, user: &str, password: &str) -> SmtpOptions {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    pub fn port(mut self, port: u16) -> SmtpOptions {
        self.port = Some(port);
        self
    }

    pub fn certs(mut self, certs: &TestCerts) -> SmtpOptions {
        self.certs = Some(certs.clone());
        self
    }
}

/// A running `smtp_server.py`; killed on drop (the maildir goes with it).
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    mode: SmtpMode,
    certs: Option<TestCerts>,
    maildir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

/// A port nothing listens on right now: bind 127.0.0.1:0, note the port, let it go.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `SmtpConfig` for a server on 127.0.0.1:`port` in `mode` (up or not), trusting `ca_file`:
/// no AUTH, from `meter@example.com`, a 10 s timeout.
pub fn smtp_config(port: u16, mode: SmtpMode, ca_file: Option<&Path>) -> meter::config::SmtpConfig {
    meter::config::SmtpConfig {
        host: "127.0.0.1".to_string(),
        port,
        tls: mode.tls(),
        username: String::new(),
        password_env: "METER_SMTP_PASSWORD".to_string(),
        from: "meter@example.com".to_string(),
        ca_file: ca_file.map(Path::to_path_buf),
        timeout: Duration::from_secs(10),
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(2),
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py")
}

/// Why a start failed: the server printed `ready` or it did not.
enum Start {
    Ready(SmtpServer),
    /// The port was taken (exit status 2): worth another port when it was ephemeral.
    PortTaken(String),
}

impl SmtpServer {
    /// A server in `mode` without AUTH on a free port.
    pub fn start(mode: SmtpMode) -> SmtpServer {
        SmtpServer::start_with(SmtpOptions::new(mode))
    }

    /// A server in `mode` on `port` (fixed in advance: "SMTP down, then up"), with AUTH when
    /// `auth` is `(user, password)`.
    pub fn start_on(port: u16, mode: SmtpMode, auth: Option<(&str, &str)>) -> SmtpServer {
        let mut options = SmtpOptions::new(mode).port(port);
        if let Some((user, password)) = auth {
            options = options.auth(user, password);
        }
        SmtpServer::start_with(options)
    }

    pub fn start_with(options: SmtpOptions) -> SmtpServer {
        let certs = match (options.mode, &options.certs) {
            (SmtpMode::Plain, _) => options.certs.clone(),
            (_, Some(certs)) => Some(certs.clone()),
            (_, None) => Some(TestCerts::generate()),
        };
        // An ephemeral port can be taken between `free_port` and the server's bind.
        let attempts = if options.port.is_some() { 1 } else { 3 };
        let mut last = String::new();
        for _ in 0..attempts {
            let port = options.port.unwrap_or_else(free_port);
            match SmtpServer::spawn(&options, port, certs.clone()) {
                Start::Ready(server) => return server,
                Start::PortTaken(stderr) => last = stderr,
            }
        }
        panic!("smtp_server.py could not listen: {last}");
    }

    fn spawn(options: &SmtpOptions, port: u16, certs: Option<TestCerts>) -> Start {
        let maildir = tempfile::tempdir().unwrap();
        let mut command = Command::new("python3");
        command
            .arg(script())
            .args(["--port", &port.to_string()])
            .arg("--maildir")
            .arg(maildir.path())
            .args(["--mode", options.mode.as_arg()])
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let (SmtpMode::StartTls | SmtpMode::Tls, Some(certs)) = (options.mode, &certs) {
            command
                .arg("--cert")
                .arg(&certs.cert_pem)
                .arg("--key")
                .arg(&certs.key_pem);
        }
        if let Some((user, password)) = &options.auth {
            command.args(["--auth", &format!("{user}:{password}")]);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => panic!("cannot run python3 (needed for the SMTP test server): {err}"),
        };

        // Collect stderr for failure messages; wait for `ready` on stdout, then keep draining.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        let stderr_done = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => {
                    return Start::Ready(SmtpServer {
                        child: Some(child),
                        port,
                        mode: options.mode,
                        certs,
                        maildir,
                        stderr,
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting; its status tells why.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                let _ = stderr_done.join();
                let text = stderr.lock().unwrap().clone();
                match status.code() {
                    Some(3) => panic!(
                        "the SMTP test server needs the Python module aiosmtpd: pip install aiosmtpd\n{text}"
                    ),
                    Some(2) if text.contains("cannot serve") => return Start::PortTaken(text),
                    _ => panic!("smtp_server.py exited with {status} before it was ready:\n{text}"),
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let text = stderr.lock().unwrap().clone();
                panic!("smtp_server.py was not ready within {READY_TIMEOUT:?}:\n{text}");
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn mode(&self) -> SmtpMode {
        self.mode
    }

    /// The test CA that signed the server's certificate (TLS modes only).
    pub fn ca_file(&self) -> Option<&Path> {
        self.certs.as_ref().map(|c| c.ca_pem.as_path())
    }

    pub fn maildir(&self) -> &Path {
        self.maildir.path()
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// An `SmtpConfig` for this server (see [`smtp_config`]).
    pub fn config(&self) -> meter::config::SmtpConfig {
        smtp_config(self.port, self.mode, self.ca_file())
    }

    /// The same as a `[smtp]` TOML table, for a test's `meter.toml`.
    pub fn toml(&self) -> String {
        let mut toml = format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{}\"\nfrom = \"meter@example.com\"\ntimeout_secs = 10\n",
            self.port,
            self.mode.tls().as_str()
        );
        if let Some(ca) = self.ca_file() {
            toml.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
        }
        toml
    }

    /// Every message received so far, in the order received.
    pub fn messages(&self) -> Vec<Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.maildir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "json")
                    && !path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        names.sort();
        names
            .iter()
            .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
            .collect()
    }

    /// Waits until at least `n` messages arrived (polling); panics after `timeout`.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} message(s) within {timeout:?}, got {}; server stderr:\n{}",
                messages.len(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s); its port is free afterwards and
    /// the messages it received stay readable.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
