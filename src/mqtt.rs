//! A stream's events on an MQTT broker (feature `mqtt`; `ebm-gate stream --mqtt URL`).
//!
//! [`MqttSink`] is an [`EventSink`]: [`crate::stream::run_stream_to`] gives it the events, it
//! puts them on a bounded queue and returns at once; a thread of its own (rumqttc on a tokio
//! runtime) connects, publishes and reconnects, so a slow or absent broker never holds up the
//! frame loop. MQTT 3.1.1 over TCP (`mqtt://`) or TLS (`mqtts://`, rustls).
//!
//! Topics under a prefix (default `ebm-gate/<hostname>`):
//!
//! | topic | payload | QoS | retained |
//! |---|---|---|---|
//! | `PREFIX/state` | the debounced state: `unknown`, `in_distribution`, `out_of_distribution`, `stalled` | 1 | yes |
//! | `PREFIX/availability` | `online` on connect; `offline` at the end, or the broker's last will when the gate vanishes | 1 | yes |
//! | `PREFIX/events` | each `state_change` and `error` line of `stream`'s JSON output | 1 | no |
//! | `PREFIX/summary` | each heartbeat and the final summary line, with an `mqtt` object ([`MqttStats`]) | 1 | no |
//! | `PREFIX/rejected` | the frame line of each rejected frame (only with [`MqttConfig::publish_rejected`]) | 1 | no |
//!
//! The state topic follows Home Assistant's MQTT binary sensor: a retained state plus an
//! availability topic with a last will.
//!
//! **Delivery.** Queued messages are delivered at least once: a message counts as delivered
//! when the broker acknowledges it (PUBACK); one sent but not acknowledged when the connection
//! drops is put back at the head of the queue and sent again after reconnecting (the broker may
//! then see it twice). While the broker is away messages wait in the queue, at most
//! [`MqttConfig::queue_messages`] messages and [`MqttConfig::queue_bytes`] bytes; past either
//! the oldest is dropped, counted in [`MqttStats::dropped`], and an `error` event on
//! `PREFIX/events` says how many after the next connection. The retained state and
//! availability are not queued: the latest state is published on every (re)connection, so a
//! dropped message never leaves the state topic wrong. Reconnection waits
//! [`MqttConfig::reconnect_min`], doubling up to [`MqttConfig::reconnect_max`], between attempts.
//!
//! ```no_run
//! use std::sync::atomic::AtomicUsize;
//! use std::time::Duration;
//! use ebm_gate::mqtt::{MqttConfig, MqttSink};
//! use ebm_gate::pipeline::{EnergyGate, Overrides};
//! use ebm_gate::stream::{run_stream_to, JsonLines, StreamFormat, StreamOptions, StreamSource};
//!
//! let mut gate = EnergyGate::open("models/cifar10-airnet".as_ref(), &Overrides::default())?;
//! let mut config = MqttConfig::from_url("mqtt://127.0.0.1:1883")?;
//! config.topic_prefix = "ebm-gate/door".into();
//! let mut mqtt = MqttSink::start(config, gate.class_names().to_vec(), |status| eprintln!("{status}"))?;
//! let mut stdout = JsonLines::new(std::io::stdout(), gate.class_names().to_vec(), 1);
//! let stop = AtomicUsize::new(0);
//! let source = StreamSource::Bytes(Box::new(std::io::stdin()));
//! let options = StreamOptions::new(StreamFormat::Mjpeg);
//! let (summary, _) = run_stream_to(&mut gate, source, &options, &stop, &mut [&mut stdout, &mut mqtt])?;
//! let stats = mqtt.close(Duration::from_secs(5));
//! eprintln!("{} frames; {} of {} messages delivered, {} dropped", summary.frames, stats.delivered, stats.queued, stats.dropped);
//! # Ok::<(), ebm_gate::Error>(())
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::stream::{json as lines, EventSink, StreamEvent, StreamSummary};

/// Most messages the queue may hold, as a setting (`--mqtt-queue`).
pub const MAX_QUEUE_MESSAGES: usize = 1_000_000;
/// Largest message: bigger ones (a frame record of a model with very many classes) are dropped
/// and counted, not sent (rumqttc's outgoing packet limit is set to this).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Largest PEM file (CA, certificate, key) and password file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Messages sent and not yet acknowledged at a time.
const WINDOW: usize = 32;

/// How to reach the broker and what to publish.
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    /// The broker's host name or IP address.
    pub host: String,
    /// Its port (1883 for `mqtt://`, 8883 for `mqtts://` unless the URL says).
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// MQTT client id; default `ebm-gate-<hostname>`. The broker drops an older connection with
    /// the same id, so each gate needs its own.
    pub client_id: String,
    /// User name, if the broker wants a login.
    pub username: Option<String>,
    /// Password (from a file or the environment; never printed, not even by `Debug`).
    pub password: Option<String>,
    /// Topic prefix, without a trailing `/`; default `ebm-gate/<hostname>`.
    pub topic_prefix: String,
    /// Also publish the frame line of every rejected frame on `PREFIX/rejected`.
    pub publish_rejected: bool,
    /// PEM file of the certificate authorities to trust for TLS; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM files of a client certificate (chain) and its private key, for brokers that
    /// authenticate clients by certificate.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Most messages waiting for the broker (1 to [`MAX_QUEUE_MESSAGES`]); default 1000.
    pub queue_messages: usize,
    /// Most bytes of payload waiting for the broker; default 16 MiB.
    pub queue_bytes: usize,
    /// MQTT keep-alive: the broker is pinged when nothing else was sent for this long, and a
    /// silent connection is given up after 1.5 times it; default 15 s.
    pub keep_alive: Duration,
    /// Most time for a TCP/TLS connection and the broker's CONNACK; default 5 s.
    pub connect_timeout: Duration,
    /// First wait before reconnecting; default 0.5 s.
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting; default 30 s.
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("topic_prefix", &self.topic_prefix)
            .field("publish_rejected", &self.publish_rejected)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("queue_messages", &self.queue_messages)
            .field("queue_bytes", &self.queue_bytes)
            .field("keep_alive", &self.keep_alive)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

/// This machine's host name, reduced to `[A-Za-z0-9._-]` (others become `-`), for the default
/// topic prefix and client id.
pub fn hostname() -> String {
    let raw = gethostname::gethostname().to_string_lossy().into_owned();
    let name: String = raw
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

impl MqttConfig {
    /// The broker from a URL, `mqtt://host[:port]` (TCP, port 1883) or `mqtts://host[:port]`
    /// (TLS, 8883; also `tcp://` and `ssl://`), optionally with a user name
    /// (`mqtt://gate@host`); everything else at its default.
    ///
    /// # Errors
    /// [`Error::Invalid`] for another scheme, no host, a path or query, or a password in the URL
    /// (a password on the command line is visible to every user of the machine: give it in a
    /// file or the environment).
    pub fn from_url(url: &str) -> Result<MqttConfig> {
        let shown = redact_password(url);
        let bad = |why: &str| Error::Invalid(format!("--mqtt {shown:?}: {why}"));
        if url.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(&format!("not a URL ({e}); expected mqtt://HOST[:PORT]")))?;
        let (tls, default_port) = match parsed.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            other => return Err(bad(&format!("scheme {other}:// is not MQTT; use mqtt:// or mqtts://"))),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("no host; expected mqtt://HOST[:PORT]")),
        };
        if parsed.password().is_some() {
            return Err(bad("a password in the URL; give it in a file (--mqtt-password-file) or the environment \
                 (EBM_GATE_MQTT_PASSWORD), where other users of the machine cannot read it"));
        }
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("has a path, query or fragment; expected mqtt://HOST[:PORT]"));
        }
        let username = match parsed.username() {
            "" => None,
            u => Some(percent_decode(u).ok_or_else(|| bad("the user name is not valid percent-encoded UTF-8"))?),
        };
        let name = hostname();
        Ok(MqttConfig {
            host,
            port: parsed.port().unwrap_or(default_port),
            tls,
            client_id: format!("ebm-gate-{name}"),
            username,
            password: None,
            topic_prefix: format!("ebm-gate/{name}"),
            publish_rejected: false,
            ca_file: None,
            client_cert: None,
            queue_messages: 1000,
            queue_bytes: 16 << 20,
            keep_alive: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        })
    }

    /// The broker as `mqtt://host:port` or `mqtts://user@host:port`, for messages.
    pub fn broker(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let user = self.username.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        format!("{}://{user}{host}:{}", if self.tls { "mqtts" } else { "mqtt" }, self.port)
    }

    /// `PREFIX/name`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}/{name}", self.topic_prefix)
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a topic prefix that is empty, has a wildcard (`+`, `#`), starts
    /// with `$`, ends with `/` or is over 1024 bytes; a client id that is empty or over 256
    /// bytes; a password without a user name; TLS files without `mqtts://`; a queue of 0 or
    /// over [`MAX_QUEUE_MESSAGES`] messages or under 1 KiB; a keep-alive under 5 s or over
    /// 65535 s; a connect timeout of 0 or over 300 s; reconnect waits of 0, over 3600 s, or
    /// a minimum above the maximum; for `mqtts://`, TLS files that cannot be read or used.
    pub fn check(&self) -> Result<()> {
        self.check_settings()?;
        if self.tls {
            self.tls_config()?;
        }
        Ok(())
    }

    /// [`check`](Self::check) without reading the TLS files.
    fn check_settings(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        let p = &self.topic_prefix;
        if p.is_empty() || p.len() > 1024 || p.contains(['+', '#', '\0']) || p.starts_with('$') || p.ends_with('/') {
            return bad(format!(
                "--mqtt-topic {p:?}: a topic prefix must be 1 to 1024 bytes without +, # or NUL, not start \
                 with $ nor end with /"
            ));
        }
        if self.client_id.is_empty() || self.client_id.len() > 256 || self.client_id.contains('\0') {
            return bad(format!("--mqtt-client-id {:?}: expected 1 to 256 bytes", self.client_id));
        }
        if self.password.is_some() && self.username.is_none() {
            return bad("an MQTT password without a user name: give --mqtt-username (or mqtt://USER@HOST)".into());
        }
        if !self.tls && (self.ca_file.is_some() || self.client_cert.is_some()) {
            return bad(format!("--mqtt-ca/--mqtt-cert are for TLS: use mqtts:// instead of {}", self.broker()));
        }
        if !(1..=MAX_QUEUE_MESSAGES).contains(&self.queue_messages) || self.queue_bytes < 1024 {
            return bad(format!(
                "--mqtt-queue {}: expected 1 to {MAX_QUEUE_MESSAGES} messages (and at least 1 KiB)",
                self.queue_messages
            ));
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive.as_secs() > 65_535 {
            return bad(format!("MQTT keep-alive {:?}: expected 5 to 65535 s", self.keep_alive));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(300) {
            return bad(format!("MQTT connect timeout {:?}: expected up to 300 s", self.connect_timeout));
        }
        let hour = Duration::from_secs(3600);
        if self.reconnect_min.is_zero() || self.reconnect_max > hour || self.reconnect_min > self.reconnect_max {
            return bad(format!(
                "MQTT reconnect waits {:?} to {:?}: expected 0 < min <= max <= 3600 s",
                self.reconnect_min, self.reconnect_max
            ));
        }
        Ok(())
    }

    /// rumqttc's options: the client id, login, keep-alive, the last will (`offline`,
    /// retained, on `PREFIX/availability`) and, for `mqtts://`, the TLS configuration.
    fn options(&self) -> Result<MqttOptions> {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(true);
        o.set_inflight(WINDOW as u16 + 4);
        o.set_request_channel_capacity(2 * WINDOW + 8);
        o.set_max_packet_size(64 * 1024, MAX_MESSAGE_BYTES + 64 * 1024);
        o.set_last_will(LastWill::new(self.topic("availability"), "offline", QoS::AtLeastOnce, true));
        if let Some(user) = &self.username {
            o.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        if self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(self.tls_config()?))));
        }
        Ok(o)
    }

    /// rustls with the ring provider: the CA file's certificates (or the system's) as roots,
    /// and the client certificate when given.
    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let pem = read_flag_file("--mqtt-ca", path)?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| Error::Invalid(format!("--mqtt-ca {}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| Error::Invalid(format!("--mqtt-ca {}: a certificate: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(Error::Invalid(format!(
                        "--mqtt-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                        path.display()
                    )));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(Error::Invalid(
                        "TLS: the system has no CA certificates (install ca-certificates) and no --mqtt-ca was given"
                            .into(),
                    ));
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert_path, key_path)) => {
                let pem = read_flag_file("--mqtt-cert", cert_path)?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::Invalid(format!("--mqtt-cert {}: {e}", cert_path.display())))?;
                if chain.is_empty() {
                    return Err(Error::Invalid(format!(
                        "--mqtt-cert {}: no PEM certificate in it",
                        cert_path.display()
                    )));
                }
                let key = PrivateKeyDer::from_pem_slice(&read_flag_file("--mqtt-key", key_path)?)
                    .map_err(|e| Error::Invalid(format!("--mqtt-key {}: {e}", key_path.display())))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::Invalid(format!(
                        "--mqtt-cert {} with --mqtt-key {}: {e}",
                        cert_path.display(),
                        key_path.display()
                    ))
                })
            }
        }
    }
}

/// Reads a small file (a PEM file, a password file): at most 1 MiB.
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Invalid(format!("{}: larger than 1 MiB", path.display())));
    }
    Ok(bytes)
}

/// [`read_limited`] for a flag's file: errors name the flag.
fn read_flag_file(flag: &str, path: &Path) -> Result<Vec<u8>> {
    read_limited(path).map_err(|e| match e {
        Error::Io { error, .. } => Error::Invalid(format!("{flag} {}: {error}", path.display())),
        other => Error::Invalid(format!("{flag} {other}")),
    })
}

/// A password from a file: its first line (without the line end), at most 4096 bytes.
///
/// # Errors
/// [`Error::Invalid`] when it cannot be read, is empty, longer, or not UTF-8.
pub fn read_password_file(path: &Path) -> Result<String> {
    let bytes = read_limited(path)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", path.display())))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() || line.len() > 4096 {
        return Err(Error::Invalid(format!(
            "{}: expected a password of 1 to 4096 bytes on its first line",
            path.display()
        )));
    }
    Ok(line.to_string())
}

/// The URL with a password in it (`scheme://user:PASSWORD@host`) replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

/// `%XX` decoding of a URL's user name.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What the publishing thread reports, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum MqttStatus {
    /// Connected (the broker's CONNACK), the first time or again.
    Connected {
        /// `mqtt://host:port`.
        broker: String,
        /// Messages waiting to be sent.
        queued: usize,
    },
    /// A connection attempt failed, or the connection was lost.
    Disconnected {
        /// `mqtt://host:port`.
        broker: String,
        /// Why.
        error: String,
        /// What kind of failure.
        kind: FailureKind,
        /// Whether a connection was lost (`false`: an attempt failed).
        lost: bool,
        /// The wait before the next attempt.
        retry_in: Duration,
        /// Messages waiting to be sent.
        queued: usize,
    },
}

impl std::fmt::Display for MqttStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MqttStatus::Connected { broker, queued } => {
                write!(f, "mqtt: connected to {broker}")?;
                if *queued > 0 {
                    write!(f, "; sending {queued} queued message{}", if *queued == 1 { "" } else { "s" })?;
                }
                Ok(())
            }
            MqttStatus::Disconnected { broker, error, lost, retry_in, queued, .. } => write!(
                f,
                "mqtt: {} {broker}: {error}; retrying in {:.1} s, the gate goes on ({queued} message{} queued)",
                if *lost { "connection lost to" } else { "cannot connect to" },
                retry_in.as_secs_f64(),
                if *queued == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Kinds of connection failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker refused the login or the client (CONNACK: bad user name or password, not
    /// authorised, client id rejected, protocol not supported).
    Refused,
    /// The TLS handshake failed (certificate not trusted, wrong host name, no common protocol).
    Tls,
    /// The network: connection refused or reset, no route, name not found, timeout.
    Network,
}

/// How the first connection attempt went ([`MqttSink::wait_first_attempt`]).
#[derive(Debug, Clone, PartialEq)]
pub enum FirstAttempt {
    /// Connected.
    Connected,
    /// Failed; the thread goes on retrying.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// The message.
        error: String,
    },
    /// No outcome within the wait.
    Pending,
}

/// Counts of a sink's messages and connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Messages put on the queue: events, summaries, rejected frames (not the retained state
    /// and availability, which are published on every connection).
    pub queued: u64,
    /// Of those, acknowledged by the broker.
    pub delivered: u64,
    /// Dropped: the oldest when the queue was full, or one over [`MAX_MESSAGE_BYTES`].
    pub dropped: u64,
    /// Sent again after a reconnection (sent before, never acknowledged).
    pub resent: u64,
    /// Waiting, or sent and not yet acknowledged.
    pub pending: u64,
    /// Connected now.
    pub connected: bool,
    /// Connections made (the first and every reconnection).
    pub connections: u64,
    /// Failed attempts and lost connections.
    pub connection_errors: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

impl MqttStats {
    /// As JSON (the `mqtt` object of `stream`'s summary lines).
    pub fn to_json(&self) -> Value {
        json!({
            "connected": self.connected,
            "queued": self.queued,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "resent": self.resent,
            "pending": self.pending,
            "connections": self.connections,
            "connection_errors": self.connection_errors,
            "last_error": self.last_error,
        })
    }
}

/// A message for the broker.
struct Message {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    /// Queued (counted, put back on a reconnection) or connection-scoped (the retained state
    /// and availability, made afresh on each connection).
    queued: bool,
    /// Which goes first when the queue is full: [`Priority::Frame`], then
    /// [`Priority::Summary`], and [`Priority::Event`] only when nothing else is left.
    priority: Priority,
}

/// The classes of queued messages, in the order they are dropped from a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Priority {
    /// A rejected frame's line (`PREFIX/rejected`).
    Frame = 0,
    /// A heartbeat or the final summary (`PREFIX/summary`).
    Summary = 1,
    /// A state change or an error (`PREFIX/events`).
    Event = 2,
}

/// A message handed to rumqttc, with the packet id it went out with once known.
struct InFlight {
    pkid: Option<u16>,
    message: Message,
}

/// What the sink and its thread share.
struct Shared {
    queue: VecDeque<Message>,
    queue_bytes: usize,
    /// Queued messages of each [`Priority`].
    queued_of: [usize; 3],
    in_flight: VecDeque<InFlight>,
    /// The debounced state to publish (retained) at the next chance.
    state: &'static str,
    state_dirty: bool,
    /// `online` to publish (after a connection), `offline` at the end.
    availability: Option<&'static str>,
    /// Drops already reported on `PREFIX/events`.
    drops_reported: u64,
    stats: MqttStats,
    first: Option<FirstAttempt>,
    /// `offline` was acknowledged at the end.
    offline_acked: bool,
    stop: bool,
    ended: bool,
}

struct Inner {
    shared: Mutex<Shared>,
    changed: Condvar,
    /// New messages, a connection, an acknowledgement: the feeder looks again.
    wake: tokio::sync::Notify,
    /// Stop without waiting for a DISCONNECT to go out.
    stop_now: tokio::sync::Notify,
}

impl Shared {
    /// Nothing queued, the state `unknown` (published on the first connection).
    fn new() -> Shared {
        Shared {
            queue: VecDeque::new(),
            queue_bytes: 0,
            queued_of: [0; 3],
            in_flight: VecDeque::new(),
            state: "unknown",
            state_dirty: true,
            availability: None,
            drops_reported: 0,
            stats: MqttStats::default(),
            first: None,
            offline_acked: false,
            stop: false,
            ended: false,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves consistent data (plain counters and queues).
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds, the thread has ended, or `deadline` passes; the lock, held.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&Shared) -> bool) -> MutexGuard<'_, Shared> {
        let mut s = self.lock();
        while !done(&s) && !s.ended {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        s
    }
}

/// Publishes a stream's events to an MQTT broker from a thread of its own (see the module
/// docs). Give it to [`crate::stream::run_stream_to`]; [`MqttSink::close`] at the end.
pub struct MqttSink {
    inner: Arc<Inner>,
    client: AsyncClient,
    config: MqttConfig,
    names: Vec<String>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MqttSink {
    /// Checks `config`, reads its TLS files, and starts the publishing thread, which connects
    /// at once and reports each connection and failure to `on_status` (from that thread).
    /// `names` are the class names (for frame lines).
    ///
    /// # Errors
    /// [`Error::Invalid`] for settings [`MqttConfig::check`] refuses or TLS files that cannot
    /// be used; [`Error::Io`] for a TLS file that cannot be read.
    pub fn start(
        config: MqttConfig,
        names: Vec<String>,
        on_status: impl FnMut(&MqttStatus) + Send + 'static,
    ) -> Result<MqttSink> {
        // The TLS files are read once, by `options`.
        config.check_settings()?;
        let options = config.options()?;
        let (client, mut eventloop) = AsyncClient::new(options, 2 * WINDOW + 8);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared::new()),
            changed: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            stop_now: tokio::sync::Notify::new(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Invalid(format!("mqtt: cannot start its runtime: {e}")))?;
        let thread = {
            let (inner, client, config) = (Arc::clone(&inner), client.clone(), config.clone());
            std::thread::Builder::new()
                .name("ebm-gate-mqtt".into())
                .spawn(move || {
                    runtime.block_on(async {
                        tokio::select! {
                            _ = drive(eventloop, &inner, &config, on_status) => {}
                            _ = feed(&client, &inner, &config) => {}
                        }
                    });
                    inner.lock().ended = true;
                    inner.changed.notify_all();
                })
                .map_err(|e| Error::Invalid(format!("mqtt: cannot start its thread: {e}")))?
        };
        Ok(MqttSink { inner, client, config, names, thread: Some(thread) })
    }

    /// The settings.
    pub fn config(&self) -> &MqttConfig {
        &self.config
    }

    /// Waits up to `timeout` for the outcome of the first connection attempt.
    pub fn wait_first_attempt(&self, timeout: Duration) -> FirstAttempt {
        let s = self.inner.wait_until(Instant::now() + timeout, |s| s.first.is_some());
        s.first.clone().unwrap_or(FirstAttempt::Pending)
    }

    /// The counts so far.
    pub fn stats(&self) -> MqttStats {
        let s = self.inner.lock();
        stats_of(&s)
    }

    /// Puts a message on the queue, dropping the oldest of the lowest priority past the limits.
    fn enqueue(&self, topic: &str, payload: String, priority: Priority) {
        let payload = payload.into_bytes();
        let mut s = self.inner.lock();
        s.stats.queued += 1;
        if payload.len() > MAX_MESSAGE_BYTES {
            s.stats.dropped += 1;
            return;
        }
        let message = Message { topic: self.config.topic(topic), payload, retain: false, queued: true, priority };
        push(&mut s, message, false);
        trim(&mut s, &self.config);
        drop(s);
        self.inner.wake.notify_one();
    }

    /// The summary line as published: [`crate::stream::json`]'s with an `mqtt` object.
    fn summary_payload(&self, mut v: Value) -> String {
        v["mqtt"] = self.stats().to_json();
        v.to_string()
    }

    /// Delivers what is queued and says `offline`, waiting up to `timeout` in all; then
    /// disconnects and stops the thread. The counts at the end: `pending` are the messages
    /// never acknowledged.
    pub fn close(mut self, timeout: Duration) -> MqttStats {
        let deadline = Instant::now() + timeout;
        let drained = |s: &Shared| s.queue.is_empty() && s.in_flight.iter().all(|f| !f.message.queued);
        let mut s = self.inner.wait_until(deadline, drained);
        if drained(&s) {
            s.availability = Some("offline");
            drop(s);
            self.inner.wake.notify_one();
            drop(self.inner.wait_until(deadline, |s| s.offline_acked));
        } else {
            drop(s);
        }
        self.stop();
        self.stats()
    }

    /// Stops the thread: a clean DISCONNECT when connected (so no last will), then waits up to
    /// a second for it to end.
    fn stop(&mut self) {
        let connected = {
            let mut s = self.inner.lock();
            s.stop = true;
            s.stats.connected
        };
        if !connected || self.client.try_disconnect().is_err() {
            self.inner.stop_now.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let ended = self.inner.wait_until(Instant::now() + Duration::from_secs(1), |s| s.ended).ended;
            if ended {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

impl EventSink for MqttSink {
    /// Queues the event's message(s); never blocks on the network and never fails.
    fn event(&mut self, event: &StreamEvent) -> std::io::Result<()> {
        match event {
            StreamEvent::Frame(f) => {
                if self.config.publish_rejected
                    && f.report.verdict == Some(crate::core::gate::Verdict::OutOfDistribution)
                {
                    self.enqueue("rejected", lines::event(event, &self.names), Priority::Frame);
                }
            }
            StreamEvent::StateChange { to, .. } => {
                let mut s = self.inner.lock();
                s.state = to.as_str();
                s.state_dirty = true;
                drop(s);
                self.enqueue("events", lines::event(event, &self.names), Priority::Event);
            }
            StreamEvent::Error { .. } => self.enqueue("events", lines::event(event, &self.names), Priority::Event),
            StreamEvent::Heartbeat(summary) => {
                let payload = self.summary_payload(lines::heartbeat(summary));
                self.enqueue("summary", payload, Priority::Summary);
            }
        }
        Ok(())
    }

    /// Queues the final summary line (with the `mqtt` counts as of now).
    fn finish(&mut self, summary: &StreamSummary) -> std::io::Result<()> {
        let payload = self.summary_payload(lines::summary(summary, summary.stop.signal_name()));
        self.enqueue("summary", payload, Priority::Summary);
        Ok(())
    }
}

/// The counts, with `pending` and `connected` as of now.
fn stats_of(s: &Shared) -> MqttStats {
    let pending = s.queue.len() + s.in_flight.iter().filter(|f| f.message.queued).count();
    MqttStats { pending: pending as u64, ..s.stats.clone() }
}

/// Puts a queued message at the back of the queue (or, put back after a lost connection, at the
/// front).
fn push(s: &mut Shared, message: Message, front: bool) {
    s.queue_bytes += message.payload.len();
    s.queued_of[message.priority as usize] += 1;
    if front {
        s.queue.push_front(message);
    } else {
        s.queue.push_back(message);
    }
}

/// Takes the message at the head of the queue.
fn pop(s: &mut Shared) -> Option<Message> {
    let m = s.queue.pop_front()?;
    s.queue_bytes -= m.payload.len();
    s.queued_of[m.priority as usize] -= 1;
    Some(m)
}

/// Drops queued messages past the limits: the oldest of the lowest [`Priority`] present, so
/// rejected frames go before summaries, and state changes and errors only when nothing else
/// is left.
fn trim(s: &mut Shared, config: &MqttConfig) {
    while s.queue.len() > config.queue_messages || (s.queue_bytes > config.queue_bytes && s.queue.len() > 1) {
        let Some(lowest) = s.queued_of.iter().position(|&n| n > 0) else { break };
        let Some(i) = s.queue.iter().position(|m| m.priority as usize == lowest) else { break };
        let Some(old) = s.queue.remove(i) else { break };
        s.queue_bytes -= old.payload.len();
        s.queued_of[lowest] -= 1;
        s.stats.dropped += 1;
    }
}

/// Hands messages to rumqttc while connected, up to [`WINDOW`] unacknowledged: the
/// availability, then the state, then a report of drops, then the queue in order.
async fn feed(client: &AsyncClient, inner: &Inner, config: &MqttConfig) -> std::convert::Infallible {
    loop {
        {
            let mut s = inner.lock();
            if s.stats.connected && !s.stop {
                let send = |s: &mut Shared, message: Message| -> bool {
                    let sent = client.try_publish(
                        message.topic.clone(),
                        QoS::AtLeastOnce,
                        message.retain,
                        message.payload.clone(),
                    );
                    match sent {
                        Ok(()) => {
                            s.in_flight.push_back(InFlight { pkid: None, message });
                            true
                        }
                        Err(_) => {
                            // The request channel is full (cannot happen within the window)
                            // or closed: keep a queued message for later.
                            if message.queued {
                                push(s, message, true);
                            }
                            false
                        }
                    }
                };
                if let Some(value) = s.availability.take() {
                    let m = Message {
                        topic: config.topic("availability"),
                        payload: value.into(),
                        retain: true,
                        queued: false,
                        priority: Priority::Event,
                    };
                    send(&mut s, m);
                }
                if s.state_dirty {
                    s.state_dirty = false;
                    let m = Message {
                        topic: config.topic("state"),
                        payload: s.state.into(),
                        retain: true,
                        queued: false,
                        priority: Priority::Event,
                    };
                    send(&mut s, m);
                }
                if s.stats.dropped > s.drops_reported {
                    let n = s.stats.dropped - s.drops_reported;
                    s.drops_reported = s.stats.dropped;
                    let report = json!({
                        "type": "error",
                        "frame": null,
                        "error": format!(
                            "mqtt: {n} messages dropped (the queue holds {} messages, {} bytes: the oldest go \
                             first while the broker is away)",
                            config.queue_messages, config.queue_bytes
                        ),
                        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                    });
                    let m = Message {
                        topic: config.topic("events"),
                        payload: report.to_string().into_bytes(),
                        retain: false,
                        queued: false,
                        priority: Priority::Event,
                    };
                    send(&mut s, m);
                }
                while s.in_flight.len() < WINDOW {
                    let Some(m) = pop(&mut s) else { break };
                    if !send(&mut s, m) {
                        break;
                    }
                }
            }
        }
        inner.wake.notified().await;
    }
}

/// Runs rumqttc's event loop: marks connections, matches acknowledgements to messages,
/// puts unacknowledged messages back on a lost connection, and waits (doubling) between
/// attempts.
async fn drive(mut eventloop: EventLoop, inner: &Inner, config: &MqttConfig, mut on_status: impl FnMut(&MqttStatus)) {
    let mut backoff = config.reconnect_min;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = inner.stop_now.notified() => return,
        };
        // What to report, and whether to wait before the next attempt (the lock is not held
        // across the wait).
        let (status, retry) = {
            let mut s = inner.lock();
            if s.stop && matches!(event, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
                return;
            }
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = config.reconnect_min;
                    s.stats.connected = true;
                    s.stats.connections += 1;
                    s.first.get_or_insert(FirstAttempt::Connected);
                    if s.availability != Some("offline") {
                        s.availability = Some("online");
                    }
                    s.state_dirty = true;
                    (Some(MqttStatus::Connected { broker: config.broker(), queued: s.queue.len() }), false)
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(f) = s.in_flight.iter_mut().find(|f| f.pkid.is_none()) {
                        f.pkid = Some(pkid);
                    }
                    continue;
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(i) = s.in_flight.iter().position(|f| f.pkid == Some(ack.pkid)) {
                        let done = s.in_flight.remove(i).expect("in range");
                        if done.message.queued {
                            s.stats.delivered += 1;
                        } else if done.message.payload == b"offline" && done.message.topic.ends_with("/availability") {
                            s.offline_acked = true;
                        }
                    }
                    (None, false)
                }
                Ok(_) => continue,
                Err(e) => {
                    let lost = s.stats.connected;
                    s.stats.connected = false;
                    s.stats.connection_errors += 1;
                    // Sent and not acknowledged: back to the head of the queue, in order. The
                    // retained state and availability are made afresh on the next connection.
                    while let Some(f) = s.in_flight.pop_back() {
                        if f.message.queued {
                            s.stats.resent += u64::from(f.pkid.is_some());
                            push(&mut s, f.message, true);
                        }
                    }
                    trim(&mut s, config);
                    let (kind, error) = classify(&e, config);
                    s.stats.last_error = Some(error.clone());
                    s.first.get_or_insert(FirstAttempt::Failed { kind, error: error.clone() });
                    let status = MqttStatus::Disconnected {
                        broker: config.broker(),
                        error,
                        kind,
                        lost,
                        retry_in: backoff,
                        queued: s.queue.len(),
                    };
                    (Some(status), true)
                }
            }
        };
        inner.changed.notify_all();
        inner.wake.notify_one();
        if let Some(status) = status {
            on_status(&status);
        }
        if retry {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = inner.stop_now.notified() => return,
            }
            backoff = (backoff * 2).min(config.reconnect_max);
        }
    }
}

/// The kind and a message for a connection error, with a hint where a common mistake shows
/// (a plain port for `mqtts://` or a TLS port for `mqtt://`).
fn classify(e: &ConnectionError, config: &MqttConfig) -> (FailureKind, String) {
    let port = config.port;
    let plain_hint = || {
        if config.tls {
            String::new()
        } else {
            format!(" (if port {port} speaks TLS, use mqtts://)")
        }
    };
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => "not authorised (check the user name and password)",
                ConnectReturnCode::BadClientId => "client id rejected (--mqtt-client-id)",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::Success => "refused",
            };
            let kind = if *code == ConnectReturnCode::ServiceUnavailable {
                FailureKind::Network
            } else {
                FailureKind::Refused
            };
            (kind, format!("the broker refused the connection: {why}"))
        }
        // The connection dropped during the handshake: a network failure (retried), most often
        // a port that does not speak TLS.
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) if io.get_ref().is_none_or(|i| !i.is::<rustls::Error>()) => {
            (FailureKind::Network, format!("TLS handshake: {io} (if port {port} is plain MQTT, use mqtt://)"))
        }
        ConnectionError::Tls(t) => {
            (FailureKind::Tls, format!("TLS: {t} (check --mqtt-ca, and that the URL's host name is the certificate's)"))
        }
        ConnectionError::Io(io) => {
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                (
                    FailureKind::Tls,
                    format!("TLS: {io} (check --mqtt-ca, and that the URL's host name is the certificate's)"),
                )
            } else if io.kind() == std::io::ErrorKind::ConnectionReset {
                (FailureKind::Network, format!("{io}{}", plain_hint()))
            } else {
                (FailureKind::Network, io.to_string())
            }
        }
        ConnectionError::NetworkTimeout => {
            (FailureKind::Network, format!("no answer within {:.0} s", config.connect_timeout.as_secs_f64()))
        }
        ConnectionError::MqttState(state) => {
            (FailureKind::Network, format!("connection lost: {state}{}", plain_hint()))
        }
        other => (FailureKind::Network, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_tls_and_user_and_refuse_passwords() {
        let c = MqttConfig::from_url("mqtt://broker.local").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls, c.username.as_deref()), ("broker.local", 1883, false, None));
        let c = MqttConfig::from_url("mqtts://gate%40cam@10.0.0.2:18883").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.tls, c.username.as_deref()),
            ("10.0.0.2", 18883, true, Some("gate@cam"))
        );
        let c = MqttConfig::from_url("mqtt://[::1]:1884/").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.broker()), ("::1", 1884, "mqtt://[::1]:1884".to_string()));
        assert!(c.topic_prefix.starts_with("ebm-gate/") && c.client_id.starts_with("ebm-gate-"));
        for (url, want) in [
            ("mqtt://u:secret@host", "a password in the URL"),
            ("mqtt://u:secret@host:12/x", "\"mqtt://u:***@host:12/x\""),
            ("http://host", "scheme http:// is not MQTT"),
            ("mqtt://", "no host"),
            ("host:1883", "scheme host:// is not MQTT"),
            ("mqtt://host/topic", "path, query or fragment"),
            ("mqtt://host:99999", "not a URL"),
            ("broker", "not a URL"),
        ] {
            let e = MqttConfig::from_url(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn settings_are_checked_and_the_password_is_never_printed() {
        let mut c = MqttConfig::from_url("mqtt://h").unwrap();
        c.check().unwrap();
        for (prefix, ok) in
            [("a/b", true), ("a/+/b", false), ("a/#", false), ("$SYS/x", false), ("a/", false), ("", false)]
        {
            c.topic_prefix = prefix.into();
            assert_eq!(c.check().is_ok(), ok, "{prefix:?}");
        }
        c.topic_prefix = "a".into();
        c.password = Some("hunter2".into());
        assert!(c.check().unwrap_err().to_string().contains("without a user name"));
        c.username = Some("gate".into());
        c.check().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        c.ca_file = Some("ca.pem".into());
        assert!(c.check().unwrap_err().to_string().contains("mqtts://"));
        c.ca_file = None;
        c.queue_messages = 0;
        assert!(c.check().is_err());
        c.queue_messages = 10;
        c.reconnect_min = Duration::from_secs(60);
        c.reconnect_max = Duration::from_secs(1);
        assert!(c.check().is_err());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_of_the_lowest_priority_and_counts_them() {
        let mut c = MqttConfig::from_url("mqtt://h").unwrap();
        c.queue_messages = 3;
        c.queue_bytes = 1024;
        let mut s = Shared::new();
        let message = |id: u8, len: usize, priority| Message {
            topic: "t".into(),
            payload: vec![id; len],
            retain: false,
            queued: true,
            priority,
        };
        let ids = |s: &Shared| s.queue.iter().map(|m| m.payload[0]).collect::<Vec<_>>();
        // An event, a summary and a frame, then events: the frame goes first, then the summary,
        // though both are newer than the first event; then the oldest events.
        push(&mut s, message(1, 100, Priority::Event), false);
        push(&mut s, message(10, 100, Priority::Summary), false);
        push(&mut s, message(20, 100, Priority::Frame), false);
        let mut kept = Vec::new();
        for i in 2..5u8 {
            push(&mut s, message(i, 100, Priority::Event), false);
            trim(&mut s, &c);
            kept.push(ids(&s));
        }
        assert_eq!(kept, [vec![1, 10, 2], vec![1, 2, 3], vec![2, 3, 4]]);
        assert_eq!((s.stats.dropped, s.queue_bytes, s.queued_of), (3, 300, [0, 0, 3]));
        // Past the byte limit: 2 goes for the count, then 3 for the bytes (100 + 100 + 900 > 1024).
        push(&mut s, message(40, 900, Priority::Event), false);
        trim(&mut s, &c);
        assert_eq!(ids(&s), [4, 40]);
        assert_eq!((s.stats.dropped, s.queue_bytes, s.queued_of), (5, 1000, [0, 0, 2]));
        assert_eq!(pop(&mut s).map(|m| m.payload[0]), Some(4));
        assert_eq!((s.queue_bytes, s.queued_of), (900, [0, 0, 1]));
    }
}
