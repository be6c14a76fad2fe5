"""Tiny, fast overrides that turn any preset into a seconds-long CPU run."""
import pytest

from rlloom.testing import TINY, tiny_run

__all__ = ["TINY"]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Overrides for a tiny run writing into ``tmp_path`` (MLflow store included)."""
    monkeypatch.chdir(tmp_path)
    return tiny_run(tmp_path)
