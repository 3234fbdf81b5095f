"""The topology file (`mesh.toml`): the shop's parses; mistakes are named by file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh.cli import main as meshctl
from mesh.edge.browsers import NO_CORS, EdgeCors
from mesh.edge.jwt_authn import NO_ISSUER, EdgeAuthOptions
from mesh.edge.render import DESCRIPTORS
from mesh.local.topology import (
    RUN_FROM,
    TopologyError,
    load_topology,
    module_argv,
    service_processes,
)
from services.common.event_types import EVENTS

ROOT = Path(__file__).resolve().parents[3]

MINIMAL = """
[services.notes]
module = "notes.server"
grpc_port = 6000
admin_port = 6001
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    return path


def test_the_shops_topology() -> None:
    topology = load_topology(ROOT / "mesh.toml")
    assert [(s.name, s.instances) for s in topology.services] == [
        ("payments", 1), ("inventory", 2), ("users", 1), ("orders", 2),
    ]  # fmt: skip
    assert topology.services[3].module == "services.orders"
    assert (topology.services[3].grpc_port, topology.services[3].admin_port) == (50052, 9102)
    assert topology.event_types() is EVENTS
    assert topology.demo_module == "services.tools.demo"


def test_another_project_runs_its_own_modules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace(
            "admin_port = 6001", 'admin_port = 6001\ninstances = 2\nenv = { NOTES_MODE = "fast" }'
        ),
    )
    topology = load_topology(path)
    assert topology.event_types() is None and topology.demo_module == ""
    procs = service_processes(
        tmp_path, {"HOME": "/h"}, nats_url="nats://n", services=topology.services,
        python="/opt/other/bin/python", source=None, project_dir=tmp_path,
    )  # fmt: skip
    assert [p.name for p in procs] == ["notes-1", "notes-2"]
    assert procs[0].argv == ("/opt/other/bin/python", "-m", "notes.server")
    assert procs[0].env["MESH_GRPC_PORT"] == "6000" and procs[1].env["MESH_GRPC_PORT"] == "0"
    assert procs[1].env["NOTES_MODE"] == "fast" and procs[1].env["HOME"] == "/h"
    assert procs[0].cwd == procs[1].cwd == str(tmp_path)  # the project's modules are there
    other = service_processes(
        tmp_path, {}, nats_url="nats://n", services=topology.services,
        python="/opt/other/bin/python", source=Path("/src/v2"), project_dir=None,
    )  # fmt: skip
    assert other[1].argv == ("/opt/other/bin/python", "-c", RUN_FROM, "/src/v2", "notes.server")


def test_a_module_runs_from_another_source_tree_with_its_arguments(tmp_path: Path) -> None:
    """What a release's new version and `bench side-by-side --b-ref` run: the tree's
    module, not the current directory's one of the same name, in the tree, with its
    arguments."""
    for tree, says in ((tmp_path / "here", "here"), (tmp_path / "there", "there")):
        (tree / "notes").mkdir(parents=True)
        (tree / "notes" / "__init__.py").write_text("")
        (tree / "notes" / "__main__.py").write_text(
            f"import os, sys\nprint({says!r}, os.getcwd(), __name__, sys.argv[1:], sep='|')\n"
        )
    argv = module_argv(sys.executable, "notes", "--db", "x y", source=tmp_path / "there")
    done = subprocess.run(argv, cwd=tmp_path / "here", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"there|{tmp_path / 'there'}|__main__|['--db', 'x y']"
    plain = module_argv(sys.executable, "notes", "--db", "x y")
    done = subprocess.run(plain, cwd=tmp_path / "here", capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"here|{tmp_path / 'here'}|__main__|['--db', 'x y']"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "services: expected at least one [services.<name>] table"),
        (
            "[services.notes]\ngrpc_port = 1\n",
            "services.notes.module: expected a Python module name",
        ),
        (
            MINIMAL + "instances = 0\n",
            "services.notes.instances: expected an integer from 1 to 64, got 0",
        ),
        (MINIMAL.replace("6000", '"6000"'), "services.notes.grpc_port: expected an integer"),
        (MINIMAL + "instanses = 2\n", "services.notes.instanses: unknown key"),
        ('colour = "blue"\n' + MINIMAL, "colour: unknown key"),
        (
            MINIMAL.replace("6001", "6000"),
            "services: port(s) [6000] given to more than one service",
        ),
        ('event_types = "notes.events"\n' + MINIMAL, "event_types: expected 'package.module:NAME'"),
        (MINIMAL + "instances = = 2\n", "not valid TOML"),
        (
            MINIMAL + "env = { X = 2 }\n",
            'services.notes.env: expected a table of NAME = "string" pairs',
        ),
        ("[services.Notes]\nmodule = 'n'\n", "services.Notes: 'Notes': a name is lower case"),
        # Not a DNS label (Kubernetes refuses it), or one too long for `<name>-<track>`.
        ("[services.a-]\nmodule = 'n'\n", "services.a-: 'a-': a name is lower case"),
        ('[services."a\\n"]\nmodule = "n"\n', "a name is lower case"),
        (f"[services.{'a' * 43}]\nmodule = 'n'\n", "at most 42 characters"),
        # The mesh's own identities.
        ("[services.edge]\nmodule = 'n'\n", "services.edge: 'edge' is reserved"),
        ("[services.dead-letters]\nmodule = 'n'\n", "'dead-letters' is reserved"),
        ("[services.consul]\nmodule = 'n'\n", "'consul' is reserved"),
        ('event_identities = ":"\n' + MINIMAL, "event_identities: expected 'package.module:NAME'"),
        ('event_types = "a.b:"\n' + MINIMAL, "event_types: expected 'package.module:NAME'"),
        ('[services.a]\nmodule = "a.server\\n"\n', "services.a.module: expected a Python module"),
        (
            MINIMAL + 'migrations = "notes.store"\n',
            "services.notes.migrations: expected 'package.module:NAME'",
        ),
        (MINIMAL + '[edge]\ndescriptor = "x"\n', "edge.descriptor: unknown key"),
        (MINIMAL + "[edge]\ndescriptors = 1\n", "edge.descriptors: expected a path"),
        (
            MINIMAL + '[edge.auth]\nissuer = "notes"\naudiences = ["notes"]\n',
            "edge.auth.jwks_service: missing (give issuer, audiences, jwks_service)",
        ),
        (
            MINIMAL + '[edge.auth]\nissuer = "notes"\naudiences = "notes"\njwks_service = "a"\n',
            "edge.auth.audiences: expected a list of aud values",
        ),
        (
            MINIMAL + '[edge.auth]\nissuer = ""\naudiences = ["n"]\njwks_service = "a"\n',
            "edge.auth.issuer: expected the tokens' iss",
        ),
        (
            MINIMAL + '[edge.auth]\nissuer = "n"\naudiences = ["n"]\njwks_service = "A b"\n',
            "edge.auth.jwks_service: expected a service name",
        ),
        (
            MINIMAL + '[edge.auth]\nissuer = "n"\naudiences = ["n"]\njwks_service = "a"\n'
            'jwks_path = "keys"\n',
            "edge.auth.jwks_path: expected a path starting with /",
        ),
        (
            MINIMAL + '[edge.auth]\nissuer = "n"\naudiences = ["n"]\njwks_service = "a"\n'
            "enabled = false\n",
            "edge.auth.enabled: unknown key",
        ),
        (MINIMAL + '[edge.cors]\norigins = ["*"]\n', "edge.cors.origins: '*': list each"),
        (
            MINIMAL + '[edge.cors]\norigins = ["https://shop.example.com/"]\n',
            "edge.cors.origins: 'https://shop.example.com/': an origin is scheme://host[:port]",
        ),
        (
            MINIMAL + '[edge.cors]\norigins = "https://shop.example.com"\n',
            "edge.cors.origins: expected a list of origins",
        ),
        (
            MINIMAL + "[edge.cors]\norigins = []\nmax_age_s = -1\n",
            "edge.cors.max_age_s: expected an integer from 0 to 86400, got -1",
        ),
        (MINIMAL + "[edge.cors]\ncredentials = true\n", "edge.cors.credentials: unknown key"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_the_edge_serves_the_shops_contracts_unless_the_project_names_its_own(
    tmp_path: Path,
) -> None:
    shop = load_topology(ROOT / "mesh.toml")
    assert shop.edge_descriptors() == DESCRIPTORS
    assert shop.edge.auth == EdgeAuthOptions()
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "descriptors.binpb").write_bytes(DESCRIPTORS.read_bytes())
    own = load_topology(
        write(
            tmp_path,
            MINIMAL
            + '[edge]\ndescriptors = "gen/descriptors.binpb"\n'
            + '[edge.auth]\nissuer = "notes/accounts"\naudiences = ["notes", "notes-admin"]\n'
            + 'jwks_service = "accounts"\n',
        )
    )
    assert own.edge_descriptors() == tmp_path / "gen" / "descriptors.binpb"
    # Its contracts without an issuer: an edge that trusts none (not the shop's users).
    no_issuer = load_topology(
        write(tmp_path, MINIMAL + '[edge]\ndescriptors = "gen/descriptors.binpb"\n')
    )
    assert no_issuer.edge.auth == NO_ISSUER
    assert own.edge.auth == EdgeAuthOptions(
        issuer="notes/accounts", audiences=("notes", "notes-admin"), jwks_service="accounts"
    )


def test_browser_origins_for_the_edge(tmp_path: Path) -> None:
    """`[edge.cors]` lists the pages' origins; an `[edge]` with no descriptors of its
    own is still the shop's edge, trusting the shop's issuer."""
    shop = load_topology(
        write(
            tmp_path,
            MINIMAL
            + '[edge.cors]\norigins = ["https://shop.example.com", "http://localhost:5173"]\n',
        )
    )
    assert shop.edge.cors == EdgeCors(("https://shop.example.com", "http://localhost:5173"))
    assert shop.edge.auth == EdgeAuthOptions()
    assert shop.edge.descriptors == ""
    assert load_topology(write(tmp_path, MINIMAL)).edge.cors == NO_CORS


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "No such file"), (b"\xff not a descriptor set", "Error")]
)
def test_an_edge_descriptor_set_that_is_not_there_or_does_not_parse(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    if content is not None:
        (tmp_path / "set.binpb").write_bytes(content)
    topology = load_topology(write(tmp_path, MINIMAL + '[edge]\ndescriptors = "set.binpb"\n'))
    with pytest.raises(TopologyError) as caught:
        topology.edge_descriptors()
    assert str(caught.value).startswith(f"{tmp_path / 'mesh.toml'}: edge.descriptors: ")
    assert problem in str(caught.value)
    assert "meshctl contracts build" in str(caught.value)


def test_the_shops_services_name_their_migrations_for_releases() -> None:
    shop = load_topology(Path(__file__).resolve().parents[3] / "mesh.toml")
    assert {s.name: s.migrations for s in shop.services}["orders"] == (
        "services.orders.store:migrations"
    )


def test_an_event_registry_that_does_not_import(tmp_path: Path) -> None:
    path = write(tmp_path, 'event_types = "no_such_project.events:EVENTS"\n' + MINIMAL)
    with pytest.raises(TopologyError, match=r"event_types: .*cannot import no_such_project"):
        load_topology(path).event_types()


def test_meshctl_reports_a_missing_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.toml"
    assert meshctl(["status", "--topology", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such topology file" in err


def test_meshctl_demo_needs_a_demo_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    assert meshctl(["demo", "--topology", str(path)]) == 1
    assert f"{path} names no demo module" in capsys.readouterr().err


def test_a_file_that_is_not_utf8_or_is_a_directory_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both were tracebacks (UnicodeDecodeError, IsADirectoryError)."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[services.a]\n")
    with pytest.raises(TopologyError, match=r"binary\.toml: not UTF-8 text \(byte 0"):
        load_topology(binary)
    with pytest.raises(TopologyError, match=r": a directory, not a topology file"):
        load_topology(tmp_path)
    assert meshctl(["status", "--topology", str(binary), "--run-dir", str(tmp_path)]) == 2
    assert f"meshctl: {binary}: not UTF-8 text" in capsys.readouterr().err


def test_the_reserved_names_are_the_meshs_own() -> None:
    """The names are spelled out in topology.py (mesh/k8s imports it): these are where
    they come from."""
    from mesh.api.options import EDGE
    from mesh.events.nats_auth import MESH_TOOLS
    from mesh.k8s.infra import CONSUL_IDENTITY, NATS_HEADLESS
    from mesh.k8s.workloads import NATS_SERVICE
    from mesh.local.topology import RESERVED_NAMES
    from mesh.security.end_user import MESH_CLIENT
    from mesh.security.pki import CA_NAME

    own = {EDGE, MESH_CLIENT, CA_NAME, CONSUL_IDENTITY, NATS_SERVICE, NATS_HEADLESS}
    assert own | {t.name for t in MESH_TOOLS} == RESERVED_NAMES


IDENTITIES = """
from mesh.events.nats_auth import Consumes, EventIdentity
IDENTITIES = ({entries})
"""


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            'EventIdentity("notes", publishes=("note",)),',
            "event_identities: notes: no stream holds subject 'note.>': the streams are the"
            " domains of the event types (event_types = not given; domains: none)",
        ),
        (
            'EventIdentity("notes", consumes=(Consumes("user.created", "d"),)),',
            "event_identities: notes: no stream holds subject 'user.created'",
        ),
        ('EventIdentity("notes"), EventIdentity("notes"),', "'notes' is given more than once"),
        ('EventIdentity("meshctl"),', "event_identities: 'meshctl' is reserved"),
        ('EventIdentity("a/b"),', "event_identities: 'a/b': a name is lower case"),
    ],
)
def test_event_identities_that_no_authorization_could_be_rendered_for(
    tmp_path: Path, entries: str, message: str
) -> None:
    """`events credentials` and `k8s secrets` failed with GrantError's traceback while
    `k8s render` went on; a repeated or reserved identity went through."""
    module = f"idents_{abs(hash(entries))}"  # a module name of its own: imports are cached
    (tmp_path / f"{module}.py").write_text(IDENTITIES.format(entries=entries))
    path = write(tmp_path, f'event_identities = "{module}:IDENTITIES"\n' + MINIMAL)
    with pytest.raises(TopologyError) as caught:
        load_topology(path).event_identities()
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
