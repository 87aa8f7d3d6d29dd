"""One-shot pruning of a small byte-level language model: magnitude, Wanda, SparseGPT and OWL.

A decoder-only transformer (about 0.8 million parameters) is trained with Adam on the prose of
the Python 3.11 documentation, as Debian's ``python3.11-doc`` package installs it (HTML under
``/usr/share/doc/python3.11/html``; nothing is downloaded). Its attention and MLP kernels are
then pruned in one shot with ``jaxprune.prune_oneshot``, from the same dense model and the same
calibration sequences for every method:

* 50% unstructured: magnitude, Wanda, SparseGPT, and Wanda with OWL's per-layer sparsities;
* 2:4 (two kept of every four consecutive inputs): magnitude, Wanda, SparseGPT.

Every method runs with the library's defaults (SparseGPT's block size 128 and damping 0.01,
OWL's threshold 5 and lambda 0.08), calibrated sequentially as the reference codes are. The
byte embedding (a gather, not a linear layer) and the output head are not pruned, as in the
reference codes, which leave ``lm_head`` dense.

The corpus is split by document, deterministically: the HTML files are sorted by path and
document ``i`` goes to the held-out part if ``i % 10 == 0``, to the calibration part if
``i % 10 == 1``, and to training otherwise. Perplexity is per byte (a model that predicts
every byte with probability 1/256 has perplexity 256), over every position of fixed windows
of the held-out text.

Run it with::

    python examples/oneshot_lm.py [--steps 600] [--seed 0] [--corpus DIR] [--out DIR] [--quick]

It prints the held-out perplexity of the dense model and of each pruned one as a table, and
writes a bar plot to ``--out`` (default ``out/oneshot_lm``). It exits with status 1 if a
perplexity is not finite or the dense model does not beat the uniform byte model.
"""

import argparse
import html.parser
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import linen as nn
from tqdm import tqdm

import jaxprune

matplotlib.use("Agg")  # render to files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DEFAULT_CORPUS = Path("/usr/share/doc/python3.11/html")
VOCAB = 256  # bytes
# The kernels of the transformer blocks: attention (fused qkv, out) and MLP (in, out). The
# byte embedding is read by a gather (not a linear layer) and the head is left dense.
PRUNED_LAYERS = r"block_\d+/"


class Config(NamedTuple):
    """The model and the protocol. ``DEFAULT`` is the documented run, ``QUICK`` the tests'."""

    width: int  # model width d
    depth: int  # transformer blocks
    heads: int
    seq_len: int  # bytes per training, calibration and held-out sequence
    batch_size: int  # training sequences per step
    steps: int  # Adam updates
    learning_rate: float  # peak, after a linear warmup, then cosine decay
    calibration: int  # calibration sequences (all methods see the same ones)
    calibration_batch: int  # sequences per calibration batch
    held_out: int  # held-out sequences (at most; fewer if the held-out text is short)


DEFAULT = Config(
    width=128,
    depth=2,
    heads=4,
    seq_len=64,
    batch_size=32,
    steps=600,
    learning_rate=3e-3,
    calibration=128,
    calibration_batch=32,
    held_out=512,
)
QUICK = Config(
    width=32,
    depth=1,
    heads=2,
    seq_len=32,
    batch_size=16,
    steps=150,
    learning_rate=3e-3,
    calibration=8,
    calibration_batch=8,
    held_out=16,
)


# --------------------------------------------------------------------------------------------
# The corpus


class _ProseExtractor(html.parser.HTMLParser):
    """The text of a Sphinx page's main body, without code blocks, scripts or navigation.

    Only the ``<div role="main">`` is read when the page has one (Sphinx's navigation bars and
    sidebars lie outside it); ``<pre>`` blocks (code), ``<script>``, ``<style>`` and the
    pilcrows of header links are dropped. Block-level tags end a line.
    """

    _SKIP = {"pre", "script", "style", "head"}
    _BLOCKS = {"p", "div", "br", "li", "dt", "dd", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []  # text outside any role="main" div
        self.main_parts: list[str] = []  # text inside one
        self._skip = 0  # depth inside skipped elements
        self._div_depth = 0
        self._main_depth: int | None = None  # div depth of the open role="main" div
        self._found_main = False
        self._links: list[bool] = []  # open <a> tags: is it a header link?

    def _out(self) -> list[str]:
        return self.main_parts if self._main_depth is not None else self.parts

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self._div_depth += 1
            if self._main_depth is None and attrs.get("role") == "main":
                self._main_depth, self._found_main = self._div_depth, True
        if tag == "a":  # <a class="headerlink"> holds only a pilcrow
            self._links.append("headerlink" in (attrs.get("class") or "").split())
            self._skip += self._links[-1]
        if tag in self._SKIP:
            self._skip += 1
        if tag in self._BLOCKS:
            self._out().append("\n")

    def handle_endtag(self, tag):
        if tag == "a" and self._links:
            self._skip -= self._links.pop()
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        if tag in self._BLOCKS:
            self._out().append("\n")
        if tag == "div":
            if self._main_depth == self._div_depth:
                self._main_depth = None
            self._div_depth -= 1

    def handle_data(self, data):
        if not self._skip:  # line breaks in the source are spaces; block tags end lines
            self._out().append(data.replace("\n", " "))

    def text(self) -> str:
        raw = "".join(self.main_parts if self._found_main else self.parts)
        lines = (" ".join(line.split()) for line in raw.split("\n"))
        return "\n".join(line for line in lines if line)


def html_to_text(page: str) -> str:
    """The prose of one HTML page (see :class:`_ProseExtractor`)."""
    parser = _ProseExtractor()
    parser.feed(page)
    parser.close()
    return parser.text()


def list_documents(corpus: Path) -> list[Path]:
    """The corpus's HTML pages, sorted by path, without Sphinx's indexes and search page."""
    pages = []
    for path in sorted(corpus.rglob("*.html")):
        rel = path.relative_to(corpus)
        if any(part.startswith("_") for part in rel.parts[:-1]):
            continue  # _static, _sources, _downloads, _images
        if rel.name.startswith(("genindex", "py-modindex", "search")):
            continue  # lists of names, not prose
        pages.append(path)
    return pages


class Corpus(NamedTuple):
    train: np.ndarray  # uint8 bytes
    calibration: np.ndarray
    held_out: np.ndarray
    documents: tuple[int, int, int]  # documents per part


def load_corpus(corpus: Path) -> Corpus:
    """Reads, strips and splits the corpus by document (see the module notes)."""
    pages = list_documents(corpus)
    parts: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
    for i, path in enumerate(pages):
        text = html_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if not text:
            continue
        part = 2 if i % 10 == 0 else 1 if i % 10 == 1 else 0
        parts[part].append(text.encode("utf-8"))
    # Documents are separated by a blank line, as paragraphs are by a newline.
    streams = [np.frombuffer(b"\n\n".join(docs), dtype=np.uint8) for docs in parts]
    return Corpus(*streams, documents=tuple(len(docs) for docs in parts))


def windows(stream: np.ndarray, length: int, count: int, rng: np.random.Generator | None):
    """``count`` windows of ``length`` bytes: random offsets, or consecutive ones if no rng.

    Consecutive windows do not overlap and are as many as fit, up to ``count``.
    """
    if len(stream) < length:
        raise ValueError(f"a part of the corpus has {len(stream)} bytes, fewer than {length}")
    if rng is None:
        count = min(count, len(stream) // length)
        starts = np.arange(count) * length
    else:
        starts = rng.integers(0, len(stream) - length + 1, size=count)
    return np.stack([stream[s : s + length] for s in starts]).astype(np.int32)


# --------------------------------------------------------------------------------------------
# The model


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention, then a 4x GELU MLP."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x):
        batch, length, width = x.shape
        head_dim = width // self.heads
        h = nn.LayerNorm(name="ln_attn")(x)
        qkv = nn.Dense(3 * width, name="attn_qkv")(h)
        q, k, v = jnp.split(qkv.reshape(batch, length, 3 * self.heads, head_dim), 3, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        logits = jnp.where(causal[None, None], logits, jnp.finfo(logits.dtype).min)
        attention = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        x = x + nn.Dense(width, name="attn_out")(attention.reshape(batch, length, width))
        h = nn.LayerNorm(name="ln_mlp")(x)
        h = nn.Dense(4 * width, name="mlp_in")(h)
        return x + nn.Dense(width, name="mlp_out")(nn.gelu(h))


class ByteLM(nn.Module):
    """Byte embedding plus learned positions, ``depth`` blocks, a final norm and a head.

    The blocks are a Python loop, not ``nn.scan``: ``prune_oneshot`` needs each kernel read
    by one ``dot_general`` outside any loop.
    """

    width: int
    depth: int
    heads: int
    max_len: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, self.width, name="embed")(tokens)
        positions = self.param(
            "positions", nn.initializers.normal(0.02), (self.max_len, self.width)
        )
        x = x + positions[None, : tokens.shape[1]]
        for i in range(self.depth):
            x = Block(self.width, self.heads, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="ln_final")(x)
        return nn.Dense(VOCAB, name="head")(x)


def make_model(config: Config) -> ByteLM:
    return ByteLM(config.width, config.depth, config.heads, config.seq_len)


def loss_fn(model: ByteLM, params, sequences):
    """Mean next-byte cross-entropy (nats) over every position of ``(batch, seq_len)``."""
    logits = model.apply(params, sequences[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, sequences[:, 1:]).mean()


def train(model: ByteLM, config: Config, stream: np.ndarray, seed: int):
    """Adam (warmup, cosine decay, gradient clipping at 1) on random windows of ``stream``."""
    params = model.init(jax.random.key(seed), jnp.zeros((1, config.seq_len), jnp.int32))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        config.learning_rate,
        max(1, config.steps // 20),
        config.steps,
        config.learning_rate / 10,
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    with tqdm(range(config.steps), desc="training", unit="step", mininterval=2.0) as bar:
        for t in bar:
            batch = windows(stream, config.seq_len + 1, config.batch_size, rng)
            params, opt_state, loss = step(params, opt_state, batch)
            if t % 50 == 0 or t == config.steps - 1:
                bar.set_postfix(loss=f"{float(loss):.3f}")
    return params, float(loss)


def make_perplexity(model: ByteLM, held_out: np.ndarray, chunk: int = 32):
    """A function ``params -> per-byte perplexity`` on the held-out windows.

    Each window of ``seq_len`` bytes predicts its last ``seq_len - 1`` from the ones before.
    """
    held_out = jnp.asarray(held_out)

    @jax.jit
    def total_nll(params, sequences):
        logits = model.apply(params, sequences[:, :-1])
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, sequences[:, 1:])
        return nll.sum()

    def perplexity(params) -> float:
        nll = sum(
            float(total_nll(params, held_out[i : i + chunk]))
            for i in range(0, len(held_out), chunk)
        )
        return math.exp(nll / (held_out.shape[0] * (held_out.shape[1] - 1)))

    return perplexity


# --------------------------------------------------------------------------------------------
# Pruning


class Method(NamedTuple):
    label: str  # as printed
    pattern: str  # "50%" or "2:4"
    kwargs: dict


METHODS = (
    Method("magnitude", "50%", dict(method="magnitude", sparsity=0.5)),
    Method("Wanda", "50%", dict(method="wanda", sparsity=0.5)),
    Method("SparseGPT", "50%", dict(method="sparsegpt", sparsity=0.5)),
    Method("Wanda + OWL", "50%", dict(method="wanda", sparsity=0.5, owl=True)),
    Method("magnitude", "2:4", dict(method="magnitude", n_m=(2, 4))),
    Method("Wanda", "2:4", dict(method="wanda", n_m=(2, 4))),
    Method("SparseGPT", "2:4", dict(method="sparsegpt", n_m=(2, 4))),
)


class Row(NamedTuple):
    label: str
    pattern: str
    sparsity: float  # fraction of zeros in the pruned kernels
    perplexity: float
    seconds: float  # pruning wall time


def pruned_sparsity(params, masks) -> float:
    """The fraction of exact zeros over the leaves the masks prune."""
    zeros = total = 0
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
        if np.ndim(m):
            zeros += int(jnp.sum(p == 0))
            total += p.size
    return zeros / total


def prune_all(model, params, calibration_batches, perplexity) -> list[Row]:
    """Prunes the dense ``params`` with every method in :data:`METHODS`."""
    rows = []
    for m in METHODS:
        start = time.perf_counter()
        pruned, masks = jaxprune.prune_oneshot(
            model.apply, params, calibration_batches, layers=PRUNED_LAYERS, **m.kwargs
        )
        jax.block_until_ready(pruned)
        seconds = time.perf_counter() - start
        ppl = perplexity(pruned)
        rows.append(Row(m.label, m.pattern, pruned_sparsity(pruned, masks), ppl, seconds))
        print(f"  {m.label:<12} {m.pattern:>4}: perplexity {ppl:8.3f}  ({seconds:.1f} s)")
    return rows


def format_table(dense: float, rows: list[Row]) -> str:
    lines = [
        f"{'method':<12} {'pattern':>7} {'sparsity':>9} {'perplexity':>11} {'vs dense':>9}",
        f"{'dense':<12} {'-':>7} {0:>8.2%} {dense:>11.3f} {'':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.label:<12} {r.pattern:>7} {r.sparsity:>8.2%} {r.perplexity:>11.3f} "
            f"{r.perplexity / dense:>8.2f}x"
        )
    return "\n".join(lines)


def plot(dense: float, rows: list[Row], path: Path, title: str) -> None:
    """Held-out perplexity per method, grouped by pattern, the dense model as a line."""
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    colors = {"magnitude": "tab:gray", "Wanda": "tab:blue", "SparseGPT": "tab:orange"}
    colors["Wanda + OWL"] = "tab:green"
    patterns = list(dict.fromkeys(r.pattern for r in rows))
    x = 0.0
    ticks, tick_labels = [], []
    for pattern in patterns:
        group = [r for r in rows if r.pattern == pattern]
        for r in group:
            ax.bar(x, r.perplexity, color=colors.get(r.label, "tab:purple"))
            ax.text(x, r.perplexity, f"{r.perplexity:.2f}", ha="center", va="bottom", fontsize=8)
            ticks.append(x)
            tick_labels.append(r.label)
            x += 1
        center = x - (len(group) + 1) / 2
        ax.text(center, -0.16, pattern, transform=ax.get_xaxis_transform(), ha="center")
        x += 0.8
    ax.axhline(dense, color="black", linestyle=":", label=f"dense: {dense:.2f}")
    ax.set_xticks(ticks, tick_labels, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity per byte (log scale)")
    ax.set_title(title, fontsize="medium")
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="folder of HTML pages, read recursively (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init and batches (default: 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/oneshot_lm"),
        help="output folder (default: out/oneshot_lm)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model trained for 150 steps, for the tests"
    )
    args = parser.parse_args(argv)
    args.config = QUICK if args.quick else DEFAULT
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be positive, got {args.steps}")
        args.config = args.config._replace(steps=args.steps)
    return args


def main(argv: list[str] | None = None) -> int:
    start, cpu_start = time.perf_counter(), time.process_time()
    args = parse_args(argv)
    config = args.config
    if not (args.corpus.is_dir() and list_documents(args.corpus)):
        print(
            f"No HTML pages under {args.corpus}. This example trains on the Python 3.11 "
            "documentation that Debian ships: install it with\n\n"
            "    sudo apt-get install python3.11-doc\n\n"
            "or pass --corpus DIR, a folder of HTML pages.",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"jaxprune {jaxprune.__version__} one-shot LM example; writing to {args.out}/")

    corpus = load_corpus(args.corpus)
    sizes = (len(corpus.train), len(corpus.calibration), len(corpus.held_out))
    print(
        "corpus {}: {:,} / {:,} / {:,} bytes of text in {} / {} / {} documents "
        "(train / calibration / held-out)".format(args.corpus, *sizes, *corpus.documents)
    )
    model = make_model(config)
    seed = args.seed
    calibration = windows(
        corpus.calibration, config.seq_len, config.calibration, np.random.default_rng(seed + 1)
    )
    # Calibration batches are model inputs: seq_len bytes each, as the model is trained on.
    calibration_batches = [
        jnp.asarray(calibration[i : i + config.calibration_batch])
        for i in range(0, len(calibration), config.calibration_batch)
    ]
    held_out = windows(corpus.held_out, config.seq_len + 1, config.held_out, None)
    print(
        f"model: width {config.width}, {config.depth} blocks, {config.heads} heads, "
        f"sequences of {config.seq_len} bytes; calibration {len(calibration)} sequences "
        f"({len(calibration_batches)} batches), held-out {len(held_out)} sequences "
        f"({held_out.size - len(held_out):,} predicted bytes)"
    )

    params, last_loss = train(model, config, corpus.train, seed)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    n_pruned = sum(
        x.size
        for path, x in leaves
        if x.ndim == 2 and "block_" in jax.tree_util.keystr(path) and "kernel" in str(path)
    )
    print(
        f"trained {config.steps} steps, last batch loss {last_loss:.3f} nats; "
        f"{n_params:,} parameters, {n_pruned:,} in the pruned kernels"
    )
    perplexity = make_perplexity(model, held_out)
    dense = perplexity(params)
    print(f"dense held-out perplexity {dense:.3f} (uniform bytes: {VOCAB})")

    print("pruning (every method from the same dense model and calibration batches):")
    rows = prune_all(model, params, calibration_batches, perplexity)

    print("\nHeld-out perplexity per byte:")
    print(format_table(dense, rows))

    plot_path = args.out / "oneshot_lm.png"
    source = "the Python 3.11 docs" if args.corpus == DEFAULT_CORPUS else args.corpus.name
    title = (
        f"One-shot pruning of a byte-level LM ({n_params / 1e6:.2f}M parameters) "
        f"on {source}, seed {seed}"
    )
    plot(dense, rows, plot_path, title)
    print(f"\nplot:      {plot_path}")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"wall time: {wall:.1f} s, CPU time {cpu:.1f} s (after imports)")

    problems = [f"{r.label} {r.pattern}" for r in rows if not math.isfinite(r.perplexity)]
    problems = [f"perplexity of {p} is not finite" for p in problems]
    if not dense < VOCAB:
        problems.append(f"dense perplexity {dense:.3f} does not beat uniform bytes ({VOCAB})")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
