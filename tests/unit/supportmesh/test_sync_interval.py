"""`supportmesh up --sync-interval`: what it writes nats-server accepts, and anything else is refused with a reason.

The bug this guards against: the value was written unquoted, and nats-server reads an unquoted `2m` as a size
(two million), so `--sync-interval 2m` (the option's whole point) made `supportmesh up` fail at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from supportmesh import up
from supportmesh.natsserver import NatsServer, find_binary


@pytest.mark.parametrize("interval", ["always", "2m", "1m30s", "500ms"])
def test_nats_server_accepts_the_sync_interval_written(tmp_path: Path, interval: str) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(NatsServer(store_dir=tmp_path / "js", sync_interval=interval).config_text())
    check = subprocess.run([find_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("interval", ["", "fast", "2", "2m\n  max_file_store: 1", '2m"'])
def test_anything_else_is_refused_with_the_reason(tmp_path: Path, interval: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="'always' or a duration"):
        NatsServer(store_dir=tmp_path / "js", sync_interval=interval).config_text()
    with pytest.raises(SystemExit):
        up.main(["--data-dir", str(tmp_path), "--sync-interval", interval])
    assert "'always' or a duration such as 2m" in capsys.readouterr().err
