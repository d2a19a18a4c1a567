"""A real MQTT broker for tests: Debian's mosquitto on 127.0.0.1, and a paho subscriber that keeps what it gets."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:`port` (a free one by default); `users`: name -> password, else anonymous;
    `persistent`: sessions saved every second, so a durable subscriber's subscription outlives a kill."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, port: int | None = None,
                 persistent: bool = False) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.folder, self.port = folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        # no cap on what waits for a slow subscriber (1000 by default, then dropped): the tests count every message
        lines = [f"listener {self.port} 127.0.0.1", "max_queued_messages 0"]
        lines += [f"persistence true\npersistence_location {folder}/\nautosave_interval 1"] if persistent else ["persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it becomes `mosquitto`, who cannot read a password file in the test's folder
        if users:
            passwords = folder / "passwords"
            for i, (name, password) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwords), name, password], check=True,
                               capture_output=True, timeout=30)
            passwords.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.folder / "mosquitto.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.process.poll() is None, (self.folder / "mosquitto.log").read_text()
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen in 10 s")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()


class Subscriber:
    """Subscribes to `topic` (QoS 1) and keeps (topic, payload text, retain) of every message."""

    def __init__(self, port: int, topic: str = "#", username: str | None = None, password: str | None = None,
                 durable: bool = False) -> None:
        """`durable`: a persistent session (clean_session false): the broker queues what comes while it is away."""
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}",
                                  clean_session=False if durable else None)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()  # again after each reconnect: cleared by resubscribed()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the subscriber did not subscribe"

    def resubscribed(self, timeout: float = 10.0) -> bool:
        """Wait for the subscription after the next reconnect (call forget() before the broker comes back)."""
        return self._subscribed.wait(timeout)

    def forget(self) -> None:
        self._subscribed.clear()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def events(self, kind: str | None = None) -> list[dict]:
        """Every event message (not availability, occupancy or discovery), in arrival order."""
        with self._lock:
            got = list(self.messages)
        out = [json.loads(p) for t, p, _ in got if not t.endswith(("/availability", "/config")) and "/occupancy/" not in t and p]
        return [e for e in out if kind is None or e["kind"] == kind]

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
