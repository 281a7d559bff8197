"""conftest.py - fixtures shared by all integration tests.

prism_bin  path of the prism binary ($PRISM_BUILD/prism, default build/prism)
netns      factory: netns("c") -> a fresh, uniquely named namespace (lo up),
           deleted after the test
topo       the client/edge/origin topology (nstopo.Topology); processes it
           starts are killed and its namespaces deleted after the test
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nstopo  # noqa: E402


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces)")


@pytest.fixture(scope="session")
def prism_bin():
    path = nstopo.prism_path()
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: build it (make) or set PRISM_BUILD")
    return path


@pytest.fixture
def netns():
    _need_root()
    factory = nstopo.NetnsFactory()
    yield factory
    errors = factory.cleanup()
    assert not errors, errors


@pytest.fixture
def topo(netns, tmp_path, prism_bin):
    t = nstopo.Topology(netns, tmp_path)
    yield t
    errors = t.teardown()
    assert not errors, errors


@pytest.fixture
def topo_noprism(netns, tmp_path):
    """The topology alone, for tests that do not need the prism binary."""
    t = nstopo.Topology(netns, tmp_path)
    yield t
    errors = t.teardown()
    assert not errors, errors


def pytest_sessionfinish(session, exitstatus):
    # Nothing of ours may survive the run, whatever happened.
    left = [n for n in nstopo.list_netns() if n.startswith(f"pt{os.getpid()}")]
    for n in left:
        nstopo.run(["ip", "netns", "del", n], check=False)
    if left:
        sys.stderr.write(f"\nconftest: deleted leftover namespaces {left}\n")
