"""The distribution: one wheel with both brokers, extras that name real packages, entry points that load.

Built and read offline: the wheel is built from this checkout without build isolation, and every
package an extra names must be installed in the development environment (which installs all of
them), so a name that does not exist on the package index cannot pass.
"""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from asyncjobs.extras import DISTRIBUTION, EXTRAS, install_command

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = {
    "memory": "asyncjobs.broker:_memory_factory",
    "redis": "asyncjobs_redis:from_url",
    "rediss": "asyncjobs_redis:from_url",
    "redis+cluster": "asyncjobs_redis.cluster:from_url",
    "rediss+cluster": "asyncjobs_redis.cluster:from_url",
    "amqp": "asyncjobs_rabbitmq:from_url",
    "amqps": "asyncjobs_rabbitmq:from_url",
}


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement string (``redis[hiredis]>=5; extra == "redis"`` -> ``redis``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def wheel_file(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_the_distribution_name_is_not_the_one_taken_on_the_index() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "asyncjobs-runtime"


def test_the_wheel_ships_the_core_and_both_brokers(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    for module in ("asyncjobs/__init__.py", "asyncjobs_redis/__init__.py", "asyncjobs_rabbitmq/__init__.py"):
        assert module in names
    for package, source in (("asyncjobs_redis", "brokers/redis/asyncjobs_redis"), ("asyncjobs", "asyncjobs")):
        for data in (ROOT / source).rglob("*"):
            if data.suffix in (".lua", ".typed"):
                assert f"{package}/{data.relative_to(ROOT / source).as_posix()}" in names
    assert not any(n.startswith(("tests/", "brokers/")) for n in names)


def test_every_extra_names_packages_that_exist_and_only_those(wheel: zipfile.ZipFile) -> None:
    meta = email.message_from_string(wheel_file(wheel, "METADATA"))
    assert meta["Name"] == DISTRIBUTION
    extras = set(meta.get_all("Provides-Extra") or [])
    assert set(EXTRAS) <= extras
    by_extra: dict[str, set[str]] = {}
    for requirement in meta.get_all("Requires-Dist") or []:
        found = re.search(r"extra == ['\"]([a-z0-9-]+)['\"]", requirement)
        by_extra.setdefault(found.group(1) if found else "", set()).add(requirement_name(requirement))
    assert by_extra["redis"] == {"redis"}
    assert by_extra["rabbitmq"] == {"aio-pika"}
    for extra, names in by_extra.items():
        for name in names:
            assert not name.startswith("asyncjobs"), f"extra {extra!r} names {name!r}, which is not on the index"
            metadata.distribution(name)  # installed here, so a real distribution (raises if not)


def test_extras_bring_the_modules_the_messages_promise() -> None:
    import importlib

    for extra, modules in EXTRAS.items():
        for module in modules:
            importlib.import_module(module)
        assert install_command(extra) == f"pip install '{DISTRIBUTION}[{extra}]'"


def test_the_wheel_registers_every_broker_scheme(wheel: zipfile.ZipFile) -> None:
    text = wheel_file(wheel, "entry_points.txt")
    section = text.split("[asyncjobs.brokers]", 1)[1].split("\n[", 1)[0]
    found = dict(line.replace(" ", "").split("=", 1) for line in section.strip().splitlines())
    assert found == SCHEMES
    assert "asyncjobs=asyncjobs.cli:main" in text.replace(" ", "")


def test_the_installed_entry_points_load() -> None:
    installed = {ep.name: ep for ep in metadata.entry_points(group="asyncjobs.brokers")}
    for scheme, target in SCHEMES.items():
        assert installed[scheme].value == target
        assert callable(installed[scheme].load())


@pytest.mark.parametrize("scheme", ["redis+cluster", "rediss+cluster"])
def test_a_cluster_url_opens_the_cluster_broker_through_the_registry(scheme: str) -> None:
    from asyncjobs_redis import RedisClusterBroker

    from asyncjobs.broker import from_url

    broker = from_url(f"{scheme}://127.0.0.1:7000/0?prefix=app")
    assert type(broker) is RedisClusterBroker


@pytest.mark.parametrize(
    ("url", "blocked", "extra"), [("redis://h/0", "redis", "redis"), ("amqp://h/", "aio_pika", "rabbitmq")]
)
def test_a_broker_without_its_client_library_names_the_command(url: str, blocked: str, extra: str) -> None:
    script = f"import sys; sys.modules[{blocked!r}] = None\nfrom asyncjobs.broker import from_url\nfrom_url({url!r})\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith(f"client library: pip install 'asyncjobs-runtime[{extra}]'"), result.stderr


def test_the_cli_says_the_same_in_one_line() -> None:
    script = "import sys; sys.modules['redis'] = None\nfrom asyncjobs.cli import main\nmain()\n"
    result = subprocess.run(
        [sys.executable, "-c", script, "stats", "--broker", "redis://127.0.0.1:6379/0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: broker URL scheme 'redis' needs the redis client library: pip install 'asyncjobs-runtime[redis]'"
    )
