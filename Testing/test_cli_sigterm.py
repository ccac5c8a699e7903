"""SIGTERM (a batch scheduler, ``timeout``, ``kill``) ends a ``vesselrecon`` command as cleanly as Ctrl-C:
staging removed, nothing under a final name, one ``error:`` line, exit 143. Before round 11 the process died
at once and left its hidden ``.vesselrecon-partial-*`` staging folder in the output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from VesselReconLib import cli
from VesselReconLib.atomic import PARTIAL_PREFIX

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# the real command line with one slow step: the scene save writes half a file into the staging folder, then waits
CHILD = """
import sys, time
from pathlib import Path
from VesselReconLib import cli, mrml

def slow_save(path, scene):
    Path(path).write_bytes(b"PK half a scene")
    time.sleep(120)

mrml.save_scene = slow_save
sys.exit(cli.main(sys.argv[1:]))
"""


def _wait_for(pattern: str, folder: Path, process: subprocess.Popen, seconds: float) -> list[Path]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        found = list(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found
        time.sleep(0.05)
    return []


def test_sigterm_while_writing_leaves_no_staging_folder_and_exits_143(tmp_path):
    from PIL import Image

    image = tmp_path / "scan_3x3.png"
    Image.fromarray((np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", CHILD, "octadepth", str(image), "--device", "cpu", "--out",
                                str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        half = _wait_for(f"{PARTIAL_PREFIX}*/scan_3x3.mrb", out, process, 90)
        assert half, f"the command never reached its scene save: {process.poll()} {process.stderr.read()[-2000:]}"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert process.returncode == cli.EXIT_TERMINATED, err
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "Traceback" not in err, err
    assert not list(out.glob(f"{PARTIAL_PREFIX}*")), list(out.iterdir())
    assert not list(out.iterdir()), "a final output appeared"


def test_the_previous_sigterm_handler_is_back_after_a_command(tmp_path):
    def previous(signum, frame):
        raise AssertionError("the command's own handler should have run")

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(cli.Terminated), cli.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)   # the handler raises at the next bytecode
        assert signal.getsignal(signal.SIGTERM) is previous
        assert cli.main(["models", "--registry", str(tmp_path / "none")]) == 2
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, before)
