"""Running under systemd: sd_notify over a real unix datagram socket, the watchdog, the unit files."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import DEMO_MODELS, ROOT, Daemon, cli_env, free_port, http_get, make_video, popen_cli, wait_until

HANGING_WORKER = Path(__file__).with_name("hanging_worker.py")


class FakeSystemd:
    """A NOTIFY_SOCKET that records every datagram with its arrival time."""

    def __init__(self, folder: Path):
        self.path = folder / "notify.sock"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.path))
        self.socket.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except socket.timeout:
                continue
            for field in data.decode().splitlines():
                self.messages.append((time.monotonic(), field))

    def times(self, field: str) -> list[float]:
        return [at for at, text in list(self.messages) if text == field]

    def wait_for(self, field: str, timeout: float = 60.0) -> float:
        return wait_until(lambda: self.times(field), timeout, every=0.05, what=lambda: f"no {field}; got {self.messages}")[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.socket.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.close()


@pytest.mark.system
def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path, fast_config, systemd):
    video = make_video(tmp_path / "in.mp4", frames=400, size=(96, 64))
    # WatchdogSec=2: a ping every second, a second of slack for a busy machine (the units ship 120 s)
    env = cli_env(NOTIFY_SOCKET=str(systemd.path), WATCHDOG_USEC="2000000")
    process = popen_cli("run", "-c", str(fast_config), "--source", str(video), *DEMO_MODELS, env=env)
    try:
        ready = systemd.wait_for("READY=1")
        time.sleep(5.0)
        pings = [at for at in systemd.times("WATCHDOG=1") if at > ready]
        assert len(pings) >= 4, systemd.messages
        assert max(b - a for a, b in zip(pings, pings[1:])) < 2.0  # inside WatchdogSec
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stderr.read()
    finally:
        process.kill() if process.poll() is None else None
    # the demo models on a real video: said once, with the way to real models
    assert process.stderr.read().count("the demo models know only synthetic streets") == 1
    stopping = systemd.wait_for("STOPPING=1", timeout=5)
    assert stopping > ready
    assert any(text.startswith("EXTEND_TIMEOUT_USEC=") for _, text in systemd.messages)


@pytest.mark.system
def test_a_hung_worker_stops_the_watchdog_pings(tmp_path, fast_config, systemd):
    video = make_video(tmp_path / "in.mp4", frames=400, size=(96, 64))
    env = cli_env(NOTIFY_SOCKET=str(systemd.path), WATCHDOG_USEC="1000000")
    port = free_port()
    # The models answer 20 calls, then hang in the next one (tests/hanging_worker.py).
    process = subprocess.Popen(
        [sys.executable, str(HANGING_WORKER), "20", "run", "-c", str(fast_config), "--source", str(video), *DEMO_MODELS,
         "--set", "runtime.stage_timeout_s=1.5", "--set", "server.enabled=true", "--set", f"server.port={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        systemd.wait_for("READY=1")

        def quiet_pings() -> list[float]:  # pings go on until the hang, then stop for good
            pings = systemd.times("WATCHDOG=1")
            return pings if pings and time.monotonic() - pings[-1] > 4.0 else []

        pings = wait_until(quiet_pings, timeout=60, every=0.2, what=lambda: f"the pings stopping; got {systemd.messages}")
        time.sleep(2.0)
        assert systemd.times("WATCHDOG=1") == pings  # still none: systemd would restart us now
        status, body = http_get(port, "/healthz")
        assert status == 503 and "stage worker is stuck" in body
    finally:
        process.kill()
        stderr = process.communicate(timeout=30)[1]
    assert "hanging_worker: this predict call never returns" in stderr  # the stand-in's own marker
    assert "worker stuck for over 2 s: withholding the watchdog ping" in stderr


def test_without_notify_socket_nothing_is_sent_and_the_run_is_normal(tmp_path, fast_config):
    from streamer.service.notify import Notifier

    notifier = Notifier(address="")
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()  # silently nothing


def test_abstract_notify_socket(tmp_path):
    from streamer.service.notify import Notifier

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"streamer-test-{time.monotonic_ns()}"
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    notifier = Notifier(address="@" + name)
    notifier.ready("streaming")
    assert receiver.recv(100) == b"READY=1\nSTATUS=streaming"
    receiver.close()


@pytest.mark.system
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not available here")
@pytest.mark.parametrize("unit", ["streamer.service", "streamer@.service"])
def test_units_pass_systemd_analyze_verify(tmp_path, unit):
    text = (ROOT / "systemd" / unit).read_text()
    assert "Type=notify" in text and "RestartPreventExitStatus=78" in text and "\nPrivateDevices=" not in text
    # verify insists that ExecStart exists: point it at this checkout's streamer for the check.
    executable = Path(sys.executable).with_name("streamer")
    text = text.replace("/opt/streamer/.venv/bin/streamer", str(executable))
    name = unit.replace("@.", "@cam1.")
    (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.system
def test_sigterm_during_start_up_exits_cleanly(tmp_path, fast_config):
    video = make_video(tmp_path / "in.mp4", frames=20, size=(96, 64))
    output = tmp_path / "out.mp4"
    daemon = Daemon("-c", str(fast_config), "--source", str(video), "--output", str(output))
    daemon.wait_for(r"\(file, buffer block\)")  # the source is open; the models load next
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.finish(60) == 0, daemon.text()
    assert not list(tmp_path.glob("*.partial"))
