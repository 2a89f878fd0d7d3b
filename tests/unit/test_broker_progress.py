"""A cold first run resolves the broker's jars with Maven: it says what it fetches and shows progress."""
from __future__ import annotations

import os
import stat

import pytest

from pipeline import broker


@pytest.fixture
def fake_maven(tmp_path, monkeypatch):
    """A `mvn` on PATH that 'downloads' for about a second, then writes a classpath of one real jar."""
    jar = tmp_path / "kafka.jar"
    jar.write_bytes(b"PK")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(
        "#!/bin/sh\n"
        "for a in \"$@\"; do case $a in -Dmdep.outputFile=*) out=${a#-Dmdep.outputFile=};; esac; done\n"
        "for i in 1 2 3 4 5 6; do\n"
        "  echo \"Downloading from central: https://repo.maven.apache.org/maven2/x/$i.jar\"\n"
        "  echo \"Downloaded from central: https://repo.maven.apache.org/maven2/x/$i.jar (1 kB at 1 kB/s)\"\n"
        "  sleep 0.2\n"
        "done\n"
        f"printf '%s' '{jar}' > \"$out\"\n")
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CDRPIPE_CACHE_DIR", str(tmp_path / "cache"))
    return jar


def test_a_cold_resolution_says_what_it_fetches_and_reports_progress(fake_maven):
    said: list[str] = []
    classpath = broker.ensure_kafka_jars(progress=said.append, progress_seconds=0.25)
    assert classpath == str(fake_maven)
    assert "Maven Central" in said[0] and "one-time" in said[0] and str(broker.cache_dir()) in said[0]
    ticks = [s for s in said[1:-1] if "files downloaded so far" in s]
    assert len(ticks) >= 2, said  # the wait is never silent for more than a few seconds
    assert "ready" in said[-1]
    # A warm run is instant and says nothing.
    again: list[str] = []
    assert broker.ensure_kafka_jars(progress=again.append) == classpath and again == []


def test_the_default_progress_goes_to_stderr(fake_maven, capsys):
    broker.ensure_kafka_jars(progress_seconds=0.25)
    err = capsys.readouterr().err
    assert "one-time download" in err and "files downloaded so far" in err
