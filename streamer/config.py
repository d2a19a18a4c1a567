"""Typed configuration: config.yaml parsed once at start-up into pydantic models.

Unknown keys are errors. Every problem becomes one `ConfigError` line naming the file, the key path
and what is wrong, e.g. `config.yaml: models.instance.score_threshold: must be between 0 and 1, got 1.5`.
"""
from __future__ import annotations

import copy
import enum
import ipaddress
import logging
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from streamer import presets
from streamer.errors import ConfigError, InputNotFound
from streamer.frames import LABEL_DIVISOR, Category, Zone
from streamer.uris import redact_uri, redact_url

log = logging.getLogger(__name__)


def _unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _positive_multiple_of_32(value: int) -> int:
    if value <= 0 or value % 32 or value > MAX_INPUT_SIDE:
        raise ValueError(f"must be a positive multiple of 32, at most {MAX_INPUT_SIDE}")
    return value


def _home(value: str) -> str:
    """`~` and `~user` at the start of a path mean the home folder, as in a shell."""
    return os.path.expanduser(value) if value.startswith("~") else value


Unit = Annotated[float, AfterValidator(_unit_interval)]
UserPath = Annotated[str, AfterValidator(_home)]  # a path a user writes: ~ is their home
Mult32 = Annotated[int, AfterValidator(_positive_multiple_of_32)]
MAX_INPUT_SIDE = 8192  # pixels: beyond this a network input does not fit in memory
DAY_S = 86400.0
MIN_SEGMENT_S = 0.1
FIRST_CONNECT_S = 30.0  # how long a never-connected source keeps trying, by default, outside systemd
MIN_BUDGET = 1_000_000  # bytes: output.max_bytes below this cannot hold one segment of a real camera
TOKEN_VARIABLE = "STREAMER_TOKEN"  # the server's token, when server.token is not set
LIVE_SEGMENT_SECONDS = 60.0  # a live source records in segments this long unless output.segment_seconds says otherwise
PER_CAMERA = ("calibration", "lines", "zones")  # source keys in the pixels of one camera: never shared by `source:` beside `sources:`

Coordinate = Annotated[float, Field(ge=-MAX_INPUT_SIDE, le=2 * MAX_INPUT_SIDE)]
Point = tuple[Coordinate, Coordinate]  # x, y in pixels of the source's frames, y down
CountName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")]
RGB = tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)]]
Channel = Annotated[float, Field(ge=0, le=255)]
Spread = Annotated[float, Field(gt=0, le=255)]
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # ImageNet's RGB mean and std on the 0-255 scale, as smp's and timm's encoders expect
IMAGENET_STD = (58.395, 57.12, 57.375)
TrackerName = Literal["ocsort", "bytetrack", "sort"]  # the trackers library's associations (inference/tracking.py builds each)
TRACKERS: tuple[str, ...] = get_args(TrackerName)
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LogFormat = Literal["text", "json"]
Backend = Literal["torch", "onnxruntime", "openvino"]  # what runs a network (streamer.inference.backends)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)


MIN_ZONE_THICKNESS = 0.5  # pixels: a zone thinner than this everywhere holds no pixel's centre


def _thickness(points: tuple[Point, ...]) -> float:
    """How far a polygon's points stray, at most, from the line through its first point and the
    point farthest from it, in pixels: 0 when they all lie on one line."""
    (x0, y0) = points[0]
    far = max(points, key=lambda p: math.hypot(p[0] - x0, p[1] - y0))
    dx, dy = far[0] - x0, far[1] - y0
    length = math.hypot(dx, dy)
    return max(abs(dx * (y - y0) - dy * (x - x0)) / length for x, y in points) if length else 0.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every number finite


class ClassSpec(Strict):
    name: str = Field(min_length=1, description="category name")
    isthing: bool = Field(default=False, description="countable objects (each its own instance) rather than stuff")
    color: RGB = Field(description="RGB colour of the category in the overlay")


class SemanticModel(Strict):
    arch: str = Field(default="Unet", description="any segmentation_models_pytorch architecture name (with a save_pretrained folder "
                      "or hub id: must match its config.json)")
    encoder: str = Field(default="resnet18", description="encoder name (smp)")
    weights: UserPath = Field(
        default="none",
        description="`demo` (bundled, see `streamer/inference/weights/MODEL_CARD.md`; ignores arch and encoder), `none` (random init), "
        "a `.safetensors`/`.pth` state dict, an smp `save_pretrained` folder, or a hub id in the Hugging Face cache "
        "(`streamer models fetch`)",
    )
    input_size: tuple[Mult32, Mult32] = Field(default=(512, 288), description="`[width, height]` fed to the network (multiples "
                                                 "of 32); frames are stretched to it, logits resized back to the frame")
    mean: tuple[Channel, Channel, Channel] = Field(default=IMAGENET_MEAN, description="RGB mean subtracted before the network, on the "
                                                   "0-255 scale (ImageNet's, as smp's encoders and the presets' checkpoints expect)")
    std: tuple[Spread, Spread, Spread] = Field(default=IMAGENET_STD,
                                               description="RGB standard deviation divided by after the mean, 0-255 scale")
    classes: tuple[ClassSpec, ...] = Field(min_length=1, description="the panoptic category table in the model's "
                                            "output order (ids 1, 2, ...): `name`, `isthing`, `color` (RGB)")
    backend: Backend = Field(default="torch", examples=["openvino"], description="what runs the network: `torch`, or an "
                             "export of it run by `onnxruntime` (`pip install 'streamer[onnx]'`) or `openvino` (`streamer[openvino]`), "
                             "faster on a CPU (see [Faster on a CPU](#faster-on-a-cpu)); made and checked against torch once per "
                             "weights and input size by `streamer models export`, or by the first run, in the user's cache")

    @field_validator("classes")
    @classmethod
    def _unique_names(cls, classes: tuple[ClassSpec, ...]) -> tuple[ClassSpec, ...]:
        names = [c.name for c in classes]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"class names must be unique, repeated: {', '.join(duplicated)}")
        return classes


class InstanceModel(Strict):
    arch: Literal["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"] = Field(default="maskrcnn_resnet50_fpn",
                                                                               description="the torchvision Mask R-CNN builder")
    weights: UserPath = Field(default="none", description="`demo` (bundled; ignores arch), `none` (random init), `coco` (torchvision's "
                              "COCO weights from torch's cache), or a `.safetensors`/`.pth` state dict")
    classes: tuple[str, ...] | None = Field(
        default=None, min_length=1,
        description="the instance model's class names in label order from label 1 (label 0 is the background), for a Mask R-CNN "
        "fine-tuned on your own classes; checked against the weights' box classifier; `class_map` then maps these names; "
        "`null`: COCO's 90 (torchvision weights), or the demo's 2",
    )
    min_size: int = Field(default=800, ge=32, le=MAX_INPUT_SIDE, description="Mask R-CNN resizes the shorter side to this "
                          "(torchvision's default 800 upsamples small streams)")
    max_size: int = Field(default=1333, ge=32, le=MAX_INPUT_SIDE, description="... and the longer side to at most this "
                          "(torchvision's default 1333)")
    score_threshold: Unit = Field(default=0.5, description="detections below are dropped inside the model and by fusion")
    detections_per_image: int = Field(default=100, ge=1, le=999, description="the most detections the model keeps per frame; a "
                                      "frame that reaches it is counted in `streamer_detections_capped_frames_total`")
    proposals_pre_nms: int | None = Field(default=None, ge=1, le=100_000, description="region proposals per feature level before "
                                          "non-maximum suppression; `null`: the model's own (torchvision 1000, demo 600)")
    proposals: int | None = Field(default=None, ge=1, le=100_000, description="region proposals the box head scores per frame "
                                  "(fewer: faster, may miss objects in crowded frames); `null`: the model's own (torchvision 1000, "
                                  "demo 300)")
    backend: str = Field(default="torch", description="what runs Mask R-CNN: `torch` only for now (an export is not wired in; "
                         "see [Faster on a CPU](#faster-on-a-cpu))")
    class_map: dict[str, str | tuple[str, ...]] = Field(
        default_factory=dict,
        description="instance class (COCO or demo name) -> panoptic category, or a list of categories: the one the semantic model shows "
        "most under the instance's mask wins (the first on a tie or when it shows none; `cityscapes` maps `person: [person, rider]`, "
        "as COCO has no rider); unmapped classes are ignored",
    )

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        names = classes or ()
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"class names must be unique, repeated: {', '.join(repeated)}")
        return classes

    @field_validator("backend")
    @classmethod
    def _torch_only(cls, backend: str) -> str:
        if backend != "torch":
            raise ValueError(f"{backend}: Mask R-CNN runs in torch only for now (its ONNX export breaks on dynamic shapes, "
                             "torchvision issues 2311 and 8937); models.semantic.backend takes onnxruntime and openvino")
        return backend

    @field_validator("class_map")
    @classmethod
    def _candidates_listed(cls, class_map: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
        empty = sorted(name for name, target in class_map.items() if not target)
        if empty:
            raise ValueError(f"{empty[0]}: maps to no category")
        return class_map

    def candidates(self, name: str) -> tuple[str, ...]:
        """The categories an instance class may become, the default first (empty: ignored)."""
        target = self.class_map.get(name, ())
        return (target,) if isinstance(target, str) else target


class Models(Strict):
    preset: str = Field(default=presets.DEFAULT, description=(
        f"a model pairing (see [Real footage](#real-footage), `streamer models list`): {', '.join(f'`{n}`' for n in presets.names())}, "
        f"or `{presets.NONE}` (every key below from the file). The `models.*` defaults below are the `{presets.DEFAULT}` preset's; "
        "keys set in the file or with `--set` override the preset's (a list or map replaces the preset's whole)"))
    semantic: SemanticModel = Field(description="the semantic model (segmentation_models_pytorch): a class for every pixel")
    instance: InstanceModel = Field(default=InstanceModel(), description="the instance model (torchvision Mask R-CNN): a mask per object")

    @model_validator(mode="before")
    @classmethod
    def _preset_under_explicit_keys(cls, raw: Any) -> Any:
        """The preset's models section, with the keys written here laid over it (presets.merge)."""
        if not isinstance(raw, dict):
            return raw
        name = raw.get("preset", presets.DEFAULT)
        if name is None or name == presets.NONE:
            return {**raw, "preset": presets.NONE}
        try:
            preset = presets.get(str(name))
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return {**presets.merge(preset.models, raw), "preset": preset.name}

    @model_validator(mode="after")
    def _class_map_targets_things(self) -> Models:
        things = {c.name for c in self.semantic.classes if c.isthing}
        for source_name in self.instance.class_map:
            for target in self.instance.candidates(source_name):
                if target not in things:
                    raise ValueError(
                        f"instance.class_map.{source_name}: '{target}' is not a thing class of models.semantic.classes "
                        f"(things: {', '.join(sorted(things)) or 'none'})"
                    )
        return self


class Fusion(Strict):
    mask_threshold: Unit = Field(default=0.5, description="mask probability that counts as inside")
    overlap_threshold: Unit = Field(default=0.5, description="an instance more than this fraction covered by better ones is dropped")
    stuff_area_min: int = Field(default=1024, ge=0, le=MAX_INPUT_SIDE**2, description="stuff regions smaller than this (pixels, "
                                "frame resolution) become void")
    label_divisor: int = Field(default=LABEL_DIVISOR, ge=2, le=65536, description="panoptic value = "
                               "`category_id * label_divisor + instance_id`")


class Reconnect(Strict):
    max_attempts: int | None = Field(default=None, ge=1, le=10**9, description="reconnect attempts in a row before the run "
                                         "fails; `null`: forever")
    initial_delay_s: float = Field(default=1.0, ge=0.01, le=3600,
                                   description="first backoff delay; it doubles (with jitter) up to `max_delay_s`")
    max_delay_s: float = Field(default=30.0, ge=0.01, le=3600, description="the longest backoff delay")
    healthy_after_s: float = Field(default=30.0, gt=0, le=DAY_S, description="streaming this long resets the backoff")
    first_connect_s: float | Literal["auto"] | None = Field(
        default="auto", description="a live source that has not delivered a frame since the start gives up after this long, with its "
        f"failure's exit code; `null`: retries forever; `auto`: {FIRST_CONNECT_S:g} s, or forever under systemd (`$INVOCATION_ID` set). "
        "A source that has streamed once retries forever (`max_attempts` aside)")

    @field_validator("first_connect_s", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float | str | None:
        if value is None or value == "auto":
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(value, bool) or not 0 < seconds <= DAY_S:
            raise ValueError(f"must be seconds above 0 and at most {DAY_S:g}, \"auto\" or null (forever)")
        return seconds

    def first_connect_window(self) -> float | None:
        """Seconds a never-connected source keeps trying; None: forever."""
        if self.first_connect_s != "auto":
            return self.first_connect_s
        return None if os.environ.get("INVOCATION_ID") else FIRST_CONNECT_S

    @model_validator(mode="after")
    def _ordered(self) -> Reconnect:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(f"max_delay_s ({self.max_delay_s}) must not be below initial_delay_s ({self.initial_delay_s})")
        return self


class BufferPolicy(str, enum.Enum):
    """What the capture thread does when the model falls behind."""

    AUTO = "auto"  # BLOCK for files, DROP_OLDEST for live sources
    BLOCK = "block"  # wait for room: never drop
    DROP_OLDEST = "drop_oldest"  # make room by dropping the oldest queued frame
    LATEST = "latest"  # drop everything queued, keep only the newest frame

    def resolve(self, live: bool) -> BufferPolicy:
        """AUTO made concrete: files never drop, live sources stay fresh."""
        if self is not BufferPolicy.AUTO:
            return self
        return BufferPolicy.DROP_OLDEST if live else BufferPolicy.BLOCK


_STAND_IN = 0xF0000  # a private-use plane: U+F0080..U+F00FF stand for a name's bytes 0x80..0xFF that are not UTF-8 while it is checked


GroundCoordinate = Annotated[float, Field(ge=-100_000, le=100_000)]


class Calibration(Strict):
    """Four image points and the ground points they show: a homography (streamer/analytics/calibration.py)."""

    image: tuple[Point, Point, Point, Point] = Field(description="four points of the frame, `[x, y]` pixels, y down; no three in a row")
    ground: tuple[tuple[GroundCoordinate, GroundCoordinate], tuple[GroundCoordinate, GroundCoordinate],
                  tuple[GroundCoordinate, GroundCoordinate], tuple[GroundCoordinate, GroundCoordinate]] = Field(
        description="where those four points are on the road, `[x, y]` metres in any right-angled frame on the ground, in the same order")

    @model_validator(mode="after")
    def _not_degenerate(self) -> Calibration:
        from streamer.analytics.calibration import homography  # ValueError (one line) on degenerate points

        homography(self.image, self.ground)
        return self


class ZoneSettings(Strict):
    points: tuple[Point, ...] = Field(description="the zone's polygon, `[[x, y], ...]` in pixels of the frames, 3 points or more")
    loitering_s: float | None = Field(default=None, ge=0, le=DAY_S, description="a visit this long (stream seconds) raises a "
                                      "`loitering` event, once per track and visit; `null`: never")


def _zone_form(value: Any) -> str:
    return "settings" if isinstance(value, (dict, ZoneSettings)) else "points"


# a zone is its points, or {points, loitering_s}; the form picks the type, so an error names only that one's problem
ZoneShape = Annotated[Annotated[tuple[Point, ...], Tag("points")] | Annotated[ZoneSettings, Tag("settings")], Discriminator(_zone_form)]


class Source(Strict):
    uri: str = Field(
        min_length=1, examples=["synthetic:street?seed=1000&frames=150", "rtsp://${CAM_USER}:${CAM_PASSWORD}@192.168.1.20/stream"],
        description="what to read: a camera index (`0`) or `/dev/videoN`, a video file, a folder or glob of images, an `rtsp(s)://` "
        "or `http(s)://` URL, or `synthetic:street?seed=S&frames=N&size=WxH&fps=F`; `${NAME}` is replaced by the environment variable "
        "NAME (this key only; never shown expanded)")
    id: str = Field(default="cam0", description="name in logs, metrics and outputs: letters, digits, `_`, `.`, `-`, starting with a letter "
                    "or digit (never a path)")
    buffer: BufferPolicy = Field(default=BufferPolicy.AUTO, description="what capture does when the model falls behind: "
                                 "`block` (never drop), `drop_oldest`, `latest` (keep only the newest); `auto` = block for files, "
                                 "drop_oldest for live")
    queue_size: int = Field(default=2, ge=1, le=1024, description="frames waiting for the model (small keeps live latency low)")
    fps: float | None = Field(default=None, ge=0.01, le=1000, description="set: frame N is at N/fps, for files and folders alike, in "
                              "the video and the export (overrides a wrong header and the container's timestamps); `null`: from the "
                              "stream (25 for images)")
    open_timeout_s: float = Field(default=10.0, ge=0.1, le=3600, description="live sources: FFmpeg open timeout")
    read_timeout_s: float = Field(default=5.0, ge=0.1, le=3600, description="live sources: FFmpeg read timeout")
    stall_timeout_s: float = Field(default=15.0, ge=0.1, le=DAY_S, description="live sources: no frame this long means abandon and reopen")
    rtsp_transport: Literal["tcp", "udp"] = Field(default="tcp", description="RTSP over `tcp` or `udp`")
    live: bool | None = Field(default=None, description="`true`/`false` overrides the guess (`null`): cameras, `rtsp://` and `http(s)://` "
                              "streams are live; files, folders and `http(s)://` URLs that serve a finite file (FFmpeg knows its "
                              "length) are read as files, every frame, to the end")
    on_bad_frame: Literal["skip", "stop"] = Field(default="skip", description="an image in a folder that does not decode: `skip` it "
                                                  "(a warning each, its time slot left empty) or `stop` the run")
    reconnect: Reconnect = Field(default=Reconnect(), description="live sources: how they reconnect, backing off")
    lines: dict[CountName, tuple[Point, Point]] = Field(
        default_factory=dict, examples=[{"north": [[0, 270], [640, 270]]}],
        description="counting lines of this source, `name: [[x, y], [x, y]]` in pixels of its frames: every track whose ground point (the "
        "bottom centre of its box) crosses one is counted once, `in` when it crosses to the right-hand side looking from the first point "
        "to the second (a line drawn left to right: moving down the frame is `in`), else `out`. Needs `tracking.enabled`")
    zones: dict[CountName, ZoneShape] = Field(
        default_factory=dict, examples=[{"crosswalk": [[100, 200], [300, 200], [300, 260], [100, 260]],
                                         "entrance": {"points": [[400, 200], [600, 200], [600, 300]], "loitering_s": 30}}],
        description="counting zones, `name: [[x, y], ...]` (3 points or more), or `name: {points: [...], loitering_s: S}`: every track "
        "whose ground point is inside one is counted once (objects already inside when first seen too), its time inside is measured "
        "(stream time), and a visit of `loitering_s` seconds raises a `loitering` event. Needs `tracking.enabled`")

    calibration: Calibration | None = Field(
        default=None, examples=[{"image": [[250, 320], [590, 320], [450, 203], [315, 203]],
                                 "ground": [[-6.1, 15.2], [6.1, 15.2], [6.1, 38.0], [-6.1, 38.0]]}],
        description="the ground plane of this source: four points of its frames (`image`, pixels) and where they are on the road "
        "(`ground`, metres, in the same order), no three of either set in a row, for speeds (see [Speed, time in zones and "
        "heatmaps](#speed-time-in-zones-and-heatmaps)); `streamer calibrate` helps pick them. `null`: no speeds (a synthetic street "
        "uses its camera's exact calibration)")

    _template: str | None = PrivateAttr(default=None)  # the uri as written, when it names environment variables

    @model_validator(mode="wrap")
    @classmethod
    def _keep_the_template(cls, data: Any, handler) -> Source:
        source = handler(data)
        if isinstance(data, dict) and "${" in str(data.get("uri", "")):
            source._template = data["uri"]
        return source

    @property
    def shown(self) -> str:
        """The uri as it may be shown: as written (`${NAME}`, never its value), secrets hidden."""
        return redact_url(self._template or self.uri)

    @field_validator("lines")
    @classmethod
    def _lines_have_length(cls, lines: dict[str, tuple]) -> dict[str, tuple]:
        short = sorted(name for name, (a, b) in lines.items() if a == b)
        if short:
            raise ValueError(f"{short[0]}: its two points are the same")
        return lines

    def counting_zones(self) -> list[Zone]:
        """The zones as streamer.frames.Zone, in order."""
        return [Zone(name, zone.points, zone.loitering_s) if isinstance(zone, ZoneSettings) else Zone(name, zone)
                for name, zone in self.zones.items()]

    @field_validator("zones")
    @classmethod
    def _zones_are_polygons(cls, zones: dict[str, tuple | ZoneSettings]) -> dict[str, tuple | ZoneSettings]:
        shapes = {name: zone.points if isinstance(zone, ZoneSettings) else zone for name, zone in zones.items()}
        small = sorted(name for name, points in shapes.items() if len(set(points)) < 3)
        if small:
            raise ValueError(f"{small[0]}: a zone needs 3 distinct points or more")
        flat = sorted(name for name, points in shapes.items() if _thickness(points) < MIN_ZONE_THICKNESS)
        if flat:
            raise ValueError(f"{flat[0]}: its points lie on one line, so nothing can ever be inside it; "
                             "a zone needs an area")
        return zones

    @field_validator("id")
    @classmethod
    def _a_name_not_a_path(cls, value: str) -> str:
        """Ids go into file names ({source}): `..`, `.`, a leading dot or a slash would be paths."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError("must be a name of 1-64 letters, digits, '_', '.' or '-' that starts with a letter or digit")
        return value

    @field_validator("uri", mode="before")
    @classmethod
    def _camera_index_as_text(cls, value: object) -> object:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(value, str):  # a name's bytes that are not UTF-8 (surrogate escapes): the string checks refuse them
            value = re.sub("[\udc80-\udcff]", lambda m: chr(ord(m.group()) - 0xDC00 + _STAND_IN), value)
        return value

    @field_validator("uri")
    @classmethod
    def _expand_environment(cls, value: str) -> str:
        """`${NAME}` is replaced by the environment variable NAME, so credentials stay out of the file;
        a leading `~` is the home folder."""

        def lookup(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is not set")
            return os.environ[name]

        return _home(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lookup, value))

    @field_validator("uri")
    @classmethod
    def _bytes_of_the_name_back(cls, value: str) -> str:
        """The bytes _camera_index_as_text stood in for, back as Python holds them (os.fsdecode)."""
        return re.sub(f"[{chr(_STAND_IN + 0x80)}-{chr(_STAND_IN + 0xFF)}]", lambda m: chr(ord(m.group()) - _STAND_IN + 0xDC00), value)


class Render(Strict):
    alpha: Unit = Field(default=0.6, description="opacity of things (each car, each person)")
    stuff_alpha: Unit = Field(default=0.5, description="opacity of stuff (road, building, sky, ...); below `alpha`, "
                              "so that things stand out")
    contours: bool = Field(default=True, description="outline every segment: things in white, stuff regions in their colour lightened "
                           "halfway to white (a grey building or a blue sky barely shows its tint; the outline still marks it)")
    labels: bool = Field(default=True, description="class name and track id of each thing (`car 12`; its score, `car 0.87`, while it has "
                         "no track), sized to the frame: the text line is 1/24 of the frame's shorter side (15 px at 640x360, 45 px at "
                         "1920x1080, never under 12 px); placed most confident first above the box, else inside its top, else below it, "
                         "never over another label and always inside the frame (a label that fits nowhere is left out); things smaller "
                         "than a square of 1/36 of the shorter side (10x10 px at 640x360) get none")
    on_model_device: bool | None = Field(
        default=None, description="draw colours, blend and contours on the models' device, so a GPU sends back only the finished frame "
        "(labels are then drawn on the host); `null`: on with CUDA, off otherwise"
    )


class Output(Strict):
    video: UserPath | None = Field(default=None, description="H.264 MP4 to write (with segments: their name template, `cam.mp4` -> "
                                   "`cam-<UTC start>.mp4`, or a folder); `{source}` is replaced by the source id")
    segment_seconds: float | None = Field(
        default=None, ge=0, le=DAY_S, description=f"record in segments this long (stream time, {MIN_SEGMENT_S:g} s at least); `0`: one "
        f"file; `null`: {LIVE_SEGMENT_SECONDS:g} for live sources, one file otherwise"
    )
    keep_hours: float | None = Field(default=None, gt=0, le=24 * 366 * 100,
                                     description="retention: remove finished segments older than this")
    max_bytes: ByteSize | None = Field(default=None, ge=MIN_BUDGET, description="retention: remove the oldest finished segments beyond "
                                       "this total (`20GB`, `500MiB`; 1MB at least: less holds no segment of a real camera)")
    display: bool = Field(default=False, description="show a live window, one per source (q or Esc stops)")
    export_dir: UserPath | None = Field(default=None, description="COCO panoptic annotations folder (`{source}` is "
                                                     "replaced by the source id)")
    export_images: bool = Field(default=False, description="also write each frame as `images/NNNNNN.jpg` in the "
                                  "export folder, the file `images[].file_name` names")
    min_free_mb: float = Field(default=100.0, ge=0, le=10**9, description="an output folder (video, segments, "
                               "export) with less free space than this is refused at start-up and before each new segment (exit 73); "
                               "retention, where set, removes the oldest segments first")
    overwrite: bool = Field(default=False, description="replace an existing video file or export "
                                "(`--overwrite`); `false`: such a run is refused (exit 73)")

    @field_validator("segment_seconds")
    @classmethod
    def _segments_or_one_file(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_SEGMENT_S:
            raise ValueError(f"must be 0 (one file) or at least {MIN_SEGMENT_S:g}")
        return value

    def segment_length(self, live: bool) -> float:
        """Seconds per segment for a source (0: one file)."""
        if self.segment_seconds is not None:
            return self.segment_seconds
        return LIVE_SEGMENT_SECONDS if live else 0.0


class Tracking(Strict):
    enabled: bool = Field(default=True, description="give every thing a track id that stays while it is "
                                 "visible and across short occlusions (see [Tracking and counting](#tracking-and-counting))")
    tracker: TrackerName = Field(default="ocsort", description="the association, from the `trackers` library: OC-SORT, ByteTrack or SORT")
    max_lost_s: float = Field(default=2.0, gt=0, le=3600, description="a track unseen this long (stream time, so whatever the frame "
                              "rate) ends; an object seen again after that gets a new id. A reconnect ends every track")
    min_hits: int = Field(default=1, ge=1, le=100, description="frames in a row a new object needs before its track "
                                 "id is given (it is labelled with its score until then)")


class Server(Strict):
    """The daemon's HTTP server: /metrics, /healthz, the live view (README, Watching it live)."""

    enabled: bool = Field(default=False, description="the HTTP server: the live view, Prometheus `/metrics` and `/healthz` (see [Watching "
                          "it live](#watching-it-live)); `metrics:` of older files is read as `server:`, with a warning")
    host: str = Field(default="127.0.0.1", min_length=1, description="address to listen on, IPv4 or IPv6 (`::1`, `::` without "
                      "brackets) or a name; anything but loopback (`127.0.0.1`, `::1`, `localhost`) needs a token")
    port: int = Field(default=9108, ge=0, le=65535, description="port (`0`: any free port, logged)")
    token: SecretStr | None = Field(default=None, description="what clients must present (16-256 characters): `Authorization: Bearer "
                                    f"TOKEN`, or `?token=TOKEN` once; `null`: the environment variable `{TOKEN_VARIABLE}`. Never printed")
    allow_unauthenticated: bool = Field(default=False, description="serve other machines without a token, on purpose")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), examples=[["nvr.lan", "192.168.1.20"]],
        description="without a token, the names (and addresses) besides loopback (`localhost`, `127.0.0.1`, `[::1]`) and `host` "
        "that browsers may use to reach the server; a request naming any other host gets 421, so no web page can read the server "
        "through DNS rebinding. Names without port or scheme")

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            try:
                ipaddress.ip_address(name)
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?", name.lower()):
                raise ValueError(f"{name!r} is not a host name or an IP address (no port, scheme, brackets or wildcard)")
        return tuple(name.lower().rstrip(".") for name in names)
    max_viewers: int = Field(default=8, ge=1, le=64, description="live viewers per source at once (MJPEG and video "
                             "together); one more gets 503")
    live_width: int = Field(default=960, ge=64, le=MAX_INPUT_SIDE, description="the live view's largest width in "
                            "pixels (frames are scaled down to it, never up)")
    live_fps: float = Field(default=10.0, gt=0, le=60, description="the live view's highest frame rate")

    _token: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Server:
        if not self.enabled:
            return self
        token = self.token.get_secret_value() if self.token else os.environ.get(TOKEN_VARIABLE) or None
        if token is not None and not 16 <= len(token) <= 256:
            raise ValueError(f"the token ({'server.token' if self.token else TOKEN_VARIABLE}) must be 16 to 256 characters long")
        self._token = token
        if not loopback(self.host) and token is None and not self.allow_unauthenticated:
            raise ValueError(f"host {self.host} is reachable from other machines: set server.token (or {TOKEN_VARIABLE}), "
                             "or server.allow_unauthenticated: true to serve without one on purpose")
        return self

    @property
    def bearer(self) -> str | None:
        """The token clients must present (server.token, else STREAMER_TOKEN); None: none needed."""
        return self._token


def loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Mqtt(Strict):
    """events.mqtt: the broker events are published to (README, Events)."""

    host: str | None = Field(default=None, description="the broker's name or address; `null`: no MQTT")
    port: int = Field(default=1883, ge=1, le=65535, description="the broker's port (8883 is the usual one with TLS)")
    tls: bool = Field(default=False, description="connect over TLS, checking the broker's certificate against the system's CAs")
    username: str | None = Field(default=None, description="user name, when the broker asks for one")
    password: SecretStr | None = Field(default=None, description="password; `${NAME}` is replaced by the environment variable NAME. "
                                       "Never printed")
    client_id: str = Field(default="streamer", pattern=r"^[A-Za-z0-9_.-]{1,48}$", description="MQTT client id of the daemon "
                           "(one connection for every source); give each daemon on a broker its own")
    topic_prefix: str = Field(default="streamer", pattern=r"^[^#+]{1,100}$", description="topics are `PREFIX/SOURCE/KIND`; "
                              "the daemon's availability is `PREFIX/availability` (`online`/`offline`)")
    qos: Literal[0, 1, 2] = Field(default=1, description="MQTT quality of service: `1` (at least once: receivers drop repeats by "
                                  "the event id) or `2`; `0` may lose what is in flight when the connection drops")
    home_assistant: bool = Field(default=False, description="publish Home Assistant MQTT discovery: a device per source with a "
                                 "sensor per line direction, zone and category count and a binary sensor per zone (occupied)")
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_/-]{0,99}$",
                                  description="Home Assistant's MQTT discovery prefix (its `discovery_prefix`)")

    @field_validator("password", mode="before")
    @classmethod
    def _password_from_environment(cls, value: object) -> object:
        return _from_environment(value)


def _from_environment(value: object) -> object:
    """`${NAME}` in a secret's text replaced by the environment variable NAME (an error when it is not set)."""
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        if match.group(1) not in os.environ:
            raise ValueError(f"environment variable {match.group(1)} is not set")
        return os.environ[match.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lookup, value)


EventKind = Literal["source_state", "track_start", "line_crossing", "zone_entry", "zone_exit", "loitering", "track_end", "counts"]


class Webhook(Strict):
    """One of events.webhooks: an HTTP receiver of events (README, Events)."""

    url: str = Field(pattern=r"^https?://[^\s/?#]+", examples=["https://hooks.example.com/streamer"],
                     description="where each event is POSTed as JSON (`http://` or `https://`); never logged with its "
                     "credentials or query")
    kinds: tuple[EventKind, ...] | None = Field(default=None, examples=[["line_crossing", "zone_entry"]],
                                                description="the kinds of event it gets; `null`: all")
    secret: SecretStr | None = Field(default=None, description="signs each body: `X-Streamer-Signature: sha256=HEX`, the "
                                     "HMAC-SHA256 of the raw body; `${NAME}` is replaced by the environment variable NAME. "
                                     "Never printed")
    timeout_s: float = Field(default=5.0, gt=0, le=300, description="how long one POST may take; slower is a failure, retried")

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_from_environment(cls, value: object) -> object:
        return _from_environment(value)


class Events(Strict):
    """events: the event log and where its events go (README, Events)."""

    enabled: bool = Field(default=False, description="log events (tracks, line crossings, zone entries and exits, counts) in "
                          "`dir` and deliver them to the sinks below; needs `tracking.enabled`")
    dir: UserPath = Field(default="events", description="folder of the event log (`events.sqlite`), shared by every source")
    keep_days: float | None = Field(default=7.0, gt=0, le=36600, description="remove events older than this; `null`: keep")
    max_mb: float | None = Field(default=500.0, ge=0.1, le=10**7, description="past this size the oldest events are removed, "
                                 "delivered or not (counted and logged); `null`: no cap")
    snapshots: bool = Field(default=True, description="a picture per event about an object (track start and end, line crossing, "
                            "zone entry and exit): the frame with its outline and label, and a crop around it, in `DIR/snapshots/` "
                            "(counted in `max_mb`, removed with their event); `/api/events/ID/snapshot.jpg`")
    snapshot_width: int = Field(default=960, ge=64, le=7680, description="snapshots are scaled down to at most this many "
                                "pixels wide (the crop is cut from that picture)")
    snapshot_quality: int = Field(default=85, ge=1, le=100, description="JPEG quality of the snapshots (1-100)")
    mqtt: Mqtt = Field(default=Mqtt(), description="publish events to an MQTT broker")
    webhooks: tuple[Webhook, ...] = Field(default=(), examples=[[{"url": "https://hooks.example.com/streamer", "secret": "${HOOK_SECRET}",
                                                                  "kinds": ["line_crossing"]}]],
                                          description="HTTP receivers: a JSON POST per event, in order, retried with backoff")

    @field_validator("webhooks")
    @classmethod
    def _one_per_url(cls, webhooks: tuple[Webhook, ...]) -> tuple[Webhook, ...]:
        urls = [w.url for w in webhooks]
        if len(set(urls)) < len(urls):
            raise ValueError("every webhook needs its own url (each keeps its place in the log by it)")
        return webhooks


SpeedUnit = Literal["kmh", "mph"]


class Speed(Strict):
    enabled: bool = Field(default=True, description="estimate each tracked thing's speed on sources with a `calibration` (and "
                          "synthetic streets): its ground point is the bottom of its mask, mapped to metres")
    unit: SpeedUnit = Field(default="kmh", description="how speeds are shown in the overlay: `kmh` or `mph` (the export, metrics and "
                            "events always carry km/h)")
    window_s: float = Field(default=1.0, ge=0.1, le=60, description="stream time over which a track's ground positions are fitted "
                            "(least squares): longer is steadier and slower to follow a change of speed")
    min_span: Unit = Field(default=0.6, description="a speed is reported once the positions seen span this fraction of `window_s`")
    max_error: float = Field(default=0.05, gt=0, le=10, description="a speed is reported only while its standard error is at most "
                             "this fraction of it: the fit's own, or what half a pixel of each ground point gives if larger (far "
                             "away one pixel spans metres, and no speed is shown there)")
    max_kmh: float = Field(default=250.0, gt=0, le=2000, description="plausibility cap: a faster estimate is marked implausible and "
                           "never reported as a measurement")
    max_kmh_per_category: dict[str, Annotated[float, Field(gt=0, le=2000)]] = Field(
        default_factory=dict, examples=[{"person": 40}], description="the cap for some categories, by name (others: `max_kmh`)")


class ZoneTime(Strict):
    overlay: bool = Field(default=False, description="show each tracked thing's time in the zones it is in on its label "
                          "(`person 4 · crosswalk 12 s`)")


class Heatmap(Strict):
    enabled: bool = Field(default=True, description="per source and category, how often each place was covered by a thing's mask "
                          "(and where ground points passed): served as `/live/{source}/heatmap.png`, written to the export folder at "
                          "the end of a run")
    max_width: int = Field(default=480, ge=8, le=8192, description="cells across the frame at most: a cell is the smallest whole "
                           "number of pixels that keeps the grid this narrow (4 x 4 at 1920x1080)")
    half_life_s: float | None = Field(default=600.0, gt=0, le=10**8, description="exponential decay in stream time: what happened "
                                      "this long ago counts half; `null`: every frame counts for ever")
    overlay: bool = Field(default=False, description="draw the heatmap of every category over the overlay (video, window, live view)")


class Analytics(Strict):
    speed: Speed = Field(default=Speed(), description="speeds from a calibrated ground plane")
    zone_time: ZoneTime = Field(default=ZoneTime(), description="time in zones (each source's `zones`), in stream time")
    heatmap: Heatmap = Field(default=Heatmap(), description="occupancy heatmaps")


class Runtime(Strict):
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
                        description="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:N`")
    half: Literal["auto", "on", "off"] = Field(default="auto", description="fp16 autocast on CUDA (`auto` = on), `on`, `off`")

    @field_validator("half", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        """YAML reads a bare on/off as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    max_frames: int | None = Field(default=None, ge=1, le=10**12, description="stop after this many frames; `null`: at the source's end")
    parallel_frames: int | None = Field(
        default=None, ge=1, le=16, description="frames in the models at the same time, each on its own thread; results keep each "
        "source's order (see [Frames per second](#frames-per-second)); `null`: 1 on CUDA, 2 on a CPU with 2+ cores"
    )
    torch_threads: int | None = Field(default=None, ge=1, le=1024, description="torch CPU threads for each frame in "
                                         "the models; `null`: the cores shared out between those frames")
    max_batch: int = Field(default=1, ge=1, le=64, description="queued frames (from any sources, one per source in "
                                 "turn) run through the models together; results keep each source's order")
    status_interval_s: float = Field(default=10.0, ge=0.1, le=DAY_S, description="status line period when not on a terminal")
    drain_timeout_s: float = Field(default=30.0, gt=0, le=DAY_S, description="how long a graceful stop may keep processing queued frames")
    stage_timeout_s: float = Field(default=60.0, ge=1, le=DAY_S, description="a stage stuck this long stops the systemd "
                                   "watchdog pings and fails `/healthz`")
    log_level: LogLevel = Field(default="info", description="`debug` also prints tracebacks of failures")
    log_format: LogFormat = Field(default="text", description="`json`: one JSON object per line")


class Config(Strict):
    source: Source | None = Field(default=None, description="the source to read; beside `sources`, the options all of them share")
    sources: tuple[Source, ...] = Field(
        default=(), examples=[[{"uri": "rtsp://cam1/stream", "id": "cam1"}, {"uri": "/dev/video0", "id": "cam2"}]],
        description="a list of sources (each like `source`, with its own `id`) in one process; `source` then holds their shared options")
    models: Models = Field(default_factory=lambda: Models.model_validate({}), description="the two models and their category table")
    fusion: Fusion = Field(default=Fusion(), description="how the two models' outputs become one panoptic map: the Panoptic FPN rule "
                           "(see Panoptic fusion, streamer/inference/fusion.py)")
    render: Render = Field(default=Render(), description="the overlay drawn on the video, the window and the live view")
    tracking: Tracking = Field(default=Tracking(), description="ids that follow each object across frames (colours, labels `car 12`, "
                               "counts, export)")
    output: Output = Field(default=Output(), description="what a run writes: a video (in segments, with retention), annotations, a window")
    server: Server = Field(default_factory=lambda: Server.model_validate({}),  # reads STREAMER_TOKEN: not at import
                           description="the HTTP server")
    runtime: Runtime = Field(default=Runtime(), description="device, threads, batching, stopping and logging")
    events: Events = Field(default=Events(), description="events (line crossings, zone entries, tracks, counts): logged on disk, "
                           "then published over MQTT")
    analytics: Analytics = Field(default=Analytics(), description="scene analytics over tracks and masks: speed, time in zones, "
                                 "heatmaps (see [Speed, time in zones and heatmaps](#speed-time-in-zones-and-heatmaps))")

    @model_validator(mode="before")
    @classmethod
    def _metrics_is_now_server(cls, raw: Any) -> Any:
        """`metrics:` (before the live view) is read as `server:`, with a warning, so older files keep working."""
        if not isinstance(raw, dict) or "metrics" not in raw:
            return raw
        if "server" in raw:
            raise ValueError("metrics: is now server: (the same keys and more); give only server:")
        log.warning("config: metrics: is now server: (the same keys and more); rename it")
        return {("server" if key == "metrics" else key): value for key, value in raw.items()}

    @model_validator(mode="before")
    @classmethod
    def _shared_source_options(cls, raw: Any) -> Any:
        """`source:` beside `sources:` gives defaults to every listed source."""
        if not isinstance(raw, dict) or not raw.get("sources"):
            return raw
        shared = {k: v for k, v in (raw.get("source") or {}).items() if k not in ("uri", "id")}
        per_camera = [key for key in PER_CAMERA if shared.get(key)]  # null or {}: what config.yaml writes
        if per_camera:  # pixels of one camera's frames mean nothing in another's
            raise ValueError(f"source.{per_camera[0]} beside sources: belongs to one camera; give it under that camera's "
                             "entry of sources:")
        listed = raw["sources"]
        if not isinstance(listed, list):
            return raw
        items = [{**shared, **item} if isinstance(item, dict) else item for item in listed]
        return {**raw, "source": None, "sources": items}

    @model_validator(mode="after")
    def _one_way_to_name_sources(self) -> Config:
        if self.source is None and not self.sources:
            raise ValueError("source: required key is missing (or give a sources: list)")
        ids = [s.id for s in self.all_sources()]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"sources: every source needs its own id, repeated: {', '.join(repeated)}")
        return self

    @model_validator(mode="after")
    def _counting_needs_tracks(self) -> Config:
        counting = [s.id for s in self.all_sources() if s.lines or s.zones]
        if counting and not self.tracking.enabled:
            raise ValueError(f"source {counting[0]} has counting lines or zones, which need tracking.enabled: true")
        return self

    @model_validator(mode="after")
    def _speed_caps_name_categories(self) -> Config:
        names = {c.name for c in self.models.semantic.classes}
        unknown = sorted(set(self.analytics.speed.max_kmh_per_category) - names)
        if unknown:
            raise ValueError(f"analytics.speed.max_kmh_per_category: {unknown[0]!r} is not a class of models.semantic.classes")
        return self

    @model_validator(mode="after")
    def _events_need_tracks(self) -> Config:
        if self.events.enabled and not self.tracking.enabled:
            raise ValueError("events.enabled needs tracking.enabled: true (events follow tracks)")
        return self

    @model_validator(mode="after")
    def _panoptic_ids_fit(self) -> Config:
        """ids = category * label_divisor + instance: instances must fit below the divisor, and every id in
        the export's PNG (24 bits, COCO panoptic)."""
        divisor, detections = self.fusion.label_divisor, self.models.instance.detections_per_image
        if divisor <= detections:
            raise ValueError(f"fusion.label_divisor ({divisor}) must exceed models.instance.detections_per_image ({detections})")
        if (len(self.models.semantic.classes) + 1) * divisor > 2 ** 24:
            raise ValueError(f"fusion.label_divisor ({divisor}) times the {len(self.models.semantic.classes)} classes does not fit "
                             "the 24 bits of a COCO panoptic PNG; lower it")
        return self

    def all_sources(self) -> tuple[Source, ...]:
        return self.sources or ((self.source,) if self.source else ())

    def categories(self) -> tuple[Category, ...]:
        """The panoptic category table: the semantic classes in order, ids from 1."""
        return tuple(
            Category(id=i + 1, name=c.name, isthing=c.isthing, color=c.color)  # RGB: validated into a tuple of 3
            for i, c in enumerate(self.models.semantic.classes)
        )


def packaged_config_path() -> Path:
    """The default configuration packaged with streamer (the demo models; a copy of config.yaml)."""
    return Path(str(resources.files("streamer") / "default_config.yaml"))


def default_config_path() -> Path:
    """`./config.yaml` if present, else the packaged default."""
    local = Path("config.yaml")
    return local if local.is_file() else packaged_config_path()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, apply `dotted.key=value` overrides, validate. Raises ConfigError (exit 78) or InputNotFound."""
    path = Path(path) if path is not None else default_config_path()
    if not path.is_file():
        raise InputNotFound(f"{path}: config file not found; pass -c FILE or create ./config.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return validate(apply_overrides(raw, overrides), origin=str(path),
                    overridden=[item.partition("=")[0].strip() for item in overrides], file_alone=raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`a.b.c=value` sets raw['a']['b']['c']; the value is read as YAML (so 0.3 is a float, on/off bools)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected dotted.key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
            if re.search("[\ud800-\udfff]", text) and len(text) > 1 and text[0] == text[-1] == "'":
                value = text[1:-1].replace("''", "'")  # a name whose bytes are not UTF-8 (YAML refuses them), as arguments.quote put it
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def validate(raw: dict[str, Any], origin: str = "config", overridden: list[str] | tuple[str, ...] = (),
             file_alone: dict[str, Any] | None = None) -> Config:
    """A Config, or ConfigError naming the first problem and where it came from: `origin` (the
    file), or "command line" when the key was set there (`overridden`: the dotted keys set by
    --set or a flag such as --source), or when a check of several keys fails only because of a
    value set there (`file_alone`: the file's settings without them, where that check passes)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, origin, overridden, file_alone)) from None


def _fails_at(raw: dict[str, Any], loc: tuple) -> bool:
    """Whether these settings fail a check at `loc` (or inside it)."""
    try:
        Config.model_validate(raw)
    except ValidationError as exc:
        return any(tuple(error["loc"][: len(loc)]) == tuple(loc) for error in exc.errors())
    return False


def _first_error(exc: ValidationError, origin: str, overridden: list[str] | tuple[str, ...] = (),
                 file_alone: dict[str, Any] | None = None) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    inside = [key for key in overridden if not where or key.startswith(where + ".")]  # a check over a section
    if where and any(where == key or where.startswith(key + ".") for key in overridden):
        origin = "command line"
    elif inside and file_alone is not None and not _fails_at(file_alone, first["loc"]):
        origin = "command line"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the configuration reference in README.md)"
    elif first["type"] == "missing":
        message = "required key is missing"
    elif "input" in first and isinstance(first["input"], str) and (where.endswith("uri") or "://" in first["input"]):
        message += f", got {redact_url(first['input'])!r}"  # a URL read whole: its password may hold spaces or quotes
    elif "input" in first and not isinstance(first["input"], (dict, list)) and not where.endswith(("token", "password")):
        message += f", got {first['input']!r}"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return redact_uri(f"{origin}: {where + ': ' if where else ''}{message}{more}")  # the value may be a camera URL


def to_yaml(config: Config) -> str:
    """The resolved configuration, as check-config prints it: sources as written (`${NAME}` kept,
    never its value), every URL's secrets hidden."""
    data = config.model_dump(mode="json")
    if config.source is not None:
        data["source"]["uri"] = config.source.shown
    for node, source in zip(data["sources"], config.sources):
        node["uri"] = source.shown
    return redact_uri(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
