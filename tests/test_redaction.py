"""No secret in any output: every URL shown (logs in text and JSON, errors, check-config) hides its
user-info, query values, fragment and credential-looking path parameters, whatever characters a
password holds."""
from __future__ import annotations

import json

import av
import pytest
import yaml
from helpers import DEMO_MODELS, Daemon, cli_env, free_port, http_get, run_cli, run_in_process, the_error
from mjpeg import MjpegCamera

from streamer.uris import redact_uri

CASES = {
    "userinfo": ("rtsp://admin:hunter2@10.0.0.7:554/stream1", "rtsp://***@10.0.0.7:554/stream1"),
    "unescaped # ? / @ in the password": ("rtsp://admin:hu#n?t/er@2@10.0.0.7/s", "rtsp://***@10.0.0.7/s"),
    "dvr path parameters": ("rtsp://10.0.0.8:554/user=admin&password=hunter2&channel=1&stream=0.sdp",
                            "rtsp://10.0.0.8:554/user=***&password=***&channel=1&stream=0.sdp"),
    "query token": ("http://cam.local/video.mjpg?token=hunter2&res=hd", "http://cam.local/video.mjpg?token=***&res=***"),
    "query without pairs": ("http://cam.local/snap.jpg?hunter2", "http://cam.local/snap.jpg?***"),
    "fragment": ("http://cam.local/live#key=hunter2", "http://cam.local/live#***"),
    "pwd and auth keys": ("http://h/cgi?x=1/pwd=hunter2/auth=hunter2", "http://h/cgi?x=***/pwd=***/auth=***"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_secret_of_a_url_is_hidden(case):
    url, shown = CASES[case]
    assert redact_uri(url) == shown
    assert redact_uri(f"cam0: cannot open {url}; retrying") == f"cam0: cannot open {shown}; retrying"
    assert "hunter2" not in redact_uri(url)


def test_text_without_urls_is_left_alone():
    text = "models ready on cpu in 1.4 s; user=admin is not a URL"
    assert redact_uri(text) == text


SECRET_URLS = [
    "rtsp://127.0.0.1:9/user=admin&password=hunter2&channel=1",
    "rtsp://admin:hu@n'ter2@127.0.0.1:9/stream",  # an unescaped '@' and a quote (an unescaped '#': test_a_password_with_a_hash...)
    "http://127.0.0.1:9/video.mjpg?token=hunter2",
]


@pytest.mark.system
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_camera_that_is_away_never_shows_its_password(fast_config, tmp_path, log_format):
    """Start, every retry and the final error, for cameras that carry a password three ways, from a
    fresh process: what FFmpeg and OpenCV print themselves is checked too."""
    config = yaml.safe_load(fast_config.read_text())
    config.pop("source", None)
    config["sources"] = [{"id": f"cam{index}", "uri": url} for index, url in enumerate(SECRET_URLS)]
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", "-c", str(path), "--set", "source.reconnect.max_attempts=1", "--set", "source.reconnect.initial_delay_s=0.1",
                     "--set", "source.open_timeout_s=1", "--set", f"runtime.log_format={log_format}")
    assert result.returncode != 0
    assert "hunter2" not in result.stderr + result.stdout, result.stderr
    assert "user=***&password=***" in result.stderr or "127.0.0.1:9" in result.stderr
    if log_format == "json":
        assert all(json.loads(line) for line in result.stderr.splitlines() if line.startswith("{"))


@pytest.mark.system
def test_check_config_shows_no_secret_even_from_the_environment(fast_config):
    env = cli_env(CAM_PASSWORD="hunter2")
    for url in [*SECRET_URLS, "rtsp://10.0.0.9/user=admin&password=${CAM_PASSWORD}&channel=1"]:
        result = run_cli("check-config", "-c", str(fast_config), "--set", f"source.uri={url}", env=env)
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout + result.stderr
    # a variable anywhere in the uri shows as written, never its value: in check-config, and in a run's every line
    plain_path = "rtsp://127.0.0.1:9/${CAM_PASSWORD}/stream"
    result = run_cli("check-config", "-c", str(fast_config), "--set", f"source.uri={plain_path}", env=env)
    assert f"uri: {plain_path}" in result.stdout and "hunter2" not in result.stdout
    result = run_cli("run", "-c", str(fast_config), "--set", f"source.uri={plain_path}", "--set", "source.reconnect.max_attempts=1",
                     "--set", "source.reconnect.initial_delay_s=0.1", env=env)
    assert result.returncode != 0 and "${CAM_PASSWORD}" in result.stderr and "hunter2" not in result.stderr
    # a value refused by validation is quoted back without its secrets too
    result = run_cli("check-config", "-c", str(fast_config), "--set", "source.uri=rtsp://a:hunter2@h/${NOT_SET_ANYWHERE}")
    assert result.returncode == 78 and "hunter2" not in result.stderr


@pytest.mark.system
def test_no_output_carries_the_cameras_secret(tmp_path):
    """The video's metadata, the export, /metrics and /healthz of a run on a camera whose URL holds a
    token: the source is named by its id everywhere."""
    video, export, port = tmp_path / "cam.mp4", tmp_path / "export", free_port()
    with MjpegCamera(fps=8) as camera:
        url = f"{camera.url}?user=admin&token=hunter2"
        daemon = Daemon("--source", url, *DEMO_MODELS, "--set", "models.semantic.input_size=[160,96]",
                        "--set", "models.instance.min_size=96", "--set", "models.instance.max_size=160", "--set", "runtime.device=cpu",
                        "--set", "output.segment_seconds=0", "--output", str(video), "--export-dir", str(export),
                        "--set", "server.enabled=true", "--set", f"server.port={port}", "--set", "runtime.status_interval_s=0.5")
        try:
            daemon.wait_processed(2, timeout=120)
            served = http_get(port, "/metrics")[1] + http_get(port, "/healthz")[1]
            assert daemon.terminate() == 0, daemon.text()
        finally:
            daemon.terminate()
    assert "cam0" in served and "hunter2" not in served and "token" not in served
    assert "hunter2" not in daemon.text()
    with av.open(str(video)) as container:
        assert "hunter2" not in json.dumps(container.metadata)
    for path in export.rglob("*.json*"):
        assert "hunter2" not in path.read_text(), path


@pytest.mark.parametrize("text, shown", [
    ("got \"rtsp://admin:pa'ss@h/${NOPE}\"", "got \"rtsp://***@h/${NOPE}\""),  # a quote in the password: still one URL
    ("'rtsp://admin:hunter2@h/x': refused.", "'rtsp://***@h/x': refused."),
    ("(see http://h/x?token=hunter2)", "(see http://h/x?token=***)"),
])
def test_quotes_and_brackets_around_or_inside_a_url_hide_its_secrets(text, shown):
    assert redact_uri(text) == shown


# A password with '#', a query and a fragment: none of these words may appear anywhere.
HASH_SECRETS = ("S3cret", "Pw9x", "T0k3n", "fr4g")


@pytest.mark.system
@pytest.mark.parametrize("url", [
    "rtsp://admin:S3cret#Pw9x@127.0.0.1:1/x?token=T0k3n#fr4g",  # the parser would say "Port could not be cast ... 'S3cret'"
    "rtsp://admin:S3cret?Pw9x@127.0.0.1/x",
    "rtsp://admin:4242#S3cret@127.0.0.1/x",  # would parse: host 'admin', port 4242 (half the password), quoted by every later error
    "rtsp://admin:S3cret@[::1/x?token=T0k3n",  # an IPv6 host never closed
    "file://admin:S3cret@otherhost/x.mp4",
])
def test_a_password_with_a_hash_is_refused_without_quoting_any_secret(tmp_path, url):
    """Through the real command line: run --source, check-config with --set and with a file, and a
    mistyped flag; one clean line each, no part of the user-info, query or fragment in any output."""
    config = tmp_path / "cam.yaml"
    config.write_text(yaml.safe_dump({"source": {"uri": url}}))
    runs = {
        "run --source": (run_cli("run", "--source", url, cwd=tmp_path), 2, "command line"),
        "check-config --set": (run_cli("check-config", "--set", f"source.uri={url}", cwd=tmp_path), 78, "command line: source.uri: "),
        "check-config -c": (run_cli("check-config", "-c", str(config), cwd=tmp_path), 78, f"{config}: source.uri: "),
        "argparse": (run_cli("check-config", "--source", url, cwd=tmp_path), 2, "unrecognized arguments"),
    }
    for name, (result, code, where) in runs.items():
        output = result.stdout + result.stderr
        assert result.returncode == code, (name, output)
        assert "Traceback" not in output and not any(secret in output for secret in HASH_SECRETS), (name, output)
        if code == 78:
            assert where in the_error(result, 78), (name, output)
            assert "%23" in output or "file://" in output or "[" in output


SPACED = "rtsp://admin:S3cret pw'9@127.0.0.1/"


@pytest.mark.parametrize("config", [{"source": SPACED + "x"}, {"sources": [SPACED + "x"]},
                                    {"source": {"uri": SPACED + "${NOT_SET_ANYWHERE}"}}])
def test_a_refused_value_holding_a_url_is_quoted_without_its_secret(tmp_path, config):
    """A URL where a section belongs, or one naming an unset variable: the validation error quotes
    the value, read whole as one URL (its password holds a space and a quote, where a URL in free
    text would end)."""
    path = tmp_path / "cam.yaml"
    path.write_text(yaml.safe_dump(config))
    message = the_error(run_in_process("check-config", "-c", str(path)), 78)
    assert "rtsp://***@127.0.0.1/" in message and "S3cret" not in message and "pw'9" not in message, message
