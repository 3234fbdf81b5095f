"""`meshctl contracts build`: a project's own contracts, compiled with the mesh's options
importable, into stubs and the descriptor set its edge serves; mistakes are protoc's
words and exit code 1, with nothing half-written claimed as built."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main as meshctl
from mesh.contracts.codegen import PROTO_ROOT, CodegenError, build_project, mesh_proto_root
from mesh.contracts.lint import lint_tree
from mesh.contracts.lint import main as lint_main
from mesh.edge.model import build_model, load_descriptor_set
from mesh.security.policy import policy_matrix

NOTES = """
syntax = "proto3";
package notes.notes.v1;
import "google/api/annotations.proto";
import "meshproto/api/v1/options.proto";

service NoteService {
  option (meshproto.api.v1.default_callers) = {services: ["edge", "search"]};
  rpc GetNote(GetNoteRequest) returns (Note) {
    option (google.api.http) = {get: "/api/v1/notes/{note_id}"};
    option (meshproto.api.v1.auth) = {access: ACCESS_PUBLIC};
  }
}
message GetNoteRequest { string note_id = 1; }
message Note { string note_id = 1; string text = 2; }
"""


def test_a_projects_contracts_with_the_meshs_options(tmp_path: Path) -> None:
    (tmp_path / "protos" / "notes" / "notes" / "v1").mkdir(parents=True)
    (tmp_path / "protos" / "notes" / "notes" / "v1" / "notes.proto").write_text(NOTES)
    written = build_project(tmp_path / "protos", tmp_path / "gen")
    assert written == tmp_path / "gen" / "descriptors.binpb"
    for name in ("notes_pb2.py", "notes_pb2.pyi", "notes_pb2_grpc.py", "notes_pb2_grpc.pyi"):
        assert (tmp_path / "gen" / "notes" / "notes" / "v1" / name).is_file(), name
    assert (tmp_path / "gen" / "notes" / "__init__.py").is_file()
    assert not (tmp_path / "gen" / "meshproto").exists()  # the venv's generated/ has it
    fds = load_descriptor_set(written)
    names = {f.name for f in fds.file}
    assert {"notes/notes/v1/notes.proto", "meshproto/api/v1/options.proto"} <= names
    assert "google/rpc/error_details.proto" in names  # statuses with details print as JSON
    (service,) = build_model(fds.file).public
    assert (service.cluster, service.major, service.methods[0].bindings[0].path) == (
        "notes",
        1,
        "/api/v1/notes/{note_id}",
    )
    (row,) = policy_matrix(fds.file)
    assert row.callers == frozenset({"edge", "search"})


def test_a_projects_contracts_are_linted_by_the_meshs_rules(tmp_path: Path) -> None:
    # `python -m mesh.contracts.lint --proto-root protos` in a project: its files only
    # (not the mesh's options it imports), buf's rules and the mesh's.
    (tmp_path / "notes" / "notes" / "v1").mkdir(parents=True)
    undeclared = NOTES.replace(
        "    option (meshproto.api.v1.auth) = {access: ACCESS_PUBLIC};\n", ""
    )
    (tmp_path / "notes" / "notes" / "v1" / "notes.proto").write_text(undeclared)
    violations = lint_tree(tmp_path)
    assert {v.rule for v in violations} >= {"policy", "buf COMMENT_SERVICE"}
    assert all("meshproto" not in v.element for v in violations)
    assert any("declares no end-user auth" in v.message for v in violations)


def test_the_meshs_contracts_are_imported_from_the_installed_package() -> None:
    # generated/ here (the clients distribution, sources shipped beside the stubs), not
    # a checkout's protos/: an installed wheel compiles a project's contracts too.
    root = mesh_proto_root()
    assert (root / "meshproto" / "__init__.py").is_file()
    for name in ("api/v1/options.proto", "events/v1/envelope.proto"):
        assert (root / "meshproto" / name).read_bytes() == (
            PROTO_ROOT / "meshproto" / name
        ).read_bytes()


def test_no_protos_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    with pytest.raises(CodegenError, match=r"no \.proto files under it"):
        build_project(tmp_path / "protos", tmp_path / "gen")


def test_a_contract_protoc_refuses_exits_1_with_protocs_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "bad.proto").write_text('syntax = "proto3";\nmessage {}\n')
    code = meshctl(["contracts", "build", "--protos", str(tmp_path / "protos"),
                    "--out", str(tmp_path / "gen")])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "meshctl contracts build: protoc failed" in captured.err
    assert "stubs in" not in captured.out


def test_a_proto_root_that_is_missing_or_empty_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing root said "no .proto files under it"; an empty one compiled every
    proto under the current directory (`Path("")`)."""
    missing = tmp_path / "nowhere"
    argv = ["contracts", "build", "--out", str(tmp_path / "gen"), "--protos"]
    assert meshctl([*argv, str(missing)]) == 1
    assert capsys.readouterr().err == f"meshctl contracts build: {missing}: does not exist\n"
    (tmp_path / "file").write_text("")
    with pytest.raises(CodegenError, match=r"file: not a directory"):
        build_project(tmp_path / "file", tmp_path / "gen")
    with pytest.raises(SystemExit) as exited:
        meshctl([*argv, ""])
    assert exited.value.code == 2
    assert "argument --protos: an empty path" in capsys.readouterr().err
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize(
    ("make", "said"),
    [
        ("missing", "does not exist"),
        ("empty", "no .proto files under it"),
        ("bad", "protoc failed"),  # protoc's own lines before it
    ],
)
def test_lint_names_a_root_it_cannot_compile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str, said: str
) -> None:
    """Each was a CodegenError traceback from `python -m mesh.contracts.lint`."""
    root = tmp_path / "protos"
    if make != "missing":
        root.mkdir()
    if make == "bad":
        (root / "bad.proto").write_text('syntax = "proto3";\nmessage {}\n')
    assert lint_main(["--proto-root", str(root)]) == 1
    err = capsys.readouterr().err
    assert said in err.splitlines()[-1]
