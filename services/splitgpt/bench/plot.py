"""The benchmark as a PNG: throughput and latency against concurrency, per dtype with a curve."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = iter("osd^v")
    for dtype, d in results["dtypes"].items():
        curve = d["stack"]["curve"]
        if not curve:
            continue
        m = next(markers, "o")
        levels = [c["concurrency"] for c in curve]
        hf = d["hf"]["batched_output_tokens_per_s"]
        line = ax1.plot(levels, [c["output_tokens_per_s"] for c in curve], m + "-", label=f"splitgpt stack, {dtype}")
        hf_levels = sorted(int(b) for b in hf)
        ax1.plot(hf_levels, [hf[str(b)] for b in hf_levels], m + "--", color=line[0].get_color(),
                 alpha=0.6, label=f"one HF process (batched generate), {dtype}")  # fmt: skip
        for key in ("ttft_ms", "itl_ms"):
            for p, dash in (("p50", "-"), ("p99", ":")):
                values = [c[key][p] for c in curve]
                ax2.plot(levels, [float("nan") if v is None else v for v in values], m + dash,
                         label=f"{key[:-3].upper()} {p}, {dtype}")  # fmt: skip
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent requests / batch size")
    ax1.set_ylabel("output tokens/s")
    ax1.set_title("Throughput")
    ax1.legend(fontsize="small")
    ax1.grid(alpha=0.3)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent requests")
    ax2.set_ylabel("ms")
    ax2.set_title("Latency")
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3)
    hop = results["hop"]
    fig.suptitle(
        f"splitgpt bench, {results['model']}, {results['machine']} ({results['date']})\n"
        f"per hop: {hop['ratio']:.2f}x, {hop['overhead_ms_per_extra_partition']:.1f} ms per extra partition",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
