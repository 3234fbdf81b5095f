"""The ways other code calls the shop, run against a started mesh (the e2e stack):

- `examples/` scripts: a plain channel through the edge, `mesh.connect`, an event
  subscriber;
- the README's "Using a generated client" snippet, extracted from README.md and run
  as written, in a process given no settings (it finds the mesh through the
  per-user record `meshctl up` writes, here written for the stack);
- the clients wheel: both distributions built, only `shop-clients` installed in a
  fresh venv (no system site-packages), and the edge called with it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import venv
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mesh.discovery import locate
from tests.support.local_mesh import Stack, local_mesh

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The e2e stack on `up`'s own authenticated nats-server, as `make run` runs it: the
    event subscriber example is one of the identities mesh.toml names."""
    async with local_mesh(tmp_path_factory.mktemp("examples"), own_nats=True) as s:
        yield s


ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def readme_snippet() -> str:
    """The first python block of the README's "Using a generated client" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Using a generated client\n", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "no python block in the README's 'Using a generated client'"
    return str(blocks[0])


def user_env(stack: Stack, home: Path) -> dict[str, str]:
    """A user's shell: no mesh settings at all, its own per-user state directory,
    in which the stack is recorded as `meshctl up` records itself."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MESH_", "OTEL_", "CONSUL_", "NATS_"))
    }
    env["XDG_STATE_HOME"] = str(home / "state")
    env["XDG_RUNTIME_DIR"] = str(home / "runtime")
    locate.record(stack.base / "registry", pki_dir=stack.base / "pki", env=env)
    return env


async def run(*argv: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    text = out.decode()
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{text[-3000:]}"
    return text


async def test_edge_client_example(stack: Stack) -> None:
    out = await run(sys.executable, str(EXAMPLES / "edge_client.py"), "--edge", stack.edge.address)
    assert re.search(r"created and fetched user [0-9a-f-]{36} <edge-", out), out


async def test_mesh_client_example_with_no_settings(stack: Stack, tmp_path: Path) -> None:
    out = await run(sys.executable, str(EXAMPLES / "mesh_client.py"), env=user_env(stack, tmp_path))
    assert re.search(r"user [0-9a-f-]{36} has 0 orders", out), out


async def test_readme_snippet_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(readme_snippet())
    out = await run(sys.executable, str(script), env=user_env(stack, tmp_path))
    assert re.fullmatch(r"[0-9a-f-]{36} 0 orders\n", out), out


def _no_nats_settings() -> dict[str, str]:
    """The user's shell with no NATS settings: the example finds `up`'s NATS itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MESH_"))}


async def test_event_subscriber_example_on_up_s_own_nats(stack: Stack) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "event_subscriber.py"), "--run-dir", str(stack.base),
        "--count", "1", cwd=ROOT, env=_no_nats_settings(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.startswith(b"subscribed to user.created as event-subscriber-example"), first
        status, user = await stack.json(
            "POST", "/api/v1/users",
            {"email": "events-example@example.com", "password": "correct horse battery",
             "profile": {"display_name": "Events"}},
        )  # fmt: skip
        assert status == 200, user
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, rest.decode()
    assert rest.decode().startswith("user.created id="), rest.decode()


async def test_event_subscriber_example_may_read_nothing_else(stack: Stack) -> None:
    """Its identity is granted its own durable of `user.created` only: another
    subject (orders, with payment details) is refused by the server, not read."""
    out = await _fails(
        sys.executable, str(EXAMPLES / "event_subscriber.py"), "--run-dir", str(stack.base),
        "--subject", "order.completed", "--durable", "peek", "--count", "1",
    )  # fmt: skip
    assert "subscribed to" not in out and "order.completed id=" not in out, out
    refused = 'refused by the server: nats: permissions violation for publish to "$js.api.consumer'
    assert refused in out, out
    assert "may only consume user.created" in out and "Traceback" not in out, out


async def test_event_subscriber_example_without_a_mesh_says_so(tmp_path: Path) -> None:
    out = await _fails(
        sys.executable, str(EXAMPLES / "event_subscriber.py"), "--run-dir", str(tmp_path)
    )
    assert f"no mesh is running in {tmp_path}" in out, out


async def _fails(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=_no_nats_settings(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0, out.decode()
    return out.decode()


async def test_clients_wheel_alone_calls_the_edge(stack: Stack, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # Build from copies: an in-tree build leaves build/ trees behind in the checkout.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for name in ("base", "mesh", "interceptors", "services", "generated"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    # The runtime and the clients distributions, with the project's own setuptools.
    await run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
              "-w", str(dist), str(src), str(src / "generated"), timeout_s=180)  # fmt: skip
    wheels = {p.name: p for p in dist.glob("*.whl")}
    assert set(wheels) == {
        "shop_clients-0.1.0-py3-none-any.whl",
        "shop_mesh-0.1.0-py3-none-any.whl",
    }
    clients = zipfile.ZipFile(wheels["shop_clients-0.1.0-py3-none-any.whl"]).namelist()
    runtime = zipfile.ZipFile(wheels["shop_mesh-0.1.0-py3-none-any.whl"]).namelist()
    assert "shop/orders/v2/orders_pb2_grpc.pyi" in clients and "shop/py.typed" in clients
    # The mesh's own contracts as sources: another project's protos import them.
    assert "meshproto/api/v1/options.proto" in clients
    assert not [n for n in clients if n.startswith(("mesh/", "services/", "interceptors/"))]
    assert not [n for n in runtime if n.startswith("shop/")], "the runtime must not ship shop/"

    env_dir = tmp_path / "venv"
    # No pip inside (ensurepip alone took 20 s here): this pip installs into it.
    await asyncio.to_thread(venv.create, env_dir, with_pip=False, system_site_packages=False)
    python = str(env_dir / "bin" / "python")
    pip = (sys.executable, "-m", "pip", "--python", python)
    clients_wheel = str(wheels["shop_clients-0.1.0-py3-none-any.whl"])
    await run(*pip, "install", "-q", clients_wheel, timeout_s=300)
    installed = await run(*pip, "list", "--format=freeze")
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert "shop-clients" in names and "shop-mesh" not in names and "nats-py" not in names
    # Run from a directory without the repository, so nothing but the venv is importable.
    isolated = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    out = await run(python, "-I", str(EXAMPLES / "edge_client.py"), "--edge", stack.edge.address,
                    env=isolated)  # fmt: skip
    assert "created and fetched user" in out, out
    with pytest.raises(AssertionError, match="No module named 'mesh'"):
        await run(python, "-I", "-c", "import mesh", env=isolated)
    # The descriptor set ships with it: an installed edge companion reads it from here.
    shipped = await run(
        python,
        "-I",
        "-c",
        "import importlib.resources as r; print(len(r.files('shop').joinpath("
        "'descriptors.binpb').read_bytes()))",
        env=isolated,
    )
    assert int(shipped.strip()) == len((ROOT / "envoy" / "descriptors.binpb").read_bytes())
