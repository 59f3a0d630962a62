"""Documents/s of TRAIT's fastText scoring at scale: `score_corpus` on 1 and 2 processes and the
datatrove pipeline (`run_datatrove`, local executor) with 1 and 2 workers.

    python -m benchmarks.bench_selection              # the recorded benchmark (≈ 2 min on 2 cores)
    python -m benchmarks.bench_selection --quick      # a small corpus, one round: the harness
    python -m benchmarks.bench_selection --repeat-corpus 20 --repeats 5

**Data.** `--documents world` (default): the world of `experiments/configs/world/default.yaml`
(built or reused from `--world-cache-dir`). A fastText domain classifier is trained
(`datamodules.selection.fasttext_classifier.train_fasttext`, its default settings) on its
new-domain articles (`domain_documents`, positives) against its general web pages
(`web_pretraining`, negatives), and the corpus scored is its `web_corpus` (4000 pages,
hidden in-domain and low-quality ones among them) repeated `--repeat-corpus` times (10) into one
JSONL file, each copy's ids suffixed `-r<k>` so that every id is unique. `--documents synthetic`:
`benchmarks._harness.synthetic_texts` of two seeds (two made-up lexicons) as the two classes, and
a corpus alternating between fresh texts of both (no world is built; the test's quick run).

**Variants.** Each run starts from an empty output directory (so nothing is reused) and is timed
end to end, wall clock: reading the JSONL, building the scorer in every process, scoring in
batches of `--batch-size` (256), writing the shard files and the done files atomically, merging
into `scores.jsonl` and the manifest.

* ``sharded_p1``    `score_corpus(num_shards=1, processes=1)`: one shard, in this process;
* ``sharded_p2``    `score_corpus(num_shards=2, processes=2)`: two shards, a spawned pool of two
                    workers (one OpenMP/BLAS/torch thread each);
* ``datatrove_w1``  `run_datatrove(tasks=1, workers=1, threshold=0.5)`: reader → `ScoreFilter` →
                    kept-documents writer, datatrove's local executor in this process;
* ``datatrove_w2``  `run_datatrove(tasks=2, workers=2, threshold=0.5)`: two tasks in a spawned
                    `multiprocess` pool (plus datatrove's manager process).

The variants run `--repeats` rounds (3), the order rotating between rounds; the report has every
time, docs/s of the median and of the best, and the scores of every run checked equal (ids and
float64 values) to the in-process reference (`scorer.score` on the whole corpus, untimed the
first time, then timed: the scoring-only rate). **Start-up**: every variant run on a 2-document corpus,
twice: cold (the first pool of each engine starts its forkserver, which imports our modules and,
through `datamodules`, torch: seconds) and warm (forking the workers, building the scorer in each,
the files): the warm time is a run's overhead besides its documents. The timed rounds run warm.

**CPU.** Each shard's done file records its process's CPU seconds; the report gives, per 2-process
run, the slowest shard's and the total: the projection "on free cores" is `W1 / (O2 + slowest
shard's CPU)`, what the ratio would be were both cores ours (on a shared machine they are not:
see the load average), and `CPU of 2 ÷ 1` the work the split adds (every shard reads and parses
the whole corpus to know the positions: `datamodules.selection.corpus`).

**Expectation** (printed beside each ratio, docs/s of 2 processes ÷ 1): at most `min(2, cores)`;
with `W1` the 1-process wall time and `O1`, `O2` the warm overheads of the 1- and 2-process
variants, the ideal split of the work gives `W1 / (O2 + (W1 - O1) / 2)`. A ratio is `met` when it lies in `[0.75 × expectation, min(2, cores) + 0.05]`.
On a machine whose cores are shared with other jobs (the load average is recorded at the start
and the end) the measurement says what it says.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _harness as H

BENCHMARK = "benchmarks.bench_selection"
NAME = "bench_selection"
VARIANTS = ("sharded_p1", "sharded_p2", "datatrove_w1", "datatrove_w2")
PAIRS = {"sharded": ("sharded_p1", "sharded_p2"), "datatrove": ("datatrove_w1", "datatrove_w2")}
THRESHOLD = 0.5
POSITIVE = "__label__positive"
QUICK = (("repeat_corpus", 10, 1), ("repeats", 3, 1), ("synthetic_documents", 2000, 400))


# --------------------------------------------------------------------------------- data


def world_data(cache_dir: str) -> dict[str, list[dict[str, Any]]]:
    """The world's `domain_documents`, `web_pretraining` and `web_corpus` records."""
    everything = 10**9
    return {
        split: H.world_records(split, everything, cache_dir)[0]
        for split in ("domain_documents", "web_pretraining", "web_corpus")
    }


def synthetic_data(n: int) -> dict[str, list[dict[str, Any]]]:
    """Two seeded lexicons as the two classes; the corpus alternates between fresh texts of both."""
    positive, negative = H.synthetic_texts(n, seed=11), H.synthetic_texts(n, seed=12)
    corpus = [
        {"id": f"doc-{i:06d}", "text": (positive if i % 2 else negative)[n // 2 + i // 2]}
        for i in range(n)
    ]
    return {
        "domain_documents": [{"text": t} for t in positive[: n // 2]],
        "web_pretraining": [{"text": t} for t in negative[: n // 2]],
        "web_corpus": corpus,
    }


def train_classifier(positives: list[str], negatives: list[str], path: Path) -> dict[str, Any]:
    """The fastText domain classifier, trained by the selection library's `train_fasttext`
    (its default settings: seeded, one thread; 10% of each class held out for the metrics)."""
    from datamodules.selection.fasttext_classifier import train_fasttext

    started = time.perf_counter()
    trained = train_fasttext(positives, negatives, path, valid_fraction=0.1)
    info = trained.info
    return {
        "positives": len(positives),
        "negatives": len(negatives),
        "train_s": time.perf_counter() - started,
        "bytes": path.stat().st_size,
        "settings": info["settings"],
        "heldout": trained.heldout,
    }


def write_corpus(records: list[dict[str, Any]], repeat: int, path: Path) -> int:
    """`records` repeated `repeat` times into the JSONL file `path` (ids `<id>-r<k>`); the count."""
    with path.open("w", encoding="utf-8") as out:
        for k in range(repeat):
            for i, record in enumerate(records):
                doc_id = f"{record.get('id', i)}-r{k}"
                out.write(json.dumps({"id": doc_id, "text": record["text"]}) + "\n")
    return repeat * len(records)


# --------------------------------------------------------------------------------- runs


@dataclass
class Runs:
    times: list[float] = field(default_factory=list)
    same_scores: list[bool] = field(default_factory=list)
    shard_cpu: list[list[float]] = field(default_factory=list)
    """Per run, the CPU seconds of each shard / task (from the manifest)."""

    def summary(self, documents: int) -> dict[str, Any]:
        median, best = statistics.median(self.times), min(self.times)
        return {
            "shard_cpu_s": self.shard_cpu,
            "median_max_shard_cpu_s": statistics.median(max(c) for c in self.shard_cpu),
            "median_total_cpu_s": statistics.median(sum(c) for c in self.shard_cpu),
            "times": self.times,
            "median": median,
            "best": best,
            "docs_per_s": [documents / t for t in self.times],
            "median_docs_per_s": documents / median,
            "best_docs_per_s": documents / best,
            "same_scores": all(self.same_scores),
        }


def run_variant(variant: str, corpus, scorer, out: Path, batch_size: int) -> Path:
    from datamodules.selection.datatrove_steps import run_datatrove
    from datamodules.selection.sharded import score_corpus

    if variant.startswith("sharded"):
        n = int(variant[-1])
        return score_corpus(
            corpus, scorer, out, num_shards=n, processes=n, batch_size=batch_size, progress=False
        )
    w = int(variant[-1])
    result = run_datatrove(
        corpus, scorer, out, THRESHOLD, tasks=w, workers=w, batch_size=batch_size
    )
    return result.scores


def expectation(w1: float, o1: float, o2: float, cores: int) -> dict[str, float]:
    """The 2 ÷ 1 docs/s ratio of an ideal split of the 1-process run's work `w1 - o1` over two
    processes whose run costs `o2` besides (the overheads measured on a 2-document corpus),
    capped by `min(2, cores)`."""
    ceiling = float(min(2, cores))
    work = max(w1 - o1, 0.0)
    return {"ceiling": ceiling, "with_startup": min(ceiling, w1 / max(o2 + work / 2, 1e-9))}


def ratio_check(
    timing: dict[str, Any], one: str, two: str, overhead: dict[str, float], cores: int
) -> dict[str, Any]:
    expect = expectation(timing[one]["median"], overhead[one], overhead[two], cores)
    check = {
        "median": timing[two]["median_docs_per_s"] / timing[one]["median_docs_per_s"],
        "best": timing[two]["best_docs_per_s"] / timing[one]["best_docs_per_s"],
        "expectation": expect["with_startup"],
        "ceiling": expect["ceiling"],
    }
    check["ok"] = 0.75 * check["expectation"] <= check["median"] <= check["ceiling"] + 0.05
    # Were the cores free, the 2-process run would take its overhead plus its slowest shard's
    # CPU time; and the two shards together cost this much more CPU than the one (each reads
    # the whole corpus to know the positions).
    free = overhead[two] + timing[two]["median_max_shard_cpu_s"]
    check["projected_free_cores"] = timing[one]["median"] / free
    check["cpu_2_vs_1"] = timing[two]["median_total_cpu_s"] / timing[one]["median_total_cpu_s"]
    return check


# --------------------------------------------------------------------------------- report


def report_text(report: dict[str, Any]) -> str:
    corpus, timing, checks = report["corpus"], report["timing"], report["checks"]
    lines = [
        f"## TRAIT selection scoring: {corpus['documents']:,} documents "
        f"({corpus['source']}, {corpus['mib']:.1f} MiB JSONL), fastText domain classifier",
        "",
        f"- scoring only, in process (`scorer.score`, batches of {report['args']['batch_size']}): "
        f"{report['reference']['docs_per_s']:,.0f} docs/s",
        "- overhead of a run (a 2-document corpus, after one cold run each), s: "
        + ", ".join(f"{v} {report['startup']['warm'][v]:.2f}" for v in VARIANTS),
        "- the cold first run (worker servers started), s: "
        + ", ".join(f"{v} {report['startup']['cold'][v]:.2f}" for v in VARIANTS),
        "",
        "| variant | median s | best s | docs/s (median) | docs/s (best) | same scores |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for v in VARIANTS:
        t = timing[v]
        lines.append(
            f"| {v} | {t['median']:.2f} | {t['best']:.2f} | {t['median_docs_per_s']:,.0f} | "
            f"{t['best_docs_per_s']:,.0f} | {'yes' if t['same_scores'] else 'NO'} |"
        )
    lines.append("")
    for name, (one, two) in PAIRS.items():
        c = checks[f"{name}_2_vs_1"]
        lines.append(
            f"- {two} ÷ {one} (docs/s): median {c['median']:.2f}, best {c['best']:.2f} "
            f"(expectation ≤ {c['ceiling']:.0f}× on {report['environment']['cores']} cores; "
            f"{c['expectation']:.2f} with the measured start-up) → {H.verdict(c['ok'])}; "
            f"from the shards' CPU times, on free cores: {c['projected_free_cores']:.2f}; "
            f"CPU of 2 ÷ 1: {c['cpu_2_vs_1']:.2f}"
        )
    lines.append(
        f"- scores of every run equal the in-process reference → "
        f"{H.verdict(checks['same_scores']['ok'])}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {BENCHMARK}", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small corpus, one round")
    parser.add_argument(
        "--documents", choices=("world", "synthetic"), default="world", help="which documents"
    )
    parser.add_argument("--world-cache-dir", default=".cache/adaptlm/worlds")
    parser.add_argument(
        "--repeat-corpus", type=int, default=None, help="copies of web_corpus (10; quick 1)"
    )
    parser.add_argument(
        "--synthetic-documents",
        type=int,
        default=None,
        help="synthetic corpus size (2000; quick 400)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (3; quick 1)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per score call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    return H.quick_defaults(parser.parse_args(argv), QUICK)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads, env, log, started = H.start(args)
    logging.getLogger("datamodules.selection").setLevel(logging.WARNING)
    from datamodules.selection.corpus import CorpusSpec
    from datamodules.selection.scorers import ScorerSpec, build_scorer
    from datamodules.selection.sharded import read_scores

    with tempfile.TemporaryDirectory(prefix="bench_selection-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.documents == "world":
            data, source = world_data(args.world_cache_dir), "world web_corpus"
        else:
            data, source = synthetic_data(args.synthetic_documents), "synthetic"
        model_path = workdir / "domain.bin"
        model = train_classifier(
            [r["text"] for r in data["domain_documents"]],
            [r["text"] for r in data["web_pretraining"]],
            model_path,
        )
        log(f"fastText classifier: {json.dumps(model)}")
        corpus_path = workdir / "corpus.jsonl"
        documents = write_corpus(data["web_corpus"], args.repeat_corpus, corpus_path)
        corpus = CorpusSpec(path=str(corpus_path), format="jsonl")
        scorer = ScorerSpec(kind="fasttext", path=str(model_path), label=POSITIVE)
        mib = corpus_path.stat().st_size / H.MiB
        log(f"corpus: {documents} documents ({source} ×{args.repeat_corpus}), {mib:.1f} MiB")

        # The reference scores, and the scoring-only rate (the second, timed pass).
        built = build_scorer(scorer)
        texts, ids = [], []
        with corpus_path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                ids.append(record["id"])
                texts.append(record["text"])
        reference = np.concatenate(
            [
                built.score(texts[i : i + args.batch_size])
                for i in range(0, len(texts), args.batch_size)
            ]
        )
        t0 = time.perf_counter()
        for i in range(0, len(texts), args.batch_size):
            built.score(texts[i : i + args.batch_size])
        scoring_s = time.perf_counter() - t0
        kept = int((reference >= THRESHOLD).sum())
        log(f"reference: {documents / scoring_s:,.0f} docs/s scoring only; {kept} ≥ {THRESHOLD}")
        del texts, built

        # Start-up: every variant on a 2-document corpus, cold (the first pool of each engine
        # starts its forkserver) then warm: the overhead of a run besides its documents.
        tiny_path = workdir / "tiny.jsonl"
        write_corpus(data["web_corpus"][:1], 2, tiny_path)
        tiny = CorpusSpec(path=str(tiny_path), format="jsonl")
        startup: dict[str, dict[str, float]] = {"cold": {}, "warm": {}}
        for phase in ("cold", "warm"):
            for v in VARIANTS:
                out = workdir / "startup" / v
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                run_variant(v, tiny, scorer, out, args.batch_size)
                startup[phase][v] = time.perf_counter() - t0
        log(f"start-up (2 documents): {json.dumps(startup)}")

        runs = {v: Runs() for v in VARIANTS}
        for round_ in range(args.repeats):
            shift = round_ % len(VARIANTS)
            for v in VARIANTS[shift:] + VARIANTS[:shift]:
                out = workdir / "runs" / v
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                scores_path = run_variant(v, corpus, scorer, out, args.batch_size)
                runs[v].times.append(time.perf_counter() - t0)
                got_ids, got = read_scores(scores_path)
                runs[v].same_scores.append(got_ids == ids and bool(np.array_equal(got, reference)))
                manifest = json.loads((out / "scores_manifest.json").read_text(encoding="utf-8"))
                runs[v].shard_cpu.append([shard["cpu_s"] for shard in manifest["shards"]])
                shutil.rmtree(out, ignore_errors=True)
            log(
                f"round {round_ + 1}/{args.repeats}: "
                + ", ".join(f"{v} {runs[v].times[-1]:.2f} s" for v in VARIANTS)
            )

    timing = {v: runs[v].summary(documents) for v in VARIANTS}
    cores = os.cpu_count() or 1
    checks: dict[str, Any] = {
        f"{name}_2_vs_1": ratio_check(timing, one, two, startup["warm"], cores)
        for name, (one, two) in PAIRS.items()
    }
    checks["same_scores"] = {"ok": all(t["same_scores"] for t in timing.values())}
    report = {
        "command": H.command_line(BENCHMARK, argv),
        "environment": env,
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
        },
        "corpus": {
            "source": source,
            "documents": documents,
            "repeat": args.repeat_corpus,
            "mib": mib,
            "kept_at_threshold": kept,
            "threshold": THRESHOLD,
        },
        "model": model,
        "reference": {"scoring_s": scoring_s, "docs_per_s": documents / scoring_s},
        "startup": startup,
        "timing": timing,
        "checks": checks,
        "threads": threads,
    }
    H.write_results(NAME, args, report, report_text(report), started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
