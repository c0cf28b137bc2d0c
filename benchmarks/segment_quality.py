"""Benchmark: segment quality on real logs, by the leakage-free backtest (README, "Evaluation").

Runs the pipeline (ingest -> ... -> evaluate) on the shared REES46 and DIGINETICA samples and on
generated data, once per encoder setting, and prints for each the protocol, the leaderboard
(method x item hit-rate@20, NDCG@20, lift over popularity, each with its 95% CI; purchase AUC;
size entropy; stability) with the evaluate stage's verdict, and the wall time of ``evaluate``
against ``embed`` (target: evaluate <= 0.5 x embed at scale).  Usage::

    python benchmarks/segment_quality.py [--datasets rees46 diginetica generated]
        [--encoders text sequence contrastive] [--users 2000] [--workdir DIR]

Encoders: ``text`` (the packaged MiniLM as is), ``sequence`` (masked-event pre-training of the
small BERT over event x category tokens with hashed item buckets, ``train_encoder`` first),
``contrastive`` (the text encoder fine-tuned contrastively on the log first), ``auto`` (the
``encoder.kind: auto`` rule).  Needs ``../shared/data`` for the two real samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.core.config import load_config  # noqa: E402

SOURCES = {
    "rees46": REPO / "conf" / "sources" / "rees46.yaml",
    "diginetica": REPO / "conf" / "sources" / "diginetica.yaml",
    "generated": None,
}
ENCODERS = {
    "text": ["encoder.kind=text"],
    "sequence": [
        "encoder.kind=sequence",
        "encoder.include_item_ids=true",
        "train_encoder.mode=mlm",
    ],
    "contrastive": ["encoder.kind=text", "train_encoder.mode=contrastive"],
    "auto": ["encoder.kind=auto"],
}
COLUMNS = (
    ("hit@20", "future_item_hit_rate_at_20"),
    ("NDCG@20", "future_item_ndcg_at_20"),
    ("lift", "future_item_hit_rate_at_20_lift"),
)


def _cell(values: dict[str, float], name: str) -> str:
    if name not in values:
        return "n/a"
    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    return f"{values[name]:.3f}" + ("" if low is None else f" ({low:.3f}-{high:.3f})")


def run_one(dataset: str, encoder: str, workdir: Path, users: int) -> dict:
    from jobs.pipeline import applicable, run_pipeline
    from jobs.stages import select

    root = workdir / f"{dataset}-{encoder}"
    overrides = [
        f"lake.root={root / 'lake'}",
        f"cluster.model_root={root / 'models'}",
        f"evaluate.report_dir={root / 'reports'}",
        f"train_encoder.output_dir={root / 'encoder'}",
        *ENCODERS[encoder],
    ]
    conf = [REPO / "conf" / "local.yaml"]
    if SOURCES[dataset] is None:
        overrides += [
            f"generate.n_users={users}",
            f"generate.output_dir={root / 'raw'}",
            f"generate.ground_truth_path={root / 'truth.csv'}",
        ]
    else:
        conf.append(SOURCES[dataset])
    config = load_config(conf, overrides)
    if SOURCES[dataset] is None:
        import dataclasses

        # The generator writes under its output_dir; ingest reads the same folder.
        source = config.ingest.source
        inputs = (dataclasses.replace(source.inputs[0], paths=(str(root / "raw" / "jsonl"),)),)
        config = dataclasses.replace(
            config,
            ingest=dataclasses.replace(
                config.ingest, source=dataclasses.replace(source, inputs=inputs)
            ),
        )
    first = "generate" if SOURCES[dataset] is None else "ingest"
    started = time.perf_counter()
    if encoder == "contrastive":
        import dataclasses

        # Fine-tune first (from the packaged text encoder), then embed with the result.
        names = ("generate", "ingest", "sessionize", "train_encoder")
        prepare = [s for s in select(first, None) if s.name in names]
        outcomes, _ = run_pipeline(config, f"quality-{dataset}-{encoder}", prepare)
        tuned = dataclasses.replace(
            config, encoder=dataclasses.replace(config.encoder, model_path=str(root / "encoder"))
        )
        more, _ = run_pipeline(tuned, f"quality-{dataset}-{encoder}", select("embed", None))
        outcomes += more
    else:
        stages = applicable(select(first, None), config)
        outcomes, _ = run_pipeline(config, f"quality-{dataset}-{encoder}", stages)
    seconds = {o.stage: o.seconds for o in outcomes}
    evaluated = outcomes[-1].result
    return {
        "dataset": dataset,
        "encoder": encoder,
        "metrics": evaluated.metrics,
        "verdict": evaluated.verdict,
        "report": evaluated.report_path,
        "embed_s": seconds.get("embed", 0.0),
        "evaluate_s": seconds.get("evaluate", 0.0),
        "total_s": time.perf_counter() - started,
    }


def print_result(result: dict) -> None:
    print(f"\n## {result['dataset']} / encoder {result['encoder']}")
    print(f"{result['verdict']}")
    print("| method | " + " | ".join(h for h, _ in COLUMNS) + " | AUC | size entropy | users |")
    print("|---|" + "---|" * (len(COLUMNS) + 3))
    for method, values in result["metrics"].items():
        if "future_item_hit_rate_at_20" not in values:
            continue
        auc = f"{values['future_purchase_auc']:.3f}" if "future_purchase_auc" in values else "n/a"
        entropy = f"{values['size_entropy']:.2f}" if "size_entropy" in values else "-"
        cells = [_cell(values, name) for _, name in COLUMNS]
        users = f"{values['future_users']:,.0f}"
        print(f"| {method} | " + " | ".join([*cells, auc, entropy, users]) + " |")
    emb = result["metrics"].get("embedding", {})
    if "segment_jaccard_mean" in emb:
        print(
            f"stability: segment Jaccard mean {emb['segment_jaccard_mean']:.2f}, min "
            f"{emb['segment_jaccard_min']:.2f}; seed-refit ARI "
            f"{emb.get('stability_ari_mean', float('nan')):.2f}"
        )
    ratio = result["evaluate_s"] / result["embed_s"] if result["embed_s"] else float("nan")
    print(
        f"wall: embed {result['embed_s']:.1f}s, evaluate {result['evaluate_s']:.1f}s "
        f"(evaluate/embed {ratio:.2f}x), pipeline {result['total_s']:.1f}s; "
        f"report {result['report']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--encoders", nargs="+", default=["text"], choices=list(ENCODERS))
    parser.add_argument("--users", type=int, default=2000, help="generated users")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    # The decisions worth reading: which protocol and which encoder, and why.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for name in ("jobs.evaluation.backtest", "jobs.embed", "jobs.train_encoder"):
        logging.getLogger(name).setLevel(logging.INFO)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="segment-quality-"))
    results = []
    for dataset in args.datasets:
        for encoder in args.encoders:
            result = run_one(dataset, encoder, workdir, args.users)
            print_result(result)
            results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
