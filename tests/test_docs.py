"""The documentation site builds with warnings as errors (mkdocs.yml sets strict: true)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    exe = Path(sys.executable).parent / "mkdocs"
    cmd = [str(exe) if exe.exists() else "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    assert (site / "index.html").exists()
    # math: arithmatex marks it, the KaTeX copy in docs/assets renders it, nothing loaded from the network
    physics = (site / "physics" / "index.html").read_text(encoding="utf-8")
    assert physics.count('class="arithmatex"') >= 10
    for asset in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "fonts/KaTeX_Main-Regular.woff2"):
        assert (site / "assets" / "katex" / asset).stat().st_size > 1000, asset
    assert "assets/katex/katex.min.js" in physics and "://cdn" not in physics and "fonts.googleapis" not in physics
