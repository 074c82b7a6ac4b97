"""The README's two set-up commands are the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.startswith("python3 -m venv")]
    assert len(ci_lines) == 1
    assert ci_lines[0] in readme


def test_readme_main_job_command_selects_offline():
    readme = (ROOT / "README.md").read_text()
    commands = [ln for ln in readme.splitlines() if ln.startswith("python3 -m venv")]
    assert len(commands) == 2, "exactly two set-up commands"
    assert 'diffagent select "' in commands[0]
    assert "pytest" in commands[1]
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in commands[0] and 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in commands[1]
