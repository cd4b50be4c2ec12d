"""How long `parsing.parse` takes on a 2 kB chat message. Run: .venv/bin/python bench/parse_bench.py"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parsing import parse  # noqa: E402

CHUNK = "画一只可爱的猫咪，坐在窗台上看雨，柔和的光线，水彩风格。A cute cat on a windowsill watching the rain. "


def message(size: int = 2048) -> str:
    body = (CHUNK * (size // len(CHUNK.encode()) + 1)).encode()[: size - 40].decode(errors="ignore")
    return body + " 9:16比例 pic:3 seed:42 --no text, watermark"


def main() -> None:
    text = message()
    print(f"message: {len(text.encode())} bytes, {len(text)} characters")
    for model in ("Kwai-Kolors/Kolors", "Qwen/Qwen-Image", "stabilityai/stable-diffusion-xl-base-1.0"):
        runs = 2000
        best = min(timeit.repeat(lambda m=model: parse(text, m, 4), number=runs, repeat=5)) / runs
        print(f"{model:45s} {best * 1e6:8.1f} µs per parse (best of 5 x {runs})")
    prose = message().rsplit(" 9:16", 1)[0]
    best = min(timeit.repeat(lambda: parse(prose, "Kwai-Kolors/Kolors", 4), number=2000, repeat=5)) / 2000
    print(f"{'same size, no tokens in it':45s} {best * 1e6:8.1f} µs per parse")
    plain = "画一只猫"
    best = min(timeit.repeat(lambda: parse(plain, "Kwai-Kolors/Kolors", 4), number=20000, repeat=5)) / 20000
    print(f"{'short message (4 characters)':45s} {best * 1e6:8.1f} µs per parse")


if __name__ == "__main__":
    main()
