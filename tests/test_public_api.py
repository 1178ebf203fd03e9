import archc


def test_public_api_is_exactly_this():
    assert sorted(archc.__all__) == sorted([
        "ArchcError", "Graph", "compile", "export_onnx", "init_params", "load_weights", "lower",
        "optimize", "parse", "parse_file", "print_graph", "run", "save_weights",
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
