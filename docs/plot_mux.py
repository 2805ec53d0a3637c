"""Make the plots of docs/mux.md into docs/img/.

Run:  pip install matplotlib && python docs/plot_mux.py      (needs pip install -e ".[bench]" too)

- ``img/mux_shares.png``: the share of the output each source gets, against
  the share its weight asks for, for ``pf.mux`` (three modes, several
  ``n_active``) and for Pescador 3.0's ``StochasticMux`` with the same weights.
- ``img/mux_activation_lengths.png``: how many items an activation yields,
  for each ``dist`` at ``rate=8``, measured by sources that count what is
  pulled from them.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import pescador_fp as pf

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("docs/plot_mux.py needs matplotlib (not a pescador_fp dependency): pip install matplotlib")
try:
    import pescador
except ImportError:
    sys.exit('docs/plot_mux.py compares with Pescador 3.0: pip install -e ".[bench]"')

IMG = Path(__file__).resolve().parent / "img"
WEIGHTS = [8, 4, 2, 1, 1]
EXPECTED = np.array(WEIGHTS) / sum(WEIGHTS)
RATE = 8
SAMPLES = 100_000
PESCADOR_SAMPLES = 30_000
EXHAUSTIVE_PASSES = 3000
# 700 x 450 pixels.
FIGSIZE, DPI = (7, 4.5), 100


def src(label: int) -> Iterator[int]:
    while True:
        yield label


def observed_shares(items: list[int]) -> np.ndarray:
    counts = Counter(items)
    return np.array([counts[i] for i in range(len(WEIGHTS))]) / len(items)


def pf_shares(mode: str, n_active: int) -> np.ndarray:
    sources = [pf.stream(src, i) for i in range(len(WEIGHTS))]
    s = pf.mux(sources, n_active, rate=RATE, weights=WEIGHTS, mode=mode, seed=0)
    if mode == "exhaustive":  # one pass activates each source once: average over many passes
        items = [x for k in range(EXHAUSTIVE_PASSES) for x in s.iterate(seed=k)]
    else:
        items = list(s | pf.take(SAMPLES))
    return observed_shares(items)


def pescador_shares(n_active: int) -> np.ndarray:
    streamers = [pescador.Streamer(src, i) for i in range(len(WEIGHTS))]
    # Pescador divides its weights in place: hand it a float copy.
    weights = np.array(WEIGHTS, dtype=np.float64)
    m = pescador.StochasticMux(streamers, n_active, rate=RATE, weights=weights, random_state=0)
    return observed_shares(list(m.iterate(max_iter=PESCADOR_SAMPLES)))


def plot_shares(path: Path) -> dict[str, list[float]]:
    fig, (ours, theirs) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI, sharex=True, sharey=True)
    markers = {"with_replacement": "o", "single_active": "s", "exhaustive": "^"}
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
    measured: dict[str, list[float]] = {}
    for mode, n_active in itertools.product(markers, colors):
        shares = pf_shares(mode, n_active)
        measured[f"pf {mode} n_active={n_active}"] = shares.round(4).tolist()
        ours.scatter(
            EXPECTED,
            shares,
            marker=markers[mode],
            facecolors="none",
            edgecolors=colors[n_active],
            s=50,
            label=f"{mode}, n_active={n_active}",
        )
    for n_active in colors:
        shares = pescador_shares(n_active)
        measured[f"pescador n_active={n_active}"] = shares.round(4).tolist()
        theirs.plot(EXPECTED, shares, "o-", color=colors[n_active], label=f"n_active={n_active}")
    top = EXPECTED.max() * 1.1
    for ax, title in [(ours, "pf.mux"), (theirs, "Pescador 3.0 StochasticMux")]:
        ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", zorder=0, label="share = weight")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("weight / sum(weights)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
    ours.set_ylabel("observed share of the output")
    ours.legend(fontsize=6.5, loc="upper left")
    theirs.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Output share per source, weights {WEIGHTS}, rate={RATE}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return measured


class LengthCounter:
    """Sources that record how many items each of their activations yielded."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def _items(self, label: int) -> Iterator[int]:
        pulled = 0
        try:
            while True:
                pulled += 1
                yield label
        finally:
            self.lengths.append(pulled)

    def source(self, label: int) -> pf.Stream[int]:
        return pf.stream(self._items, label)


def activation_lengths(dist: str, n_active: int, samples: int = 200_000) -> np.ndarray:
    counter = LengthCounter()
    s = pf.mux([counter.source(i) for i in range(20)], n_active, rate=RATE, dist=dist, seed=0)
    list(s | pf.take(samples))
    # The last n_active activations were cut short when the pass closed.
    return np.array(counter.lengths[:-n_active])


def plot_lengths(path: Path) -> dict[str, Any]:
    cases = [
        ("constant", 4, "tab:gray"),
        ("binomial", 2, "tab:purple"),
        ("binomial", 4, "tab:blue"),
        ("binomial", 16, "tab:cyan"),
        ("poisson", 4, "tab:red"),
    ]
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    measured: dict[str, Any] = {}
    bins = np.arange(0.5, 26.5)
    for dist, n_active, color in cases:
        lengths = activation_lengths(dist, n_active)
        label = f"{dist}" + (f", n_active={n_active}" if dist == "binomial" else "")
        measured[label] = {
            "mean": round(float(lengths.mean()), 3),
            "var": round(float(lengths.var()), 3),
            "min": int(lengths.min()),
            "max": int(lengths.max()),
            "activations": len(lengths),
        }
        ax.hist(
            lengths,
            bins=bins,
            density=True,
            histtype="step",
            lw=1.8,
            color=color,
            label=f"{label}: mean {lengths.mean():.2f}, var {lengths.var():.2f}",
        )
    ax.set_xlabel(f"items per activation (rate={RATE})")
    ax.set_ylabel("fraction of activations")
    ax.set_xlim(0, 26)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Activation lengths of pf.mux per dist", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return measured


def main() -> None:
    IMG.mkdir(exist_ok=True)
    shares = plot_shares(IMG / "mux_shares.png")
    lengths = plot_lengths(IMG / "mux_activation_lengths.png")
    print(f"expected shares: {EXPECTED.round(4).tolist()}")
    for name, value in shares.items():
        print(f"  {name:<36} {value}")
    print("activation lengths at rate 8:")
    for name, value in lengths.items():
        print(f"  {name:<22} {value}")
    print(f"wrote {IMG / 'mux_shares.png'} and {IMG / 'mux_activation_lengths.png'}")


if __name__ == "__main__":
    main()
