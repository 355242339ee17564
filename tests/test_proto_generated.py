"""The committed generated protobuf modules are exactly what protoc makes of proto/."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["lc0net", "patch"])
def test_generated_module_is_up_to_date(tmp_path, name):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
                    f"--python_out={tmp_path}", str(ROOT / "proto" / f"{name}.proto")], check=True)
    fresh = (tmp_path / f"{name}_pb2.py").read_text()
    committed = (ROOT / "lc0weights" / "proto" / f"{name}_pb2.py").read_text()
    assert fresh == committed, f"regenerate lc0weights/proto/{name}_pb2.py from proto/{name}.proto"
