"""The committed protobuf stubs must match what protoc generates from the .proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATED = ("attrgate_pb2.py", "attrgate_pb2.pyi", "attrgate_pb2_grpc.py")


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(REPO / "proto/attrgate/v1/attrgate.proto"),
        ],
        check=True,
    )
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "attrgate/v1" / name).read_bytes()
        != (REPO / "server/attrgate/v1" / name).read_bytes()
    ]
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit"


def test_the_api_names_other_teams_depend_on() -> None:
    from attrgate.v1 import attrgate_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["UserAttributes"]
    assert service.full_name == "attrgate.v1.UserAttributes"
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "UpdateUserAttributes": (
            "attrgate.v1.UpdateUserAttributesRequest",
            "attrgate.v1.UpdateUserAttributesResponse",
        ),
        "CheckUpdateUserAttributes": (
            "attrgate.v1.UpdateUserAttributesRequest",
            "attrgate.v1.Decision",
        ),
    }
    request = pb.UpdateUserAttributesRequest.DESCRIPTOR
    assert [(f.name, f.number) for f in request.fields] == [
        ("user_pool_id", 1),
        ("username", 2),
        ("user_attributes", 3),
        ("client_metadata", 4),
    ]
    assert [(f.name, f.number) for f in pb.AttributeType.DESCRIPTOR.fields] == [
        ("name", 1),
        ("value", 2),
    ]
