//! `stream --mqtt URL`: the flags, and starting the sink ([`ebm_gate::mqtt`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use ebm_gate::mqtt::{FailureKind, FirstAttempt, MqttConfig, MqttSink, MqttStatus};

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "EBM_GATE_MQTT_PASSWORD";

/// MQTT flags of `stream`.
#[derive(Args)]
pub struct MqttArgs {
    /// Publish the debounced state, events and summaries to an MQTT broker:
    /// mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (TLS, 8883), a user as mqtt://USER@HOST
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Topic prefix: PREFIX/state (retained), PREFIX/availability, PREFIX/events,
    /// PREFIX/summary, PREFIX/rejected [default: ebm-gate/<hostname>]
    #[arg(long, value_name = "PREFIX", requires = "mqtt")]
    pub mqtt_topic: Option<String>,
    /// MQTT client id, unique per gate [default: ebm-gate-<hostname>]
    #[arg(long, value_name = "ID", requires = "mqtt")]
    pub mqtt_client_id: Option<String>,
    /// User name for the broker (or mqtt://USER@HOST)
    #[arg(long, value_name = "NAME", requires = "mqtt")]
    pub mqtt_username: Option<String>,
    /// File whose first line is the broker password; without it the password is read from
    /// the environment variable EBM_GATE_MQTT_PASSWORD (never from the command line)
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    pub mqtt_password_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for mqtts:// [default: the system's]
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    pub mqtt_ca: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that authenticate clients by certificate
    #[arg(long, value_name = "FILE", requires_all = ["mqtt", "mqtt_key"])]
    pub mqtt_cert: Option<PathBuf>,
    /// PEM private key of --mqtt-cert
    #[arg(long, value_name = "FILE", requires = "mqtt_cert")]
    pub mqtt_key: Option<PathBuf>,
    /// Also publish the JSON line of every rejected frame on PREFIX/rejected
    #[arg(long, requires = "mqtt")]
    pub mqtt_rejected: bool,
    /// Messages kept while the broker is away; past it the oldest are dropped (counted, and
    /// reported on PREFIX/events after reconnecting)
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub mqtt_queue: usize,
    /// Longest wait between reconnection attempts (from 0.5 s, doubling)
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub mqtt_reconnect_max: f64,
}

impl MqttArgs {
    /// The sink's settings, or `None` without `--mqtt`. Every mistake here exits 2.
    pub fn config(&self) -> Result<Option<MqttConfig>> {
        let Some(url) = &self.mqtt else { return Ok(None) };
        let mut c = MqttConfig::from_url(url)?;
        if let Some(p) = &self.mqtt_topic {
            c.topic_prefix = p.clone();
        }
        if let Some(id) = &self.mqtt_client_id {
            c.client_id = id.clone();
        }
        if let Some(user) = &self.mqtt_username {
            if c.username.as_ref().is_some_and(|u| u != user) {
                bail!("--mqtt-username {user:?} and the user in --mqtt {url:?} differ");
            }
            c.username = Some(user.clone());
        }
        c.password = match &self.mqtt_password_file {
            Some(path) => Some(
                ebm_gate::mqtt::read_password_file(path)
                    .with_context(|| format!("--mqtt-password-file {}", path.display()))?,
            ),
            None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
        };
        c.ca_file = self.mqtt_ca.clone();
        c.client_cert = self.mqtt_cert.clone().zip(self.mqtt_key.clone());
        c.publish_rejected = self.mqtt_rejected;
        c.queue_messages = self.mqtt_queue;
        if !(0.5..=3600.0).contains(&self.mqtt_reconnect_max) {
            bail!("--mqtt-reconnect-max {}: expected 0.5 to 3600 seconds", self.mqtt_reconnect_max);
        }
        c.reconnect_max = Duration::from_secs_f64(self.mqtt_reconnect_max);
        c.reconnect_min = c.reconnect_min.min(c.reconnect_max);
        c.check()?;
        Ok(Some(c))
    }
}

/// Starts the sink and waits for its first connection attempt: a refused login or a failed
/// TLS handshake is a configuration mistake (an error: exit 2); a broker that cannot be reached
/// (not up yet at boot, the network down) is retried in the background while the gate runs.
pub fn start(config: MqttConfig, names: Vec<String>) -> Result<MqttSink> {
    let broker = config.broker();
    let prefix = config.topic_prefix.clone();
    let rejected = config.publish_rejected;
    let wait = config.connect_timeout + Duration::from_secs(1);
    // A refused login or TLS failure before the first connection ends the run (below): it is
    // not announced as retried.
    let mut connected_once = false;
    let on_status = move |status: &MqttStatus| {
        match status {
            MqttStatus::Connected { .. } => connected_once = true,
            MqttStatus::Disconnected { kind: FailureKind::Refused | FailureKind::Tls, .. } if !connected_once => return,
            _ => {}
        }
        eprintln!("stream: {status}");
    };
    let sink = MqttSink::start(config, names, on_status).with_context(|| format!("--mqtt {broker}"))?;
    match sink.wait_first_attempt(wait) {
        FirstAttempt::Connected => {}
        FirstAttempt::Failed { kind: FailureKind::Refused | FailureKind::Tls, error } => {
            bail!("--mqtt {broker}: {error}");
        }
        FirstAttempt::Failed { .. } => {}
        FirstAttempt::Pending => eprintln!(
            "stream: mqtt: no answer from {broker} within {:.0} s; the gate starts, messages are queued",
            wait.as_secs_f64()
        ),
    }
    eprintln!(
        "stream: mqtt: publishing {prefix}/state (retained), {prefix}/availability, {prefix}/events, \
         {prefix}/summary{}",
        if rejected { format!(", {prefix}/rejected") } else { String::new() }
    );
    Ok(sink)
}
