"""The README's commands and code are what users run first: keep them true."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    """`.ci/run` must call the README's test command (CI is what the README promises)."""
    commands = re.findall(r"```sh\n(python3 -m venv[^\n]*pytest[^\n]*)\n```", readme())
    assert len(commands) == 1, commands
    pytest_part = commands[0].split("&& ")[-1]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert pytest_part in ci, (pytest_part, ci)


@pytest.mark.slow
def test_python_api_example_runs(tmp_path):
    """The README's Python API example, run as written with its sizes shrunk (2 steps,
    20 episodes), must train, evaluate and export."""
    code = re.search(r"## Python API\n\n```python\n(.*?)```", readme(), re.S).group(1)
    shrunk = (code.replace("steps_per_epoch=100, epochs=5", "steps_per_epoch=2, epochs=1")
              .replace("num_episodes=600", "num_episodes=20"))
    assert shrunk != code, "the example's sizes changed; update this test's substitutions"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", shrunk], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'accuracy'" in proc.stdout
    assert os.path.isfile(tmp_path / "export" / "saved_model.pb")
