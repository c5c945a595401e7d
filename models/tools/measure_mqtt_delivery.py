"""Delivery of `ebm-gate stream --mqtt` across broker crashes, measured against a real Mosquitto.

A paced feed of 64x48 rgb24 frames alternates phases of an accepted picture (scikit-image's
chelsea, as bundled with the reference model) and a rejected one (flat gray) at --threshold -4.5,
so the debounced state changes every phase. Meanwhile the broker is killed (SIGKILL) --outages
times and started again after --outage-seconds; a `mosquitto_sub` with a persistent session
(QoS 1, saved to the broker's database with SIGUSR1 just before each kill) collects what
arrives. Reported: state changes on stdout vs received on PREFIX/events (distinct, in order),
frames judged during each outage, and the gate's own `mqtt` counts.

Needs `mosquitto`, `mosquitto_sub` (Debian: mosquitto, mosquitto-clients), Pillow, and a built
ebm-gate. Run from the repository root:

    python models/tools/measure_mqtt_delivery.py --binary target/debug/ebm-gate \
        --out docs/mqtt_delivery.json
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

from PIL import Image

PREFIX = "measure/cam"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"the broker never listened on {port}")


class Broker:
    def __init__(self, exe, folder, port):
        self.exe, self.folder, self.port = exe, folder, port
        conf = os.path.join(folder, "mosquitto.conf")
        user = "user root\n" if os.getuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\n{user}allow_anonymous true\npersistence true\n"
                    f"persistence_location {folder}/\nautosave_interval 0\n")
        self.conf, self.proc = conf, None
        self.start()

    def start(self):
        log = open(os.path.join(self.folder, "log"), "a")
        self.proc = subprocess.Popen([self.exe, "-c", self.conf], stdout=log, stderr=log)
        wait_port(self.port)

    def save(self):
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/debug/ebm-gate")
    ap.add_argument("--bundle", default="models/cifar10-airnet")
    ap.add_argument("--mosquitto", default="/usr/sbin/mosquitto")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--phase", type=int, default=25, help="frames per phase (accepted, then rejected, ...)")
    ap.add_argument("--fps", type=float, default=100.0)
    ap.add_argument("--outages", type=int, default=3)
    ap.add_argument("--outage-seconds", type=float, default=2.5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    cat = Image.open(os.path.join(a.bundle, "samples/chelsea.png")).convert("RGB")
    good = cat.resize((64, 48), Image.BILINEAR).tobytes()
    bad = bytes([128]) * (64 * 48 * 3)

    folder = tempfile.mkdtemp(prefix="ebm-gate-mqtt-")
    port = free_port()
    broker = Broker(a.mosquitto, folder, port)
    got = []
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-c", "-i", "measure-sub", "-q", "1",
                            "-t", PREFIX + "/#", "-F", "%r %t %p"], stdout=subprocess.PIPE, text=True)

    def read_sub():
        for line in sub.stdout:
            r, t, p = (line.rstrip("\n").split(" ", 2) + ["", ""])[:3]
            got.append((r == "1", t, p, time.time()))

    threading.Thread(target=read_sub, daemon=True).start()
    while not any(t == PREFIX + "/probe" for _, t, _, _ in got):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", PREFIX + "/probe",
                        "-m", "probe"], check=True)
        time.sleep(0.2)
    broker.save()

    gate = subprocess.Popen([a.binary, "stream", a.bundle, "--format", "rgb24", "--size", "64x48", "--threshold",
                             "-4.5", "--stall-timeout", "0", "--summary-every", "1", "--mqtt",
                             f"mqtt://127.0.0.1:{port}", "--mqtt-topic", PREFIX, "--mqtt-reconnect-max", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines, err = [], []
    threading.Thread(target=lambda: [lines.append((json.loads(l), time.time())) for l in gate.stdout],
                     daemon=True).start()
    threading.Thread(target=lambda: [err.append(l.decode()) for l in gate.stderr], daemon=True).start()

    # Outages spread over the middle of the run: kill at these frame indices.
    kills = [int(a.frames * (k + 1) / (a.outages + 1)) for k in range(a.outages)]
    outages = []
    start = time.time()
    for i in range(a.frames):
        due = start + i / a.fps
        while time.time() < due:
            time.sleep(min(0.002, max(0.0, due - time.time())))
        if i in kills:
            broker.save()
            broker.kill()
            down = time.time()
            threading.Timer(a.outage_seconds, lambda d=down: (broker.start(), outages.append((d, time.time())))).start()
        gate.stdin.write(good if (i // a.phase) % 2 == 0 else bad)
        gate.stdin.flush()
    gate.stdin.close()
    code = gate.wait()
    time.sleep(2.0)
    while len(outages) < len(kills):
        time.sleep(0.1)
    time.sleep(3.0)
    sub.terminate()
    broker.kill()

    out = [l for l, _ in lines]
    summary = out[-1]
    sent = [json.dumps(l, sort_keys=True) for l in out if l["type"] == "event"]
    received = [json.dumps(json.loads(p), sort_keys=True) for r, t, p, _ in got if t == PREFIX + "/events" and not r]
    received = [e for e in received if '"state_change"' in e]
    distinct = []
    for e in received:
        if e not in distinct:
            distinct.append(e)
    frames = [(l, t) for l, t in lines if l["type"] == "frame"]
    judged_down = [sum(1 for l, t in frames if d <= t <= u) for d, u in outages]
    result = {
        "frames": summary["frames"],
        "fps_fed": a.fps,
        "exit": code,
        "outages": [{"seconds": round(u - d, 2), "frames_judged": n} for (d, u), n in zip(outages, judged_down)],
        "state_changes_sent": len(sent),
        "state_changes_received": len(received),
        "state_changes_received_distinct": len(distinct),
        "received_in_order": distinct == sent,
        "summaries_received": sum(1 for r, t, _, _ in got if t == PREFIX + "/summary" and not r),
        "mqtt": summary.get("mqtt"),
        "latency_ms": summary.get("latency_ms"),
        "mosquitto": subprocess.run([a.mosquitto, "-h"], capture_output=True, text=True).stdout.split("\n")[0],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
