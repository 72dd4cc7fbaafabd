"""Regenerate the README's picture: run ``scexplain demo`` and copy its heatmap to ``docs/images/demo-heatmap.png``.

    python scripts/make_readme_figure.py

The picture is the demo's own output (the same command a user runs after installing), made in a temporary folder;
only the PNG is kept, re-encoded losslessly with PIL's optimiser (and reduced to a 256-colour palette only if it
would still exceed 300 kB).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "images" / "demo-heatmap.png"
MAX_BYTES = 300_000


def main() -> int:
    """Run the demo (top 3 genes per type; without its scANVI part, which the heatmap does not show), keep the PNG."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="scexplain-readme-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "scexplain", "demo", "--no-scanvi", "--zarr", "",
             "--output", "demo.h5ad", "--figure", "demo-heatmap.png", "--n-genes", "3"],
            cwd=tmp, check=True,
        )
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(Path(tmp) / "demo-heatmap.png") as image:
            image.load()
            image.save(TARGET, optimize=True)
            if TARGET.stat().st_size > MAX_BYTES:
                image.convert("RGB").quantize(256).save(TARGET, optimize=True)
    size = TARGET.stat().st_size
    print(f"wrote {TARGET.relative_to(ROOT)} ({size / 1000:.0f} kB)")
    if size > MAX_BYTES:
        print(f"error: the picture is over {MAX_BYTES / 1000:.0f} kB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
