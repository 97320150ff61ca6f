"""The trace's SVG and HTML open in a real browser: headless Chromium renders them (a screenshot
that is not blank and shows the participants' colours) and its DOM names the participants and
the steps. Chromium is installed by setup.sh (apt-get); this test installs nothing."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgxemu.cli.main import _register_commands, cli

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PARTICIPANTS = ("host", "kernel", "CPU", "enclave T0", "enclave T1")
STEPS = (
    "mmap(encl+0xa000, 0x1000, RWX, SHARED|FIXED, fd 3)",
    "ENCLU[EENTER] TCS encl+0x0",
    "AEX: #PF 0x6 (W|U) at encl+0xa000",
    "ENCLS[EAUG] encl+0xa000",
    "REG RW- PENDING",
    "AEX: #PF 0x8007 (P|W|U|SGX) at encl+0xa000",
    "ENCLU[EACCEPT] encl+0xa000",
    "EPC/EPCM before",
    "EPC/EPCM after",
)
HOST_FILL = (0xDB, 0xEA, 0xFE)  # the host participant's box (svg.LANE_FILL["host"])
EAUG_GREEN = (0x04, 0x78, 0x57)  # the result text of a successful leaf


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    # In CI (and wherever setup.sh could install it) a missing browser is a failure, not a skip.
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail("no Chromium: ./setup.sh installs it with apt-get (as root)")
    pytest.skip("no Chromium and no root to install it: ./setup.sh installs it with apt-get")


def chromium(url: str, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args, url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = depth = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r if bpp == 3 else b"".join(r[i : i + 3] for i in range(0, len(r), 4))) for r in rows]


def colours(rows: list[bytes]) -> set[tuple[int, int, int]]:
    seen: set[tuple[int, int, int]] = set()
    for row in rows[::2]:
        for i in range(0, len(row), 6):
            seen.add((row[i], row[i + 1], row[i + 2]))
    return seen


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trace-chromium")
    _register_commands()
    r = CliRunner().invoke(
        cli, ["trace", "eaug-on-fault", "--svg", str(out / "t.svg"), "--html", str(out / "t.html")]
    )
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("name", ["t.html", "t.svg"])
def test_dom_names_participants_and_steps(rendered: Path, name: str) -> None:
    res = chromium((rendered / name).as_uri(), "--dump-dom", profile=rendered / f"profile-dom-{name}")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "<svg" in dom
    for text in (*PARTICIPANTS, *STEPS):
        assert text.replace("&", "&amp;") in dom or text in dom, text


@pytest.mark.parametrize("name", ["t.html", "t.svg"])
def test_screenshot_renders(rendered: Path, name: str) -> None:
    shot = rendered / f"{name}.png"
    res = chromium(
        (rendered / name).as_uri(), f"--screenshot={shot}", "--window-size=1300,1400",
        profile=rendered / f"profile-shot-{name}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1300, 1400)
    seen = colours(rows)
    assert len(seen) > 20, "the page rendered (almost) blank"
    assert HOST_FILL in seen, "the participants' boxes are not drawn"
    near_green = any(abs(r - EAUG_GREEN[0]) + abs(g - EAUG_GREEN[1]) + abs(b - EAUG_GREEN[2]) < 30 for r, g, b in seen)
    assert near_green, "no step result text is drawn"
