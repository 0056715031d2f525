"""The C++ side, run from pytest so that one test command covers everything:
the ctest suite of the header-only kernels, and a C++ consumer built against the installed
package through find_package(segrank)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import segrank

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def cmake():
    exe = shutil.which("cmake")
    assert exe, "cmake is needed for the C++ tests (pip install cmake)"
    return exe


def test_ctest_suite(cmake, tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp-build")
    configure = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), "-DSEGRANK_BUILD_TESTS=ON", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True,
    )
    assert configure.returncode == 0, (
        "configuring the C++ tests failed:\n" + configure.stderr[-4000:]
    )
    _run([cmake, "--build", str(build), "-j2"])
    proc = _run(["ctest", "--test-dir", str(build), "--output-on-failure"])
    summary = re.search(r"100% tests passed(?:, 0 tests failed)? out of (\d+)", proc.stdout)
    assert summary and int(summary.group(1)) > 0, proc.stdout[-2000:]


def test_consumer_finds_installed_package(cmake, tmp_path_factory):
    cmake_dir = Path(segrank.cmake_dir())
    assert (cmake_dir / "segrankConfig.cmake").exists(), f"no segrankConfig.cmake in {cmake_dir}"
    build = tmp_path_factory.mktemp("consumer-build")
    _run([cmake, "-S", str(ROOT / "cpp" / "examples" / "consumer"), "-B", str(build), f"-Dsegrank_DIR={cmake_dir}"])
    _run([cmake, "--build", str(build)])
    exe = build / "consumer"
    proc = _run([str(exe)])
    assert proc.stdout.strip(), "the consumer printed nothing"
