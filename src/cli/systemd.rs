//! systemd's service notifications (`sd_notify(3)`, through the `sd-notify` crate) for `stream`
//! run as a `Type=notify` service: `READY=1` once the model is loaded and the settings are
//! checked, `WATCHDOG=1` while frames are judged (at most every half of the unit's
//! `WatchdogSec=`, and never while no frame comes, so systemd restarts a gate whose camera
//! stopped), `STATUS=` with the debounced state, `STOPPING=1` at the end. Outside systemd
//! (`NOTIFY_SOCKET` unset) nothing is sent.

use std::time::{Duration, Instant};

/// Sends a `stream`'s notifications to systemd.
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` is set.
    active: bool,
    /// Half of `WatchdogSec=`, when systemd asked for pings.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
    warned: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, must be ours).
    pub fn from_env() -> Notifier {
        let active = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        #[cfg(unix)]
        let ping_every = if active { sd_notify::watchdog_enabled().map(|d| d / 2) } else { None };
        #[cfg(not(unix))]
        let ping_every = None;
        Notifier { active, ping_every, last_ping: None, warned: false }
    }

    /// How often `WATCHDOG=1` is sent while frames come, when systemd asked for it.
    pub fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    #[cfg(unix)]
    fn send(&mut self, states: &[sd_notify::NotifyState]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            if !self.warned {
                self.warned = true;
                eprintln!("stream: warning: cannot notify systemd through NOTIFY_SOCKET: {e}");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        #[cfg(unix)]
        self.send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
        #[cfg(not(unix))]
        let _ = status;
    }

    /// A frame was judged: `WATCHDOG=1` when the last ping is half a watchdog period old.
    pub fn frame_judged(&mut self) {
        let Some(every) = self.ping_every else { return };
        if self.last_ping.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_ping = Some(Instant::now());
        #[cfg(unix)]
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }

    /// `STATUS=` (what `systemctl status` shows).
    pub fn status(&mut self, status: &str) {
        #[cfg(unix)]
        self.send(&[sd_notify::NotifyState::Status(status)]);
        #[cfg(not(unix))]
        let _ = status;
    }

    /// `STOPPING=1`.
    pub fn stopping(&mut self) {
        #[cfg(unix)]
        self.send(&[sd_notify::NotifyState::Stopping]);
    }
}
