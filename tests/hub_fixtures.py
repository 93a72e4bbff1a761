"""Shared pytest fixtures for tests that talk to the local Hub stand-in (`tests/hub_stand_in.py`).

A test module puts the tests folder on ``sys.path`` and binds the fixture with ``hub = hub_fixtures.hub``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from hub_stand_in import HubStandIn, RecordedRequest
from huggingface_hub import constants, hf_api

TOKEN = "hf_standInSecretToken0123456789"


class StandInHub(NamedTuple):
    url: str
    records: list[RecordedRequest]
    server: HubStandIn
    home: Path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The Hub stand-in, with huggingface_hub pointed at it and an isolated HF_HOME (cache and token file)."""
    home = tmp_path / "hf_home"
    with HubStandIn() as server:
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hf_api.api, "endpoint", server.url)  # module-level `model_info` used by diffusers
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        yield StandInHub(server.url, server.records, server, home)
