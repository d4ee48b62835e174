"""Running a call that could crash the interpreter (a C++ reader given a damaged file) in a fresh
process, so that a segfault fails the test instead of killing pytest."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def value_error_in_subprocess(imports: str, call: str) -> str:
    """Runs ``imports`` then ``call`` in a fresh interpreter at the repository root; asserts that the
    call raised a ValueError (not a crash, not success) and returns its message."""
    code = (
        f"import sys\n{imports}\n"
        f"try:\n    {call}\n"
        "except ValueError as e:\n    print('VALUEERROR', e); sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, f"exit {run.returncode} (a segfault is -11, 3 no error): {run.stderr[-2000:]}"
    return run.stdout.split("VALUEERROR", 1)[1]
