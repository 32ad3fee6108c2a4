"""Runs one pytest module as a Bazel py_test: `pytest_main.py tests/test_something.py`.

Bazel gives each module its own process and runfiles tree; pytest still does the collecting, the
fixtures (tests/conftest.py) and the config (setup.cfg's [tool:pytest], shipped as data). The
JUnit XML goes where Bazel asks for it, so `bazel test` reports individual test cases.
"""

import os
import sys

import pytest


def _pytest_args(module):
    args = [module, "-p", "no:cacheprovider", "-q"]
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if os.environ.get("TEST_TMPDIR"):
        # Bazel cleans TEST_TMPDIR; pytest's default basetemp would pile up under /tmp.
        args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    return args


def _check_imported_from_runfiles():
    # The virtualenv also holds an editable install of keras_gmlp; a test that silently imported
    # it would pass even when a module is missing from the Bazel target's srcs.
    module = sys.modules.get("keras_gmlp")
    if module is None:
        return
    runfiles = os.path.abspath(os.getcwd())
    location = os.path.abspath(module.__file__)
    if not location.startswith(runfiles + os.sep):
        raise SystemExit(
            f"keras_gmlp was imported from {location}, expected the Bazel runfiles under {runfiles}: "
            "check sys.path order and that //:keras_gmlp lists the module."
        )


def main(argv):
    if len(argv) != 2 or not argv[1].endswith(".py"):
        raise SystemExit(f"usage: {argv[0]} TEST_MODULE.py (got arguments {argv[1:]!r})")
    exit_code = pytest.main(_pytest_args(argv[1]))
    _check_imported_from_runfiles()
    return int(exit_code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
