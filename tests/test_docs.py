"""The docs cannot drift from what they quote: every generated block of docs/*.md is
its source (bench results, the config reference), every relative link resolves, and
the pages speak of the project only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import sync_docs  # noqa: E402

PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]


def test_generated_blocks_are_their_sources():
    assert sync_docs.stale() == [], "run python scripts/sync_docs.py"
    blocks = [m for page in PAGES for m in sync_docs.BLOCK.finditer(page.read_text())]
    sources = {m.group("src") for m in blocks}
    assert "detector/config.py" in sources and "bench/results/pipeline.md" in sources
    for m in blocks:  # never an empty block: the source text is really there
        assert m.group("body").strip() == sync_docs.source_text(m.group("src")).strip() != ""


def test_check_mode_notices_a_hand_edited_number(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "r.md").write_text("| metric | value |\n|---|---|\n| CPU | 7.9 ms |\n")
    page = tmp_path / "docs" / "p.md"
    page.write_text("x\n<!-- BEGIN generated from bench/r.md -->\n<!-- END generated -->\n")
    assert sync_docs.stale(tmp_path) == ["docs/p.md"]
    page.write_text(sync_docs.render(page.read_text(), tmp_path))
    assert sync_docs.stale(tmp_path) == [] and "| CPU | 7.9 ms |" in page.read_text()
    page.write_text(page.read_text().replace("7.9 ms", "6.0 ms"))
    assert sync_docs.stale(tmp_path) == ["docs/p.md"]


def test_sync_script_check_exit_code():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_docs_map_lists_every_page():
    readme = (REPO / "README.md").read_text()
    index = (REPO / "docs" / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"docs/{page.name}" in readme, page.name
            assert f"({page.name})" in index, page.name


def test_short_readme_without_internal_names():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    for page in PAGES:
        text = page.read_text()
        assert not re.search(r"\b(RUNTIME|EVAL|TRAIN)('s)?\b", text), page.name
        assert 'section "Runtime"' not in text and "README \"Runtime\"" not in text


def test_model_numbers_are_not_copied_from_the_model_card():
    """The model page points at the generated card instead of repeating its numbers."""
    model = (REPO / "docs" / "model.md").read_text()
    assert "MODEL_CARD.md" in model
    card = (REPO / "detector" / "models" / "MODEL_CARD.md").read_text()
    for pct in set(re.findall(r"\b\d{2}\.\d%", card)):
        assert pct not in model, pct


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_ci_runs_the_readme_test_command_in_a_venv():
    demo, tests = _readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "the README's test command must be a line of .ci/run"
    for command in (demo, tests):  # PEP 668: never pip-install into the system Python
        assert "python3 -m venv" in command and ". .venv/bin/activate" in command
        assert "python3 -m pip install" not in command and "--break-system-packages" not in command


def test_install_sections_make_a_venv_before_pip():
    readme = (REPO / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```sh\n(.*?)\n```", install, re.S):
        if "pip install" in block:
            assert block.index("python3 -m venv") < block.index("pip install"), block
    assert "libportaudio2" in install


def test_service_password_recipe_writes_a_private_file(tmp_path):
    """The service page's password line, run as written: mode 600, the password's line."""
    service = (REPO / "docs" / "service.md").read_text()
    line = next(l for l in service.splitlines() if "mqtt_password" in l and "read -rsp" in l)
    result = subprocess.run(["bash", "-c", line], input="s3cret pass\n", text=True,
                            capture_output=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            timeout=30)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "mqtt_password"
    assert written.read_text() == "s3cret pass\n"
    assert written.stat().st_mode & 0o077 == 0
    assert "> /tmp/" not in service
