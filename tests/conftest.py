"""Shared fixtures. Importing this sets quiet TF logging and a per-run cache folder."""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFMETA_CACHE", tempfile.mkdtemp(prefix="tfmeta-test-cache-"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` and `tests` importable

import pytest  # noqa: E402

from tests import browser  # noqa: E402


def docs_script(name: str):
    """The module `docs/scripts/<name>.py` (scripts the docs run, which tests use too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "docs", "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def omniglot():
    """The bundled Omniglot minimal sets at 28x28 (cached for the whole session)."""
    from tfmeta.data import load_dataset

    return load_dataset("omniglot")


@pytest.fixture(scope="session")
def omniglot_small():
    """The bundled Omniglot at 14x14: the same classes, 4x cheaper to train on."""
    from tfmeta.data import load_dataset

    return load_dataset("omniglot", image_size=14)


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """$TFMETA_CACHE set to a folder of the module's own while its tests run: a module that
    decodes data files never reads another's cache, nor the user's."""
    old = os.environ.get("TFMETA_CACHE")
    os.environ["TFMETA_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["TFMETA_CACHE"]
    else:
        os.environ["TFMETA_CACHE"] = old


@pytest.fixture(scope="session")
def chromium():
    """Chromium (tests/browser.py), or a skip where it is missing; a failure instead where a
    run must use it (TFMETA_REQUIRE_BROWSER, which .ci/run sets, or CI), so that CI never
    skips the tests that render a page."""
    path = browser.find_chromium()
    if path:
        return path
    required = [v for v in ("TFMETA_REQUIRE_BROWSER", "CI")
                if os.environ.get(v, "").lower() not in ("", "0", "false")]
    reason = (f"no Chromium on PATH (looked for {', '.join(browser.NAMES)}); install it "
              "(Debian: apt-get install chromium) to render the HTML report in a browser")
    if required:
        pytest.fail(f"{reason}; required since {required[0]} is set")
    pytest.skip(reason)


def pytest_addoption(parser):
    parser.addoption("--task-parallel", choices=("auto", "vectorized"), default="auto",
                     help="what the MAML family's task_parallel='auto' chooses where a learner "
                          "allows both (vectorized: run their tests on the vectorized pass)")


@pytest.fixture(autouse=True)
def task_parallel_default(request, monkeypatch):
    """`--task-parallel=vectorized`: 'auto' takes the vectorized pass, as with a GPU."""
    if request.config.getoption("--task-parallel") == "vectorized":
        from tfmeta.algorithms import task_loop

        monkeypatch.setattr(task_loop, "vectorize_by_default", lambda: True)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where TensorFlow sees a GPU."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="needs a GPU; TensorFlow sees none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
