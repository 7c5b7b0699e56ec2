//! meter's local certificate authority for forward-proxy mode: `meter ca init` creates it
//! (ECDSA P-256, CA:TRUE with path length 0, ten years), `meter serve` loads it and mints
//! short-lived leaf certificates for the provider hosts it intercepts, cached per host.
//! The CA's key is only ever read from and written to `ca_dir` (mode 0600): it never leaves
//! the machine, and nothing here logs it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The CA certificate's file in `ca_dir` (PEM; this is what clients trust).
pub const CERT_FILE: &str = "ca.pem";
/// The CA key's file in `ca_dir` (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "ca-key.pem";

/// How long a CA made by `meter ca init` is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf is valid from the moment it is minted; it is re-minted after half of it.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Leaves and the CA start this long before they are made, for clients whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Leaves kept at most. Only configured provider hosts are ever minted, so this is a safety
/// bound, not a working size.
const MAX_LEAVES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("no CA in {dir} ({file} is missing): run `meter ca init` first")]
    Missing { dir: String, file: &'static str },
    #[error("a CA already exists in {dir}; pass --force to replace it (clients that trust the old one must then trust the new one)")]
    Exists { dir: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} is readable by other users (mode {mode:o}); the CA key must be private: run `chmod 600 {path}`")]
    KeyMode { path: String, mode: u32 },
    #[error("minting a certificate for {host:?}: {reason}")]
    Mint { host: String, reason: String },
}

/// Where a CA's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    pub fn in_dir(dir: &Path) -> CaPaths {
        CaPaths {
            dir: dir.to_path_buf(),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A serial number of 16 bytes nobody can predict or repeat: a hash of the time, the process
/// and the new key's public half (which is random), top bit clear so it stays positive.
fn serial(public_key: &[u8]) -> SerialNumber {
    let mut hasher = Sha256::new();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(now.as_nanos().to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(public_key);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize()[..16]);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a CA in `dir` (made with mode 0700 when missing): the key in [`KEY_FILE`] (0600,
/// created with that mode, never widened), the certificate in [`CERT_FILE`]. Refuses when
/// either file exists, unless `force`, which replaces both.
pub fn init(dir: &Path, force: bool) -> Result<CaPaths, CaError> {
    let paths = CaPaths::in_dir(dir);
    if !force && (paths.cert.exists() || paths.key.exists()) {
        return Err(CaError::Exists {
            dir: dir.display().to_string(),
        });
    }
    create_dir(dir)?;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|err| CaError::Mint {
            host: "CA".to_string(),
            reason: err.to_string(),
        })?;
    let serial = serial(key.public_key_raw());
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("meter local CA {}", &hex(&serial.to_bytes())[..8]),
    );
    name.push(DnType::OrganizationName, "meter (local forward proxy)");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(serial);
    let cert = params.self_signed(&key).map_err(|err| CaError::Mint {
        host: "CA".to_string(),
        reason: err.to_string(),
    })?;
    // The key first: a CA certificate without its key is useless, the other way round is
    // only incomplete, and `load` says which file is missing.
    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_file(&paths.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(paths)
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error(dir))
}

/// Writes `contents` to `path` through a temporary file created with `mode` (so the key is
/// never readable by others, not even for a moment) and then set to exactly `mode` (the
/// umask may have narrowed it), then moves it into place: over an
/// existing file when `replace`, else only if `path` does not exist (a hard link fails then).
fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    // A temporary file left by a crashed run of this same process id.
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&temp).and_then(|mut file| {
        // Exactly `mode`, whatever the umask took away from it at creation (the certificate
        // must be readable by agents running as other users).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents)?;
        file.sync_all()
    });
    let placed = written.and_then(|()| {
        if replace {
            std::fs::rename(&temp, path)
        } else {
            std::fs::hard_link(&temp, path).and_then(|()| std::fs::remove_file(&temp))
        }
    });
    if placed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    placed.map_err(io_error(path))
}

/// Refuses a CA key that group or others can read, write or run (`mode & 0o077`): whoever can
/// read it can impersonate every host to the clients that trust the CA.
pub fn check_key_mode(key: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map_err(io_error(key))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(CaError::KeyMode {
                path: key.display().to_string(),
                mode: mode & 0o777,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = key;
    Ok(())
}

/// A loaded CA: signs leaves, and its certificate goes to clients on request.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pub paths: CaPaths,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LocalCa")
            .field("paths", &self.paths)
            .finish()
    }
}

impl LocalCa {
    /// Loads the CA in `dir` and checks that its key signs leaves its certificate verifies.
    pub fn load(dir: &Path) -> Result<LocalCa, CaError> {
        let paths = CaPaths::in_dir(dir);
        for (path, file) in [(&paths.cert, CERT_FILE), (&paths.key, KEY_FILE)] {
            if !path.exists() {
                return Err(CaError::Missing {
                    dir: dir.display().to_string(),
                    file,
                });
            }
        }
        check_key_mode(&paths.key)?;
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let key_pem = std::fs::read_to_string(&paths.key).map_err(io_error(&paths.key))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|err| invalid(&paths.key, format!("not a PEM private key: {err}")))?;
        let cert_pem = std::fs::read_to_string(&paths.cert).map_err(io_error(&paths.cert))?;
        let cert = {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|err| invalid(&paths.cert, format!("not a PEM certificate: {err}")))?
        };
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|err| invalid(&paths.cert, format!("not a CA certificate: {err}")))?;
        let ca = LocalCa {
            issuer,
            cert,
            paths,
        };
        // A key that does not belong to the certificate would mint leaves no client accepts:
        // say so at start, not at every handshake.
        let probe = ca.mint("meter-self-check.invalid")?;
        ca.verify(&probe.cert, "meter-self-check.invalid")
            .map_err(|reason| {
                invalid(
                    &ca.paths.key,
                    format!("the key does not match {CERT_FILE}: {reason}"),
                )
            })?;
        Ok(ca)
    }

    /// The CA certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Mints a leaf for `host` (a DNS name or an IP address): SAN `host`, EKU serverAuth,
    /// valid from an hour ago for [`LEAF_VALIDITY`], with a fresh P-256 key.
    pub fn mint(&self, host: &str) -> Result<Leaf, CaError> {
        let fail = |err: rcgen::Error| CaError::Mint {
            host: host.to_string(),
            reason: err.to_string(),
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        // `new` makes an IP address SAN of what parses as one, a DNS name SAN otherwise.
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(fail)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = time::OffsetDateTime::from(now - BACKDATE);
        params.not_after = time::OffsetDateTime::from(now + LEAF_VALIDITY);
        params.serial_number = Some(serial(key.public_key_raw()));
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(Leaf {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            minted: now,
        })
    }

    /// Checks `leaf` the way a client that trusts this CA would, for `host`.
    pub fn verify(&self, leaf: &CertificateDer<'_>, host: &str) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .map_err(|err| err.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| err.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|err| err.to_string())?;
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

/// A minted leaf certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub minted: SystemTime,
}

/// The TLS server configurations for intercepted hosts, one per host with its leaf, minted on
/// first use and re-minted once half their validity has passed. ALPN: h2, then http/1.1.
pub struct Leaves {
    ca: LocalCa,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    config: Arc<rustls::ServerConfig>,
    renew_at: SystemTime,
}

/// Whether a lookup found its leaf in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
        }
    }
}

impl Leaves {
    pub fn new(ca: LocalCa) -> Leaves {
        Leaves {
            ca,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    /// The server configuration presenting a leaf for `host` (lower case, no trailing dot,
    /// IPv6 without brackets), from the cache when it holds a fresh one.
    pub fn server_config(
        &self,
        host: &str,
    ) -> Result<(Arc<rustls::ServerConfig>, CacheResult), CaError> {
        let now = SystemTime::now();
        if let Ok(cache) = self.cache.lock() {
            if let Some(cached) = cache.get(host).filter(|cached| now < cached.renew_at) {
                return Ok((cached.config.clone(), CacheResult::Hit));
            }
        }
        // Minted outside the lock: two first handshakes for one host may both mint (the
        // second one's leaf stays), which is cheaper than making every handshake wait.
        let leaf = self.ca.mint(host)?;
        let renew_at = leaf.minted + LEAF_VALIDITY / 2;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(vec![leaf.cert], leaf.key)
        })
        .map_err(|err| CaError::Mint {
            host: host.to_string(),
            reason: err.to_string(),
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_LEAVES {
                cache.retain(|_, cached| now < cached.renew_at);
            }
            if cache.len() >= MAX_LEAVES {
                cache.clear();
            }
            cache.insert(
                host.to_string(),
                Cached {
                    config: config.clone(),
                    renew_at,
                },
            );
        }
        Ok((config, CacheResult::Miss))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let paths = init(&ca_dir, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&paths.key), 0o600);
            assert_eq!(mode(&paths.cert), 0o644);
            assert_eq!(mode(&ca_dir), 0o700);
        }
        let before = std::fs::read(&paths.key).unwrap();
        assert!(matches!(init(&ca_dir, false), Err(CaError::Exists { .. })));
        assert_eq!(std::fs::read(&paths.key).unwrap(), before, "kept");
        init(&ca_dir, true).unwrap();
        assert_ne!(std::fs::read(&paths.key).unwrap(), before, "replaced");
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&ca_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn leaves_verify_for_their_host_only() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let ca = LocalCa::load(dir.path()).unwrap();
        let leaf = ca.mint("api.openai.com").unwrap();
        ca.verify(&leaf.cert, "api.openai.com").unwrap();
        assert!(ca.verify(&leaf.cert, "api.anthropic.com").is_err());
        let ip = ca.mint("127.0.0.1").unwrap();
        ca.verify(&ip.cert, "127.0.0.1").unwrap();
        // Another CA's leaves are not this CA's.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), false).unwrap();
        let other = LocalCa::load(other.path()).unwrap();
        assert!(ca
            .verify(
                &other.mint("api.openai.com").unwrap().cert,
                "api.openai.com"
            )
            .is_err());
    }

    #[test]
    fn a_key_from_another_ca_is_refused_at_load() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        init(one.path(), false).unwrap();
        init(two.path(), false).unwrap();
        std::fs::copy(two.path().join(KEY_FILE), one.path().join(KEY_FILE)).unwrap();
        let err = LocalCa::load(one.path()).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = LocalCa::load(empty.path()).unwrap_err().to_string();
        assert!(err.contains("meter ca init"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = init(dir.path(), false).unwrap();
        LocalCa::load(dir.path()).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o610] {
            std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = LocalCa::load(dir.path()).unwrap_err();
            assert!(matches!(err, CaError::KeyMode { .. }), "{mode:o}: {err}");
            let text = err.to_string();
            assert!(text.contains("chmod 600"), "{text}");
            assert!(text.contains(&paths.key.display().to_string()), "{text}");
        }
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o400)).unwrap();
        LocalCa::load(dir.path()).unwrap();
    }

    #[test]
    fn the_cache_mints_once_per_host() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let leaves = Leaves::new(LocalCa::load(dir.path()).unwrap());
        let (first, result) = leaves.server_config("api.openai.com").unwrap();
        assert_eq!(result, CacheResult::Miss);
        let (again, result) = leaves.server_config("api.openai.com").unwrap();
        assert_eq!(result, CacheResult::Hit);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(
            first.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let (_, result) = leaves.server_config("api.anthropic.com").unwrap();
        assert_eq!(result, CacheResult::Miss);
    }
}
