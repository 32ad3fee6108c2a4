"""Runs a Bazel py_binary with --help: `entry_point_help.py BINARY MODULE_SOURCE`.

The binary must get through its imports and flag parsing inside Bazel's runfiles and print its
module docstring's first sentence (absl and argparse both print it). A module or dependency
missing from the targets shows up here as a traceback instead.
"""

import ast
import subprocess
import sys


def _normalise(text):
    # argparse re-wraps the description to the terminal width.
    return " ".join(text.split())


def main(argv):
    if len(argv) != 3:
        raise SystemExit(f"usage: {argv[0]} BINARY MODULE_SOURCE (got arguments {argv[1:]!r})")
    binary, source = argv[1], argv[2]
    with open(source, encoding="utf-8") as f:
        docstring = ast.get_docstring(ast.parse(f.read()))
    if not docstring:
        raise SystemExit(f"{source} has no module docstring for --help to print")
    summary = _normalise(docstring.split("\n\n")[0])
    result = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    # absl exits 1 after printing help, argparse 0; anything else, or a traceback, is a failure.
    if result.returncode not in (0, 1) or "Traceback (most recent call last)" in output:
        raise SystemExit(f"{binary} --help exited {result.returncode}:\n{output}")
    if summary not in _normalise(output):
        raise SystemExit(f"{binary} --help did not print {summary!r}; it printed:\n{output}")
    print(f"{binary} --help printed {summary!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
