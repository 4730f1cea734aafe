"""`lightning-geo serve`: the demo model behind a real LitServe server, scored over HTTP like `predict` scores."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("litserve")

from tests.helpers import free_port
from tests.test_demo_cli import _run_main
from tests.test_predict_cli import SEQ_LEN, checkpoint, reference_bits_per_char  # noqa: F401
from tests.test_serving import Server


def test_serve_scores_posted_texts_as_predict_does_and_stops_cleanly_on_sigterm(checkpoint: Path) -> None:  # noqa: F811
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_geo", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
         "--accelerator", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, port)
    try:
        deadline = time.monotonic() + 180
        while not server.healthy():
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.5)
        texts = ["def g(y):\n    return y\n"[: SEQ_LEN + 1], "x = 1", "return z + 3"]
        for text in texts:
            status, answer, _ = server.post({"text": text})
            assert status == 200
            assert answer["bits_per_char"] == pytest.approx(reference_bits_per_char(checkpoint, text), abs=1e-5)
        status, answer, _ = server.post({"text": "y" * (SEQ_LEN + 2)})
        assert status == 413 and f"max_length={SEQ_LEN + 1}" in answer["detail"]
        status, answer, _ = server.post({"txt": "abc"})
        assert status == 400 and '{"text": "..."}' in answer["detail"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_with_a_missing_checkpoint_ends_with_a_one_line_error(tmp_path: Path, capsys) -> None:
    code, _, err = _run_main(["serve", "--checkpoint", str(tmp_path / "none.ckpt")], capsys)
    missing = tmp_path / "none.ckpt"
    assert code == 2 and err.strip() == f"lightning-geo serve: error: checkpoint '{missing}' does not exist"
