//! `stream --mqtt`: against a real broker (Debian's Mosquitto, started here on a free loopback
//! port with a generated configuration) and a real subscriber (`mosquitto_sub`): the topics and
//! payloads, the last will, a broker killed and restarted mid-stream, TLS with a certificate made
//! here, a password file and an ACL, a full queue, and the errors that exit 2.
//!
//! Skipped, saying so, when `mosquitto` is not installed (`apt install mosquitto
//! mosquitto-clients`), unless `EBM_GATE_REQUIRE_MOSQUITTO` is set (`.ci/run` sets it after
//! installing them).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde_json::Value;

use crate::common::{bundle, ebm_gate};

/// `mosquitto`'s path, or `None` after printing why the test is skipped.
fn mosquitto(test: &str) -> Option<PathBuf> {
    for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() && which("mosquitto_sub") {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var_os("EBM_GATE_REQUIRE_MOSQUITTO").is_some() {
        panic!("{test}: mosquitto and mosquitto_sub are not installed, and EBM_GATE_REQUIRE_MOSQUITTO is set");
    }
    eprintln!("SKIPPED {test}: mosquitto is not installed (apt install mosquitto mosquitto-clients)");
    None
}

fn which(program: &str) -> bool {
    Command::new(program).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Mosquitto broker on 127.0.0.1:`port` with a configuration of `extra` lines, in a folder of
/// its own; killed (SIGKILL) when dropped.
struct Broker {
    exe: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(exe: &Path, extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // As root, Mosquitto drops to the `mosquitto` user, which could not read this folder.
        let user = if unsafe_is_root() { "user root\n" } else { "" };
        let conf = format!(
            "listener {port} 127.0.0.1\n{user}persistence true\npersistence_location {}/\nautosave_interval 0\n{extra}\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker { exe: exe.to_path_buf(), dir, port, child: None };
        b.restart();
        b
    }

    /// Starts it (again), on the same port, and waits until it accepts connections.
    fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("log")).unwrap();
        let child = Command::new(&self.exe)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("the broker to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// Saves its in-memory database (sessions, subscriptions, retained messages) to disk.
    fn save(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
        let db = self.dir.path().join("mosquitto.db");
        wait_for("mosquitto.db", Duration::from_secs(5), || db.exists());
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unsafe_is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// One message as `mosquitto_sub -F '%r %t %p'` prints it.
#[derive(Debug, Clone)]
struct Msg {
    retained: bool,
    topic: String,
    payload: String,
}

/// `mosquitto_sub` on `topic` (QoS 1) with `args` (TLS, login, a persistent session); its
/// messages collected as they come.
struct Subscriber {
    child: Child,
    got: Arc<Mutex<Vec<Msg>>>,
}

impl Subscriber {
    fn start(port: u16, topic: &str, args: &[&str]) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-p", &port.to_string(), "-q", "1", "-t", topic, "-F", "%r %t %p"])
            .args(if args.contains(&"-h") { &[][..] } else { &["-h", "127.0.0.1"][..] })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            for line in out.lines().map_while(|l| l.ok()) {
                let mut parts = line.splitn(3, ' ');
                let (r, t, p) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                sink.lock().unwrap().push(Msg { retained: r == "1", topic: t.into(), payload: p.into() });
            }
        });
        Subscriber { child, got }
    }

    /// Waits until it is subscribed: a probe published on `probe_topic` (under its filter) comes back.
    fn ready(&self, port: u16, probe_topic: &str, pub_args: &[&str]) {
        let start = Instant::now();
        loop {
            let mut cmd = Command::new("mosquitto_pub");
            cmd.args(["-p", &port.to_string(), "-q", "1", "-t", probe_topic, "-m", "probe"]);
            if !pub_args.contains(&"-h") {
                cmd.args(["-h", "127.0.0.1"]);
            }
            let _ = cmd.args(pub_args).stderr(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(150));
            if self.messages().iter().any(|m| m.topic == probe_topic) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the subscriber never got its probe");
        }
    }

    fn messages(&self) -> Vec<Msg> {
        self.got.lock().unwrap().clone()
    }

    /// Non-retained payloads on `topic`, in order of arrival.
    fn live(&self, topic: &str) -> Vec<String> {
        self.messages().into_iter().filter(|m| m.topic == topic && !m.retained).map(|m| m.payload).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 64x48 rgb24 frame the gate accepts at `--threshold -4.5` (the bundled cat photo, E about
/// -5.5), and one it rejects (flat gray, E about -3.4).
fn frames() -> (Vec<u8>, Vec<u8>) {
    let cat = image::open(bundle().join("samples/chelsea.png")).unwrap().to_rgb8();
    let small: RgbImage = image::imageops::resize(&cat, 64, 48, image::imageops::FilterType::Triangle);
    (small.into_raw(), vec![128u8; 64 * 48 * 3])
}

const FRAME_ARGS: [&str; 8] = ["--format", "rgb24", "--size", "64x48", "--threshold", "-4.5", "--stall-timeout", "0"];

/// A running gate: its stdin to feed, its stdout lines collected, its stderr kept.
struct Gate {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Gate {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Gate {
        let model = bundle();
        let mut cmd = ebm_gate();
        cmd.args(["stream", model.to_str().unwrap()]).args(FRAME_ARGS).args(args);
        cmd.env_remove("EBM_GATE_MQTT_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (BufReader::new(child.stdout.take().unwrap()), BufReader::new(child.stderr.take().unwrap()));
        let sink = Arc::clone(&lines);
        let stdout_reader = std::thread::spawn(move || {
            for line in out.lines().map_while(|l| l.ok()) {
                sink.lock().unwrap().push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
            }
        });
        let sink = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in err.lines().map_while(|l| l.ok()) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Gate { stdin: child.stdin.take(), child, lines, stderr, readers: vec![stdout_reader, stderr_reader] }
    }

    fn feed(&mut self, frame: &[u8], n: usize) {
        let stdin = self.stdin.as_mut().unwrap();
        for _ in 0..n {
            stdin.write_all(frame).unwrap();
        }
        stdin.flush().unwrap();
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    fn of_type(&self, t: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["type"] == t).collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `n` frames are judged.
    fn judged(&self, n: usize) {
        wait_for(&format!("{n} frames judged"), Duration::from_secs(30), || self.of_type("frame").len() >= n);
    }

    /// Closes stdin and waits for the exit code (the stdout and stderr readers finish too).
    fn finish(mut self) -> (i32, Vec<Value>, String) {
        drop(self.stdin.take());
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (code, self.lines(), self.stderr())
    }
}

/// A case of a table of runs: flags, environment, what the message must say.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

fn json_strings(lines: &[Value], t: &str) -> Vec<String> {
    lines.iter().filter(|l| l["type"] == t).map(|l| l.to_string()).collect()
}

/// The payloads as JSON, re-serialised the way `Value` prints (key order, numbers) to compare
/// with stdout's lines.
fn reserialised(payloads: &[String]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap_or_else(|e| panic!("{e}: {p}")).to_string())
        .collect()
}

#[test]
fn events_state_summaries_and_rejected_frames_arrive_on_their_topics_and_the_last_will_says_offline() {
    let Some(exe) = mosquitto("mqtt events") else { return };
    let broker = Broker::start(&exe, "allow_anonymous true");
    let sub = Subscriber::start(broker.port, "cams/#", &[]);
    sub.ready(broker.port, "cams/probe", &[]);
    let (good, bad) = frames();
    let url = broker.url("mqtt", "127.0.0.1");
    let mut gate = Gate::start(&["--mqtt", &url, "--mqtt-topic", "cams/door", "--mqtt-rejected"], &[]);
    // Accepted, rejected, accepted: unknown -> in -> out -> in.
    gate.feed(&good, 8);
    gate.feed(&bad, 8);
    gate.feed(&good, 8);
    let (code, lines, stderr) = gate.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("mqtt: connected to {url}")), "{stderr}");
    let stdout_events = json_strings(&lines, "event");
    let states: Vec<&str> =
        lines.iter().filter(|l| l["type"] == "event").map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["in_distribution", "out_of_distribution", "in_distribution"], "{lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["mqtt"]["dropped"], 0, "{summary}");
    let delivered = summary["mqtt"]["delivered"].as_u64().unwrap();
    assert_eq!(summary["mqtt"]["queued"].as_u64(), Some(delivered), "{summary}");
    // 3 events, 8 rejected frames, the final summary.
    assert_eq!(delivered, 3 + 8 + 1, "{summary}");

    wait_for("the offline availability", Duration::from_secs(5), || {
        sub.live("cams/door/availability").last().is_some_and(|a| a == "offline")
    });
    // Events: the same lines as stdout's, in order.
    assert_eq!(reserialised(&sub.live("cams/door/events")), stdout_events);
    // Rejected frames: the same lines as stdout's frame lines of rejected frames.
    let rejected: Vec<String> = lines
        .iter()
        .filter(|l| l["type"] == "frame" && l["verdict"] == "out_of_distribution")
        .map(|l| l.to_string())
        .collect();
    assert_eq!(rejected.len(), 8);
    assert_eq!(reserialised(&sub.live("cams/door/rejected")), rejected);
    // The state topic: unknown on connecting, then the changes (a change may be overtaken by
    // the next before it went out: the topic holds the latest); it ends as the run did.
    let state = sub.live("cams/door/state");
    assert_eq!(state.first().map(String::as_str), Some("unknown"), "{state:?}");
    assert_eq!(state.last().map(String::as_str), Some("in_distribution"), "{state:?}");
    let mut want = states.iter();
    assert!(state[1..].iter().all(|s| want.any(|w| *w == s.as_str())), "{state:?} is not in the order of {states:?}");
    // The summary: the final line with the counts as they were when it was queued.
    let published = sub.live("cams/door/summary");
    assert_eq!(published.len(), 1, "{published:?}");
    let p: Value = serde_json::from_str(&published[0]).unwrap();
    for key in ["final", "frames", "rejected", "state", "state_changes", "alarms", "stopped"] {
        assert_eq!(p[key], summary[key], "{key}: {p} vs {summary}");
    }
    assert_eq!((p["mqtt"]["connected"].as_bool(), p["mqtt"]["dropped"].as_u64()), (Some(true), Some(0)), "{p}");
    assert_eq!(sub.live("cams/door/availability"), ["online", "offline"]);

    // A late subscriber gets the retained state and availability.
    let late = Subscriber::start(broker.port, "cams/door/#", &[]);
    wait_for("retained messages", Duration::from_secs(5), || late.messages().len() >= 2);
    let mut retained: Vec<(String, String)> =
        late.messages().into_iter().filter(|m| m.retained).map(|m| (m.topic, m.payload)).collect();
    retained.sort();
    assert_eq!(
        retained,
        [
            ("cams/door/availability".to_string(), "offline".to_string()),
            ("cams/door/state".to_string(), "in_distribution".to_string())
        ]
    );

    // A heartbeat on PREFIX/summary; then the gate killed: the broker publishes its last will.
    let mut gate = Gate::start(&["--mqtt", &url, "--mqtt-topic", "cams/yard", "--summary-every", "0.2"], &[]);
    gate.feed(&good, 6);
    gate.judged(6);
    wait_for("a heartbeat", Duration::from_secs(10), || !sub.live("cams/yard/summary").is_empty());
    let beat: Value = serde_json::from_str(&sub.live("cams/yard/summary")[0]).unwrap();
    assert_eq!((beat["final"].as_bool(), beat["mqtt"]["connected"].as_bool()), (Some(false), Some(true)), "{beat}");
    assert_eq!(sub.live("cams/yard/availability"), ["online"]);
    gate.child.kill().unwrap();
    gate.child.wait().unwrap();
    wait_for("the last will", Duration::from_secs(5), || sub.live("cams/yard/availability").len() == 2);
    assert_eq!(sub.live("cams/yard/availability"), ["online", "offline"], "{}", broker.log());
}

#[test]
fn a_broker_killed_and_restarted_mid_stream_loses_no_state_change_and_the_gate_never_pauses() {
    let Some(exe) = mosquitto("mqtt restart") else { return };
    let mut broker = Broker::start(&exe, "allow_anonymous true");
    // A persistent session (clean session off, QoS 1), saved to the broker's database before it
    // is killed: what the gate publishes while the subscriber is not back yet waits for it.
    let sub = Subscriber::start(broker.port, "plant/#", &["-c", "-i", "restart-test-sub"]);
    sub.ready(broker.port, "plant/probe", &[]);
    broker.save();
    let (good, bad) = frames();
    let url = broker.url("mqtt", "127.0.0.1");
    let args = ["--mqtt", &url, "--mqtt-topic", "plant/cam", "--mqtt-reconnect-max", "1", "--summary-every", "0.25"];
    let mut gate = Gate::start(&args, &[]);
    gate.feed(&good, 10);
    gate.judged(10);
    wait_for("the first state change", Duration::from_secs(10), || !sub.live("plant/cam/events").is_empty());

    // Killed: two state changes, 20 frames and heartbeats while it is down.
    broker.kill();
    let down = Instant::now();
    gate.feed(&bad, 10);
    gate.feed(&good, 10);
    gate.judged(30);
    wait_for("the lost connection", Duration::from_secs(10), || gate.stderr().contains("connection lost"));
    std::thread::sleep(Duration::from_millis(600)); // heartbeats queue up
    let judged_while_down = gate.of_type("frame").len() - 10;
    broker.restart();
    let outage = down.elapsed();
    wait_for("the reconnection", Duration::from_secs(10), || gate.stderr().matches("connected to").count() >= 2);
    // And one more change after it.
    gate.feed(&bad, 10);
    let (code, lines, stderr) = gate.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(judged_while_down, 20, "the gate judged every frame while the broker was down");

    let stdout_events = json_strings(&lines, "event");
    assert_eq!(stdout_events.len(), 4, "{stdout_events:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["frames"], 40);
    let m = &summary["mqtt"];
    assert_eq!(
        (m["dropped"].as_u64(), m["pending"].as_u64(), m["connections"].as_u64()),
        (Some(0), Some(0), Some(2)),
        "{m}"
    );
    assert_eq!(m["delivered"], m["queued"], "{m}");
    // Every state change arrived, in order (QoS 1 is at least once: a message sent again
    // after the reconnection may come twice).
    wait_for("the last state change", Duration::from_secs(10), || sub.live("plant/cam/events").len() >= 4);
    let mut got = reserialised(&sub.live("plant/cam/events"));
    got.dedup();
    assert_eq!(got, stdout_events, "outage {outage:?}\n{stderr}");
    // Heartbeats taken during the outage arrived too, with the frames judged by then.
    let beats: Vec<Value> = sub.live("plant/cam/summary").iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    assert!(
        beats.iter().any(|b| b["final"] == false && b["mqtt"]["connected"] == false && b["frames"] == 30),
        "{beats:?}"
    );
    assert_eq!(sub.live("plant/cam/state").last().map(String::as_str), Some("out_of_distribution"));
    eprintln!(
        "mqtt restart: {} of {} messages delivered across an outage of {:.2} s; events: {} sent, {} received",
        m["delivered"],
        m["queued"],
        outage.as_secs_f64(),
        stdout_events.len(),
        got.len()
    );
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 (EC P-256), made with the
/// `openssl` command; returns (ca.pem, server.pem, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ebm-gate test CA"]);
    run(&ca);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    run(&req);
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
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
        "ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn tls_with_a_password_file_and_acl_admits_the_gate_and_refuses_clients_without_credentials() {
    let Some(exe) = mosquitto("mqtt tls") else { return };
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let pw = certs.path().join("passwords");
    for (i, (user, pass)) in [("gate", "s3cret gate"), ("reader", "r3ader")].iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        assert!(cmd.arg("-b").arg(&pw).args([user, pass]).status().unwrap().success());
    }
    let acl = certs.path().join("acl");
    std::fs::write(&acl, "user gate\ntopic write site/#\n\nuser reader\ntopic read site/#\n").unwrap();
    let conf = format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\ncafile {}\ncertfile {}\nkeyfile {}",
        pw.display(),
        acl.display(),
        ca.display(),
        cert.display(),
        key.display()
    );
    let broker = Broker::start(&exe, &conf);
    let port = broker.port.to_string();
    let ca_s = ca.to_str().unwrap();

    // No credentials: the broker refuses the client.
    let anon = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port, "--cafile", ca_s, "-t", "site/#", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&anon.stderr);
    assert!(!anon.status.success() && why.contains("not authorised"), "{why}");

    let reader = ["-h", "localhost", "--cafile", ca_s, "-u", "reader", "-P", "r3ader"];
    let sub = Subscriber::start(broker.port, "site/#", &reader);
    // The reader may not write: its probe is dropped; the gate's user writes one.
    sub.ready(broker.port, "site/probe", &["-h", "localhost", "--cafile", ca_s, "-u", "gate", "-P", "s3cret gate"]);

    let (_, bad) = frames();
    let url = format!("mqtts://gate@localhost:{port}");
    let password_file = certs.path().join("gate-password");
    std::fs::write(&password_file, "s3cret gate\n").unwrap();
    let pf = password_file.to_str().unwrap();
    // The password from a file, then from the environment.
    for (extra, env) in
        [(vec!["--mqtt-password-file", pf], vec![]), (vec![], vec![("EBM_GATE_MQTT_PASSWORD", "s3cret gate")])]
    {
        let mut args = vec!["--mqtt", &url, "--mqtt-ca", ca_s, "--mqtt-topic", "site/cam"];
        args.extend(extra);
        let before = sub.live("site/cam/events").len();
        let mut gate = Gate::start(&args, &env);
        gate.feed(&bad, 6);
        let (code, lines, stderr) = gate.finish();
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("mqtts://gate@localhost:") && stderr.contains("connected"), "{stderr}");
        let summary = lines.last().unwrap();
        assert_eq!(summary["mqtt"]["delivered"], summary["mqtt"]["queued"], "{summary}");
        wait_for("the event", Duration::from_secs(5), || sub.live("site/cam/events").len() > before);
        assert_eq!(reserialised(&sub.live("site/cam/events")[before..]), json_strings(&lines, "event"));
    }

    // A wrong password, no password, an untrusted certificate, a name the certificate does not
    // have: exit 2 at start with the reason, before any frame.
    let other_ca = tempfile::tempdir().unwrap();
    let (untrusted, _, _) = certificates(other_ca.path());
    let ip_url = format!("mqtts://gate@127.0.0.2:{port}");
    let plain_url = format!("mqtt://gate@localhost:{port}");
    let cases: Vec<Case> = vec![
        (vec!["--mqtt", &url, "--mqtt-ca", ca_s], vec![("EBM_GATE_MQTT_PASSWORD", "wrong")], "refused"),
        (vec!["--mqtt", &url, "--mqtt-ca", ca_s], vec![], "refused"),
        (vec!["--mqtt", &url, "--mqtt-ca", untrusted.to_str().unwrap(), "--mqtt-password-file", pf], vec![], "TLS"),
        (vec!["--mqtt", &url, "--mqtt-password-file", pf], vec![], "TLS"),
        // 127.0.0.2 does not listen: a network failure, retried while the gate runs.
        (vec!["--mqtt", &ip_url, "--mqtt-ca", ca_s, "--mqtt-password-file", pf], vec![], "warn:cannot connect"),
        // Plain MQTT to the TLS port: the broker drops it; retried, with a hint.
        (vec!["--mqtt", &plain_url, "--mqtt-password-file", pf], vec![], "warn:use mqtts://"),
    ];
    for (args, env, want) in cases {
        let start = Instant::now();
        let (code, lines, stderr) = Gate::start(&args, &env).finish();
        if let Some(warning) = want.strip_prefix("warn:") {
            assert_eq!(code, 0, "{stderr}");
            assert!(stderr.contains(warning) && stderr.contains("the gate goes on"), "{args:?}: {stderr}");
            continue;
        }
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(lines.is_empty(), "{lines:?}");
        let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(error.contains(want) && error.contains("--mqtt mqtts://gate@localhost"), "{args:?}: {error}");
        assert!(!stderr.contains("retrying"), "{args:?}: {stderr}");
        assert!(start.elapsed() < Duration::from_secs(15), "{:?}", start.elapsed());
    }
}

#[test]
fn a_full_queue_drops_the_oldest_rejected_frames_first_and_says_how_many() {
    let Some(exe) = mosquitto("mqtt full queue") else { return };
    let mut broker = Broker::start(&exe, "allow_anonymous true");
    let sub = Subscriber::start(broker.port, "q/#", &["-c", "-i", "queue-test-sub"]);
    sub.ready(broker.port, "q/probe", &[]);
    broker.save();
    broker.kill();
    // The broker is down from the start: the gate says so and runs; 30 rejected frames and a
    // state change are 31 messages for a queue of 5: rejected frames are dropped first.
    let (_, bad) = frames();
    let url = broker.url("mqtt", "127.0.0.1");
    let args = [
        "--mqtt",
        &url,
        "--mqtt-topic",
        "q/cam",
        "--mqtt-rejected",
        "--mqtt-queue",
        "5",
        "--mqtt-reconnect-max",
        "0.5",
    ];
    let mut gate = Gate::start(&args, &[]);
    gate.feed(&bad, 30);
    gate.judged(30);
    let stderr = gate.stderr();
    assert!(stderr.contains("cannot connect to") && stderr.contains("the gate goes on"), "{stderr}");
    broker.restart();
    wait_for("the reconnection", Duration::from_secs(10), || gate.stderr().contains("connected to"));
    let (code, lines, stderr) = gate.finish();
    assert_eq!(code, 0, "{stderr}");
    let m = &lines.last().unwrap()["mqtt"];
    // 31 queued while away (and the final summary after): 26 dropped.
    assert_eq!(
        (m["queued"].as_u64(), m["dropped"].as_u64(), m["delivered"].as_u64()),
        (Some(32), Some(26), Some(6)),
        "{m}"
    );
    wait_for("the report of drops", Duration::from_secs(10), || {
        sub.live("q/cam/events").iter().any(|e| e.contains("26 messages dropped"))
    });
    // Rejected frames went first: the state change is kept, with the newest 4 rejected frames.
    let frames_sent: Vec<String> = lines.iter().filter(|l| l["type"] == "frame").map(|l| l.to_string()).collect();
    wait_for("the kept frames", Duration::from_secs(10), || sub.live("q/cam/rejected").len() >= 4);
    assert_eq!(reserialised(&sub.live("q/cam/rejected")), frames_sent[26..]);
    wait_for("the state change", Duration::from_secs(10), || {
        sub.live("q/cam/events").iter().any(|e| e.contains("state_change"))
    });
    let events: Vec<String> =
        reserialised(&sub.live("q/cam/events")).into_iter().filter(|e| e.contains("state_change")).collect();
    assert_eq!(events, json_strings(&lines, "event"));
    // The state topic is right all the same: published on connecting.
    assert_eq!(sub.live("q/cam/state").last().map(String::as_str), Some("out_of_distribution"));
}

#[test]
fn mqtt_settings_are_checked_before_the_model_is_loaded_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("empty");
    std::fs::write(&pf, "").unwrap();
    let missing = dir.path().join("missing");
    let cases: Vec<Case> = vec![
        (vec!["--mqtt", "http://h"], vec![], "scheme http:// is not MQTT"),
        (vec!["--mqtt", "mqtt://u:pw@h"], vec![], "a password in the URL"),
        (vec!["--mqtt", "mqtt://h/x"], vec![], "path, query or fragment"),
        (vec!["--mqtt", "mqtt://h", "--mqtt-topic", "a/#"], vec![], "without +, #"),
        (
            vec!["--mqtt", "mqtt://h", "--mqtt-password-file", pf.to_str().unwrap(), "--mqtt-username", "u"],
            vec![],
            "1 to 4096 bytes",
        ),
        (vec!["--mqtt", "mqtt://h", "--mqtt-password-file", missing.to_str().unwrap()], vec![], "missing"),
        (vec!["--mqtt", "mqtt://h"], vec![("EBM_GATE_MQTT_PASSWORD", "pw")], "without a user name"),
        (vec!["--mqtt", "mqtt://h", "--mqtt-ca", "ca.pem"], vec![], "use mqtts://"),
        (vec!["--mqtt", "mqtts://h", "--mqtt-ca", missing.to_str().unwrap()], vec![], "missing"),
        (vec!["--mqtt", "mqtt://h", "--mqtt-queue", "0"], vec![], "--mqtt-queue 0"),
        (vec!["--mqtt-topic", "a/b"], vec![], "--mqtt <URL>"),
    ];
    for (args, env, want) in cases {
        let (code, _, stderr) = Gate::start(&args, &env).finish();
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: wanted {want:?} in {stderr}");
        assert!(!stderr.contains("stream: rgb24"), "{args:?}: the run started: {stderr}");
        assert!(!stderr.contains("pw@"), "{stderr}");
    }
}
