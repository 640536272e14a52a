"""The figure and the tables of experiments.md, "The whole schedule": tau per epoch of several train.py runs.

    python docs/whole_schedule.py runs/s2500 runs/s5000 runs/s10000 runs/t2500 --out docs/tau_whole_schedule.png

Reads each run's log.jsonl (train.py --track-tau writes tau, tau_vectors and moved every --track-every epochs) and
prints, per run, a markdown table of the tracked epochs; with --out it draws tau (official vector, solid; `cells`
variant, dotted) and the training accuracy on the labels the run saw. matplotlib is needed only for --out.
"""

import argparse
import json
import os
import sys


def tracked(run: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return config, [r for r in rows if r.get("tau") is not None and "loss" in r]


def label(config: dict) -> str:
    images = f"{config['subset']:,} images" if config.get("subset") else "all images"
    return f"{images}, {config.get('labels', 'random')} labels"


def table(rows: list[dict], every: int) -> str:
    out = ["| epoch | lr | loss | train acc % | tau official | cells | cells+reductions | cells+stem+head | moved: stem+head / reductions / cell ops |",  # noqa: E501
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["epoch"] % every and r is not rows[-1]:
            continue
        v, m = r["tau_vectors"], r["moved"]
        out.append(f"| {r['epoch']} | {r['lr']:.4f} | {r['loss']:.3f} | {r['acc']:.2f} | {v['official']:.3f} | "
                   f"{v['cells']:.3f} | {v['cells+reductions']:.3f} | {v['cells+stem+head']:.3f} | "
                   f"{m['stem+head']:.1f} / {m['reductions']:.1f} / {m['cell ops']:.1f} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories of train.py --track-tau")
    p.add_argument("--every", type=int, default=30, help="table rows every this many epochs (and the last)")
    p.add_argument("--out", help="draw the figure into this PNG (needs matplotlib)")
    args = p.parse_args()
    runs = [(run, *tracked(run)) for run in args.runs]
    for run, config, rows in runs:
        print(f"\n{run}: {label(config)}, {rows[-1]['epoch'] if rows else 0} of {config['epochs']} epochs\n")
        print(table(rows, args.every))
    if not args.out:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("whole_schedule.py: --out needs matplotlib (pip install matplotlib); the tables above need nothing")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=120, sharex=True, height_ratios=(2, 1))
    for run, config, rows in runs:
        epochs = [r["epoch"] for r in rows]
        line, = top.plot(epochs, [r["tau"] for r in rows], marker="o", ms=3, label=label(config))  # fmt: skip
        top.plot(epochs, [r["tau_vectors"]["cells"] for r in rows], ls=":", color=line.get_color())
        bottom.plot(epochs, [r["acc"] for r in rows], color=line.get_color())
    top.axhline(0.508, color="gray", ls="--", lw=1)
    top.text(2, 0.515, "paper, 250 epochs: 0.508", color="gray", fontsize=8)
    top.axhline(0, color="black", lw=0.5)
    top.set_ylabel("Kendall tau-b of the angle\n(solid: official vector, dotted: cells)")
    top.set_title("the paper's NB201 schedule (250-epoch cosine) on CIFAR-10 subsets")
    top.legend(fontsize=8, loc="lower left")
    top.grid(alpha=0.3)
    bottom.set_ylabel("train accuracy (%)\non its labels")
    bottom.set_xlabel("supernet training epoch")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
