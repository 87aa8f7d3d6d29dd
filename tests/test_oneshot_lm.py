"""examples/oneshot_lm.py runs end to end on a small corpus that the test writes itself."""

import importlib.util
import math
import re
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "oneshot_lm.py"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A list is a mutable sequence, and a tuple is an immutable one.",
    "Functions return None when they reach the end of their body.",
    "The interpreter reads the file, compiles it, and runs the code.",
    "Each module has its own namespace, and names are looked up there first.",
    "An exception that is not handled stops the program with a traceback.",
]


@pytest.fixture(scope="module")
def example():
    # examples/ is not a package: load the script as a module, without running its __main__.
    spec = importlib.util.spec_from_file_location("examples_oneshot_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_corpus(root: Path, documents: int = 20) -> None:
    """HTML pages shaped like Sphinx's: navigation outside the main div, code in <pre>."""
    for i in range(documents):
        paragraphs = "".join(
            f"<p>{SENTENCES[(i + j) % len(SENTENCES)]} {SENTENCES[(i * j) % len(SENTENCES)]}</p>"
            for j in range(12)
        )
        page = (
            "<html><head><title>t</title><style>p {}</style></head><body>"
            '<div class="related">NAVIGATION</div>'
            f'<div class="body" role="main"><h1>Page {i}<a class="headerlink">¶</a></h1>'
            f"<div>{paragraphs}</div><pre>CODE = 1</pre></div>"
            '<div class="footer">FOOTER</div></body></html>'
        )
        folder = root / ("library" if i % 2 else "tutorial")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"page{i:02d}.html").write_text(page, encoding="utf-8")
    (root / "genindex.html").write_text("<html><body>INDEX</body></html>")


def test_html_to_text_keeps_the_prose_only(example):
    page = (
        '<div class="related">NAV</div><div role="main"><h1>Title<a class="headerlink">¶</a>'
        "</h1><p>One\ntwo &amp; three.</p><div><pre>code</pre><p>Four.</p></div></div>"
        "<div>FOOTER</div>"
    )
    assert example.html_to_text(page) == "Title\nOne two & three.\nFour."


def test_split_is_by_document_and_deterministic(example, tmp_path):
    write_corpus(tmp_path)
    first, second = example.load_corpus(tmp_path), example.load_corpus(tmp_path)
    assert first.documents == (16, 2, 2)  # genindex.html is left out
    for a, b in zip(first[:3], second[:3], strict=True):
        assert (a == b).all()
    text = bytes(first.train).decode()
    assert "NAVIGATION" not in text and "FOOTER" not in text and "CODE" not in text
    assert "INDEX" not in text


def test_quick_run_prints_every_method(example, tmp_path, capsys):
    corpus, out = tmp_path / "html", tmp_path / "out"
    write_corpus(corpus)
    assert example.main(["--quick", "--corpus", str(corpus), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert (out / "oneshot_lm.png").stat().st_size > 10_000

    table = stdout.split("Held-out perplexity per byte:")[1].split("plot:")[0]
    rows = re.findall(r"^(\S.*?)\s+(-|50%|2:4)\s+(\d+\.\d\d)%\s+(\S+)", table, re.MULTILINE)
    found = {(label, pattern): (float(sp), float(ppl)) for label, pattern, sp, ppl in rows}
    expected = [("dense", "-")] + [(m.label, m.pattern) for m in example.METHODS]
    assert sorted(found) == sorted(expected), table
    assert all(math.isfinite(ppl) for _, ppl in found.values()), table
    # Every pruned model is at 50% sparsity in its pruned kernels (SparseGPT: a few more on
    # ties). OWL's per-layer sparsities average to 50%, but each column of a layer keeps
    # int(in * s_l) zeros: on these tiny layers (32 inputs) the rounding costs a few points.
    for (label, _), (sp, _) in found.items():
        if label != "dense":
            assert abs(sp - 50.0) < (5.0 if "OWL" in label else 0.5), table
    # The dense model has learned something: it beats predicting every byte with 1/256.
    dense = found["dense", "-"][1]
    assert dense < example.VOCAB / 4, table


def test_missing_corpus_says_how_to_install_it(example, tmp_path, capsys):
    assert example.main(["--quick", "--corpus", str(tmp_path / "none")]) == 2
    assert "apt-get install python3.11-doc" in capsys.readouterr().err
