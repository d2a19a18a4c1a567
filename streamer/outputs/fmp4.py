"""H.264 in fragmented MP4 for a browser's Media Source Extensions: an init segment (ftyp + moov),
then one fragment (moof + mdat) per frame, each a whole top-level box pair that can be sent alone.

libx264 runs with zero latency (no B-frames, no look-ahead), in the Constrained Baseline profile
every browser decodes, with a keyframe at least every `keyframe_every` frames, so that a viewer who
joins starts from the newest keyframe. ffmpeg's MP4 muxer (`empty_moov+default_base_moof+
frag_keyframe+frag_every_frame`, ISO/IEC 14496-12 movie fragments) writes a frame's fragment once
the next frame arrives, so the stream runs one frame behind the encoder. Timestamps are the frames'
capture times in milliseconds since the first frame's (`origin_s`, wall clock): the browser plays
them at the pace the camera gave them, and a page can tell when the frame it shows was captured.
"""
from __future__ import annotations

import collections
import struct
from fractions import Fraction

import av
import numpy as np

MOVFLAGS = "empty_moov+default_base_moof+frag_keyframe+frag_every_frame"
X264_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "bf": "0", "crf": "26",
                "maxrate": "4M", "bufsize": "4M", "x264-params": "scenecut=0"}


def top_level_boxes(data: bytes | bytearray) -> tuple[list[tuple[bytes, bytes]], int]:
    """The complete top-level MP4 boxes at the start of `data` as (type, whole box), and how many
    bytes they take (ISO/IEC 14496-12 4.2: 32-bit size and type; size 1: a 64-bit size follows)."""
    boxes, offset = [], 0
    while len(data) - offset >= 8:
        size, kind = struct.unpack_from(">I4s", data, offset)
        if size == 1:
            if len(data) - offset < 16:
                break
            size = struct.unpack_from(">Q", data, offset + 8)[0]
        if size < 8:
            raise ValueError(f"MP4 box {kind!r} of size {size}")
        if len(data) - offset < size:
            break
        boxes.append((kind, bytes(data[offset:offset + size])))
        offset += size
    return boxes, offset


def avc_codec(init: bytes) -> str:
    """The RFC 6381 codec string of an init segment's H.264 track, `avc1.PPCCLL` (profile,
    constraint flags, level from its avcC box, ISO/IEC 14496-15 5.3.3.1), as MediaSource wants it."""
    at = init.find(b"avcC")
    if at < 0 or len(init) < at + 8:
        raise ValueError("no avcC box in the init segment")
    profile, constraints, level = init[at + 5:at + 8]
    return f"avc1.{profile:02X}{constraints:02X}{level:02X}"


class H264Fragments:
    """Encode frames (H x W x 3 uint8 BGR, all of one size) into an init segment and fragments."""

    def __init__(self, width: int, height: int, keyframe_every: int):
        self.size = (width, height)
        self.init: bytes | None = None  # once the first frame is in
        self.codec: str | None = None
        self._written = bytearray()
        self._box_pairs: list[bytes] = []
        self._moof: bytes | None = None
        self._keys: collections.deque[bool] = collections.deque()  # muxed packets whose fragment is not out yet
        self._container = av.open(self, "w", format="mp4", options={"movflags": MOVFLAGS})
        self._stream = self._container.add_stream("libx264", rate=1000, options={**X264_OPTIONS, "g": str(keyframe_every)})
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.codec_context.time_base = Fraction(1, 1000)
        self.origin_s: float | None = None  # the wall-clock capture time of media time 0
        self._last_ms = -1

    @property
    def stream(self) -> tuple[bytes, str, float]:
        """(init segment, codec string, origin_s): what a viewer needs to join; there once a fragment is out."""
        assert self.init is not None and self.codec is not None and self.origin_s is not None, "no fragment yet"
        return self.init, self.codec, self.origin_s

    def encode(self, image: np.ndarray, captured_at: float) -> list[tuple[bytes, bool]]:
        """The fragments (bytes, starts with a keyframe) finished by this frame; `captured_at`: its
        capture time, wall clock in seconds (a step back, the clock's, is taken as 1 ms forward)."""
        self.origin_s = captured_at if self.origin_s is None else self.origin_s
        self._last_ms = max(self._last_ms + 1, round((captured_at - self.origin_s) * 1000))
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = self._last_ms
        frame.time_base = Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._keys.append(packet.is_keyframe)
            self._container.mux(packet)
        done, self._box_pairs = self._box_pairs, []
        return [(fragment, self._keys.popleft()) for fragment in done]

    def close(self) -> None:
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            pass  # the trailer of a stream nobody reads any more

    def write(self, data: bytes) -> int:
        """The muxer's output (PyAV calls it): cut into the init segment and moof + mdat pairs."""
        self._written += data
        boxes, used = top_level_boxes(self._written)
        del self._written[:used]
        for kind, box in boxes:
            if self.init is None:
                self._box_pairs.append(box)  # ftyp, then moov: the init segment
                if kind == b"moov":
                    self.init, self._box_pairs = b"".join(self._box_pairs), []
                    self.codec = avc_codec(self.init)
            elif kind == b"moof":
                self._moof = box
            elif kind == b"mdat" and self._moof is not None:
                self._box_pairs.append(self._moof + box)
                self._moof = None
        return len(data)
