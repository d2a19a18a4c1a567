"""`python tests/hanging_worker.py N ARGS...` is `streamer ARGS...` with models that hang: the first
N calls of PanopticModels.predict run the real models, every later call never returns (a stand-in
for a wedged GPU driver or a deadlock in native code). For the systemd watchdog test."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's streamer

from streamer.cli import entry  # noqa: E402
from streamer.inference.models import PanopticModels  # noqa: E402

MARKER = "hanging_worker: this predict call never returns"


def hang_after(calls: int) -> None:
    real = PanopticModels.predict
    lock = threading.Lock()
    made = 0

    def predict(self, images):
        nonlocal made
        with lock:
            made += 1
            hang = made > calls
        if hang:
            print(MARKER, file=sys.stderr, flush=True)
            threading.Event().wait()  # forever
        return real(self, images)

    PanopticModels.predict = predict


if __name__ == "__main__":
    hang_after(int(sys.argv[1]))
    sys.argv = ["streamer", *sys.argv[2:]]
    entry()
