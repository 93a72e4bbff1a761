import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch

# Tests must never reach the network; the Hub stand-in tests use loopback only.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(2)

# The real ECG5000 and Pokemon files live beside the clone (../shared/data); MEMCTL_SHARED_DATA points elsewhere.
SHARED_DATA = Path(
    os.environ.get("MEMCTL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def shared_data_dir(path: Path) -> Path:
    """`path` when it is a folder; otherwise skip the calling test with a one-line reason."""
    if not path.is_dir():
        pytest.skip(
            f"needs the real data in ../shared/data (not found at {path}; set MEMCTL_SHARED_DATA to use another)"
        )
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir(SHARED_DATA)


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_external_network(monkeypatch):
    """Fail any test that opens a connection to a non-loopback address (the Hub stand-in lives on 127.0.0.1)."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise RuntimeError(f"tests must not reach the network; blocked connection to {address!r}")
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise RuntimeError(f"tests must not reach the network; blocked connection to {address!r}")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield
