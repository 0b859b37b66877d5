from pathlib import Path

from tools.gen_protos import ROOT, generate


def test_checked_in_generated_code_matches_the_protos(tmp_path: Path):
    generated = generate(tmp_path)
    assert generated, "protoc generated nothing"
    stale = [p.name for p in generated if p.read_bytes() != (ROOT / "protos" / p.name).read_bytes()]
    assert not stale, f"stale generated code (run `make protos`): {stale}"
