"""A plain (non-editable) install works from any directory: the configs ship inside the
package (`tfmeta.configs`) and the `tfmeta-*` console commands run."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS = ("train", "evaluate", "predict", "benchmark", "report", "embed", "convert", "export")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """tfmeta built as a wheel and `pip install --no-deps --target`ed into a folder of its
    own (its dependencies come from this environment)."""
    root = tmp_path_factory.mktemp("install")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(root / "wheel"), ROOT],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((root / "wheel").glob("tfmeta-*.whl"))
    target = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return target


def run_there(installed, tmp_path, *command):
    """`command` with the installed copy first on the path, from a folder outside the
    repository."""
    env = dict(os.environ, PYTHONPATH=str(installed), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_configs_load_from_the_installed_package(installed, tmp_path):
    code = ("import tfmeta, tfmeta.config as c; "
            "print(tfmeta.__file__, c.configs_package(), "
            "c.get_config('maml', 'omniglot').meta_batch_size, "
            "c.get_config('protonet', 'folder').ways)")
    proc = run_there(installed, tmp_path, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    location, package, batch, ways = proc.stdout.split()
    assert location.startswith(str(installed)) and package == "tfmeta.configs"
    assert (batch, ways) == ("32", "30")


@pytest.mark.slow
def test_console_commands_run_from_any_directory(installed, tmp_path):
    for name in COMMANDS:
        assert (installed / "bin" / f"tfmeta-{name}").is_file(), name
    proc = run_there(installed, tmp_path, sys.executable,
                     str(installed / "bin" / "tfmeta-train"), "--algo=nope")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: Unknown --algo 'nope'; valid algorithms:"), proc.stderr[-2000:]
    proc = run_there(installed, tmp_path, sys.executable,
                     str(installed / "bin" / "tfmeta-predict"), "--export=nowhere",
                     "--support_dir=s", "--query_dir=q")
    assert proc.returncode == 2 and "error: No SavedModel at" in proc.stderr, proc.stderr[-2000:]
    proc = run_there(installed, tmp_path, sys.executable,
                     str(installed / "bin" / "tfmeta-report"), "--list")
    assert proc.returncode == 2 and "run it in a clone of the repository" in proc.stderr
