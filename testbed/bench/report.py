"""Results: median and spread per server, the segate / XRootD ratio, JSON, a PNG and a summary.

A ratio is always "how many times as good segate is": median(segate) / median(XRootD) for
higher-is-better figures (MB/s, requests/s), and the inverse for lower-is-better ones (p99
latency, RSS), so >= 1.0 means segate meets or beats XRootD in every row.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVERS = ("segate", "xrootd")


@dataclass
class Metric:
    title: str
    unit: str
    higher_better: bool = True
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SERVERS})

    def add(self, server: str, value: float) -> None:
        self.samples[server].append(value)

    def stats(self, server: str) -> dict[str, Any] | None:
        xs = self.samples.get(server) or []
        if not xs:
            return None
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}

    def ratio(self) -> float | None:
        a, b = self.stats("segate"), self.stats("xrootd")
        if a is None or b is None or not a["median"] or not b["median"]:
            return None
        r = a["median"] / b["median"]
        return float(r if self.higher_better else 1 / r)

    def paired_ratio(self) -> float | None:
        """Median of the per-round ratios: both servers ran back to back in each round, so
        load from other processes on the machine mostly cancels out in this figure."""
        a, b = self.samples["segate"], self.samples["xrootd"]
        rs = [x / y for x, y in zip(a, b, strict=False) if x and y]
        if len(rs) < 2:
            return None
        r = statistics.median(rs)
        return float(r if self.higher_better else 1 / r)


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.context: dict[str, Any] = {}

    def metric(self, key: str, title: str, unit: str, *, higher_better: bool = True) -> Metric:
        if key not in self.metrics:
            self.metrics[key] = Metric(title, unit, higher_better)
        return self.metrics[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "metrics": {
                k: {
                    "title": m.title,
                    "unit": m.unit,
                    "higher_better": m.higher_better,
                    **{s: m.stats(s) for s in SERVERS},
                    "ratio_segate_over_xrootd": m.ratio(),
                    "paired_ratio": m.paired_ratio(),
                }
                for k, m in self.metrics.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        """Rebuild from ``results.json`` (to redraw the plot or summary without re-running)."""
        res = cls()
        res.context = dict(data.get("context", {}))
        for key, m in data.get("metrics", {}).items():
            metric = res.metric(key, m["title"], m["unit"], higher_better=m["higher_better"])
            for s in SERVERS:
                for v in (m.get(s) or {}).get("samples", []):
                    metric.add(s, float(v))
        return res

    def summary(self) -> str:
        c = self.context
        lines = [
            f"segate vs XRootD {c.get('xrootd_version', '')} - {c.get('date', '')} - "
            f"{c.get('machine', '')}",
            f"mode {c.get('mode')}, {c.get('rounds')} round(s), file {c.get('file_mib')} MiB, "
            f"segate workers {c.get('workers')}, alternating servers per round",
            "",
            f"{'metric':<32}{'segate med [min-max]':>23}{'xrootd med [min-max]':>23}"
            f"{'ratio':>7}{'paired':>7}",
        ]
        for m in self.metrics.values():
            cells = []
            for s in SERVERS:
                st = m.stats(s)
                cells.append(
                    "n/a" if st is None else f"{_g(st['median'])} [{_g(st['min'])}-{_g(st['max'])}]"
                )
            r, pr = m.ratio(), m.paired_ratio()
            lines.append(
                f"{m.title + ' (' + m.unit + ')':<32}{cells[0]:>23}{cells[1]:>23}"
                f"{'' if r is None else f'{r:.2f}':>7}{'' if pr is None else f'{pr:.2f}':>7}"
            )
        lines += [
            "",
            f"machine limits: openssl aes-256-gcm 1 core {c.get('openssl_aes_gcm_mbps', 0):.0f} "
            f"MB/s, page-cache read {c.get('page_cache_read_mbps', 0):.0f} MB/s",
            "ratio = median(segate)/median(xrootd), inverted for lower-is-better rows, so",
            ">= 1.00 means segate is as good or better; paired = median of per-round ratios",
        ]
        return "\n".join(line.rstrip() for line in lines)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.to_json(), indent=1) + "\n")
        (out / "summary.txt").write_text(self.summary() + "\n")
        try:
            self.plot(out / "bench.png")
        except ImportError:  # the figures are in results.json / summary.txt either way
            print("no bench.png: matplotlib is missing (pip install -e '.[bench]')")

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ms = [m for m in self.metrics.values() if any(m.samples[s] for s in SERVERS)]
        cols = 4
        rows = (len(ms) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
        colours = {"segate": "#1f77b4", "xrootd": "#ff7f0e"}
        for ax, m in zip(axes.flat, ms, strict=False):
            meds: list[float] = []
            errs: list[list[float]] = [[], []]
            for s in SERVERS:
                st = m.stats(s) or {"median": 0.0, "min": 0.0, "max": 0.0}
                meds.append(st["median"])
                errs[0].append(st["median"] - st["min"])
                errs[1].append(st["max"] - st["median"])
            ax.bar(SERVERS, meds, yerr=errs, capsize=4, color=[colours[s] for s in SERVERS])
            r = m.ratio()
            ax.set_title(f"{m.title}\nratio {r:.2f}" if r else m.title, fontsize=8)
            ax.set_ylabel(m.unit, fontsize=7)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(ms) :]:
            ax.axis("off")
        c = self.context
        fig.suptitle(f"segate vs XRootD - {c.get('date', '')} - {c.get('machine', '')}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=70)
        plt.close(fig)


def _g(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.bench.report DIR``: redraw the PNG and summary from results.json."""
    import sys

    out = Path((argv if argv is not None else sys.argv[1:])[0])
    res = Results.from_json(json.loads((out / "results.json").read_text()))
    res.write(out)
    print(res.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
