"""`meshctl up`'s stdout when its reader leaves (mesh/local/up_output.py), on a real pipe.
The idle case (the reader leaves while nothing is printed) runs in
tests/e2e/test_meshctl.py against a real `meshctl up`."""

from __future__ import annotations

import os

import pytest

from mesh.local.up_output import LeavableStdout


def test_a_write_after_the_reader_left_stops_the_mesh_once_and_raises_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    read_end, write_end = os.pipe()
    with open(write_end, "w", buffering=1) as stream:
        gone: list[bool] = []
        out = LeavableStdout(stream, lambda: gone.append(True))
        out.write("orders-1    | serving\n")
        out.flush()
        assert os.read(read_end, 100) == b"orders-1    | serving\n"
        os.close(read_end)  # `head` has its lines
        for line in ("envoy       | an access line\n", "nats        | another\n"):
            assert out.write(line) == len(line)  # BrokenPipeError the first time: swallowed
            out.flush()
        assert gone == [True] and out.gone
        assert "the reader of its output left; stopping the mesh" in capsys.readouterr().err
        # Its descriptor is /dev/null now: what the stream still buffers, and its last
        # flush on closing, fail no more.
        stream.write("what the stream still buffers\n")


def test_a_reader_that_stays_reads_everything() -> None:
    read_end, write_end = os.pipe()
    with open(write_end, "w", buffering=1) as stream:
        out = LeavableStdout(stream, lambda: pytest.fail("the reader did not leave"))
        print("a", file=out)
        print("b", file=out, flush=True)
    with open(read_end, "rb") as reader:
        assert reader.read() == b"a\nb\n"
