import archc


def test_public_api_is_exactly_this():
    assert sorted(archc.__all__) == sorted([
        "ArchcError", "Graph", "compile", "export_onnx", "init_params", "load_weights", "lower",
        "optimize", "parse", "parse_file", "print_graph", "run", "Runner", "save_weights",
        "Session",
    ])
    for name in archc.__all__:
        assert getattr(archc, name) is not None


def test_core_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, archc; archc.compile('specs/llama_tiny.arch'); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("conftest").ROOT), check=True)
    assert out.stdout.strip() == "False False"


def test_runner_builds_once_and_checks_every_call():
    """archc.Runner: the export and the onnxruntime session are made once; each call checks its
    inputs like archc.run and equals it (NumPy within 1e-5); bad inputs are diagnostics."""
    import numpy as np
    import pytest

    from archc.backends import ort

    graph = archc.compile(__import__("conftest").ROOT / "specs" / "llama_tiny.arch")
    ids = np.random.default_rng(0).integers(0, 1024, (2, 7))
    made = []
    real = ort.session
    ort.session = lambda model: made.append(1) or real(model)
    try:
        r = archc.Runner(graph, backend="onnxruntime")
        outs = [r({"input_ids": ids}) for _ in range(3)]
    finally:
        ort.session = real
    assert len(made) == 1
    want = archc.run(graph, {"input_ids": ids})["logits"]
    for out in outs:
        np.testing.assert_allclose(out["logits"], want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(archc.Runner(graph)({"input_ids": ids})["logits"], want,
                               atol=1e-5, rtol=0)
    with pytest.raises(archc.ArchcError, match="holds id 5000"):
        r({"input_ids": np.full((1, 3), 5000)})
    with pytest.raises(archc.ArchcError, match="missing"):
        archc.Runner(graph, {})
