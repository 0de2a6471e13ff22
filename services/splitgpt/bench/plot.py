"""The benchmark as a PNG: throughput and latency against concurrency."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = results["stack"]["curve"]
    levels = [c["concurrency"] for c in curve]
    hf = results["hf"]["batched_output_tokens_per_s"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot(levels, [c["output_tokens_per_s"] for c in curve], "o-", label="splitgpt stack (concurrent requests)")
    hf_levels = sorted(int(b) for b in hf)
    ax1.plot(hf_levels, [hf[str(b)] for b in hf_levels], "s--", label="one HF process (batched generate)")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent requests / batch size")
    ax1.set_ylabel("output tokens/s")
    ax1.set_title("Throughput")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, style in (("ttft_ms", "o-"), ("itl_ms", "s-")):
        for p, dash in (("p50", ""), ("p99", ":")):
            ax2.plot(
                levels, [c[key][p] for c in curve], style + dash if not dash else style[0] + dash, label=f"{key[:-3].upper()} {p}"
            )
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent requests")
    ax2.set_ylabel("ms")
    ax2.set_title("Latency")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(f"splitgpt bench, {results['model']}, {results['machine']} ({results['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
