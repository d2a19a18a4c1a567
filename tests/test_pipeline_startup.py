"""The pipeline's start-up: everything it started is closed again when a later step fails, and the
outputs are the caller's (build.outputs), each closed once, in reverse order of starting."""
from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from helpers import make_video

from streamer.config import load_config
from streamer.errors import StreamerError
from streamer.service import build
from streamer.service.pipeline import Pipeline


def _config(fast_config: Path, tmp_path: Path, *extra: str):
    video = make_video(tmp_path / "in.mp4", frames=4)
    return load_config(fast_config, [
        f"source.uri={video}", f"output.video={tmp_path / 'out.mp4'}", f"output.export_dir={tmp_path / 'export'}",
        "server.enabled=true", "server.port=0", *extra,
    ])


def test_a_model_load_that_fails_leaves_no_thread_and_no_lock_behind(fast_config: Path, tmp_path: Path) -> None:
    """The live feed's encoder thread, the server's threads, the output locks and the opened file are
    all started before the models load; a corrupt weights file fails the load, and nothing stays."""
    weights = tmp_path / "broken.safetensors"
    weights.write_bytes(b"not a safetensors file at all")
    config = _config(fast_config, tmp_path, f"models.semantic.weights={weights}")
    before = set(threading.enumerate())
    with pytest.raises(StreamerError):
        Pipeline(config, build.outputs).run()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
    # the locks were released: the same outputs can be taken by the next run, which succeeds
    good = _config(fast_config, tmp_path, "output.overwrite=true")
    assert Pipeline(good, build.outputs).run().exit_code == 0


def test_the_caller_chooses_the_outputs_and_they_are_closed_once_after_the_sink(fast_config: Path, tmp_path: Path) -> None:
    """An output added by the caller gets every frame in order without a picture it did not ask for,
    and is closed exactly once, after its last write."""
    calls: list[str] = []

    class Recorder:
        stage = "recorder"
        needs_picture = False

        def write(self, result, rendered) -> None:
            assert rendered is None  # no output of this source needs the overlay: it is never drawn
            calls.append(f"write {result.frame.index}")

        def close(self) -> None:
            calls.append("close")

    config = load_config(fast_config, [f"source.uri={make_video(tmp_path / 'in.mp4', frames=4)}", "output.video=null",
                                       "output.display=false", "output.export_dir=null"])
    summary = Pipeline(config, lambda config, source, locks: [Recorder()]).run()
    assert summary.exit_code == 0
    assert calls == ["write 0", "write 1", "write 2", "write 3", "close"]


def test_the_server_is_up_before_the_models_and_gone_after_a_failed_start(fast_config: Path, tmp_path: Path, monkeypatch) -> None:
    """A start that fails after the server began listening closes its socket."""
    weights = tmp_path / "broken.safetensors"
    weights.write_bytes(b"\0" * 64)
    config = _config(fast_config, tmp_path, f"models.semantic.weights={weights}")
    pipeline = Pipeline(config, build.outputs)
    ports: list[int] = []
    original = build.server

    def spy(*args, **kwargs):
        server = original(*args, **kwargs)
        ports.append(server.port)
        return server

    monkeypatch.setattr(build, "server", spy)
    with pytest.raises(StreamerError):
        pipeline.run()
    assert ports, "the server was started before the models loaded"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/healthz", timeout=2)


def test_a_source_that_ends_has_its_outputs_closed_while_the_others_go_on(fast_config: Path) -> None:
    """A camera that gave up (here: a short source) gets its recording finished at once, not when the
    last source ends."""
    events: list[tuple[str, str]] = []

    class Recorder:
        stage = "recorder"
        needs_picture = False

        def __init__(self, source_id: str):
            self.source_id = source_id

        def write(self, result, rendered) -> None:
            events.append((self.source_id, "write"))

        def close(self) -> None:
            events.append((self.source_id, "close"))

    config = load_config(fast_config, [
        "source=null", "output.video=null", "output.display=false", "output.export_dir=null",
        "models.semantic.weights=demo", "models.instance.weights=demo",
        "sources=[{uri: 'synthetic:street?frames=2&size=160x96', id: short}, {uri: 'synthetic:street?frames=40&size=160x96', id: long}]",
    ])
    assert Pipeline(config, lambda config, source, locks: [Recorder(source.settings.id)]).run().exit_code == 0
    assert events.count(("short", "close")) == 1 and events.count(("long", "close")) == 1
    assert events.index(("short", "close")) < len(events) - 1 - events[::-1].index(("long", "write"))
