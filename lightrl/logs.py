"""Run outputs: metrics.jsonl, TensorBoard scalar events, optional wandb, and a PNG of the curves.

TensorBoard's event format is written here directly (TFRecord framing + three protobuf
messages, ~40 lines) instead of pulling in the `tensorboard` package (grpcio, protobuf,
werkzeug, ...) just to append scalars; `tensorboard --logdir RUN_DIR` reads the files.
The PNG is drawn with zlib and a 3x5 pixel font for the same reason (no matplotlib).
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
import zlib

# ---- metrics.jsonl + fan-out ------------------------------------------------------------------


class MetricsLog:
    """Writes one JSON line per step (plus TensorBoard / wandb); on resume drops lines past the checkpoint."""

    def __init__(self, run_dir: str, cfg, resume_step: int = 0):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "metrics.jsonl")
        # A crash can leave steps logged after the last checkpoint; the resumed run writes them again.
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self.rows = kept
        self.file = open(self.path, "a")
        self.tb = EventWriter(run_dir)
        self.wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("--wandb needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, name=os.path.basename(run_dir), config=cfg.to_dict(),
                                    dir=run_dir, resume="allow")

    def write(self, metrics: dict) -> None:
        self.rows.append(metrics)
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        step = metrics["step"]
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.scalar(k, float(v), step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()
        plot_curves(self.rows, os.path.join(self.run_dir, "curves.png"))
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl (a torn last line from a crash is ignored)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


# ---- TensorBoard events -----------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class EventWriter:
    """Appends tensorflow.Event records (wall_time=1, step=2, file_version=3, summary=5) holding
    Summary.Value{tag=1, simple_value=2} scalars."""

    def __init__(self, log_dir: str):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.lightrl"
        self.file = open(os.path.join(log_dir, name), "ab")
        self._record(struct.pack("<Bd", 0x09, time.time()) + _field_bytes(3, b"brain.Event:2"))

    def _record(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self.file.write(header + struct.pack("<I", _masked_crc(header)) + event + struct.pack("<I", _masked_crc(event)))

    def scalar(self, tag: str, value: float, step: int) -> None:
        val = _field_bytes(1, tag.encode()) + struct.pack("<Bf", 0x15, value)
        event = struct.pack("<Bd", 0x09, time.time()) + b"\x10" + _varint(step) + _field_bytes(5, _field_bytes(1, val))
        self._record(event)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ---- PNG curves -------------------------------------------------------------------------------

PANELS = [("reward_mean", "eval_accuracy"), ("kl_mean",), ("entropy",), ("completion_len_mean",),
          ("clip_frac_low", "clip_frac_high"), ("kept_frac",)]
COLORS = [(31, 119, 180), (214, 39, 40)]
# 3x5 glyphs, rows top to bottom, 3 bits each (MSB = left).
_FONT = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71717", "4": "55711", "5": "74717", "6": "74757", "7": "71111",
    "8": "75757", "9": "75717", ".": "00002", "-": "00700", "_": "00007", " ": "00000", "e": "07743", "+": "02720",
    "a": "03553", "b": "46557", "c": "07447", "d": "17557", "f": "34644", "g": "35316", "h": "46555", "i": "20222",
    "j": "10116", "k": "45655", "l": "62227", "m": "07775", "n": "06555", "o": "07557", "p": "65644", "q": "75711",
    "r": "06544", "s": "34216", "t": "27222", "u": "05557", "v": "05552", "w": "05777", "x": "05255", "y": "55316",
    "z": "71247", "/": "11244", ":": "02020", "=": "07070",
}


def _text(img, x: int, y: int, text: str, color, scale: int = 2) -> None:
    for ch in text.lower():
        glyph = _FONT.get(ch, "00000")
        for r, bits in enumerate(glyph):
            for c in range(3):
                if int(bits, 16) >> (2 - c) & 1:
                    for dy in range(scale):
                        for dx in range(scale):
                            _put(img, x + c * scale + dx, y + r * scale + dy, color)
        x += 4 * scale


def _put(img, x: int, y: int, color) -> None:
    if 0 <= y < len(img) and 0 <= x < len(img[0]) // 3:
        img[y][3 * x:3 * x + 3] = bytes(color)


def _line(img, x0, y0, x1, y1, color) -> None:
    n = max(int(abs(x1 - x0)), int(abs(y1 - y0)), 1)
    for i in range(n + 1):
        _put(img, round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n), color)


def plot_curves(rows: list[dict], path: str, width: int = 360, height: int = 220) -> None:
    """A 3x2 grid of panels (reward/eval accuracy, KL, entropy, length, clip fractions, kept fraction)."""
    cols, nrows = 3, 2
    img = [bytearray(b"\xff" * (3 * width * cols)) for _ in range(height * nrows)]
    for p, keys in enumerate(PANELS):
        ox, oy = (p % cols) * width, (p // cols) * height
        left, top, right, bottom = ox + 50, oy + 30, ox + width - 12, oy + height - 22
        series = [[(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
                  for k in keys]
        values = [v for s in series for _, v in s]
        steps = [x for s in series for x, _ in s]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        s0, s1 = (min(steps), max(steps)) if steps else (0, 1)
        s1 = s1 if s1 > s0 else s0 + 1
        for x in range(left, right + 1):
            _put(img, x, bottom, (0, 0, 0))
        for y in range(top, bottom + 1):
            _put(img, left, y, (0, 0, 0))
        for i, (key, pts) in enumerate(zip(keys, series)):
            color = COLORS[i % len(COLORS)]
            _text(img, ox + 8 + i * 170, oy + 6, key, color)
            xy = [(left + (s - s0) / (s1 - s0) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))
                  for s, v in pts]
            for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
                _line(img, x0, y0, x1, y1, color)
            if len(xy) == 1:
                _put(img, round(xy[0][0]), round(xy[0][1]), color)
        _text(img, ox + 2, top - 4, f"{hi:.3g}", (90, 90, 90))
        _text(img, ox + 2, bottom - 8, f"{lo:.3g}", (90, 90, 90))
        _text(img, left, bottom + 6, f"step {s0}", (90, 90, 90))
        _text(img, right - 48, bottom + 6, f"{s1}", (90, 90, 90))
    raw = b"".join(b"\x00" + bytes(r) for r in img)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width * cols, height * nrows, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)
