"""The model benchmark's report: per-row statistics, ratios to OpenCV DNN, auto vs OpenVINO."""

from __future__ import annotations

import statistics

from bench import pipelines

BASE = "opencv-dnn-direct"


def summarize(samples: list[dict]) -> dict:
    """Return best, median and worst wall ms, median CPU ms and best forward ms of the runs."""
    wall = sorted(s["wall"] * 1000 for s in samples)
    return {
        "best": wall[0],
        "median": statistics.median(wall),
        "worst": wall[-1],
        "cpu": statistics.median(s["cpu"] * 1000 for s in samples),
        "forward": min(s["forward"] * 1000 for s in samples),
        "n": len(wall),
    }


def ratio(value: float, base: float | None) -> str:
    """Return value / base as "0.43×", or "–" without a base."""
    return f"{value / base:.2f}×" if base else "–"


def _row_stats(results: list[dict]) -> dict[tuple[str, str], dict]:
    """(model, row) -> the 1 MP summary (and "12MP" median) of every row that ran."""
    stats = {}
    for r in results:
        if "error" in r or not r["samples"]["1MP"]:
            continue
        entry = summarize(r["samples"]["1MP"])
        if r["samples"]["12MP"]:
            entry["12MP"] = summarize(r["samples"]["12MP"])["median"]
        stats[(r["model"], r["row"])] = entry
    return stats


def verdict(results: list[dict], stats: dict) -> list[str]:
    """One line per model: our auto against OpenVINO used directly (fastest and same precision)."""
    lines = []
    for r in results:
        if r["row"] != "auto" or (r["model"], "auto") not in stats:
            continue
        model, ours = r["model"], stats[(r["model"], "auto")]
        peers = {
            row: s for (m, row), s in stats.items() if m == model and row.startswith("ov-direct-")
        }
        if not peers:
            continue
        fastest = min(peers, key=lambda row: peers[row]["best"])
        text = (
            f"{model}: auto ran {r['engine']}, best {ours['best']:.0f} ms (median "
            f"{ours['median']:.0f}); fastest OpenVINO used directly is {fastest} "
            f"{peers[fastest]['best']:.0f} ms (median {peers[fastest]['median']:.0f}): auto / it "
            f"= {ours['best'] / peers[fastest]['best']:.2f} best, "
            f"{ours['median'] / peers[fastest]['median']:.2f} median"
        )
        same = f"ov-direct-{r['engine'].rsplit('-', 1)[-1]}"
        if same in peers and same != fastest:
            text += (
                f"; same precision ({same}) {peers[same]['best']:.0f} ms: "
                f"{ours['best'] / peers[same]['best']:.2f} best"
            )
        lines.append(text)
    return lines


def render(results: list[dict], header: list[str]) -> str:
    """Return the markdown report: header lines, the table, auto's reasons, the verdict."""
    stats = _row_stats(results)
    lines = [f"- {line}" for line in header]
    lines.append(
        "- e2e = JPEG bytes → decode → letterbox → forward → decode boxes + NMS, wall time "
        "measured inside each row's process, 1 MP photo (scikit-image coffee at 1155x866, plus "
        "noise); ratios are to OpenCV DNN of the same model in the same rounds, best to best and "
        "median to median; yolov3 uses seeded random weights (timing only); OpenVINO models "
        "(ours and the peers') are converted and quantized once beforehand in a process of their "
        "own, as a provisioning step would, so load s and peak RSS are the row's own process: "
        "load from the prepared model, warm-up and runs."
    )
    lines += [
        "",
        "| model | implementation | engine | load s | forward ms (best) | e2e ms best | median "
        "| worst | vs OpenCV DNN (best) | (median) | 12 MP e2e ms | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = pipelines.label(r["row"])
        s = stats.get((r["model"], r["row"]))
        if s is None:
            problem = r.get("error", "no runs")[:220].replace("|", "/")
            lines.append(f"| {r['model']} | {name} | not run: {problem} ||||||||||")
            continue
        base = stats.get((r["model"], BASE), {})
        big = f"{s['12MP']:.0f}" if "12MP" in s else "–"
        lines.append(
            f"| {r['model']} | {name} | {r['engine']} | {r['load_s']:g} | {s['forward']:.1f} "
            f"| {s['best']:.1f} | {s['median']:.1f} | {s['worst']:.1f} "
            f"| {ratio(s['best'], base.get('best'))} | {ratio(s['median'], base.get('median'))} "
            f"| {big} | {r.get('peak_rss_mb', '–')} |"
        )
    reasons = [r for r in results if r["row"] == "auto" and r.get("reason")]
    if reasons:
        lines.append("")
        lines += [f"- {r['model']} auto: {r['reason']}" for r in reasons]
    judged = verdict(results, stats)
    if judged:
        lines += ["", "Our `auto` vs OpenVINO used directly:", ""]
        lines += [f"- {line}" for line in judged]
    return "\n".join(lines) + "\n"
