"""Display windows: the report's Table 2.1, presets, and ``name:center/width`` specs.

A window (center c, width w) clips Hounsfield units to ``[c - w/2, c + w/2]`` and scales that range
to [0, 1]. (The reference report prints the bounds as ``c ± c/2``; that is a typo: its per-image
min-max after clipping equals this fixed scaling whenever the slice spans the window.)

Three kinds of channel exist:

* ``fixed``   -- a window with a given center and width;
* ``default`` -- the file's own WindowCenter (0028,1050) / WindowWidth (0028,1051), first value when
  multi-valued (PS3.3 C.11.2.1.2);
* ``full``    -- the whole HU range of the slice, min-max scaled per slice (the report's CNN input);
* ``hu``      -- no window: the slice's Hounsfield units themselves, int16 (the ``hu`` preset, a store
  layout of its own, windowed when read: ``ichtrain``'s ``windows=``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ichprep.errors import WindowSpecError

__all__ = ["Window", "WINDOW_TABLE", "PRESETS", "HU", "is_hu", "parse_windows", "parse_read_windows", "windows_to_list",
           "windows_from_list"]

_KINDS = ("fixed", "default", "full", "hu")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Window:
    """One output channel. Validates itself on construction."""

    name: str
    kind: str = "fixed"
    center: float | None = None
    width: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise WindowSpecError(
                "Expected a window name of letters, digits, '-' or '_', starting with a letter. "
                f"Received: name={self.name!r}"
            )
        if self.kind not in _KINDS:
            raise WindowSpecError(f"Expected kind in {_KINDS}. Received: kind={self.kind!r}")
        if self.kind == "fixed":
            if self.center is None or self.width is None:
                raise WindowSpecError(
                    f"A fixed window needs a center and a width. Received: center={self.center!r}, "
                    f"width={self.width!r} for window {self.name!r}"
                )
            c, w = float(self.center), float(self.width)
            if not (math.isfinite(c) and math.isfinite(w)) or not usable_window(c, w):
                raise WindowSpecError(
                    f"Expected a center within +-{MAX_CENTER:g} HU and a width in [{MIN_WIDTH:g}, {MAX_WIDTH:g}] HU "
                    f"(the kernels' float32 arithmetic). Received: center={self.center!r}, width={self.width!r} for "
                    f"window {self.name!r}"
                )
            object.__setattr__(self, "center", c)
            object.__setattr__(self, "width", w)
        elif self.center is not None or self.width is not None:
            raise WindowSpecError(
                f"A {self.kind!r} window takes no center or width. Received: center={self.center!r}, "
                f"width={self.width!r}"
            )

    @property
    def bounds(self) -> tuple[float, float]:
        """(lo, hi) in HU for a fixed window."""
        if self.kind != "fixed":
            raise ValueError(f"Window {self.name!r} of kind {self.kind!r} has no fixed bounds")
        return window_bounds(self.center, self.width)

    def to_dict(self) -> dict:
        d: dict = {"name": self.name, "kind": self.kind}
        if self.kind == "fixed":
            d.update(center=self.center, width=self.width)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Window":
        return cls(d["name"], d.get("kind", "fixed"), d.get("center"), d.get("width"))

    def spec(self) -> str:
        if self.kind == "fixed":
            return f"{self.name}:{self.center:g}/{self.width:g}"
        return f"{self.name}:{self.kind}"


# Windows the float32 kernels represent: a width below MIN_WIDTH or beyond MAX_WIDTH (or a centre far outside
# any HU) would overflow 1/width or the bounds and give blank or binary images a verify then rejects.
MAX_CENTER, MIN_WIDTH, MAX_WIDTH = 100_000.0, 0.01, 200_000.0


def usable_window(center: float, width: float) -> bool:
    """A finite centre within +-MAX_CENTER HU and a width in [MIN_WIDTH, MAX_WIDTH] HU."""
    return (math.isfinite(center) and math.isfinite(width) and abs(center) <= MAX_CENTER
            and MIN_WIDTH <= width <= MAX_WIDTH)


def window_bounds(center: float, width: float) -> tuple[float, float]:
    """Clip bounds of a window: ``[c - w/2, c + w/2]``."""
    return center - width / 2.0, center + width / 2.0


# Report Table 2.1, in its order. This order is the RNN's sequence order.
WINDOW_TABLE: tuple[Window, ...] = (
    Window("default", "default"),
    Window("brain", "fixed", 40, 80),
    Window("subdural-min", "fixed", 50, 130),
    Window("subdural-mid", "fixed", 75, 215),
    Window("subdural-max", "fixed", 100, 300),
    Window("tissue-min", "fixed", 20, 350),
    Window("tissue-mid", "fixed", 40, 375),
    Window("tissue-max", "fixed", 60, 400),
    Window("bone", "fixed", 600, 2800),
    Window("grey-white", "fixed", 32, 8),
)
FULL_RANGE = Window("full", "full")
HU = Window("hu", "hu")

PRESETS: dict[str, tuple[Window, ...]] = {
    "cnn": (FULL_RANGE,),
    "rnn": WINDOW_TABLE,
    "hu": (HU,),
}
_BY_NAME = {w.name: w for w in (*WINDOW_TABLE, FULL_RANGE)}


def parse_windows(spec: str) -> tuple[Window, ...]:
    """Parse a preset name (``cnn``, ``rnn``) or a comma-separated list of windows.

    Each item is ``name:center/width`` (e.g. ``brain:40/80``), a name from Table 2.1 alone
    (``bone``), ``name:default`` or ``name:full``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise WindowSpecError(
            f"Expected a preset ({', '.join(PRESETS)}) or windows like 'brain:40/80,bone:600/2800'. "
            f"Received: {spec!r}"
        )
    spec = spec.strip()
    if spec in PRESETS:
        return PRESETS[spec]
    windows = []
    for item in spec.split(","):
        item = item.strip()
        if ":" not in item:
            if item in _BY_NAME:
                windows.append(_BY_NAME[item])
                continue
            raise WindowSpecError(
                f"Unknown window or preset {item!r}: use a preset ({', '.join(PRESETS)}), a Table 2.1 "
                f"name ({', '.join(_BY_NAME)}) or 'name:center/width'. Received: {spec!r}"
            )
        name, _, rest = item.partition(":")
        if rest in ("default", "full"):
            windows.append(Window(name, rest))
            continue
        m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d*)?)\s*/\s*([-+]?\d+(?:\.\d*)?)\s*", rest)
        if not m:
            raise WindowSpecError(
                f"Malformed window {item!r}: expected 'name:center/width' such as 'brain:40/80'. "
                f"Received: {spec!r}"
            )
        windows.append(Window(name, "fixed", float(m.group(1)), float(m.group(2))))
    if any(w.kind == "hu" for w in windows):
        raise WindowSpecError(f"'hu' is a store layout of its own (--preset hu), not a window to list with others. "
                              f"Received: {spec!r}")
    names = [w.name for w in windows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WindowSpecError(f"Window names must be unique; repeated: {dupes}. Received: {spec!r}")
    return tuple(windows)


def is_hu(windows: tuple[Window, ...]) -> bool:
    """True for the ``hu`` layout: one int16 channel of Hounsfield units."""
    return len(windows) == 1 and windows[0].kind == "hu"


def parse_read_windows(spec: str) -> tuple[Window, ...]:
    """Windows applied when an ``hu`` store is read: any build spec (a preset ``cnn``/``rnn`` or a list),
    but not ``hu`` itself."""
    windows = parse_windows(spec)
    if is_hu(windows):
        raise WindowSpecError("Expected windows to apply to an hu store ('cnn', 'rnn' or a list such as "
                              f"'brain:40/80,subdural:80/200,bone:600/2800'). Received: {spec!r}")
    return windows


def windows_to_list(windows: tuple[Window, ...]) -> list[dict]:
    return [w.to_dict() for w in windows]


def windows_from_list(items: list[dict]) -> tuple[Window, ...]:
    return tuple(Window.from_dict(d) for d in items)
